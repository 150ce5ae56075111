"""Never brick the host: IOMMU-group policy and the host-critical guard, end to end through the
CLI on the simulated kernel, with the host's mounts and routes faked under the same root."""

from __future__ import annotations

import os

import pytest
from hosttree import FakeHost
from machine import Machine
from simkernel import BOOT_VGA, DISK, NIC_A, NIC_B, PCIE_BRIDGE, SimKernel

# A pcie-pci-bridge with two e1000 behind it: QEMU puts all three in one IOMMU group.
PCI_BRIDGE = "0000:00:05.0"
E1000_X = "0000:05:01.0"
E1000_Y = "0000:05:02.0"
GPU = "0000:41:00.0"
GPU_AUDIO = "0000:41:00.1"


@pytest.fixture(autouse=True)
def bridged_pair_and_gpu(sim_host: SimKernel) -> None:
    """Every test here adds to the typical machine a pcie-pci-bridge with two e1000 behind it
    (IOMMU group 8) and a GPU with its HDMI audio function (group 9)."""
    sim = sim_host
    sim.add_device(PCI_BRIDGE, 0x1B36, 0x000E, cls=0x060400, driver=None, iommu_group=8)
    sim.add_device(E1000_X, 0x8086, 0x100E, parent=PCI_BRIDGE, iommu_group=8)
    sim.add_device(E1000_Y, 0x8086, 0x100E, parent=PCI_BRIDGE, iommu_group=8)
    sim.add_driver("snd_hda_intel", [(0x10DE, 0x10F0)])
    sim.add_device(GPU, 0x10DE, 0x1E84, cls=0x030000, iommu_group=9)
    sim.add_device(GPU_AUDIO, 0x10DE, 0x10F0, cls=0x040300, iommu_group=9)


def rel(sim: SimKernel, bdf: str) -> str:
    """The device's sysfs directory as the host names it."""
    return "/" + os.path.relpath(sim.device_dir(bdf), sim.root)


def root_on_disk(m: Machine) -> None:
    fake = FakeHost(m.root)
    disk = fake.disk("vda", "254:0", f"{rel(m.sim, DISK)}/virtio2")
    fake.partition(disk, "vda1", "254:1")
    fake.mountinfo("22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw")


def config(m: Machine, body: str) -> None:
    m.config("version: 1\ndevices:\n" + body)


# --- IOMMU groups ---------------------------------------------------------------------------

def test_isolated_refuses_a_device_whose_group_holds_another_bound_endpoint(m: Machine) -> None:
    config(m, f'  - address: "{E1000_X}"\n')
    r = m.run("apply")
    assert r.rc == 1
    assert (f"/etc/pcipass.yaml:3:5: devices[0]: IOMMU group 8 of {E1000_X} also contains "
            f"{E1000_Y} [8086:100e] on e1000") in r.err
    assert "set `group: bind` to bind them with it" in r.err
    assert (m.driver(E1000_X), m.driver(E1000_Y)) == ("e1000", "e1000")
    assert not m.sim.writes


def test_isolated_accepts_the_whole_group_selected(m: Machine) -> None:
    config(m, f'  - address: "{E1000_X}"\n  - address: "{E1000_Y}"\n')
    r = m.run("apply")
    assert r.rc == 0, r.err
    assert (m.driver(E1000_X), m.driver(E1000_Y)) == ("pci-stub", "pci-stub")
    assert m.driver(PCI_BRIDGE) is None, "the bridge in the group is never bound"


def test_isolated_accepts_group_mates_that_are_unbound_or_on_a_stub(m: Machine) -> None:
    m.sim.write(m.root / "sys/bus/pci/drivers/e1000/unbind", E1000_Y)
    config(m, f'  - address: "{E1000_X}"\n')
    assert m.run("apply").rc == 0
    assert m.driver(E1000_X) == "pci-stub"


