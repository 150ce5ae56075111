"""pcipassd.guard against fake host trees: sysfs with relative symlinks as the kernel makes them,
/proc files in the kernel's exact text formats. Nothing here reads this machine's /sys or /proc."""

from __future__ import annotations

import fcntl
import json
import struct
from pathlib import Path

import pytest
from hosttree import FakeHost
from machine import FakeJournal

from pcipassd import log as logsetup
from pcipassd.config import schema_text
from pcipassd.guard import Reason, critical_devices, describe, read_con2fbmap
from pcipassd.host import Host
from pcipassd.model import BOOT_VGA, CONSOLE, KINDS, NETWORK, STORAGE


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
        "0000:00:03.0": (Reason("0000:00:03.0", "carries / (vda1)", STORAGE),),
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
        "0000:00:03.0": ["carries /, /boot, /home and 3 more (vda1, vda2, vda3 and 2 more)"],
    }


def test_mount_point_escapes_are_undone(fake: FakeHost) -> None:
    fake.partition(virtio_disk(fake), "vda1", "252:1")
    fake.mountinfo("40 1 252:1 / /srv/my\\040data rw,relatime shared:31 - ext4 /dev/vda1 rw")

    assert reasons(fake) == {"0000:00:03.0": ["carries /srv/my data (vda1)"]}


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
        "0000:3d:00.0": (Reason("0000:3d:00.0", "carries / (nvme0n1p3)", STORAGE),),
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
        "0000:00:17.0": ["carries / (sda1)"],
        "0000:05:00.0": ["carries / (sdb1)"],
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

    assert reasons(fake) == {"0000:00:03.0": ["carries /, /home (vda2)"]}


def test_btrfs_raid1_counts_every_member_device(fake: FakeHost) -> None:
    nvme0n1 = fake.disk("nvme0n1", "259:0", f"{fake.pci('0000:01:00.0')}/nvme/nvme0")
    nvme1n1 = fake.disk("nvme1n1", "259:1", f"{fake.pci('0000:02:00.0')}/nvme/nvme1")
    fsid = "/sys/fs/btrfs/0c3a5d1e-8f4b-4d5c-9b1a-2e7f6a9d0b11"
    fake.link(f"{fsid}/devices/nvme0n1", nvme0n1)
    fake.link(f"{fsid}/devices/nvme1n1", nvme1n1)
    fake.mountinfo("22 1 0:31 / / rw,relatime shared:1 - btrfs /dev/nvme0n1 rw,subvolid=5,subvol=/")

    assert reasons(fake) == {
        "0000:01:00.0": ["carries / (nvme0n1)"],
        "0000:02:00.0": ["carries / (nvme1n1)"],
    }


def test_btrfs_on_luks_found_by_its_dev_mapper_name(fake: FakeHost) -> None:
    nvme0n1 = fake.disk("nvme0n1", "259:0", f"{fake.pci('0000:01:00.0')}/nvme/nvme0")
    p3 = fake.partition(nvme0n1, "nvme0n1p3", "259:3")
    fake.holder("dm-0", "253:0", [p3], dm_name="luks-6a3e")
    fake.mountinfo(
        "22 1 0:31 /root / rw,relatime shared:1 - btrfs /dev/mapper/luks-6a3e rw,subvol=/root"
    )

    assert reasons(fake) == {"0000:01:00.0": ["carries / (nvme0n1p3)"]}


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
        "0000:00:03.0": ["carries /, swap (vda1, vda3)"],
        "0000:00:17.0": ["carries swap (sdb1)"],
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
        "0000:01:00.0": ["carries / (nvme0n1p2)"],
        "0000:02:00.0": ["carries / (nvme0n1p2)"],
    }


def nvme_pair(fake: FakeHost) -> tuple[str, str]:
    """Two NVMe drives, each with a third partition: the usual Proxmox ZFS mirror."""
    parts = []
    for index, bdf in enumerate(("0000:01:00.0", "0000:02:00.0")):
        disk = fake.disk(f"nvme{index}n1", f"259:{index * 4}",
                         f"{fake.pci(bdf, cls=0x010802)}/nvme/nvme{index}")
        parts.append(fake.partition(disk, f"nvme{index}n1p3", f"259:{index * 4 + 3}"))
    return parts[0], parts[1]


