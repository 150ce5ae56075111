"""SR-IOV virtual functions (issue 20 §1): an entry's `vfs:` on the simulated kernel, which
knows sriov_numvfs, sriov_totalvfs and sriov_drivers_autoprobe as drivers/pci/iov.c does."""

from __future__ import annotations

import errno
import json

import pytest
from hosttree import FakeHost
from machine import Machine, Result
from simkernel import SimKernel
from workstation import rel

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


# -- the simulated kernel ---------------------------------------------------------------------

def test_sim_numvfs_errors_as_linux(sim: SimKernel) -> None:
    add_igb(sim)
    sim.add_driver("pci-stub")
    numvfs = sim.device_dir(PF) / "sriov_numvfs"

    def err(value: str) -> str:
        with pytest.raises(OSError, match=r"\[Errno") as e:
            sim.write(numvfs, value)
        return errno.errorcode[e.value.errno or 0]

    assert err("8") == "ERANGE"
    sim.write(numvfs, "2")
    assert sim.vfs_of(PF) == VFS[:2] and [sim.driver_of(v) for v in VFS[:2]] == ["igbvf"] * 2
    assert err("3") == "EBUSY"
    sim.write(numvfs, "2")  # the same value: nothing
    sim.write(numvfs, "0")
    assert sim.vfs_of(PF) == [] and not (sim.pci / "devices" / VFS[0]).exists()
    with pytest.raises(PermissionError):  # read-only: EACCES
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


# -- apply ------------------------------------------------------------------------------------

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


def vm_opens(m: Machine, group: int, pid: int = 359, comm: str = "qemu-system-x86") -> None:
    """A VM (a fake /proc/PID) holding /dev/vfio/GROUP open."""
    proc = m.root / "proc" / str(pid)
    (proc / "fd").mkdir(parents=True)
    (proc / "comm").write_text(comm + "\n")
    (proc / "fd" / "17").symlink_to(f"/dev/vfio/{group}")


# -- give-back --------------------------------------------------------------------------------

def test_restore_releases_then_removes_the_vfs_it_created(sr: Machine) -> None:
    vfs_config(sr)
    assert sr.run("apply").rc == 0
    start = len(sr.sim.writes)
    r = sr.run("restore")
    assert r.rc == 0, r.err
    assert sr.sim.numvfs(PF) == 0 and sr.driver(PF) == "igb"
    assert not (sr.root / "run/pcipass/sriov.json").exists() and sr.state == {}
    writes = sr.sim.writes[start:]
    unbinds = [i for i, w in enumerate(writes) if w[0].endswith("vfio-pci/unbind")]
    assert len(unbinds) == 4 and writes[-1] == (f"sys/bus/pci/devices/{PF}/sriov_numvfs", "0")
    assert max(unbinds) < len(writes) - 1
    assert "removed the 4 VFs pcipassd created" in r.err


def test_restore_leaves_a_vf_a_vm_holds_and_then_the_count(sr: Machine) -> None:
    vfs_config(sr)
    assert sr.run("apply").rc == 0
    vm_opens(sr, 21)  # VF 1 is in group 21
    r = sr.run("restore")
    assert r.rc == 1
    assert f"qemu-system-x86 (pid 359) has {VFS[1]} open" in r.err
    assert sr.driver(VFS[1]) == "vfio-pci" and set(sr.state) == {VFS[1]}
    assert sr.sim.numvfs(PF) == 4  # the PF's VF count left alone too
    assert f"{PF}: its 4 VFs stay: {VFS[1]} still held" in r.err
    assert [sr.driver(v) for v in (VFS[0], VFS[2], VFS[3])] == [None] * 3
    (sr.root / "proc/359/fd/17").unlink()  # the VM exits
    assert sr.run("restore").rc == 0
    assert sr.sim.numvfs(PF) == 0 and sr.state == {}