def test_group_bind_binds_the_other_endpoints_and_restores_them(m: Machine) -> None:
    config(m, f'  - address: "{E1000_X}"\n    group: bind\n    driver: vfio-pci\n')
    r = m.run("plan")
    assert r.rc == 0
    rows = {line.split()[0]: line.split() for line in r.out.splitlines()[1:3]}
    assert rows[E1000_Y][5] == "bind"
    assert f"in IOMMU group 8 with {E1000_X}" in r.out
    members = r.out.split("IOMMU groups:\n")[1].splitlines()
    assert [line.split()[:4] for line in members] == [
        ["8:", PCI_BRIDGE, "[1b36:000e]", "(bridge)"],
        [E1000_X, "[8086:100e]", "e1000", "Vendor"],
        [E1000_Y, "[8086:100e]", "e1000", "Vendor"]]
    r = m.run("apply")
    assert r.rc == 0, r.err
    assert (m.driver(E1000_X), m.driver(E1000_Y)) == ("vfio-pci", "vfio-pci")
    assert m.driver(PCI_BRIDGE) is None
    assert "2 bound" in r.err
    r = m.run("apply")
    assert "0 bound, 2 unchanged, 0 restored, 0 failed" in r.err, "a re-apply keeps the group"
    assert m.run("restore").rc == 0
    assert (m.driver(E1000_X), m.driver(E1000_Y)) == ("e1000", "e1000")


def test_group_ignore_binds_only_the_selection_with_a_warning(m: Machine) -> None:
    m.config(f'version: 1\ngroup: ignore\ndevices:\n  - address: "{E1000_X}"\n')
    r = m.run("apply")
    assert r.rc == 0, r.err
    assert (m.driver(E1000_X), m.driver(E1000_Y)) == ("pci-stub", "e1000")
    assert (f"warning: {E1000_X}: IOMMU group 8 is not viable for VFIO: it also contains {E1000_Y} "
            "[8086:100e] on e1000") in r.err, "apply says it too, not only plan"
    r = m.run("plan")
    assert (f"IOMMU group 8 is not viable for VFIO: it also contains {E1000_Y} [8086:100e] "
            "on e1000") in r.out


def test_multifunction_card_by_slot_takes_every_function(m: Machine) -> None:
    config(m, '  - address: "0000:41:00.*"\n    driver: vfio-pci\n')
    assert m.run("apply").rc == 0
    assert (m.driver(GPU), m.driver(GPU_AUDIO)) == ("vfio-pci", "vfio-pci")


def test_one_function_of_a_multifunction_card_is_refused_when_isolated(m: Machine) -> None:
    config(m, f'  - address: "{GPU}"\n')
    r = m.run("apply")
    assert r.rc == 1
    assert f"IOMMU group 9 of {GPU} also contains {GPU_AUDIO} [10de:10f0] on snd_hda_intel" in r.err
    assert m.driver(GPU_AUDIO) == "snd_hda_intel"


def test_bridges_are_never_bound(m: Machine) -> None:
    config(m, f'  - address: "{PCIE_BRIDGE}"\n    force: true\n')
    r = m.run("apply")
    assert r.rc == 1
    assert f"{PCIE_BRIDGE} [1b36:000c] is a PCI bridge; bridges are never bound" in r.err
    assert m.driver(PCIE_BRIDGE) == "pcieport"


# --- host-critical devices ------------------------------------------------------------------

def test_root_disk_controller_is_refused_and_the_rest_applies(m: Machine) -> None:
    root_on_disk(m)
    config(m, f'  - address: "{DISK}"\n  - address: "{NIC_A}"\n')
    r = m.run("apply")
    assert r.rc == 3, "partly applied: the unit stays active, so stop gives the rest back"
    assert (f"/etc/pcipass.yaml:3:5: devices[0]: refusing {DISK}: {DISK} carries / (vda1) "
            "(hint: unbinding it could cut the host off; add `force: [storage]` to the entry to "
            "bind it anyway)") in r.err
    assert m.driver(DISK) == "virtio-pci"
    assert m.driver(NIC_A) == "pci-stub"


def test_force_binds_a_critical_device(m: Machine) -> None:
    root_on_disk(m)
    config(m, f'  - address: "{DISK}"\n    force: true\n')
    assert m.run("apply").rc == 0
    assert m.driver(DISK) == "pci-stub"


def test_root_on_lvm_on_dm_crypt_is_followed_to_the_controller(m: Machine) -> None:
    fake = FakeHost(m.root)
    disk = fake.disk("vda", "254:0", f"{rel(m.sim, DISK)}/virtio2")
    part = fake.partition(disk, "vda2", "254:2")
    crypt = fake.holder("dm-0", "253:0", [part], dm_name="cryptroot")
    fake.holder("dm-1", "253:1", [crypt], dm_name="vg0-root")
    fake.mountinfo("22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/mapper/vg0-root rw")
    config(m, '  - id: "1af4:1001"\n')
    r = m.run("apply")
    assert r.rc == 1
    assert f"refusing {DISK}: {DISK} carries / (vda2)" in r.err
    assert m.driver(DISK) == "virtio-pci"


