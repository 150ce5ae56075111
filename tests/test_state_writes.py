"""The state file names every device before it is touched, and keeps its record until the
device is back; a restore cut short before its save is safe to run again."""

from __future__ import annotations

from pathlib import Path

import pytest
from machine import Machine
from simkernel import NIC_A, NIC_B, NIC_E1000, ORIGINAL, Intercept

from pcipassd.cli import main
from pcipassd.state import State

THREE = f"""\
    version: 1
    devices:
      - id: "8086:10d3"
        count: 2
      - address: "{NIC_E1000}"
    """


@pytest.fixture(autouse=True)
def configured(m: Machine) -> None:
    """Every test here starts from the typical machine configured with THREE."""
    m.config(THREE)


@pytest.fixture
def saves(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Each State.save, as the BDFs it wrote."""
    done: list[list[str]] = []
    save = State.save

    def counted(self: State) -> None:
        save(self)
        done.append(sorted(self.records))

    monkeypatch.setattr(State, "save", counted)
    return done


class Watching(Intercept):
    """The simulated kernel, checking at every unbind that the state file on disk already names
    the device with the driver it is leaving (for apply) or its record (for restore)."""

    def __init__(self, m: Machine) -> None:
        super().__init__(m.sim)
        self.m = m
        self.checked: list[str] = []

    def write(self, path: Path, data: str) -> None:
        if path.name == "unbind":
            record = self.m.state.get(data)
            assert record is not None, f"{data} unbound before it was recorded"
            assert record["original_driver"] == ORIGINAL[data]
            self.checked.append(data)
        self.m.sim.write(path, data)


def test_apply_records_every_device_before_touching_it(m: Machine) -> None:
    kernel = Watching(m)
    assert main(["--root", str(m.root), "apply"], kernel=kernel) == 0
    assert kernel.checked == [NIC_A, NIC_B, NIC_E1000]
    assert {bdf: m.driver(bdf) for bdf in ORIGINAL} == dict.fromkeys(ORIGINAL, "pci-stub")


def test_restore_keeps_each_record_until_the_device_is_back(m: Machine) -> None:
    assert m.run("apply").rc == 0
    kernel = Watching(m)
    assert main(["--root", str(m.root), "restore"], kernel=kernel) == 0
    assert kernel.checked == [NIC_A, NIC_B, NIC_E1000], "each still on disk while moved"
    assert m.state == {}
    assert {bdf: m.driver(bdf) for bdf in ORIGINAL} == ORIGINAL


def test_a_restore_that_never_made_its_final_save_is_safe_to_run_again(m: Machine) -> None:
    """Power lost after the devices were given back, before the state file said so: the next
    restore finds them on their own drivers and changes nothing but the file."""
    assert m.run("apply").rc == 0
    state = m.root / "run/pcipass/state.json"
    held = state.read_text()
    assert m.run("restore").rc == 0
    state.write_text(held)
    before = len(m.sim.writes)
    r = m.run("restore")
    assert (r.rc, r.err.splitlines()[-1]) == (0, "pcipassd: 3 restored, 0 failed")
    assert not [w for w in m.sim.writes[before:] if w[0].endswith("/unbind")], "nothing unbound"
    assert {bdf: m.driver(bdf) for bdf in ORIGINAL} == ORIGINAL
    assert m.state == {}


def test_a_device_in_use_is_not_recorded(m: Machine, saves: list[list[str]]) -> None:
    """Nothing moves a device that a bind leaves alone, so nothing records it either."""
    m.config(f'version: 1\ndevices:\n  - address: "{NIC_A}"\n  - address: "{NIC_B}"\n'
             "    driver: vfio-pci\n")
    assert m.run("apply").rc == 0
    (m.root / "proc/4242/fd").mkdir(parents=True)
    (m.root / "proc/4242/comm").write_text("qemu-system-x86\n")
    group = Path(m.root / "sys/bus/pci/devices" / NIC_B / "iommu_group").resolve().name
    (m.root / "proc/4242/fd/9").symlink_to(f"/dev/vfio/{group}")
    m.config(f'version: 1\ndevices:\n  - address: "{NIC_A}"\n  - address: "{NIC_B}"\n')
    saves.clear()
    r = m.run("apply")
    assert r.rc == 3  # holds devices, and one is left where it is
    assert f"qemu-system-x86 (pid 4242) has {NIC_B} open" in r.err
    assert (m.driver(NIC_A), m.driver(NIC_B)) == ("pci-stub", "vfio-pci")
    assert m.state[NIC_B]["target"] == "vfio-pci", "still recorded as it was"
    assert saves == []
