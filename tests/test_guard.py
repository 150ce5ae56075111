"""pcipassd.guard against fake host trees: sysfs with relative symlinks as the kernel makes them,
/proc files in the kernel's exact text formats. Nothing here reads this machine's /sys or /proc."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hosttree import FakeHost

from pcipassd.guard import BOOT_VGA, NETWORK, STORAGE, Reason, critical_devices, describe


@pytest.fixture
def fake(tmp_path: Path) -> FakeHost:
    return FakeHost(tmp_path)


def reasons(fake: FakeHost) -> dict[str, list[str]]:
    return {bdf: [r.text for r in found] for bdf, found in critical_devices(fake.host).items()}


# Typical mountinfo lines of a systemd host: none of these is on a block device.
PSEUDO_MOUNTS = (
    "23 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw",
    "24 1 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw",
    "25 1 0:5 / /dev rw,nosuid,relatime shared:2 - devtmpfs udev "
    "rw,size=4010220k,nr_inodes=1002555,mode=755,inode64",
    "26 25 0:23 / /dev/shm rw,nosuid,nodev shared:3 - tmpfs tmpfs rw,inode64",
    "27 1 0:24 / /run rw,nosuid,nodev,noexec,relatime shared:5 - tmpfs tmpfs "
    "rw,size=804052k,mode=755,inode64",
    "28 24 0:25 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 "
    "rw,nsdelegate,memory_recursiveprot",
    "300 1 0:60 / /var/lib/docker/overlay2/3f1c/merged rw,relatime - overlay overlay "
    "rw,lowerdir=/var/lib/docker/overlay2/l/AB:/var/lib/docker/overlay2/l/CD,"
    "upperdir=/var/lib/docker/overlay2/3f1c/diff,workdir=/var/lib/docker/overlay2/3f1c/work",
    "310 1 0:61 / /mnt/nfs rw,relatime shared:200 - nfs4 fileserver:/export "
    "rw,vers=4.2,rsize=1048576,wsize=1048576,hard,proto=tcp,addr=10.0.0.2",
)


def virtio_disk(fake: FakeHost, bdf: str = "0000:00:03.0", name: str = "vda") -> str:
    return fake.disk(name, "252:0", f"{fake.pci(bdf)}/virtio0")


# --- Storage ----------------------------------------------------------------------------------


def test_root_on_virtio_partition(fake: FakeHost) -> None:
    fake.partition(virtio_disk(fake), "vda1", "252:1")
    fake.mountinfo(
        "22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro",
        *PSEUDO_MOUNTS,
    )

    assert critical_devices(fake.host) == {
        "0000:00:03.0": (Reason("0000:00:03.0", "holds / (vda1)", STORAGE),),
    }


def test_several_mounts_on_one_device_are_listed_compactly(fake: FakeHost) -> None:
    vda = virtio_disk(fake)
    for number in range(1, 6):
        fake.partition(vda, f"vda{number}", f"252:{number}")
    fake.mountinfo(
        "22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw",
        "40 22 252:3 / /var/lib/my\\040data rw,relatime shared:31 - ext4 /dev/vda3 rw",
        "41 22 252:2 / /boot rw,relatime shared:30 - ext4 /dev/vda2 rw",
        "42 41 252:5 / /boot/efi rw,relatime shared:32 - vfat /dev/vda5 rw,fmask=0077",
        "43 22 252:4 / /home rw,relatime shared:33 - xfs /dev/vda4 rw",
        "44 22 252:4 /alice /srv/alice rw,relatime shared:33 - xfs /dev/vda4 rw",
    )

    assert reasons(fake) == {
        "0000:00:03.0": ["holds /, /boot, /home and 3 more (vda1, vda2, vda3 and 2 more)"],
    }


def test_mount_point_escapes_are_undone(fake: FakeHost) -> None:
    fake.partition(virtio_disk(fake), "vda1", "252:1")
    fake.mountinfo("40 1 252:1 / /srv/my\\040data rw,relatime shared:31 - ext4 /dev/vda1 rw")

    assert reasons(fake) == {"0000:00:03.0": ["holds /srv/my data (vda1)"]}


def test_root_on_lvm_on_dm_crypt_on_nvme_behind_a_bridge(fake: FakeHost) -> None:
    controller = fake.pci("0000:00:1d.0", "0000:3d:00.0")  # root port, then the NVMe drive
    nvme0n1 = fake.disk("nvme0n1", "259:0", f"{controller}/nvme/nvme0")
    fake.partition(nvme0n1, "nvme0n1p1", "259:1")
    p3 = fake.partition(nvme0n1, "nvme0n1p3", "259:3")
    crypt = fake.holder("dm-0", "253:0", [p3], dm_name="luks-6a3e")
    fake.holder("dm-1", "253:1", [crypt], dm_name="vg0-root")
    fake.mountinfo(
        "22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/mapper/vg0-root rw",
        *PSEUDO_MOUNTS,
    )

    assert critical_devices(fake.host) == {
        "0000:3d:00.0": (Reason("0000:3d:00.0", "holds / (nvme0n1p3)", STORAGE),),
    }


def test_md_raid1_over_two_sata_disks_on_two_ahci_controllers(fake: FakeHost) -> None:
    ahci0 = fake.pci("0000:00:17.0")
    ahci1 = fake.pci("0000:00:1c.0", "0000:05:00.0")
    sda = fake.disk("sda", "8:0", f"{ahci0}/ata1/host0/target0:0:0/0:0:0:0")
    sdb = fake.disk("sdb", "8:16", f"{ahci1}/ata3/host2/target2:0:0/2:0:0:0")
    sda1 = fake.partition(sda, "sda1", "8:1")
    sdb1 = fake.partition(sdb, "sdb1", "8:17")
    fake.holder("md0", "9:0", [sda1, sdb1])
    fake.mountinfo("22 1 9:0 / / rw,relatime shared:1 - ext4 /dev/md0 rw,stripe=256")

    assert reasons(fake) == {
        "0000:00:17.0": ["holds / (sda1)"],
        "0000:05:00.0": ["holds / (sdb1)"],
    }


def test_btrfs_anonymous_device_number_falls_back_to_the_source(fake: FakeHost) -> None:
    fake.partition(virtio_disk(fake), "vda2", "252:2")
    fake.mountinfo(
        "22 1 0:31 /@ / rw,relatime shared:1 - btrfs /dev/vda2 "
        "rw,space_cache=v2,subvolid=256,subvol=/@",
        "45 22 0:31 /@home /home rw,relatime shared:34 - btrfs /dev/vda2 "
        "rw,space_cache=v2,subvolid=257,subvol=/@home",
        *PSEUDO_MOUNTS,
    )

    assert reasons(fake) == {"0000:00:03.0": ["holds /, /home (vda2)"]}


def test_btrfs_raid1_counts_every_member_device(fake: FakeHost) -> None:
    nvme0n1 = fake.disk("nvme0n1", "259:0", f"{fake.pci('0000:01:00.0')}/nvme/nvme0")
    nvme1n1 = fake.disk("nvme1n1", "259:1", f"{fake.pci('0000:02:00.0')}/nvme/nvme1")
    fsid = "/sys/fs/btrfs/0c3a5d1e-8f4b-4d5c-9b1a-2e7f6a9d0b11"
    fake.link(f"{fsid}/devices/nvme0n1", nvme0n1)
    fake.link(f"{fsid}/devices/nvme1n1", nvme1n1)
    fake.mountinfo("22 1 0:31 / / rw,relatime shared:1 - btrfs /dev/nvme0n1 rw,subvolid=5,subvol=/")

    assert reasons(fake) == {
        "0000:01:00.0": ["holds / (nvme0n1)"],
        "0000:02:00.0": ["holds / (nvme1n1)"],
    }


def test_btrfs_on_luks_found_by_its_dev_mapper_name(fake: FakeHost) -> None:
    nvme0n1 = fake.disk("nvme0n1", "259:0", f"{fake.pci('0000:01:00.0')}/nvme/nvme0")
    p3 = fake.partition(nvme0n1, "nvme0n1p3", "259:3")
    fake.holder("dm-0", "253:0", [p3], dm_name="luks-6a3e")
    fake.mountinfo(
        "22 1 0:31 /root / rw,relatime shared:1 - btrfs /dev/mapper/luks-6a3e rw,subvol=/root"
    )

    assert reasons(fake) == {"0000:01:00.0": ["holds / (nvme0n1p3)"]}


def test_pseudo_filesystems_are_ignored(fake: FakeHost) -> None:
    virtio_disk(fake)
    fake.mountinfo(*PSEUDO_MOUNTS)

    assert critical_devices(fake.host) == {}


def test_swap_partition(fake: FakeHost) -> None:
    vda = virtio_disk(fake)
    fake.partition(vda, "vda1", "252:1")
    fake.partition(vda, "vda3", "252:3")
    sdb = fake.disk("sdb", "8:16", f"{fake.pci('0000:00:17.0')}/ata2/host1/target1:0:0/1:0:0:0")
    fake.partition(sdb, "sdb1", "8:17")
    fake.mountinfo("22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw")
    fake.swaps(("/dev/vda3", "partition"), ("/dev/sdb1", "partition"), ("/swapfile", "file"))

    assert reasons(fake) == {
        "0000:00:03.0": ["holds /, swap (vda1, vda3)"],
        "0000:00:17.0": ["holds swap (sdb1)"],
    }


def test_nvme_multipath_head_leads_to_its_controllers(fake: FakeHost) -> None:
    subsys = fake.mkdir("/sys/devices/virtual/nvme-subsystem/nvme-subsys0")
    for index, bdf in enumerate(("0000:01:00.0", "0000:02:00.0")):
        controller = fake.mkdir(f"{fake.pci(bdf)}/nvme/nvme{index}")
        fake.link(f"{subsys}/nvme{index}", controller)
    head = fake.mkdir(f"{subsys}/nvme0n1")
    fake.link("/sys/class/block/nvme0n1", head)
    fake.partition(head, "nvme0n1p2", "259:2")
    fake.mountinfo("22 1 259:2 / / rw,relatime shared:1 - xfs /dev/nvme0n1p2 rw")

    assert reasons(fake) == {
        "0000:01:00.0": ["holds / (nvme0n1p2)"],
        "0000:02:00.0": ["holds / (nvme0n1p2)"],
    }


# --- Network ----------------------------------------------------------------------------------

# Rows of /proc/net/route, as fib_route_seq_show formats them:
# "%s\t%08X\t%08X\t%04X\t%d\t%u\t%d\t%08X\t%d\t%u\t%u" (addresses in network byte order).
# 192.168.2.0/24 on the link and a default route via 192.168.2.1: UP|GATEWAY = 0003.
DEFAULT_V4 = "{}\t00000000\t0102A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0"
CONNECTED_V4 = "{}\t0002A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0"


def test_default_route_via_a_nic(fake: FakeHost) -> None:
    fake.netdev("lo", None, flags="0x9")
    fake.netdev("eno1", fake.pci("0000:00:19.0"))
    fake.routes(DEFAULT_V4.format("eno1"), CONNECTED_V4.format("eno1"))

    assert critical_devices(fake.host) == {
        "0000:00:19.0": (Reason("0000:00:19.0", "carries the default route via eno1", NETWORK),),
    }


def test_default_route_via_a_bond_over_two_nics(fake: FakeHost) -> None:
    fake.netdev("eno1", fake.pci("0000:01:00.0"))
    fake.netdev("eno2", fake.pci("0000:01:00.1"))
    fake.bond("bond0", ["eno1", "eno2"])
    fake.routes(DEFAULT_V4.format("bond0"), CONNECTED_V4.format("bond0"))

    assert reasons(fake) == {
        "0000:01:00.0": ["carries the default route via bond0 on eno1"],
        "0000:01:00.1": ["carries the default route via bond0 on eno2"],
    }


def test_bridge_with_an_address_over_a_nic(fake: FakeHost) -> None:
    fake.netdev("eno1", fake.pci("0000:00:19.0"))
    fake.netdev("eno2", fake.pci("0000:00:1f.6"))  # unused, up, no address
    fake.bridge("br0", ["eno1"])
    fake.routes(CONNECTED_V4.format("br0"))

    assert reasons(fake) == {"0000:00:19.0": ["has br0 on eno1 up with an address"]}


def test_vlan_on_bond_known_only_by_bonding_slaves(fake: FakeHost) -> None:
    fake.netdev("enp1s0f0", fake.pci("0000:01:00.0"))
    fake.netdev("bond0", None)
    fake.write(f"{fake.netdevs['bond0']}/bonding/slaves", "enp1s0f0\n")
    fake.netdev("bond0.10", None)
    fake.stack("bond0.10", "bond0")
    fake.routes(DEFAULT_V4.format("bond0.10"))

    assert reasons(fake) == {
        "0000:01:00.0": ["carries the default route via bond0.10 on enp1s0f0"],
    }


def test_interface_up_without_an_address_is_not_critical(fake: FakeHost) -> None:
    fake.netdev("eno1", fake.pci("0000:00:19.0"))
    fake.routes()
    fake.if_inet6(
        "00000000000000000000000000000001 01 80 10 80       lo",
        "fe80000000000000021122fffe334455 02 40 20 80     eno1",  # link-local only
    )

    assert critical_devices(fake.host) == {}


def test_interface_with_an_address_but_down_is_not_critical(fake: FakeHost) -> None:
    fake.netdev("eno1", fake.pci("0000:00:19.0"), flags="0x1002")
    fake.routes()
    fake.if_inet6("20010db8000000000000000000000005 02 40 00 80     eno1")

    assert critical_devices(fake.host) == {}


def test_interface_with_a_global_ipv6_address_and_up(fake: FakeHost) -> None:
    fake.netdev("eno1", fake.pci("0000:00:19.0"))
    fake.if_inet6("20010db8000000000000000000000005 02 40 00 80     eno1")

    assert reasons(fake) == {"0000:00:19.0": ["has eno1 up with an address"]}


def test_ipv6_only_default_route(fake: FakeHost) -> None:
    fake.netdev("lo", None, flags="0x9")
    fake.netdev("eno1", fake.pci("0000:00:19.0"))
    fake.routes()
    fake.ipv6_routes(
        # ip6_fib.c: "%pi6 %02x %pi6 %02x %pi6 %08x %08x %08x %08x %8s"
        "20010db8000000000000000000000000 40 00000000000000000000000000000000 00 "
        "00000000000000000000000000000000 00000100 00000001 00000000 00000001     eno1",
        "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
        "fe800000000000000000000000000001 00000400 00000001 00000000 00450003     eno1",
        "00000000000000000000000000000001 80 00000000000000000000000000000000 00 "
        "00000000000000000000000000000000 00000000 00000003 00000000 80200001       lo",
        "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
        "00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo",
    )

    assert reasons(fake) == {"0000:00:19.0": ["carries the default route via eno1"]}


# --- Display ----------------------------------------------------------------------------------


def test_boot_vga(fake: FakeHost) -> None:
    igpu = fake.pci("0000:00:02.0")
    dgpu = fake.pci("0000:00:01.0", "0000:01:00.0")
    fake.write(f"{igpu}/boot_vga", "1\n")
    fake.write(f"{dgpu}/boot_vga", "0\n")

    assert critical_devices(fake.host) == {
        "0000:00:02.0": (Reason("0000:00:02.0", "is the boot VGA device", BOOT_VGA),),
    }


def framebuffer_console(fake: FakeHost, bound: bool) -> None:
    gpu = fake.pci("0000:00:01.0", "0000:01:00.0")
    fake.link("/sys/class/graphics/fb0", fake.mkdir(f"{gpu}/graphics/fb0"))
    fake.link(f"{gpu}/graphics/fb0/device", gpu)
    platform = fake.mkdir("/sys/devices/platform/simple-framebuffer.0")
    fake.link("/sys/class/graphics/fb1", fake.mkdir(f"{platform}/graphics/fb1"))
    fake.link(f"{platform}/graphics/fb1/device", platform)
    fake.link("/sys/class/graphics/fbcon", fake.mkdir("/sys/devices/virtual/graphics/fbcon"))
    for index, (name, bind) in enumerate(
        [("(S) dummy device", "0"), ("(M) frame buffer device", "1" if bound else "0")]
    ):
        vtcon = fake.mkdir(f"/sys/devices/virtual/vtconsole/vtcon{index}")
        fake.write(f"{vtcon}/name", f"{name}\n")
        fake.write(f"{vtcon}/bind", f"{bind}\n")
        fake.link(f"/sys/class/vtconsole/vtcon{index}", vtcon)


def test_framebuffer_console(fake: FakeHost) -> None:
    framebuffer_console(fake, bound=True)

    assert reasons(fake) == {"0000:01:00.0": ["drives the framebuffer console (fb0)"]}


def test_framebuffer_without_fbcon_bound_is_not_critical(fake: FakeHost) -> None:
    framebuffer_console(fake, bound=False)

    assert critical_devices(fake.host) == {}


# --- Robustness and the summary line ----------------------------------------------------------


def test_missing_proc_and_sys_files_give_no_reasons(fake: FakeHost) -> None:
    assert critical_devices(fake.host) == {}


def test_unreadable_and_garbled_files_give_no_reasons(fake: FakeHost) -> None:
    fake.mkdir("/proc/self/mountinfo")  # a directory where a file is expected: EISDIR
    fake.host.path("/proc/net").mkdir(parents=True)
    fake.host.path("/proc/net/route").write_bytes(b"garbage\n\x00\xff\xfe\nIface\tzz\n")
    fake.write("/proc/net/ipv6_route", "too short\n")
    fake.write("/proc/swaps", "Filename\n/dev/vda3\n")
    fake.netdev("eno1", fake.pci("0000:00:19.0"), flags="not hex")
    fake.write("/proc/net/if_inet6", "20010db8000000000000000000000005 02 40 00 80     eno1\n")

    assert critical_devices(fake.host) == {}


def test_symlink_loop_in_sysfs_is_not_followed_forever(fake: FakeHost) -> None:
    fake.link("/sys/class/net/eno1", "/sys/class/net/eno1")
    fake.if_inet6("20010db8000000000000000000000005 02 40 00 80     eno1")
    fake.link("/sys/dev/block/252:1", "/sys/dev/block/252:1")
    fake.mountinfo("22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw")

    assert critical_devices(fake.host) == {}


def test_reasons_of_one_device_are_collected_in_order(fake: FakeHost) -> None:
    virtio = fake.pci("0000:00:03.0")
    fake.partition(fake.disk("vda", "252:0", f"{virtio}/virtio0"), "vda1", "252:1")
    fake.netdev("eth0", virtio)  # one device for disk and NIC, to see both reasons together
    fake.write(f"{virtio}/boot_vga", "1\n")
    fake.mountinfo("22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw")
    fake.routes(DEFAULT_V4.format("eth0"))

    found = critical_devices(fake.host)

    assert describe(found["0000:00:03.0"]) == (
        "holds / (vda1); carries the default route via eth0; is the boot VGA device"
    )


def test_describe() -> None:
    assert describe(()) == ""
    assert (
        describe(
            (
                Reason("0000:00:03.0", "holds / (vda1)", STORAGE),
                Reason("0000:00:03.0", "carries the default route via eth0", NETWORK),
            )
        )
        == "holds / (vda1); carries the default route via eth0"
    )


def test_what_is_skipped_is_logged_at_debug_level(
    fake: FakeHost, caplog: pytest.LogCaptureFixture
) -> None:
    fake.netdev("tun0", None)  # no device, no lower interface: a tunnel
    fake.routes(DEFAULT_V4.format("tun0"))

    with caplog.at_level(logging.DEBUG, logger="pcipassd.guard"):
        assert critical_devices(fake.host) == {}

    assert "/proc/self/mountinfo does not exist" in caplog.text
    assert "interface tun0 rests on no PCI device" in caplog.text
    assert all(record.levelno == logging.DEBUG for record in caplog.records)