def test_default_route_through_a_bond_refuses_the_whole_id_entry(m: Machine) -> None:
    fake = FakeHost(m.root)
    fake.netdev("eno1", rel(m.sim, NIC_A))
    fake.netdev("eno2", rel(m.sim, NIC_B), flags="0x1002")
    fake.bond("bond0", ["eno1"])
    fake.routes("bond0\t00000000\t0102A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0",
                "bond0\t0002A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0")
    config(m, '  - id: "8086:10d3"\n')
    r = m.run("apply")
    assert r.rc == 1
    assert f"refusing {NIC_A}: {NIC_A} carries the default route via bond0 on eno1" in r.err
    assert (m.driver(NIC_A), m.driver(NIC_B)) == ("e1000e", "e1000e"), "refused: binds nothing"


def test_device_sharing_a_group_with_a_critical_one_is_refused(m: Machine) -> None:
    fake = FakeHost(m.root)
    fake.netdev("enp5s1", rel(m.sim, E1000_Y))
    fake.routes("enp5s1\t00000000\t0102A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0")
    m.config(f'version: 1\ngroup: ignore\ndevices:\n  - address: "{E1000_X}"\n')
    r = m.run("apply")
    assert r.rc == 1
    assert (f"refusing {E1000_X}: {E1000_Y} carries the default route via enp5s1, and shares "
            f"IOMMU group 8 with {E1000_X}") in r.err
    assert m.driver(E1000_X) == "e1000"


def test_boot_vga_is_refused(m: Machine) -> None:
    config(m, f'  - address: "{BOOT_VGA}"\n')
    r = m.run("apply")
    assert r.rc == 1
    assert f"refusing {BOOT_VGA}: {BOOT_VGA} is the boot VGA device" in r.err


def test_a_refused_entry_names_all_of_its_problems(m: Machine) -> None:
    root_on_disk(m)
    config(m, f'  - address: "{NIC_A[:-1]}*"\n    expect: "8086:100e"\n    count: 2\n'
              f'  - address: "{DISK}"\n    group: ignore\n')
    r = m.run("plan")
    assert r.rc == 1
    assert f"{NIC_A} [8086:10d3] is not the expected 8086:100e" in r.out
    assert f"count: 2, but 1 present: {NIC_A} [8086:10d3]" in r.out
    assert f"refusing {DISK}: {DISK} carries / (vda1)" in r.out


# --- roots the guard follows, or fails closed for --------------------------------------------

ZFS_ROOT = "22 1 0:26 / / rw,relatime shared:1 - zfs rpool/ROOT/pve-1 rw,xattr,noacl"


def zfs_root(m: Machine, *, udev: bool) -> None:
    fake = FakeHost(m.root)
    disk = fake.disk("vda", "254:0", f"{rel(m.sim, DISK)}/virtio2")
    fake.partition(disk, "vda3", "254:3")
    if udev:
        fake.udev("254:3", ID_FS_TYPE="zfs_member", ID_FS_LABEL="rpool", ID_FS_UUID="1234")
    fake.write("/proc/spl/kstat/zfs/rpool/state", "ONLINE\n")
    fake.mountinfo(ZFS_ROOT)


def test_zfs_root_refuses_the_controller_of_the_pools_disk(m: Machine) -> None:
    zfs_root(m, udev=True)
    config(m, f'  - address: "{DISK}"\n  - address: "{NIC_A}"\n')
    r = m.run("apply")
    assert r.rc == 3
    assert (f"/etc/pcipass.yaml:3:5: devices[0]: refusing {DISK}: {DISK} carries / (vda3 of ZFS "
            "pool rpool) (hint: unbinding it could cut the host off; add `force: [storage]` to "
            "the entry to bind it anyway)") in r.err
    assert (m.driver(DISK), m.driver(NIC_A)) == ("virtio-pci", "pci-stub")