ZFS_ROOT = "22 1 0:26 / / rw,relatime shared:1 - zfs rpool/ROOT/pve-1 rw,xattr,noacl"


def test_zfs_root_is_followed_to_the_pools_disks(fake: FakeHost) -> None:
    nvme_pair(fake)
    sata = fake.pci("0000:00:17.0", cls=0x010601)
    sda = fake.disk("sda", "8:0", f"{sata}/ata1/host0/target0:0:0/0:0:0:0")
    fake.partition(sda, "sda1", "8:1")
    fake.disk("sdb", "8:16", f"{sata}/ata2/host1/target1:0:0/1:0:0:0")
    for devno in ("259:3", "259:7"):
        fake.udev(devno, ID_FS_TYPE="zfs_member", ID_FS_LABEL="rpool", ID_FS_UUID="1234")
    fake.udev("8:1", ID_FS_TYPE="zfs_member", ID_FS_LABEL="tank", ID_FS_UUID="5678")
    fake.udev("8:16", ID_FS_TYPE="ext4", ID_FS_LABEL="rpool")  # not a pool member
    fake.write("/proc/spl/kstat/zfs/rpool/state", "ONLINE\n")
    fake.mountinfo(ZFS_ROOT,
                   "60 22 0:27 / /rpool rw,relatime shared:2 - zfs rpool rw,xattr,noacl",
                   "61 22 0:28 / /var/lib/vz rw,relatime shared:3 - zfs tank/vz rw,xattr",
                   *PSEUDO_MOUNTS)

    assert reasons(fake) == {
        "0000:00:17.0": ["carries /var/lib/vz (sda1 of ZFS pool tank)"],
        "0000:01:00.0": ["carries /, /rpool (nvme0n1p3 of ZFS pool rpool)"],
        "0000:02:00.0": ["carries /, /rpool (nvme1n1p3 of ZFS pool rpool)"],
    }


def test_zfs_pool_name_with_a_space_is_read_from_the_encoded_label(fake: FakeHost) -> None:
    nvme_pair(fake)
    fake.udev("259:3", ID_FS_TYPE="zfs_member", ID_FS_LABEL="my_pool",
              ID_FS_LABEL_ENC="my\\x20pool")
    fake.mountinfo("22 1 0:26 / / rw - zfs my\\040pool/ROOT rw")

    assert reasons(fake) == {"0000:01:00.0": ["carries / (nvme0n1p3 of ZFS pool my pool)"]}


def test_zfs_root_whose_disks_cannot_be_found_refuses_every_storage_controller(
    fake: FakeHost,
) -> None:
    nvme_pair(fake)
    fake.pci("0000:00:17.0", cls=0x010601)  # SATA, nothing on it
    fake.pci("0000:05:00.0", cls=0x0C0400)  # a Fibre Channel HBA
    fake.netdev("eno1", fake.pci("0000:00:19.0"))  # a NIC, no address: not critical
    fake.write("/proc/spl/kstat/zfs/rpool/state", "ONLINE\n")
    fake.mountinfo(ZFS_ROOT, *PSEUDO_MOUNTS)  # and no /run/udev/data at all

    why = "is a storage controller, and / is on ZFS pool rpool, whose disks could not be found"
    found = critical_devices(fake.host)
    assert {bdf: describe(r) for bdf, r in found.items()} == {
        "0000:00:17.0": why, "0000:01:00.0": why, "0000:02:00.0": why, "0000:05:00.0": why}
    assert {r.kind for r in found["0000:00:17.0"]} == {STORAGE}


def storage_and_network_controllers(fake: FakeHost) -> None:
    fake.pci("0000:00:17.0", cls=0x010601)  # SATA
    fake.disk("vda", "252:0", f"{fake.pci('0000:00:03.0', cls=0x010000)}/virtio0")
    fake.pci("0000:05:00.0", cls=0x0C0400)  # a Fibre Channel HBA
    fake.netdev("eno1", fake.pci("0000:00:19.0"))  # a NIC, no address: not critical