def test_reload_without_the_entry_removes_the_vfs(sr: Machine) -> None:
    vfs_config(sr, extra='  - address: "0000:00:02.0"\n')
    assert sr.run("apply").rc == 0
    sr.with_guest_nic()
    r = sr.run("apply")
    assert r.rc == 0, r.err
    assert sr.sim.numvfs(PF) == 0 and set(sr.state) == {"0000:00:02.0"}


def test_vfs_present_with_the_same_count_are_adopted_and_left(sr: Machine) -> None:
    sr.sim.write(sr.sim.device_dir(PF) / "sriov_numvfs", "4")  # sysfsutils at boot
    assert [sr.driver(v) for v in VFS] == ["igbvf"] * 4
    vfs_config(sr)
    r = sr.run("apply")
    assert r.rc == 0, r.err
    assert not [w for w in sr.sim.writes if w[0].endswith("sriov_numvfs") and w[1] != "4"]
    assert [sr.driver(v) for v in VFS] == ["vfio-pci"] * 4
    assert "created outside pcipassd: igbvf probed it" in r.err
    assert not (sr.root / "run/pcipass/sriov.json").exists()
    r = sr.run("restore")
    assert r.rc == 0 and sr.sim.numvfs(PF) == 4  # not pcipassd's to remove
    assert [sr.driver(v) for v in VFS] == ["igbvf"] * 4


def test_vfs_created_later_for_a_configured_id_move_late_with_a_warning(sr: Machine) -> None:
    sr.config("""\
        version: 1
        devices:
          - id: "8086:10ca"
            count: 2
        """)
    sr.sim.write(sr.sim.device_dir(PF) / "sriov_numvfs", "2")
    r = sr.run("apply")
    assert r.rc == 0, r.err
    assert [sr.driver(v) for v in VFS[:2]] == ["pci-stub"] * 2
    assert f"{VFS[0]} [8086:10ca] is an SR-IOV VF created outside pcipassd" in r.err
    assert sr.state[VFS[0]]["original_driver"] == "igbvf"


# -- bad input: one line, the device left as it was -------------------------------------------

def _one_error(r: Result, text: str) -> None:
    lines = [line for line in r.err.splitlines() if text in line]
    assert len(lines) == 1, r.err
    assert "/etc/pcipass.yaml:3" in lines[0]


def _untouched(m: Machine, numvfs: int = 0) -> None:
    assert m.sim.numvfs(PF) == numvfs and m.driver(PF) == "igb"
    assert m.sim.autoprobe(PF) == "1"
    assert not [w for w in m.sim.writes if "sriov" in w[0] or ("driver_override" in w[0]
                and w[1].strip())]


def test_a_pf_without_sriov_is_refused(sr: Machine) -> None:
    sr.config("""\
        version: 1
        devices:
          - address: "0000:00:02.0"
            vfs: {count: 2}
        """)
    r = sr.run("apply")
    assert r.rc != 0
    _one_error(r, "0000:00:02.0 [8086:10d3] has no SR-IOV")
    assert sr.driver("0000:00:02.0") == "e1000e" and sr.state == {}


def test_a_count_above_totalvfs_is_refused(sr: Machine) -> None:
    vfs_config(sr, "{count: 8}")
    r = sr.run("apply")
    assert r.rc != 0
    _one_error(r, f"{PF} [8086:10c9] offers at most 7 VFs (sriov_totalvfs), not 8")
    _untouched(sr)


def test_vfs_of_another_count_by_someone_else_are_refused(sr: Machine) -> None:
    sr.sim.write(sr.sim.device_dir(PF) / "sriov_numvfs", "2")
    start = len(sr.sim.writes)
    vfs_config(sr)
    r = sr.run("apply")
    assert r.rc != 0
    _one_error(r, f"{PF} [8086:10c9] has 2 VFs already (created by someone else), not 4")
    assert sr.sim.numvfs(PF) == 2 and sr.sim.writes[start:] == []
    assert [sr.driver(v) for v in VFS[:2]] == ["igbvf"] * 2


