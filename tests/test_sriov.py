"""SR-IOV virtual functions (issue 20 §1): an entry's `vfs:` on the simulated kernel, which
knows sriov_numvfs, sriov_totalvfs and sriov_drivers_autoprobe as drivers/pci/iov.c does."""

from __future__ import annotations

import errno
import json

import pytest
from machine import Machine
from simkernel import SimKernel

PF = "0000:05:00.0"  # 8086:10c9 82576 (igb), 7 VFs (8086:10ca, igbvf) at 05:10.0 + 2n
VFS = ["0000:05:10.0", "0000:05:10.2", "0000:05:10.4", "0000:05:10.6"]


def add_igb(sim: SimKernel, *, own_groups: int | None = 20, group: int = 9) -> None:
    sim.add_driver("igb", [(0x8086, 0x10C9)], sriov=True)
    sim.add_driver("igbvf", [(0x8086, 0x10CA)])
    sim.add_device(PF, 0x8086, 0x10C9, iommu_group=group)
    sim.add_sriov(PF, 7, 0x10CA, own_groups=own_groups)


@pytest.fixture
def sr(m: Machine) -> Machine:
    """The typical machine with an 82576 (igb) whose VFs get IOMMU groups of their own."""
    add_igb(m.sim)
    return m


def vfs_config(m: Machine, vfs: str = "{count: 4, driver: vfio-pci}", extra: str = "") -> None:
    m.config(f"""\
        version: 1
        devices:
          - address: "{PF}"
            name: guest-vfs
            vfs: {vfs}
        {extra}""")


# -- the simulated kernel -----------------------------------------------------------------------

def test_sim_numvfs_errors_as_linux(sim: SimKernel) -> None:
    add_igb(sim)
    sim.add_driver("pci-stub")
    numvfs = sim.device_dir(PF) / "sriov_numvfs"

    def err(value: str) -> str:
        with pytest.raises(OSError) as e:
            sim.write(numvfs, value)
        return errno.errorcode[e.value.errno or 0]

    assert err("8") == "ERANGE"
    sim.write(numvfs, "2")
    assert sim.vfs_of(PF) == VFS[:2] and [sim.driver_of(v) for v in VFS[:2]] == ["igbvf"] * 2
    assert err("3") == "EBUSY"
    sim.write(numvfs, "2")  # the same value: nothing
    sim.write(numvfs, "0")
    assert sim.vfs_of(PF) == [] and not (sim.pci / "devices" / VFS[0]).exists()
    with pytest.raises(OSError):
        sim.write(sim.device_dir(PF) / "sriov_totalvfs", "3")
    sim.write(sim.driver_dir("igb") / "unbind", PF)
    assert err("1") == "ENOENT"  # no driver
    sim.write(sim.device_dir(PF) / "driver_override", "pci-stub")
    sim.write(sim.pci / "drivers_probe", PF)
    assert sim.driver_of(PF) == "pci-stub" and err("1") == "ENOENT"  # no sriov_configure


def test_sim_autoprobe_0_keeps_vfs_unbound_until_override(sim: SimKernel) -> None:
    add_igb(sim, own_groups=None)
    sim.add_driver("vfio-pci", needs_iommu=True)
    pf = sim.device_dir(PF)
    sim.write(pf / "sriov_drivers_autoprobe", "0")
    sim.write(pf / "sriov_numvfs", "2")
    assert [sim.driver_of(v) for v in VFS[:2]] == [None, None]
    assert (sim.device_dir(VFS[0]) / "physfn").resolve() == pf.resolve()
    assert (pf / "virtfn1").resolve() == sim.device_dir(VFS[1]).resolve()
    assert (sim.device_dir(VFS[1]) / "iommu_group").resolve().name == "9"  # no ACS: the PF's
    sim.write(sim.pci / "drivers_probe", VFS[1])
    assert sim.driver_of(VFS[1]) is None  # autoprobe 0 and no override
    sim.write(sim.device_dir(VFS[0]) / "driver_override", "vfio-pci")
    sim.write(sim.pci / "drivers_probe", VFS[0])
    assert sim.driver_of(VFS[0]) == "vfio-pci"
    sim.write(pf / "sriov_drivers_autoprobe", "1")
    sim.write(sim.pci / "drivers_probe", VFS[1])
    assert sim.driver_of(VFS[1]) == "igbvf"
    sim.write(sim.driver_dir("igb") / "unbind", PF)  # igb's remove disables SR-IOV
    assert sim.numvfs(PF) == 0 and not (sim.pci / "devices" / VFS[0]).exists()


# -- apply ---------------------------------------------------------------------------------------

def test_apply_creates_and_holds_vfs_no_host_vf_driver_probes(sr: Machine) -> None:
    vfs_config(sr)
    r = sr.run("apply")
    assert r.rc == 0, r.err
    assert [sr.driver(v) for v in VFS] == ["vfio-pci"] * 4
    assert sr.driver(PF) == "igb"  # the PF stays on its own driver
    assert sr.sim.autoprobe(PF) == "1"  # back to what it was
    writes = [(w[0].rsplit("/", 1)[1], w[1].strip()) for w in sr.sim.writes]
    first_vf = writes.index(("driver_override", "vfio-pci"))
    assert writes[:first_vf] == [("sriov_drivers_autoprobe", "0"), ("sriov_numvfs", "4")]
    assert writes.index(("sriov_drivers_autoprobe", "1")) > writes.index(
        ("drivers_probe", VFS[3]))
    assert "created 4 VFs" in r.err and f"{VFS[0]} [8086:10ca] (none) -> vfio-pci" in r.err
    assert "4 bound, 0 unchanged" in r.err
    made = json.loads((sr.root / "run/pcipass/sriov.json").read_text())["pfs"]
    assert made == [{"pf": PF, "id": "8086:10c9", "entry": "/etc/pcipass.yaml:3",
                     "original_numvfs": 0, "original_autoprobe": "1", "vfs": VFS}]
    assert set(sr.state) == set(VFS)
    assert sr.state[VFS[0]]["original_driver"] is None
    again = sr.run("apply")  # converged: nothing recreated
    assert again.rc == 0 and "0 bound, 4 unchanged" in again.err
    assert not [w for w in sr.sim.writes[len(writes):] if "sriov" in w[0]]