@pytest.mark.parametrize(("table", "why"), [
    ((), "/ is not in the mount table (/proc/self/mountinfo)"),
    (PSEUDO_MOUNTS, "/ is not in the mount table (/proc/self/mountinfo)"),
    (None, "the mount table (/proc/self/mountinfo) cannot be read"),
])
def test_a_mount_table_without_root_refuses_every_storage_controller(
    fake: FakeHost, table: tuple[str, ...] | None, why: str,
) -> None:
    storage_and_network_controllers(fake)
    if table is None:
        fake.mkdir("/proc/self/mountinfo")  # EISDIR: unreadable
    else:
        fake.mountinfo(*table)  # a namespace that hides / (or an empty table)

    found = critical_devices(fake.host)
    text = f"is a storage controller, and {why}: cannot tell which controller carries /"
    assert {bdf: describe(r) for bdf, r in found.items()} == {
        "0000:00:03.0": text, "0000:00:17.0": text, "0000:05:00.0": text}
    assert {r.kind for reasons in found.values() for r in reasons} == {STORAGE}


def test_a_missing_mount_table_refuses_every_storage_controller(fake: FakeHost) -> None:
    storage_and_network_controllers(fake)  # no /proc/self/mountinfo at all

    assert set(critical_devices(fake.host)) == {"0000:00:03.0", "0000:00:17.0", "0000:05:00.0"}


def test_zfs_on_luks_is_followed_through_device_mapper(fake: FakeHost) -> None:
    p3, _ = nvme_pair(fake)
    fake.holder("dm-0", "253:0", [p3], dm_name="luks-rpool")
    fake.udev("253:0", ID_FS_TYPE="zfs_member", ID_FS_LABEL="rpool")
    fake.mountinfo(ZFS_ROOT)

    assert reasons(fake) == {"0000:01:00.0": ["carries / (nvme0n1p3)"]}


def test_loop_root_whose_image_is_on_itself_fails_closed(fake: FakeHost) -> None:
    fake.pci("0000:00:17.0", cls=0x010601)
    fake.loop("loop0", "7:0", "/root.img")
    fake.mountinfo("22 1 7:0 / / rw,relatime shared:1 - ext4 /dev/loop0 rw")

    assert reasons(fake) == {"0000:00:17.0": [
        "is a storage controller, and / is on /dev/loop0, which rests on itself"]}


def test_root_in_an_image_file_on_a_loop_device(fake: FakeHost) -> None:
    sda = fake.disk("sda", "8:0", f"{fake.pci('0000:00:17.0', cls=0x010601)}/ata1/host0/"
                    "target0:0:0/0:0:0:0")
    fake.partition(sda, "sda2", "8:2")
    fake.loop("loop0", "7:0", "/host/linux/root.img")
    fake.loop("loop1", "7:1", "/var/lib/snapd/snaps/core22_1380.snap")
    fake.mountinfo(
        "22 1 7:0 / / rw,relatime shared:1 - ext4 /dev/loop0 rw",
        "23 22 8:2 / /host rw,relatime shared:2 - fuseblk /dev/sda2 rw,user_id=0,group_id=0",
        "24 22 7:1 / /snap/core22/1380 ro,nodev,relatime shared:3 - squashfs /dev/loop1 ro",
        *PSEUDO_MOUNTS,
    )

    assert reasons(fake) == {"0000:00:17.0": ["carries /, /host (sda2)"]}