def test_a_driver_that_refuses_to_create_vfs(sr: Machine) -> None:
    """The entry's own driver moves the PF: pci-stub has no sriov_configure (ENOENT)."""
    sr.config(f"""\
        version: 1
        devices:
          - address: "{PF}"
            driver: pci-stub
            vfs: {{count: 2}}
        """)
    r = sr.run("apply")
    assert r.rc != 0
    _one_error(r, f"{PF} [8086:10c9] pci-stub: cannot create 2 VFs")
    assert "ENOENT" in r.err and "enable_sriov" in r.err
    assert sr.sim.numvfs(PF) == 0 and sr.sim.autoprobe(PF) == "1"
    assert not (sr.root / "run/pcipass/sriov.json").exists()


# -- the guard: creating VFs drops the PF's link ----------------------------------------------

ROUTES = ("eth0\t00000000\t0102A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0",
          "eth0\t0002A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0")


def uplink(m: Machine, routes: bool = True) -> None:
    """The PF is eth0, with the default route (network up) or without (boot, before it)."""
    fake = FakeHost(m.root)
    fake.netdev("eth0", rel(m.sim, PF), flags="0x1003" if routes else "0x1002")
    fake.routes(*(ROUTES if routes else ()))


def test_vfs_on_the_uplink_are_refused_while_the_network_is_up(sr: Machine) -> None:
    uplink(sr)
    vfs_config(sr)
    r = sr.run("apply")
    assert r.rc != 0
    _one_error(r, f"{PF} [8086:10c9] igb: refusing to create 4 VFs: it carries the default "
               "route via eth0: creating VFs re-initialises it and drops its link")
    assert "force: [network]" in r.err
    _untouched(sr)


def test_force_network_creates_vfs_on_the_uplink(sr: Machine) -> None:
    uplink(sr)
    vfs_config(sr, extra="    force: [network]\n")
    r = sr.run("apply")
    assert r.rc == 0, r.err
    assert [sr.driver(v) for v in VFS] == ["vfio-pci"] * 4 and sr.driver(PF) == "igb"


def test_at_boot_before_the_network_vfs_on_the_uplink_are_created(sr: Machine) -> None:
    uplink(sr)
    sr.with_guest_nic()
    assert sr.run("apply").rc == 0  # live: the guard remembers eth0's PF
    uplink_down = sr.root / "proc/net/route"
    uplink_down.write_text(uplink_down.read_text().splitlines(keepends=True)[0])
    (sr.root / "sys/class/net/eth0").resolve().joinpath("flags").write_text("0x1002\n")
    vfs_config(sr)
    r = sr.run("apply")
    assert r.rc == 0, r.err
    assert f"{PF}: creating VFs on it before the network is up" in r.err
    assert [sr.driver(v) for v in VFS] == ["vfio-pci"] * 4


# -- IOMMU groups: without ACS the VFs share the PF's group -----------------------------------

def test_vfs_in_the_pfs_group_are_refused_and_removed(m: Machine) -> None:
    add_igb(m.sim, own_groups=None)
    vfs_config(m)
    r = m.run("apply")
    assert r.rc != 0
    _one_error(r, f"VFs not held, so not kept: IOMMU group 9 of {VFS[0]} also contains "
               f"{PF} [8086:10c9] on igb")
    assert m.sim.numvfs(PF) == 0 and m.sim.autoprobe(PF) == "1" and m.state == {}
    assert not (m.root / "run/pcipass/sriov.json").exists()


def test_vfs_in_the_pfs_group_with_group_ignore_are_held_with_a_warning(m: Machine) -> None:
    add_igb(m.sim, own_groups=None)
    vfs_config(m, extra="    group: ignore\n")
    r = m.run("apply")
    assert r.rc == 0, r.err
    assert [m.driver(v) for v in VFS] == ["vfio-pci"] * 4
    assert "IOMMU group 9 is not viable for VFIO" in r.err


# -- a subset, by index -----------------------------------------------------------------------

