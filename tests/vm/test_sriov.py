"""SR-IOV on a real kernel: VFs created at boot and held before their driver could probe them.

QEMU's igb (an 82576, QEMU 8.0 and later) behind its own pcie-root-port at 01:00.0, with the
kernel logging every probe attempt (dyndbg on drivers/base/dd.c). The entry asks for four VFs
on vfio-pci; the PF stays on igb.

1. First boot: four VFs (01:10.0, .2, .4, .6) on vfio-pci, igbvf never probed one, each in an
   IOMMU group of its own (the kernel's ACS quirk for the 82576). A QEMU inside the guest takes
   vf0 with the `status --qemu` line; `systemctl stop` while it has it leaves vf0 with the VM
   named, gives the others back and leaves the PF's VF count alone; after the VM exits,
   `pcipassd restore` gives vf0 back and removes the VFs.
2. The next boot creates and holds them again, still without an igbvf probe.
"""

from __future__ import annotations

import pytest

from .conftest import out_root
from .harness import DEFAULT_TOPOLOGY, BootResult, _nic, boot
from .image import REPO_ROOT, BaseImage, build_image, install_from_deb
from .probes import NESTED_QEMU, PROBE_LOG, REPORT_PROBES, probes

pytestmark = pytest.mark.skipif(
    not (REPO_ROOT / "Makefile").is_file(), reason="the project has no Makefile yet"
)

PF = "0000:01:00.0"
VFS = ("0000:01:10.0", "0000:01:10.2", "0000:01:10.4", "0000:01:10.6")
TOPO = DEFAULT_TOPOLOGY.with_devices(
    _nic(name="igb", model="igb", bdf=PF, vendor_device="8086:10c9",
         placement="bus=rp-igb,addr=00.0"),
    infrastructure=("-device", "pcie-root-port,id=rp-igb,bus=pcie.0,addr=0x7,chassis=4,slot=4"),
)

CONFIG = f"""\
version: 1
devices:
  - address: "{PF}"
    name: guest-vfs
    vfs: {{count: 4, driver: vfio-pci}}
"""

SCRIPT = NESTED_QEMU + rf"""
{REPORT_PROBES}
pci_inventory boot
result numvfs.boot "$(cat /sys/bus/pci/devices/{PF}/sriov_numvfs)"
result autoprobe.boot "$(cat /sys/bus/pci/devices/{PF}/sriov_drivers_autoprobe)"
capture status pcipassd status
capture journal.boot journalctl -b -u pcipassd -o cat --no-pager
if [ "$PCIPASS_BOOT" = 1 ]; then
    capture qemuargs pcipassd status --qemu
    qemu_start qemu $(pcipassd status --qemu | grep -x -- '-device vfio-pci,host={VFS[0]}')
    timeout 60 systemctl stop pcipassd; result stop.rc "$?"
    pci_inventory during
    result numvfs.during "$(cat /sys/bus/pci/devices/{PF}/sriov_numvfs)"
    capture journal.stop journalctl -b -u pcipassd -o cat --no-pager
    qemu_end qemu
    capture restore pcipassd restore
    pci_inventory after
    result numvfs.after "$(cat /sys/bus/pci/devices/{PF}/sriov_numvfs)"
    next_action reboot
fi
"""


@pytest.fixture(scope="module")
def sriov(vm_base: BaseImage, tmp_path_factory: pytest.TempPathFactory) -> list[BootResult]:
    image = build_image(CONFIG, SCRIPT, base=vm_base, workdir=tmp_path_factory.mktemp("sriov"),
                        install=install_from_deb)
    logs = out_root() / "sriov"
    try:
        return [boot(image, topology=TOPO, kernel_args=PROBE_LOG, log_dir=logs / f"boot-{n}",
                     timeout=420) for n in (1, 2)]
    finally:
        image.disk.unlink(missing_ok=True)


@pytest.mark.parametrize("n", [0, 1], ids=["first boot", "next boot"])
def test_four_vfs_on_vfio_pci_and_igbvf_never_probed_one(sriov: list[BootResult],
                                                         n: int) -> None:
    res = sriov[n]
    assert res["numvfs.boot"] == "4", res.where()
    for vf in VFS:
        assert res.driver(vf, "boot") == "vfio-pci", res.where()
        # udev loads igbvf for the new VFs; while autoprobe is 0 the kernel turns it away
        # (`igbvf: probe of ... rejects match -19`) before igbvf's probe runs
        assert probes(res, vf, "igbvf") == 0, res["probes"]
    assert res.driver(PF, "boot") == "igb"
    assert res["autoprobe.boot"] == "1"  # restored after the VFs were created
    status = res["status"]
    assert f"  {PF} [8086:10c9] igb: 4 of 7 VFs, created by pcipassd" in status, status
    for i, vf in enumerate(VFS):
        assert f"    vf{i} {vf} vfio-pci" in status, status


def test_each_vf_has_an_iommu_group_of_its_own(sriov: list[BootResult]) -> None:
    res = sriov[0]
    groups = [res.iommu_group(vf, "boot") for vf in VFS]
    assert len(set(groups)) == 4 and res.iommu_group(PF, "boot") not in groups, groups


def test_stop_leaves_the_vf_a_vm_has_and_the_vf_count(sriov: list[BootResult]) -> None:
    res = sriov[0]
    assert res["qemuargs"].splitlines() == [f"-device vfio-pci,host={vf}" for vf in VFS]
    assert res["qemu.vfio"] == "1", res["qemu.out"]
    assert res.driver(VFS[0], "during") == "vfio-pci"
    assert res["numvfs.during"] == "4"
    journal = res["journal.stop"]
    assert f"has {VFS[0]} open: stop the VM first" in journal, journal
    assert "qemu-system-x86 (pid" in journal
    for vf in VFS[1:]:
        assert res.driver(vf, "during") != "vfio-pci", res.where()


def test_restore_after_the_vm_exits_removes_the_vfs(sriov: list[BootResult]) -> None:
    res = sriov[0]
    assert res.rc("restore") == 0, res["restore"]
    assert res["numvfs.after"] == "0"
    assert not any(f"after.{vf}.id" in res.results for vf in VFS), res.where()
    assert res.driver(PF, "after") == "igb"