def test_live_system_overlay_root_over_a_squashfs_on_a_usb_stick(fake: FakeHost) -> None:
    xhci = fake.pci("0000:00:14.0", cls=0x0C0330)
    sdb = fake.disk("sdb", "8:16", f"{xhci}/usb2/2-1/2-1:1.0/host3/target3:0:0/3:0:0:0")
    fake.partition(sdb, "sdb1", "8:17")
    fake.loop("loop0", "7:0", "/run/live/medium/live/filesystem.squashfs")
    fake.mountinfo(
        "22 1 0:30 / / rw,noatime shared:1 - overlay overlay rw,lowerdir=/run/live/rootfs/"
        "filesystem.squashfs/,upperdir=/run/live/overlay/rw,workdir=/run/live/overlay/work",
        "27 1 0:24 / /run rw,nosuid,nodev,noexec,relatime shared:5 - tmpfs tmpfs rw,mode=755",
        "40 27 8:17 / /run/live/medium ro,noatime shared:20 - iso9660 /dev/sdb1 ro",
        "41 27 7:0 / /run/live/rootfs/filesystem.squashfs ro,noatime shared:21 - squashfs "
        "/dev/loop0 ro",
        "42 27 0:32 / /run/live/overlay rw,noatime shared:22 - tmpfs tmpfs rw,mode=755",
    )

    assert reasons(fake) == {"0000:00:14.0": ["carries /, /run/live/medium (sdb1)"]}


def test_bcachefs_over_two_disks_counts_both(fake: FakeHost) -> None:
    nvme0n1 = fake.disk("nvme0n1", "259:0", f"{fake.pci('0000:01:00.0')}/nvme/nvme0")
    nvme1n1 = fake.disk("nvme1n1", "259:1", f"{fake.pci('0000:02:00.0')}/nvme/nvme1")
    fake.link("/sys/fs/bcachefs/3c2f/dev-0/block", nvme0n1)
    fake.link("/sys/fs/bcachefs/3c2f/dev-1/block", nvme1n1)
    fake.mountinfo("22 1 259:0 / / rw,relatime shared:1 - bcachefs /dev/nvme0n1:/dev/nvme1n1 rw")

    assert reasons(fake) == {
        "0000:01:00.0": ["carries / (nvme0n1)"],
        "0000:02:00.0": ["carries / (nvme1n1)"],
    }
    fake.host.path("/sys/fs/bcachefs").rename(fake.host.path("/sys/fs/gone"))
    assert sorted(reasons(fake)) == ["0000:01:00.0", "0000:02:00.0"], "from the source alone"


def test_root_on_a_disk_with_no_pci_controller_fails_closed(fake: FakeHost) -> None:
    xvda = fake.disk("xvda", "202:0", "/sys/devices/vbd-51712")  # Xen: no PCI device
    fake.partition(xvda, "xvda1", "202:1")
    fake.pci("0000:00:01.1", cls=0x010180)  # the emulated IDE controller
    fake.netdev("eth0", fake.pci("0000:00:03.0"))
    fake.mountinfo("22 1 202:1 / / rw,relatime shared:1 - ext4 /dev/xvda1 rw")

    assert reasons(fake) == {"0000:00:01.1": [
        "is a storage controller, and / is on xvda1, whose controller could not be found"]}


def test_root_on_zram_or_tmpfs_needs_no_device(fake: FakeHost) -> None:
    fake.pci("0000:00:17.0", cls=0x010601)
    fake.disk("zram0", "251:0", "/sys/devices/virtual")
    fake.mountinfo("22 1 251:0 / / rw - ext4 /dev/zram0 rw")
    assert critical_devices(fake.host) == {}
    fake.mountinfo("22 1 0:2 / / rw - rootfs rootfs rw")
    assert critical_devices(fake.host) == {}


# Routes of a host reaching its storage network 192.168.7.0/24 on eno2, the rest via eno1.
STORAGE_NET_V4 = "{}\t0007A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0"


def two_nics(fake: FakeHost) -> None:
    fake.netdev("eno1", fake.pci("0000:00:19.0"))
    fake.netdev("eno2", fake.pci("0000:00:1f.6"))
    fake.routes(DEFAULT_V4.format("eno1"), CONNECTED_V4.format("eno1"),
                STORAGE_NET_V4.format("eno2"))