def test_hold_only_the_vfs_named_by_index(sr: Machine) -> None:
    vfs_config(sr, "{count: 4, driver: vfio-pci, hold: [0, 2]}")
    r = sr.run("apply")
    assert r.rc == 0, r.err
    assert [sr.driver(v) for v in VFS] == ["vfio-pci", "igbvf", "vfio-pci", "igbvf"]
    assert set(sr.state) == {VFS[0], VFS[2]}
    s = sr.run("status")
    assert s.rc == 0
    assert f"{VFS[2]}  8086:10ca  vfio-pci  vfio-pci" in s.out and "guest-vfs vf2" in s.out
    assert f"  {PF} [8086:10c9] igb: 4 of 7 VFs, created by pcipassd" in s.out
    assert f"    vf1 {VFS[1]} igbvf" in s.out
    assert sr.run("restore").rc == 0 and sr.sim.numvfs(PF) == 0


def test_a_hold_index_not_below_count_is_a_config_problem(sr: Machine) -> None:
    vfs_config(sr, "{count: 2, hold: [2]}")
    r = sr.run("validate")
    assert r.rc == 2
    assert "devices[0].vfs.hold[0]: VF index 2 is not below count 2" in r.out


# -- status, list and the node document show each PF with its VFs -----------------------------

def test_list_and_the_node_document_show_the_pf_with_its_vfs(sr: Machine) -> None:
    vfs_config(sr, "{count: 2, driver: vfio-pci}")
    assert sr.run("apply").rc == 0
    doc = json.loads((sr.root / "run/pcipass/node.json").read_text())
    assert doc["sriov"] == [{"device": PF, "id": "8086:10c9", "driver": "igb", "totalvfs": 7,
                             "numvfs": 2, "created_by_pcipassd": True, "vfs": [
                                 {"index": 0, "device": VFS[0], "driver": "vfio-pci"},
                                 {"index": 1, "device": VFS[1], "driver": "vfio-pci"}]}]
    status = json.loads(sr.run("status", "--json").out)
    assert status["sriov"] == doc["sriov"]
    assert {d["device"]: d["name"] for d in status["devices"]}[VFS[1]] == "guest-vfs vf1"
    out = sr.run("list").out
    assert f"SR-IOV:\n  {PF} [8086:10c9] igb: 2 of 7 VFs, created by pcipassd\n" \
           f"    vf0 {VFS[0]} vfio-pci\n    vf1 {VFS[1]} vfio-pci" in out
    assert sr.run("restore").rc == 0
    assert json.loads((sr.root / "run/pcipass/node.json").read_text())["sriov"] == []


# -- the early hold cannot hold VFs: they do not exist before their PF's driver creates them --

def test_the_hold_list_has_no_vfs(sr: Machine) -> None:
    vfs_config(sr, extra='  - address: "0000:00:02.0"\n')
    assert sr.run("apply").rc == 0
    hold = (sr.root / "etc/pcipass.early").read_text()
    assert "dev 0000:00:02.0 8086:10d3 pci-stub" in hold
    assert not any(vf in hold for vf in VFS) and PF not in hold


# -- hardening ------------------------------------------------------------------------------

SRIOV_JSON = "run/pcipass/sriov.json"
SRIOV_DAMAGED = {
    "not JSON": (b'{"format": 1, "pfs": [', "it is not JSON"),
    "format 2": (b'{"format": 2, "pfs": []}', "format is 2, not 1"),
    "pfs an object": (b'{"format": 1, "pfs": {}}', "pfs is an object, not a list"),
    "a record without vfs": (b'{"format": 1, "pfs": [{"pf": "0000:05:00.0", "id": "8086:10c9",'
                             b' "entry": "", "original_numvfs": 0, "original_autoprobe": "1"}]}',
                             "pfs[0]: 'vfs'"),
    "a path for a PF": (b'{"format": 1, "pfs": [{"pf": "../../../../x", "id": "8086:10c9", '
                        b'"entry": "", "original_numvfs": 0, "original_autoprobe": "1", '
                        b'"vfs": []}]}', "pfs[0]: ../../../../x is not a PCI address"),
    "binary": (bytes(range(256)), "it is not JSON"),
}


