"""`reset_method:` on the simulated kernel: the sysfs `reset_method` a user finds after apply
and after every kind of give-back, what plan and status say, the refusals, the journal field."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import pytest
from machine import FakeJournal, Machine
from simkernel import NIC_A, NIC_B, RESET_METHODS, SimKernel

from pcipassd.config import schema_text
from pcipassd.model import RESET_METHODS as KNOWN

SCRIPT = Path(__file__).resolve().parent.parent / "early" / "pcipassd-early"


def config(m: Machine, methods: str = "[bus]", name: str = "gpu") -> None:
    m.config(f"""\
        version: 1
        devices:
          - address: "{NIC_A}"
            name: {name}
            reset_method: {methods}
        """)


@pytest.fixture
def flr_bus(m: Machine) -> Machine:
    """The typical machine, NIC_A able to reset by FLR and by a bus reset (the kernel lists
    `flr bus`), NIC_B by FLR, PM and bus reset."""
    m.sim.support_reset(NIC_A, "flr", "bus")
    m.sim.support_reset(NIC_B, "flr", "pm", "bus")
    return m


# -- the simulated kernel's reset_method ------------------------------------------------------
def test_simulated_reset_method_behaves_as_the_kernel(sim: SimKernel, tmp_path: Path) -> None:
    path = sim.add_device("0000:00:05.0", 0x8086, 0x10D3, driver=None, reset_methods=["bus", "flr"])
    attr = path / "reset_method"
    assert attr.read_text() == "flr bus\n", "listed in the kernel's order"
    sim.write(attr, "bus\n")
    assert attr.read_text() == "bus\n"
    for bad in ("pm\n", "bsu\n", "bus pm\n"):
        with pytest.raises(OSError, match="Invalid argument") as e:
            sim.write(attr, bad)
        assert e.value.errno == errno.EINVAL
        assert attr.read_text() == "bus\n", "a refused write leaves the methods as they were"
    sim.write(attr, "bus flr\n")
    assert attr.read_text() == "bus flr\n"
    sim.write(attr, "\n")
    assert attr.read_text() == "", "an empty write disables reset"
    sim.write(attr, "default\n")
    assert attr.read_text() == "flr bus\n"
    no_reset = sim.add_device("0000:00:06.0", 0x8086, 0x10D3, driver=None)
    assert not (no_reset / "reset_method").exists()
    assert RESET_METHODS == KNOWN


def test_the_schema_knows_the_kernels_reset_methods() -> None:
    schema = json.loads(schema_text())
    assert tuple(schema["$defs"]["reset_method"]["enum"]) == KNOWN


# -- the config ----------------------------------------------------------------------------
def test_an_unknown_method_is_refused_with_file_line_col_and_did_you_mean(m: Machine) -> None:
    config(m, "[flrr, bus]")
    r = m.run("validate")
    assert r.rc == 2
    assert ("/etc/pcipass.yaml:5:20: devices[0].reset_method[0]: 'flrr' is not a reset method "
            "the kernel knows") in r.out + r.err
    assert "hint: did you mean 'flr'?" in r.out + r.err


def test_an_unknown_method_given_as_one_name_is_refused_too(m: Machine) -> None:
    config(m, "bsu")
    r = m.run("apply")
    assert r.rc == 2
    assert "/etc/pcipass.yaml:5:19: devices[0].reset_method: 'bsu' is not a reset method" in r.err
    assert "did you mean 'bus'?" in r.err
    assert m.driver(NIC_A) == "e1000e"


# -- apply and give-back -------------------------------------------------------------------
def test_apply_writes_it_after_recording_the_original_and_restore_writes_that_back(
        flr_bus: Machine, journal: FakeJournal) -> None:
    m = flr_bus
    config(m)
    order: list[tuple[str, object]] = []
    m.sim.after_write = lambda path, data: order.append(
        (path, m.state.get(NIC_A, {}).get("original_reset_method")))
    assert m.run("apply").rc == 0
    assert m.sim.reset_method_of(NIC_A) == "bus\n"
    assert m.driver(NIC_A) == "pci-stub"
    assert m.state[NIC_A]["original_reset_method"] == "flr bus"
    first = order[0]
    assert first == (f"sys/bus/pci/devices/{NIC_A}/reset_method", "flr bus"), \
        "written first, before the device moves, once the original is in its record"
    [bind] = [e for e in journal.device(NIC_A) if e["PCIPASS_ACTION"] == "bind"]
    assert bind["PCIPASS_RESET_METHOD"] == "bus"
    assert bind["MESSAGE"].endswith("; reset_method: bus (was: flr bus)")
    assert m.sim.reset_method_of(NIC_B) == "flr pm bus\n", "no other device's"

    assert m.run("restore").rc == 0
    assert m.driver(NIC_A) == "e1000e"
    assert m.sim.reset_method_of(NIC_A) == "flr bus\n"
    [back] = [e for e in journal.device(NIC_A) if e["PCIPASS_ACTION"] == "restore"]
    assert back["PCIPASS_RESET_METHOD"] == "flr bus"
    assert "reset_method back to: flr bus" in back["MESSAGE"]
    writes = [w[0] for w in m.sim.writes]
    assert writes.index(f"sys/bus/pci/devices/{NIC_A}/reset_method", writes.index(
        "sys/bus/pci/drivers/pci-stub/unbind")) > 0, "once the stub has let go of it"


def test_removing_the_entry_gives_the_original_back(flr_bus: Machine) -> None:
    m = flr_bus
    config(m, "[bus, flr]")
    assert m.run("apply").rc == 0
    assert m.sim.reset_method_of(NIC_A) == "bus flr\n"
    m.config(f'version: 1\ndevices:\n  - address: "{NIC_B}"\n')
    r = m.run("apply")
    assert r.rc == 0, r.err
    assert m.driver(NIC_A) == "e1000e"
    assert m.sim.reset_method_of(NIC_A) == "flr bus\n"
    assert NIC_A not in m.state


def test_a_device_whose_reset_is_disabled_offers_no_method(flr_bus: Machine) -> None:
    m = flr_bus
    m.sim.write(m.sim.device_dir(NIC_A) / "reset_method", "\n")  # the admin disabled it
    config(m)
    r = m.run("plan")
    assert r.rc == 1
    assert f"{NIC_A} does not offer reset method bus" in r.out
    assert "it offers: none (reset is disabled)" in r.out
    assert m.sim.reset_method_of(NIC_A) == ""


def test_dropping_the_key_gives_the_original_back_and_keeps_the_device_held(
        flr_bus: Machine) -> None:
    m = flr_bus
    config(m)
    m.run("apply")
    m.config(f'version: 1\ndevices:\n  - address: "{NIC_A}"\n    name: gpu\n')
    plan = m.run("plan")
    assert "reset_method back to: flr bus" in plan.out
    assert plan.rc == 0
    r = m.run("apply")
    assert r.rc == 0, r.err
    assert m.driver(NIC_A) == "pci-stub"
    assert m.sim.reset_method_of(NIC_A) == "flr bus\n"
    assert "original_reset_method" not in m.state[NIC_A]
    assert m.run("status").rc == 0


def test_changing_the_methods_of_a_held_device_rewrites_them(flr_bus: Machine,
                                                             journal: FakeJournal) -> None:
    m = flr_bus
    config(m)
    m.run("apply")
    config(m, "[flr]")
    status = m.run("status")
    assert status.rc == 1
    assert "RESET_METHOD" in status.out and "bus -> flr" in status.out
    r = m.run("apply")
    assert r.rc == 0, r.err
    assert m.sim.reset_method_of(NIC_A) == "flr\n"
    assert m.state[NIC_A]["original_reset_method"] == "flr bus", "the first original stays"
    assert journal.device(NIC_A)[-1]["PCIPASS_RESET_METHOD"] == "flr"
    assert m.run("status").rc == 0
    m.run("restore")
    assert m.sim.reset_method_of(NIC_A) == "flr bus\n"


def test_plan_status_and_json_show_it(flr_bus: Machine) -> None:
    m = flr_bus
    config(m)
    plan = m.run("plan")
    assert plan.rc == 0
    [row] = [line for line in plan.out.splitlines() if line.startswith(NIC_A)]
    assert "reset_method: bus (now: flr bus)" in row
    data = json.loads(m.run("plan", "--json").out)
    [step] = [s for s in data["steps"] if s["device"] == NIC_A]
    assert (step["reset_method"], step["reset_method_now"]) == ("bus", "flr bus")
    m.run("apply")
    status = m.run("status")
    assert status.rc == 0, status.out
    header, row = status.out.splitlines()[:2]
    assert "RESET_METHOD" in header
    assert row.split()[header.split().index("RESET_METHOD")] == "bus"
    doc = json.loads(m.run("status", "--json").out)
    [dev] = [d for d in doc["devices"] if d["device"] == NIC_A]
    assert (dev["reset_method"], dev["reset_method_now"], dev["reset_method_original"]) == (
        "bus", "bus", "flr bus")
    node = json.loads((m.root / "run/pcipass/node.json").read_text())
    assert node["converged"] is True


def test_status_has_no_reset_column_when_no_entry_sets_it(flr_bus: Machine) -> None:
    flr_bus.with_guest_nic()
    flr_bus.run("apply")
    assert "RESET_METHOD" not in flr_bus.run("status").out
    assert flr_bus.sim.reset_method_of(NIC_A) == "flr bus\n"


# -- refusals --------------------------------------------------------------------------------
def test_a_method_the_device_does_not_offer_refuses_the_entry_before_anything_moves(
        flr_bus: Machine) -> None:
    m = flr_bus
    config(m, "[pm]")
    plan = m.run("plan")
    assert plan.rc == 1
    line = (f"/etc/pcipass.yaml:3:5: devices[0]: {NIC_A} does not offer reset method pm (the "
            "kernel would refuse it: EINVAL); it offers: flr, bus; nothing bound")
    assert line in plan.out
    r = m.run("apply")
    assert r.rc == 1
    assert line in r.err
    assert m.driver(NIC_A) == "e1000e"
    assert m.sim.reset_method_of(NIC_A) == "flr bus\n"
    assert not m.writes_to("reset_method") and not m.writes_to("driver_override")
    assert NIC_A not in m.state


def test_a_device_without_reset_method_refuses_the_entry(m: Machine) -> None:
    config(m)
    r = m.run("apply")
    assert r.rc == 1
    assert (f"/etc/pcipass.yaml:3:5: devices[0]: {NIC_A} has no reset_method in sysfs (a kernel "
            "before 5.15, or no reset method for this device): cannot set reset_method bus; "
            "nothing bound") in r.err
    assert m.driver(NIC_A) == "e1000e"
    assert not m.writes_to("driver_override")


def test_only_the_refused_entry_is_refused(flr_bus: Machine) -> None:
    m = flr_bus
    m.config(f"""\
        version: 1
        devices:
          - address: "{NIC_A}"
            reset_method: pm
          - address: "{NIC_B}"
            reset_method: [pm, bus]
        """)
    r = m.run("apply")
    assert r.rc == 3, r.err
    assert m.driver(NIC_A) == "e1000e"
    assert m.driver(NIC_B) == "pci-stub"
    assert m.sim.reset_method_of(NIC_B) == "pm bus\n"


def test_a_write_the_kernel_refuses_fails_the_device_whole(flr_bus: Machine,
                                                         journal: FakeJournal) -> None:
    """The plan's check passed, but the kernel refuses the write (EINVAL): one line naming the
    device and what it offers, and the device stays on its driver, its record gone."""
    m = flr_bus
    config(m)
    real = m.sim._set_reset_method

    def refuse(bdf: str, path: Path, data: str) -> None:
        if data != "flr bus\n":
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        real(bdf, path, data)

    m.sim._set_reset_method = refuse  # type: ignore[method-assign]
    r = m.run("apply")
    assert r.rc == 1
    [fail] = [e for e in journal.device(NIC_A) if e["PCIPASS_ACTION"] == "fail"]
    assert fail["MESSAGE"] == (
        f"{NIC_A} [8086:10d3] e1000e -> pci-stub (/etc/pcipass.yaml:3): writing bus to "
        f"/sys/bus/pci/devices/{NIC_A}/reset_method failed: EINVAL (Invalid argument); its reset "
        "methods: flr bus")
    assert m.driver(NIC_A) == "e1000e"
    assert m.override(NIC_A) is None
    assert m.sim.reset_method_of(NIC_A) == "flr bus\n"
    assert NIC_A not in m.state


# -- the early hold --------------------------------------------------------------------------
def test_a_device_the_early_stage_held_gets_its_reset_method_from_the_service(
        flr_bus: Machine) -> None:
    m = flr_bus
    config(m)
    m.run("apply")
    m.run("restore")
    assert m.sim.reset_method_of(NIC_A) == "flr bus\n"
    # the next boot: the initramfs holds it, pci-stub (loaded) takes it before the service runs
    m.sim.unload("e1000e")
    (m.root / "etc/pcipass.early").write_text(f"dev {NIC_A} 8086:10d3 pci-stub\n")
    env = {"PATH": os.environ["PATH"], "PCIPASS_ROOT": str(m.root)}
    stage = subprocess.run(["sh", str(SCRIPT), "boot", "initramfs"], env=env, check=False,
                           capture_output=True, text=True, timeout=30)
    assert stage.returncode == 0, stage.stderr
    m.sim.write(m.root / "sys/bus/pci/drivers_probe", NIC_A)  # pci-stub is loaded: it takes it
    assert m.driver(NIC_A) == "pci-stub"
    assert m.sim.reset_method_of(NIC_A) == "flr bus\n", "the early stage does not write it"
    r = m.run("apply")
    assert r.rc == 0, r.err
    assert m.sim.reset_method_of(NIC_A) == "bus\n"
    assert m.state[NIC_A]["stage"] == "initramfs"
    assert m.state[NIC_A]["original_reset_method"] == "flr bus"
    assert m.run("status").rc == 0
    m.sim.modprobe("e1000e")
    assert m.run("restore").rc == 0
    assert m.sim.reset_method_of(NIC_A) == "flr bus\n"
    assert m.driver(NIC_A) == "e1000e"
