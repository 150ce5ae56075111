"""apply / restore / reload on the simulated kernel: the driver each device ends up on."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from machine import Machine
from simkernel import DISK, NIC_A, NIC_B, NIC_E1000, Intercept, SimKernel

from pcipassd.cli import main

ONE_NIC = f"""\
    version: 1
    devices:
      - address: "{NIC_A}"
        name: guest-nic
    """


def test_bind_one_by_address_leaves_the_identical_one_alone(m: Machine) -> None:
    m.config(ONE_NIC)
    r = m.run("apply")
    assert r.rc == 0, r.err
    assert m.driver(NIC_A) == "pci-stub"
    assert m.override(NIC_A) == "pci-stub"
    assert m.driver(NIC_B) == "e1000e"
    assert f"{NIC_A} [8086:10d3] e1000e -> pci-stub (/etc/pcipass.yaml:3)" in r.err
    assert "1 bound, 0 unchanged, 0 restored, 0 failed" in r.err
    assert m.sim.modprobes == ["pci_stub"]
    assert not m.writes_to("new_id"), "new_id would grab the identical NIC"
    record = m.state[NIC_A]
    assert record["original_driver"] == "e1000e"
    assert record["original_override"] is None
    assert record["id"] == "8086:10d3"


def test_state_dir_is_readable_but_its_files_are_private(m: Machine) -> None:
    (m.root / "run/pcipass").mkdir(parents=True, mode=0o777)  # planted wide open: mended
    os.chmod(m.root / "run/pcipass", 0o777)
    m.config(ONE_NIC)
    m.run("apply")
    run = m.root / "run/pcipass"
    assert run.stat().st_mode & 0o777 == 0o755
    assert (run / "state.json").stat().st_mode & 0o777 == 0o600
    assert (run / "lock").stat().st_mode & 0o777 == 0o600
    assert (run / "node.json").stat().st_mode & 0o777 == 0o644


def test_a_state_dir_someone_else_owns_is_refused(m: Machine) -> None:
    run = m.root / "run/pcipass"
    run.mkdir(parents=True)
    os.chown(run, 65534, 65534)
    m.config(ONE_NIC)
    r = m.run("apply")
    assert r.rc == 1
    assert "/run/pcipass is owned by uid 65534, not by root" in r.err
    assert m.driver(NIC_A) == "e1000e"


def test_by_id_with_count_binds_both_to_vfio(m: Machine) -> None:
    m.config("""\
        version: 1
        devices:
          - id: "8086:10d3"
            count: 2
            driver: vfio-pci
        """)
    r = m.run("apply")
    assert r.rc == 0, r.err
    assert (m.driver(NIC_A), m.driver(NIC_B)) == ("vfio-pci", "vfio-pci")
    assert m.driver(NIC_E1000) == "e1000"
    assert "2 bound" in r.err


def test_restore_brings_every_device_back_and_empties_the_state(m: Machine) -> None:
    m.config("""\
        version: 1
        devices:
          - id: "8086:10d3"
          - address: "00:04.0"
        """)
    assert m.run("apply").rc == 0
    assert {m.driver(b) for b in (NIC_A, NIC_B, NIC_E1000)} == {"pci-stub"}
    r = m.run("restore")
    assert r.rc == 0, r.err
    assert [m.driver(b) for b in (NIC_A, NIC_B, NIC_E1000)] == ["e1000e", "e1000e", "e1000"]
    assert [m.override(b) for b in (NIC_A, NIC_B, NIC_E1000)] == [None, None, None]
    assert m.state == {}
    assert "3 restored, 0 failed" in r.err


def test_second_apply_changes_nothing(m: Machine) -> None:
    m.config(ONE_NIC)
    m.run("apply")
    before = list(m.sim.writes)
    r = m.run("apply")
    assert r.rc == 0
    assert m.sim.writes == before, "an idempotent apply writes nothing"
    assert f"{NIC_A} [8086:10d3] already on pci-stub" in r.err
    assert "0 bound, 1 unchanged, 0 restored, 0 failed" in r.err


def test_reload_restores_removed_entries_and_binds_added_ones(m: Machine) -> None:
    m.config(ONE_NIC)
    m.run("apply")
    m.config(f"""\
        version: 1
        devices:
          - address: "{NIC_E1000}"
        """)
    r = m.run("apply")
    assert r.rc == 0, r.err
    assert m.driver(NIC_A) == "e1000e"
    assert m.driver(NIC_E1000) == "pci-stub"
    assert set(m.state) == {NIC_E1000}
    assert "1 bound, 0 unchanged, 1 restored, 0 failed" in r.err


def test_changing_the_target_driver_keeps_the_original(m: Machine) -> None:
    m.config(ONE_NIC)
    m.run("apply")
    m.config(ONE_NIC.replace("name: guest-nic", "driver: vfio-pci"))
    assert m.run("apply").rc == 0
    assert m.driver(NIC_A) == "vfio-pci"
    assert m.state[NIC_A]["original_driver"] == "e1000e"
    m.run("restore")
    assert m.driver(NIC_A) == "e1000e"


def test_device_unbound_before_stays_unbound_after_restore(sim: SimKernel,
                                                           capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    sim.add_driver("e1000e", [(0x8086, 0x10D3)])
    sim.add_driver("pci-stub")
    sim.add_device(NIC_A, 0x8086, 0x10D3, driver=None, iommu_group=2)
    m = Machine(sim, capsys)
    m.config(ONE_NIC)
    assert m.run("apply").rc == 0
    assert m.driver(NIC_A) == "pci-stub"
    assert m.state[NIC_A]["original_driver"] is None
    assert m.run("restore").rc == 0
    assert m.driver(NIC_A) is None, "e1000e matches it, but it was unbound before"
    assert m.override(NIC_A) is None


def test_device_already_on_the_stub_is_left_alone(sim: SimKernel,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    sim.add_driver("e1000e", [(0x8086, 0x10D3)])
    sim.add_driver("pci-stub")
    sim.add_device(NIC_A, 0x8086, 0x10D3, driver="pci-stub", iommu_group=2)
    m = Machine(sim, capsys)
    m.config(ONE_NIC)
    r = m.run("apply")
    assert r.rc == 0
    assert "0 bound, 1 unchanged" in r.err
    assert m.state == {}
    m.run("restore")
    assert m.driver(NIC_A) == "pci-stub", "pcipassd did not bind it, so it does not restore it"
    assert not m.sim.writes


def test_failing_probe_rolls_back_and_the_others_still_converge(m: Machine) -> None:
    m.sim.add_driver("pci-stub-broken", loaded=False)  # keep the sim's driver list honest
    m.config("""\
        version: 1
        devices:
          - id: "8086:10d3"
        """)
    m.run("validate")
    m.sim.modprobe("pci_stub")
    m.sim.set_probe_error("pci-stub", NIC_B, errno.ENOMEM)
    r = m.run("apply")
    assert r.rc == 3, "partly applied: one device held, one failed"
    assert m.driver(NIC_A) == "pci-stub"
    assert m.driver(NIC_B) == "e1000e", "rolled back to its original driver"
    assert m.override(NIC_B) is None
    assert set(m.state) == {NIC_A}
    assert f"{NIC_B} [8086:10d3] e1000e -> pci-stub" in r.err
    assert "the kernel bound it to no driver, not to pci-stub" in r.err
    assert f"{NIC_B}: rolled back to e1000e" in r.err
    assert "1 bound, 0 unchanged, 0 restored, 1 failed" in r.err


def test_vfio_without_iommu_group_fails_and_rolls_back(sim: SimKernel,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    sim.add_driver("e1000e", [(0x8086, 0x10D3)])
    sim.add_driver("vfio-pci", loaded=False, needs_iommu=True)
    sim.add_device(NIC_A, 0x8086, 0x10D3)  # no IOMMU: no group
    m = Machine(sim, capsys)
    m.config(f"""\
        version: 1
        iommu: warn
        devices:
          - address: "{NIC_A}"
            driver: vfio-pci
        """)
    r = m.run("apply")
    assert r.rc == 1
    assert "the IOMMU is off (iommu: warn)" in r.err
    assert m.driver(NIC_A) == "e1000e"
    assert m.state == {}


def test_iommu_required_and_off_binds_nothing(sim: SimKernel,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    sim.add_driver("e1000e", [(0x8086, 0x10D3)])
    sim.add_driver("pci-stub", loaded=False)
    sim.add_device(NIC_A, 0x8086, 0x10D3)
    (sim.root / "proc/cpuinfo").write_text("vendor_id\t: GenuineIntel\n")
    (sim.root / "proc/cmdline").write_text("root=/dev/vda ro quiet\n")
    m = Machine(sim, capsys)
    m.config(ONE_NIC)
    r = m.run("apply")
    assert r.rc == 1
    assert "the IOMMU is off: nothing was bound (iommu: required)" in r.err
    assert "add intel_iommu=on to GRUB_CMDLINE_LINUX in /etc/default/grub" in r.err
    assert m.driver(NIC_A) == "e1000e"
    assert not m.sim.writes and not m.sim.modprobes


def test_missing_stub_module_fails_those_devices_and_touches_nothing(
        sim: SimKernel, capsys: pytest.CaptureFixture[str]) -> None:
    sim.enable_iommu()
    sim.add_driver("e1000e", [(0x8086, 0x10D3)])
    sim.add_device(NIC_A, 0x8086, 0x10D3, iommu_group=1)
    m = Machine(sim, capsys)
    m.config(ONE_NIC)
    r = m.run("apply")
    assert r.rc == 1
    assert "modprobe pci_stub failed: Module pci_stub not found" in r.err
    assert m.driver(NIC_A) == "e1000e"
    assert not m.sim.writes


def test_restore_loads_the_original_module_when_it_was_unloaded(m: Machine) -> None:
    m.config(ONE_NIC)
    m.run("apply")
    m.sim.unload("e1000e")
    r = m.run("restore")
    assert r.rc == 0, r.err
    assert "e1000e" in m.sim.modprobes
    assert m.driver(NIC_A) == "e1000e"


def test_restore_to_a_driver_that_cannot_be_had_leaves_the_device_on_the_stub(
        m: Machine) -> None:
    """A record naming a driver this kernel has no module for (renamed, or a typo in an edited
    state file): the device is not unbound into nothing; it stays held, with its record."""
    m.config(ONE_NIC)
    assert m.run("apply").rc == 0
    path = m.root / "run/pcipass/state.json"
    data = json.loads(path.read_text())
    data["devices"][0].update(original_driver="e1000f", original_module="e1000f")
    path.write_text(json.dumps(data))
    r = m.run("restore")
    assert r.rc == 1
    assert m.driver(NIC_A) == "pci-stub"
    assert m.state[NIC_A]["original_driver"] == "e1000f"
    assert "Traceback" not in r.err
    assert [line for line in r.err.splitlines() if "restore failed" in line and "e1000f" in line
            and "left on pci-stub" in line]


def test_restore_binds_explicitly_when_the_probe_picks_another_driver(m: Machine) -> None:
    # NIC_A was on e1000 (say, through an admin's new_id); a re-probe would pick e1000e.
    m.sim.write(m.root / "sys/bus/pci/drivers/e1000/new_id", "8086 10d3")
    m.sim.write(m.root / "sys/bus/pci/drivers/e1000e/unbind", NIC_A)
    m.sim.write(m.root / "sys/bus/pci/drivers/e1000/bind", NIC_A)
    assert m.driver(NIC_A) == "e1000"
    m.config(ONE_NIC)
    m.run("apply")
    r = m.run("restore")
    assert r.rc == 0, r.err
    assert m.driver(NIC_A) == "e1000"


def test_state_written_before_the_device_is_touched_survives_a_crash(m: Machine) -> None:
    class Crash(BaseException):
        pass

    class CrashOnUnbind(Intercept):
        def write(self, path: Path, data: str) -> None:
            if path.name == "unbind":
                raise Crash
            self.sim.write(path, data)

    m.config(ONE_NIC)
    with pytest.raises(Crash):
        main(["--root", str(m.root), "apply"], kernel=CrashOnUnbind(m.sim))
    assert m.override(NIC_A) == "pci-stub", "it crashed halfway"
    assert m.state[NIC_A]["original_driver"] == "e1000e"
    assert not list((m.root / "run/pcipass").glob(".state*")), "no temp file left behind"
    assert m.run("restore").rc == 0
    assert (m.driver(NIC_A), m.override(NIC_A)) == ("e1000e", None)


def test_hot_removed_device_is_forgotten(m: Machine) -> None:
    m.config(ONE_NIC)
    m.run("apply")
    m.sim.remove_device(NIC_A)
    r = m.run("restore")
    assert r.rc == 1
    assert "device is gone (hot-removed?); forgetting it" in r.err
    assert m.state == {}


def test_changed_hardware_is_reported_not_rebound(m: Machine) -> None:
    m.config(ONE_NIC)
    m.run("apply")
    state = m.root / "run/pcipass/state.json"
    data = json.loads(state.read_text())
    data["devices"][0]["id"] = "14e4:1639"  # what was there when it was bound
    state.write_text(json.dumps(data))
    before = list(m.sim.writes)
    r = m.run("restore")
    assert r.rc == 1
    assert "is now 8086:10d3 but was 14e4:1639 when pcipassd bound it" in r.err
    assert m.sim.writes == before
    assert m.driver(NIC_A) == "pci-stub"


def test_entry_with_a_problem_holds_its_devices_instead_of_restoring(m: Machine) -> None:
    m.config("""\
        version: 1
        devices:
          - id: "8086:10d3"
            count: 2
        """)
    m.run("apply")
    m.sim.add_device("0000:00:05.0", 0x8086, 0x10D3, iommu_group=7)  # a third card appears
    r = m.run("apply")
    assert r.rc == 3
    assert "count: 2, but 3 present" in r.err
    assert (m.driver(NIC_A), m.driver(NIC_B)) == ("pci-stub", "pci-stub")
    assert m.driver("0000:00:05.0") == "e1000e"


def test_unmatched_entry_fails_but_the_others_apply(m: Machine) -> None:
    m.config(f"""\
        version: 1
        devices:
          - address: "0000:07:00.0"
          - address: "{NIC_A}"
        """)
    r = m.run("apply")
    assert r.rc == 3
    assert "/etc/pcipass.yaml:3:5: devices[0]: no device at 0000:07:00.0" in r.err
    assert m.driver(NIC_A) == "pci-stub"


def test_invalid_config_changes_nothing(m: Machine) -> None:
    m.config(ONE_NIC.replace("name:", "nmae:"))
    r = m.run("apply")
    assert r.rc == 2
    assert ("/etc/pcipass.yaml:4:5: devices[0].nmae: unknown key 'nmae' "
            "(hint: did you mean 'name'?)") in r.err
    assert "invalid configuration: nothing was changed" in r.err
    assert not m.sim.writes


def test_restore_needs_no_valid_config(m: Machine) -> None:
    m.config(ONE_NIC)
    m.run("apply")
    m.config("version: [\n")
    assert m.run("restore").rc == 0
    assert m.driver(NIC_A) == "e1000e"


def test_state_dir_symlink_is_refused(m: Machine, tmp_path: Path) -> None:
    (m.root / "run").mkdir(exist_ok=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, m.root / "run/pcipass")
    m.config(ONE_NIC)
    r = m.run("apply")
    assert r.rc == 1
    assert "/run/pcipass is not a directory (a symlink?)" in r.err
    assert not m.sim.writes
    assert not list(elsewhere.iterdir())


def test_disk_in_config_does_not_reach_the_kernel_when_the_entry_is_refused(m: Machine) -> None:
    m.config(f"""\
        version: 1
        devices:
          - address: "{DISK}"
            expect: "8086:10d3"
        """)
    r = m.run("apply")
    assert r.rc == 1
    assert f"{DISK} [1af4:1001] is not the expected 8086:10d3; nothing bound" in r.err
    assert m.driver(DISK) == "virtio-pci"


# -- a device hot-removed while apply or restore works on it ------------------------------
THREE = f"""\
    version: 1
    devices:
      - id: "8086:10d3"
      - address: "{NIC_E1000}"
    """


def _remove_after(m: Machine, bdf: str, path_end: str, data: str) -> None:
    """Hot-remove `bdf` right after the write of `data` to a path ending in `path_end`."""

    def hook(rel: str, written: str) -> None:
        if rel.endswith(path_end) and written == data and bdf in m.sim._devices:
            m.sim.remove_device(bdf)

    m.sim.after_write = hook


@pytest.mark.parametrize(("path_end", "data"), [
    (f"{NIC_A}/driver_override", "pci-stub\n"),  # before the unbind
    ("drivers/e1000e/unbind", NIC_A),  # unbound, before the probe
    ("sys/bus/pci/drivers_probe", NIC_A),  # bound to pci-stub, before the check
])
def test_a_device_hot_removed_during_apply_is_forgotten_and_the_others_apply(
        m: Machine, path_end: str, data: str) -> None:
    m.config(THREE)
    _remove_after(m, NIC_A, path_end, data)
    r = m.run("apply")
    assert r.rc == 3, "holds devices, one failed"
    assert "Traceback" not in r.err
    errors = [line for line in r.err.splitlines() if "error:" in line]
    assert errors == [f"pcipassd: error: {NIC_A} [8086:10d3] is gone (hot-removed?); "
                      "forgetting it (/etc/pcipass.yaml:3)"]
    assert (m.driver(NIC_B), m.driver(NIC_E1000)) == ("pci-stub", "pci-stub")
    assert set(m.state) == {NIC_B, NIC_E1000}
    assert "2 bound, 0 unchanged, 0 restored, 1 failed" in r.err


def test_a_device_hot_removed_before_its_turn_is_forgotten(m: Machine) -> None:
    m.config(THREE)
    _remove_after(m, NIC_E1000, "sys/bus/pci/drivers_probe", NIC_B)
    r = m.run("apply")
    assert r.rc == 3
    assert f"error: {NIC_E1000} [8086:100e] is gone (hot-removed?); forgetting it" in r.err
    assert "Traceback" not in r.err
    assert (m.driver(NIC_A), m.driver(NIC_B)) == ("pci-stub", "pci-stub")
    assert set(m.state) == {NIC_A, NIC_B}


def test_a_device_hot_removed_during_its_rollback_is_forgotten(m: Machine) -> None:
    m.config(THREE)
    m.sim.modprobe("pci_stub")
    m.sim.set_probe_error("pci-stub", NIC_A, errno.ENOMEM)  # its bind fails: rollback
    _remove_after(m, NIC_A, f"{NIC_A}/driver_override", "\n")  # the rollback's first write
    r = m.run("apply")
    assert r.rc == 3
    assert "Traceback" not in r.err
    assert f"error: {NIC_A}: rollback: is gone (hot-removed?); forgetting it" in r.err
    assert (m.driver(NIC_B), m.driver(NIC_E1000)) == ("pci-stub", "pci-stub")
    assert set(m.state) == {NIC_B, NIC_E1000}


def test_a_device_hot_removed_during_restore_is_forgotten_and_the_others_restored(
        m: Machine) -> None:
    m.config(THREE)
    assert m.run("apply").rc == 0
    _remove_after(m, NIC_A, "drivers/pci-stub/unbind", NIC_A)
    r = m.run("restore")
    assert r.rc == 1
    assert "Traceback" not in r.err
    errors = [line for line in r.err.splitlines() if "error:" in line]
    assert errors == [f"pcipassd: error: {NIC_A} [8086:10d3] is gone (hot-removed?); "
                      "forgetting it (/etc/pcipass.yaml:3)"]
    assert (m.driver(NIC_B), m.driver(NIC_E1000)) == ("e1000e", "e1000")
    assert m.state == {}
    assert "2 restored, 1 failed" in r.err


def test_apply_with_no_devices_configured_holds_nothing_and_succeeds(m: Machine) -> None:
    """The package enables the unit on install: until the admin lists a device, apply at boot
    holds nothing, gives back anything still held, and does not fail the unit."""
    m.config(ONE_NIC)
    assert m.run("apply").rc == 0
    assert m.driver(NIC_A) == "pci-stub"
    m.config("version: 1\ndriver: vfio-pci\n")
    r = m.run("apply")
    assert r.rc == 0
    assert "no devices are configured: holding nothing" in r.err
    assert m.driver(NIC_A) == "e1000e"
    assert m.state == {}
    assert m.run("validate").rc == 2, "validate still says the config lists nothing"