def test_nfs_root_protects_the_nic_routing_to_the_server(fake: FakeHost) -> None:
    two_nics(fake)
    fake.mountinfo("22 1 0:23 / / rw,relatime shared:1 - nfs4 filer:/srv/root rw,vers=4.2,"
                   "rsize=1048576,proto=tcp,clientaddr=192.168.7.5,sec=sys,addr=192.168.7.10")

    found = critical_devices(fake.host)
    assert {bdf: [(r.kind, r.text) for r in rs] for bdf, rs in found.items()} == {
        "0000:00:19.0": [(NETWORK, "carries the default route via eno1")],
        "0000:00:1f.6": [(STORAGE, "carries / (NFS filer:/srv/root) via eno2"),
                         (NETWORK, "has eno2 up with an address")],
    }


def test_iscsi_root_protects_the_nic_routing_to_the_target(fake: FakeHost) -> None:
    two_nics(fake)
    session = "/sys/devices/platform/host4/session1"
    sdb = fake.disk("sdb", "8:16", f"{session}/target4:0:0/4:0:0:0")
    fake.partition(sdb, "sdb1", "8:17")
    connection = fake.mkdir(f"{session}/connection1:0/iscsi_connection/connection1:0")
    fake.write(f"{connection}/persistent_address", "192.168.7.10\n")
    fake.link("/sys/class/iscsi_connection/connection1:0", connection)
    fake.mountinfo("22 1 8:17 / / rw,relatime shared:1 - ext4 /dev/sdb1 rw")

    assert reasons(fake)["0000:00:1f.6"][0] == "carries / (iSCSI disk sdb1) via eno2"


def test_nvme_over_tcp_root_protects_the_nic_routing_to_the_target(fake: FakeHost) -> None:
    two_nics(fake)
    controller = fake.mkdir("/sys/devices/virtual/nvme-fabrics/ctl/nvme0")
    fake.write(f"{controller}/transport", "tcp\n")
    fake.write(f"{controller}/address", "traddr=192.168.7.20,trsvcid=4420,src_addr=192.168.7.5\n")
    fake.partition(fake.disk("nvme0n1", "259:0", controller), "nvme0n1p2", "259:2")
    fake.mountinfo("22 1 259:2 / / rw,relatime shared:1 - xfs /dev/nvme0n1p2 rw")

    assert reasons(fake)["0000:00:1f.6"][0] == "carries / (NVMe-oF disk nvme0n1p2) via eno2"


def test_root_over_the_network_with_no_address_protects_every_routed_nic(fake: FakeHost) -> None:
    two_nics(fake)
    fake.disk("nbd0", "43:0", "/sys/devices/virtual")
    fake.mountinfo("22 1 43:0 / / rw,relatime shared:1 - ext4 /dev/nbd0 rw")

    why = ("may carry / (network block device nbd0, whose server address could not be found) "
           "via {}")
    assert {bdf: texts[0] for bdf, texts in reasons(fake).items()} == {
        "0000:00:19.0": why.format("eno1"), "0000:00:1f.6": why.format("eno2")}


def test_network_root_with_no_route_to_a_pci_nic_refuses_every_network_controller(
    fake: FakeHost,
) -> None:
    fake.pci("0000:00:19.0")
    fake.pci("0000:00:17.0", cls=0x010601)
    fake.netdev("wg0", None)  # a tunnel: no PCI device under it
    fake.routes(DEFAULT_V4.format("wg0"))
    fake.mountinfo("22 1 0:23 / / rw - nfs [fd00::10]:/srv/root rw,vers=3,proto=tcp6")

    assert reasons(fake) == {"0000:00:19.0": [
        "is a network controller, and / is on NFS [fd00::10]:/srv/root, whose route to "
        "fd00::10 could not be found"]}