def test_zfs_root_whose_disks_are_unknown_refuses_storage_controllers_only(m: Machine) -> None:
    zfs_root(m, udev=False)
    config(m, f'  - address: "{DISK}"\n  - address: "{NIC_A}"\n  - address: "{E1000_X}"\n'
              f'  - address: "{E1000_Y}"\n')
    r = m.run("apply")
    assert r.rc == 3
    assert (f"/etc/pcipass.yaml:3:5: devices[0]: refusing {DISK}: {DISK} is a storage controller, "
            "and / is on ZFS pool rpool, whose disks could not be found (hint: unbinding it "
            "could cut the host off; add `force: [storage]` to the entry to bind it anyway)"
            ) in r.err
    assert m.driver(DISK) == "virtio-pci"
    assert (m.driver(NIC_A), m.driver(E1000_X), m.driver(E1000_Y)) == ("pci-stub",) * 3
    config(m, f'  - address: "{DISK}"\n    force: [storage]\n')
    assert m.run("apply").rc == 0
    assert m.driver(DISK) == "pci-stub"


def test_a_mount_table_without_root_refuses_the_disk_controller_with_the_reason(
        m: Machine) -> None:
    FakeHost(m.root).mountinfo(  # a mount namespace that hides /
        "23 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw")
    config(m, f'  - address: "{DISK}"\n  - address: "{NIC_A}"\n')
    r = m.run("apply")
    assert r.rc == 3
    assert (f"refusing {DISK}: {DISK} is a storage controller, and / is not in the mount table "
            "(/proc/self/mountinfo): cannot tell which controller carries / (hint: unbinding it "
            "could cut the host off; add `force: [storage]` to the entry to bind it anyway)"
            ) in r.err
    assert (m.driver(DISK), m.driver(NIC_A)) == ("virtio-pci", "pci-stub")


def test_loop_mounted_root_refuses_the_controller_of_the_image_file(m: Machine) -> None:
    fake = FakeHost(m.root)
    fake.partition(fake.disk("vda", "254:0", f"{rel(m.sim, DISK)}/virtio2"), "vda1", "254:1")
    fake.loop("loop0", "7:0", "/host/root.img")
    fake.mountinfo("22 1 7:0 / / rw,relatime shared:1 - ext4 /dev/loop0 rw",
                   "23 22 254:1 / /host rw,relatime shared:2 - ext4 /dev/vda1 rw")
    config(m, f'  - address: "{DISK}"\n')
    r = m.run("apply")
    assert r.rc == 1
    assert f"refusing {DISK}: {DISK} carries /, /host (vda1)" in r.err
    assert m.driver(DISK) == "virtio-pci"


def nfs_root_via_nic_a(m: Machine) -> None:
    fake = FakeHost(m.root)
    fake.netdev("enp0s2", rel(m.sim, NIC_A))
    fake.netdev("enp0s3", rel(m.sim, NIC_B), flags="0x1002")
    fake.routes("enp0s2\t00000000\t0102A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0",
                "enp0s2\t0002A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0")
    fake.mountinfo("22 1 0:23 / / rw,relatime shared:1 - nfs4 192.168.2.10:/srv/root "
                   "rw,vers=4.2,proto=tcp,clientaddr=192.168.2.5,addr=192.168.2.10")


def test_network_root_refuses_its_nic_even_when_network_is_forced(m: Machine) -> None:
    nfs_root_via_nic_a(m)
    config(m, f'  - address: "{NIC_A}"\n    force: [network]\n  - address: "{NIC_B}"\n')
    r = m.run("apply")
    assert r.rc == 3
    assert (f"devices[0]: refusing {NIC_A}: {NIC_A} carries / (NFS 192.168.2.10:/srv/root) via "
            "enp0s2 (hint: unbinding it could cut the host off; add `force: [storage, network]` "
            "to the entry to bind it anyway)") in r.err
    assert (m.driver(NIC_A), m.driver(NIC_B)) == ("e1000e", "pci-stub")


def test_force_true_still_overrides_every_reason(m: Machine) -> None:
    nfs_root_via_nic_a(m)
    config(m, f'  - address: "{NIC_A}"\n    force: true\n')
    assert m.run("apply").rc == 0
    assert m.driver(NIC_A) == "pci-stub"


# --- the framebuffer console -----------------------------------------------------------------