@pytest.mark.parametrize("name", list(SRIOV_DAMAGED))
def test_a_damaged_sriov_json_is_one_line_and_no_device_is_touched(sr: Machine,
                                                                   name: str) -> None:
    """Read as "no records", the VFs pcipassd created would never be removed (restore) and
    apply would refuse them as someone else's: it stops every verb as state.json does."""
    vfs_config(sr)
    assert sr.run("apply").rc == 0
    body, why = SRIOV_DAMAGED[name]
    path = sr.root / SRIOV_JSON
    path.write_bytes(body)
    before = len(sr.sim.writes)
    for argv in (("restore",), ("restore", "--on-stop"), ("apply",), ("status",)):
        r = sr.run(*argv)
        assert r.rc == 1, argv
        lines = [line for line in r.err.splitlines() if line]
        assert len(lines) == 1, r.err
        assert lines[0].startswith(f"pcipassd: error: /{SRIOV_JSON} is damaged: "), r.err
        assert why in lines[0]
        assert ("(hint: pcipassd moves no device while it cannot read this file: move it "
                "away") in lines[0]
        assert sr.sim.writes[before:] == [], argv
        assert sr.sim.numvfs(PF) == 4 and [sr.driver(v) for v in VFS] == ["vfio-pci"] * 4
        assert path.read_bytes() == body, "left for the admin to look at"


def test_a_sriov_json_that_is_a_symlink_is_not_followed(sr: Machine) -> None:
    vfs_config(sr)
    assert sr.run("apply").rc == 0
    path = sr.root / SRIOV_JSON
    real = path.with_name("elsewhere.json")
    path.rename(real)
    path.symlink_to(real.name)
    before = len(sr.sim.writes)
    r = sr.run("restore")
    assert r.rc == 1 and f"/{SRIOV_JSON} is a symlink, not a regular file" in r.err, r.err
    assert sr.sim.writes[before:] == [] and sr.sim.numvfs(PF) == 4


@pytest.mark.parametrize("other", ['id: "8086:10ca"', 'address: "05:10.2"'],
                         ids=["id", "address"])
@pytest.mark.parametrize("present", [False, True], ids=["to-create", "present"])
def test_a_vf_selected_by_vfs_and_another_entry_is_one_line(sr: Machine, other: str,
                                                            present: bool) -> None:
    """Both entries refused in one line, before any VF is created (the VFs' addresses and ID
    worked out from sriov_offset, sriov_stride, sriov_vf_device) or, when they are there,
    before any is moved."""
    if present:
        sr.sim.write(sr.sim.device_dir(PF) / "sriov_numvfs", "4")  # sysfsutils at boot
    start = len(sr.sim.writes)
    vfs_config(sr, extra=f"  - {other}\n            driver: pci-stub\n")
    r = sr.run("apply")
    assert r.rc != 0
    lines = [line for line in r.err.splitlines() if "is also selected by" in line]
    assert len(lines) == 1, r.err
    n = 0 if other.startswith("id") else 1  # the first VF it selects
    assert f"{VFS[n]} ({PF} vf{n}) is also selected by /etc/pcipass.yaml:6" in lines[0], r.err
    assert "/etc/pcipass.yaml:3" in lines[0] and "both entries refused" in lines[0]
    assert sr.sim.writes[start:] == [] and sr.state == {}
    assert sr.sim.numvfs(PF) == (4 if present else 0)