def test_ipv6_route_to_the_server_takes_the_longest_prefix(fake: FakeHost) -> None:
    fake.netdev("eno1", fake.pci("0000:00:19.0"))
    fake.netdev("eno2", fake.pci("0000:00:1f.6"))
    fake.routes()
    fake.ipv6_routes(
        "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
        "fe800000000000000000000000000001 00000400 00000001 00000000 00450003     eno1",
        "fd000000000000000000000000000000 40 00000000000000000000000000000000 00 "
        "00000000000000000000000000000000 00000100 00000001 00000000 00000001     eno2",
    )
    fake.mountinfo("22 1 0:23 / / rw - nfs4 [fd00::10]:/ rw,addr=fd00::10")

    assert reasons(fake)["0000:00:1f.6"] == ["carries / (NFS [fd00::10]:/) via eno2"]


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
    gpu = fake.pci("0000:00:01.0", "0000:01:00.0", cls=0x030000)
    fake.framebuffer("fb0", gpu)
    fake.framebuffer("fb1", fake.mkdir("/sys/devices/platform/simple-framebuffer.0"))
    fake.fbcon(bound)


def test_framebuffer_console(fake: FakeHost) -> None:
    framebuffer_console(fake, bound=True)

    assert reasons(fake) == {"0000:01:00.0": ["drives the framebuffer console (fb0)"]}


IGPU = "0000:00:02.0"
DGPU = "0000:03:00.0"


def two_gpus(fake: FakeHost, cmdline: str = "BOOT_IMAGE=/vmlinuz root=/dev/nvme0n1p2 ro") -> None:
    """The iGPU registered fb0 (consoles on it), the discrete GPU's DRM driver fb1."""
    fake.framebuffer("fb0", fake.pci(IGPU, cls=0x030000))
    fake.framebuffer("fb1", fake.pci("0000:00:01.0", DGPU, cls=0x030000))
    fake.fbcon(bound=True)
    fake.cmdline(cmdline)


def test_a_secondary_gpu_whose_framebuffer_carries_no_console_is_not_critical(
    fake: FakeHost,
) -> None:
    two_gpus(fake)

    assert reasons(fake) == {IGPU: ["drives the framebuffer console (fb0)"]}


@pytest.mark.parametrize(("option", "critical"), [
    ("fbcon=map:1", [DGPU]),
    ("fbcon=font:VGA8x16,map:01", [IGPU, DGPU]),
    ("fbcon=map:0 fbcon=map:11", [DGPU]),  # the last one wins
    ("fbcon=map:", [IGPU]),  # an empty map changes nothing
])
def test_fbcon_map_on_the_command_line_moves_the_consoles(
    fake: FakeHost, option: str, critical: list[str]
) -> None:
    two_gpus(fake, f"BOOT_IMAGE=/vmlinuz ro quiet {option}")

    assert sorted(reasons(fake)) == critical


def test_the_kernels_own_con2fb_map_wins_over_the_command_line(fake: FakeHost) -> None:
    two_gpus(fake, "ro fbcon=map:0")
    answers = {console: 1 for console in range(1, 64)}
    answers[7] = 0xFFFFFFFF  # an unmapped console: the kernel's -1

    found = critical_devices(fake.host, con2fb=lambda host: answers)

    assert {bdf: describe(r) for bdf, r in found.items()} == {
        DGPU: "drives the framebuffer console (fb1)"}
    assert [r.kind for r in found[DGPU]] == [CONSOLE]


def test_without_the_live_kernel_the_con2fb_map_is_not_asked_for(fake: FakeHost) -> None:
    two_gpus(fake)
    fake.mkdir("/dev")
    fake.write("/dev/fb1", "")  # a file standing for the device: must not be ioctl'd

    assert read_con2fbmap(fake.host) is None
    assert reasons(fake) == {IGPU: ["drives the framebuffer console (fb0)"]}


def test_framebuffer_without_fbcon_bound_is_not_critical(fake: FakeHost) -> None:
    framebuffer_console(fake, bound=False)

    assert critical_devices(fake.host) == {}