def gpus_with_framebuffers(m: Machine, cmdline: str = "ro quiet") -> None:
    """fb0 on the boot VGA device (the console's), fb1 registered by the discrete GPU's driver."""
    fake = FakeHost(m.root)
    fake.framebuffer("fb0", rel(m.sim, BOOT_VGA))
    fake.framebuffer("fb1", rel(m.sim, GPU))
    fake.fbcon(bound=True)
    fake.cmdline(f"BOOT_IMAGE=/vmlinuz-6.1.0 root=/dev/vda1 {cmdline}")


GPU_ENTRY = '  - address: "0000:41:00.*"\n    driver: vfio-pci\n'


def test_secondary_gpu_whose_framebuffer_has_no_console_is_bound(m: Machine) -> None:
    gpus_with_framebuffers(m)
    config(m, GPU_ENTRY + f'  - address: "{BOOT_VGA}"\n')
    r = m.run("apply")
    assert r.rc == 3
    assert (m.driver(GPU), m.driver(GPU_AUDIO)) == ("vfio-pci", "vfio-pci")
    assert (f"devices[1]: refusing {BOOT_VGA}: {BOOT_VGA} is the boot VGA device; drives the "
            "framebuffer console (fb0) (hint: unbinding it could cut the host off; add "
            "`force: [boot-vga, console]` to the entry to bind it anyway)") in r.err
    assert m.driver(BOOT_VGA) is None, "the boot VGA device stays as it was"


def test_fbcon_map_moving_the_consoles_to_fb1_refuses_that_gpu(m: Machine) -> None:
    gpus_with_framebuffers(m, "fbcon=map:1")
    config(m, GPU_ENTRY)
    r = m.run("apply")
    assert r.rc == 1
    assert (f"refusing {GPU}: {GPU} drives the framebuffer console (fb1) (hint: unbinding it "
            "could cut the host off; add `force: [console]` to the entry to bind it anyway)"
            ) in r.err
    assert m.driver(GPU_AUDIO) == "snd_hda_intel"


def test_force_console_binds_a_console_gpu(m: Machine) -> None:
    gpus_with_framebuffers(m, "fbcon=map:1")
    config(m, GPU_ENTRY + "    force: [console]\n")
    assert m.run("apply").rc == 0
    assert (m.driver(GPU), m.driver(GPU_AUDIO)) == ("vfio-pci", "vfio-pci")


def test_force_console_does_not_override_the_root_disk_in_the_same_group(m: Machine) -> None:
    # A consumer board without ACS: the GPU and the NVMe drive holding / share IOMMU group 9.
    nvme = "0000:41:00.2"
    m.sim.add_driver("nvme", [(0x144D, 0xA808)])
    m.sim.add_device(nvme, 0x144D, 0xA808, cls=0x010802, iommu_group=9)
    fake = FakeHost(m.root)
    fake.partition(fake.disk("nvme0n1", "259:0", f"{rel(m.sim, nvme)}/nvme/nvme0"),
                   "nvme0n1p2", "259:2")
    fake.mountinfo("22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw")
    gpus_with_framebuffers(m, "fbcon=map:1")
    config(m, f'  - address: "{GPU}"\n    group: bind\n    force: [console]\n')
    r = m.run("apply")
    assert r.rc == 1
    assert (f"refusing {GPU}: {nvme} carries / (nvme0n1p2), and shares IOMMU group 9 with {GPU} "
            "(hint: unbinding it could cut the host off; add `force: [storage, console]` to the "
            "entry to bind it anyway)") in r.err
    assert (m.driver(GPU_AUDIO), m.driver(nvme)) == ("snd_hda_intel", "nvme")


def test_force_list_mistakes_are_one_line_each_with_a_hint(m: Machine) -> None:
    config(m, f'  - address: "{GPU}"\n    force: [consol, storage, storage]\n'
              f'  - address: "{NIC_A}"\n    force: []\n')
    r = m.run("validate")
    assert r.rc == 2
    assert r.out.splitlines() == [
        "/etc/pcipass.yaml:4:13: devices[0].force[0]: 'consol' is not one of storage, network, "
        "boot-vga, console, chipset",
        "    hint: did you mean 'console'?",
        "/etc/pcipass.yaml:4:30: devices[0].force[2]: 'storage' is listed twice",
        "    hint: name it once",
        "/etc/pcipass.yaml:6:12: devices[1].force: an empty list overrides nothing",
        "    hint: name what to override, e.g. force: [console], or remove the key",
        "3 problems found",
    ]