def test_on_stop_keep_leaves_the_vfs_and_the_count_until_restore(sr: Machine) -> None:
    sr.config(f"""\
        version: 1
        devices:
          - address: "{PF}"
            on_stop: keep
            vfs: {{count: 4, driver: vfio-pci}}
        """)
    assert sr.run("apply").rc == 0
    assert {r["on_stop"] for r in sr.state.values()} == {"keep"}
    r = sr.run("restore", "--on-stop")
    assert r.rc == 0, r.err
    assert sr.sim.numvfs(PF) == 4 and [sr.driver(v) for v in VFS] == ["vfio-pci"] * 4
    assert f"{PF}: its 4 VFs stay (on_stop: keep" in r.err
    assert f"`pcipassd restore {PF}` gives them back" in r.err
    r = sr.run("restore", PF)
    assert r.rc == 0, r.err
    assert sr.sim.numvfs(PF) == 0 and sr.state == {}
    assert not (sr.root / "run/pcipass/sriov.json").exists()


def test_on_stop_restore_removes_the_vfs_on_stop(sr: Machine) -> None:
    vfs_config(sr)
    assert sr.run("apply").rc == 0
    r = sr.run("restore", "--on-stop")
    assert r.rc == 0, r.err
    assert sr.sim.numvfs(PF) == 0 and sr.state == {}


def test_another_count_for_vfs_pcipassd_created_says_the_command(sr: Machine) -> None:
    vfs_config(sr)
    assert sr.run("apply").rc == 0
    vfs_config(sr, "{count: 2, driver: vfio-pci}")
    r = sr.run("apply")
    assert r.rc != 0
    assert (f"hint: `pcipassd restore {PF} && systemctl reload pcipassd` removes them") in r.err
    assert sr.sim.numvfs(PF) == 4
    assert sr.run("restore", PF).rc == 0 and sr.sim.numvfs(PF) == 0
    assert sr.run("apply").rc == 0 and sr.sim.numvfs(PF) == 2


def test_restore_of_one_vf_leaves_the_other_vfs_in_its_slot(sr: Machine) -> None:
    """VFs share a slot (05:10.0, 05:10.2, ...) but are no card: `restore VF` is that VF only."""
    vfs_config(sr)
    assert sr.run("apply").rc == 0
    r = sr.run("restore", VFS[0])
    assert r.rc == 0, r.err
    assert sr.driver(VFS[0]) != "vfio-pci"
    assert [sr.driver(v) for v in VFS[1:]] == ["vfio-pci"] * 3
    assert "given back with its card" not in r.err


def test_at_boot_apply_waits_for_the_pfs_driver_then_creates_the_vfs(m: Machine) -> None:
    """udev's coldplug triggered, igb not loaded yet: VFs exist only once the PF has its
    driver, so apply waits for udev before it creates them."""
    m.sim.add_driver("igb", [(0x8086, 0x10C9)], sriov=True, loaded=False)
    m.sim.add_driver("igbvf", [(0x8086, 0x10CA)])
    m.sim.add_device(PF, 0x8086, 0x10C9, iommu_group=9)
    m.sim.add_sriov(PF, 7, 0x10CA, own_groups=20)
    m.sim.udev_queue[:] = [PF]
    assert m.driver(PF) is None
    vfs_config(m)
    r = m.run("apply")
    assert r.rc == 0, r.err
    assert m.sim.settles == 1
    assert m.driver(PF) == "igb" and m.sim.numvfs(PF) == 4
    assert [m.driver(v) for v in VFS] == ["vfio-pci"] * 4


def test_qemu_and_libvirt_give_each_vf_alone_not_as_a_card(sr: Machine) -> None:
    """VFs share a slot (05:10.0, 05:10.2, ...): still one line, one root port, no guest
    multifunction each."""
    vfs_config(sr)
    assert sr.run("apply").rc == 0
    assert sr.run("status", "--qemu").out.splitlines() == [
        f"-device vfio-pci,host={vf}" for vf in VFS]
    q35 = [line for line in sr.run("status", "--qemu-q35", "20").out.splitlines()
           if not line.startswith("#")]
    assert len(q35) == 4 and not any("multifunction" in line for line in q35), q35
    assert "multifunction" not in sr.run("status", "--libvirt").out