def test_on_the_live_host_the_kernel_is_asked_for_the_con2fb_map(
    fake: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    two_gpus(fake)  # the command line says nothing: the boot map would be fb0
    fake.write("/dev/fb0", "")  # stands for the device node; the ioctl below is faked
    asked: list[int] = []

    def ioctl(fd: int, request: int, arg: bytes) -> bytes:
        assert request == 0x460F  # FBIOGET_CON2FBMAP
        console, _ = struct.unpack("=II", arg)
        asked.append(console)
        return struct.pack("=II", console, 1 if console <= 6 else 0xFFFFFFFF)

    monkeypatch.setattr(Host, "is_live", property(lambda self: True))
    monkeypatch.setattr(fcntl, "ioctl", ioctl)

    assert reasons(fake) == {DGPU: ["drives the framebuffer console (fb1)"]}
    assert asked == list(range(1, 64))


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
        "carries / (vda1); carries the default route via eth0; is the boot VGA device"
    )


def test_describe() -> None:
    assert describe(()) == ""
    assert (
        describe(
            (
                Reason("0000:00:03.0", "carries / (vda1)", STORAGE),
                Reason("0000:00:03.0", "carries the default route via eth0", NETWORK),
            )
        )
        == "carries / (vda1); carries the default route via eth0"
    )


def test_what_is_skipped_is_logged_at_debug_level(fake: FakeHost) -> None:
    fake.netdev("tun0", None)  # no device, no lower interface: a tunnel
    fake.routes(DEFAULT_V4.format("tun0"))
    journal = FakeJournal()
    logsetup.setup(debug=True, send=journal.send)

    assert critical_devices(fake.host) == {}

    messages = [e["MESSAGE"] for e in journal.entries]
    assert any("/proc/self/mountinfo does not exist" in m for m in messages), messages
    assert any("interface tun0 rests on no PCI device" in m for m in messages), messages
    assert {e["PRIORITY"] for e in journal.entries} == {"7"}  # debug


def test_the_schema_lets_force_name_exactly_the_kinds_of_reasons() -> None:
    schema = json.loads(schema_text())
    branches = schema["$defs"]["device"]["properties"]["force"]["anyOf"]
    assert [b["items"]["enum"] for b in branches if b.get("type") == "array"] == [list(KINDS)]


def test_a_snapshot_reads_each_link_once_and_only_for_its_pass(tmp_path: Path) -> None:
    """The guard's judgment resolves its /sys paths inside a Snapshot: a link is read once for
    the whole pass, and the next pass sees the tree as it is then (an interface renamed, a
    device moved)."""
    from pcipassd.hostfiles import Snapshot, resolve  # noqa: PLC0415

    host = Host(tmp_path)
    (tmp_path / "sys/devices/pci0000:00/0000:00:03.0").mkdir(parents=True)
    (tmp_path / "sys/devices/pci0000:00/0000:00:04.0").mkdir(parents=True)
    (tmp_path / "sys/class/net").mkdir(parents=True)
    link = tmp_path / "sys/class/net/eth0"
    link.symlink_to("../../devices/pci0000:00/0000:00:03.0")
    with Snapshot():
        assert str(resolve(host, "/sys/class/net/eth0")) == "/sys/devices/pci0000:00/0000:00:03.0"
        link.unlink()
        link.symlink_to("../../devices/pci0000:00/0000:00:04.0")
        assert str(resolve(host, "/sys/class/net/eth0")) == \
            "/sys/devices/pci0000:00/0000:00:03.0", "read once in the pass"
    assert str(resolve(host, "/sys/class/net/eth0")) == "/sys/devices/pci0000:00/0000:00:04.0"
    with Snapshot():
        assert str(resolve(host, "/sys/class/net/eth0")) == \
            "/sys/devices/pci0000:00/0000:00:04.0", "a new pass reads it again"


def test_the_running_system_is_read_at_its_own_paths() -> None:
    """With root / the kernel follows the links: the same text, listings and answers as the
    resolver gives under a root (read-only, and nothing under /sys)."""
    from pcipassd.hostfiles import exists, names, read  # noqa: PLC0415

    host = Host(Path("/"))
    assert read(host, "/proc/self/root/proc/version") == Path("/proc/version").read_text()
    assert exists(host, "/proc/self/exe")
    assert not exists(host, "/proc/self/no-such-file")
    assert names(host, "/proc/self/fd")
    assert read(host, "/proc/no-such-file", optional=True) is None
