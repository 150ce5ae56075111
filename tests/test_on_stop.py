"""`on_stop: keep` on the simulated kernel: the unit's stop (`restore --on-stop`: systemctl stop,
poweroff) leaves such a device on its target with its record, and says so; `restore` by hand
gives it back; a reload after its entry is edited away keeps it, says so and how to release it,
and the next boot does not hold it; entries without the key are given back as always."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from machine import FakeJournal, Machine
from simkernel import NIC_A, NIC_B

from pcipassd.log import MESSAGE_IDS
from pcipassd.model import ON_STOP

SCRIPT = Path(__file__).resolve().parent.parent / "early" / "pcipassd-early"
HOLD_LIST = "etc/pcipass.early"
RELEASE = f"`pcipassd restore {NIC_A}` gives it back"


def both(m: Machine, on_stop: str = "keep") -> None:
    """NIC_A (a card that hangs on unbind) kept; NIC_B as every entry is by default."""
    m.config(f"""\
        version: 1
        driver: vfio-pci
        devices:
          - address: "{NIC_A}"
            name: gpu
            on_stop: {on_stop}
          - address: "{NIC_B}"
        """)


def only_b(m: Machine) -> None:
    """The config once NIC_A's entry is edited away."""
    m.config(f'version: 1\ndriver: vfio-pci\ndevices:\n  - address: "{NIC_B}"\n')


@pytest.fixture
def kept(m: Machine) -> Machine:
    """The typical machine with NIC_A held on vfio-pci by an entry saying `on_stop: keep`, and
    NIC_B by one that does not."""
    both(m)
    r = m.run("apply")
    assert r.rc == 0, r.err
    assert (m.driver(NIC_A), m.driver(NIC_B)) == ("vfio-pci", "vfio-pci")
    return m


# -- the unit's stop -------------------------------------------------------------------------
def test_the_units_stop_leaves_a_kept_device_on_its_target_and_says_so(
        kept: Machine, journal: FakeJournal) -> None:
    m = kept
    r = m.run("restore", "--on-stop")
    assert r.rc == 0, r.err
    assert m.driver(NIC_A) == "vfio-pci"
    assert m.override(NIC_A) == "vfio-pci"
    assert m.driver(NIC_B) == "e1000e", "an entry without on_stop is given back, as always"
    assert list(m.state) == [NIC_A], "its record stays, for restore to give it back"
    assert m.state[NIC_A]["on_stop"] == "keep"
    [line] = [e for e in journal.device(NIC_A) if e.get("PCIPASS_ACTION") == "keep"]
    assert line["MESSAGE"] == (f"{NIC_A} [8086:10d3] on_stop: keep: left on vfio-pci; "
                               f"{RELEASE} (/etc/pcipass.yaml:4)")
    assert line["PCIPASS_ON_STOP"] == "keep"
    assert line["PRIORITY"] == "6", "as asked: not a warning at every poweroff"
    assert line["MESSAGE_ID"] == MESSAGE_IDS["kept"]
    assert not [e for e in journal.device(NIC_B) if "PCIPASS_ON_STOP" in e]
    assert journal.entries[-1]["MESSAGE"] == "1 restored, 1 kept, 0 failed"
    node = json.loads((m.root / "run/pcipass/node.json").read_text())
    assert [(d["device"], d["action"], d["on_stop"]) for d in node["devices"]] == [
        (NIC_A, "keep", "keep")], "what an agent reads: the device still held, and why"
    status = m.run("status")
    assert f"kept: {NIC_A} stays on vfio-pci when pcipassd stops (on_stop: keep): {RELEASE}" \
        in status.out


def test_the_unit_stops_with_restore_on_stop() -> None:
    unit = (Path(__file__).resolve().parent.parent / "systemd/pcipassd.service").read_text()
    assert "ExecStop=@SBINDIR@/pcipassd restore --on-stop" in unit.splitlines()
    assert "ExecReload=@SBINDIR@/pcipassd apply" in unit.splitlines()


def test_start_after_stop_takes_the_kept_device_as_it_is(kept: Machine) -> None:
    m = kept
    m.run("restore", "--on-stop")
    writes = len(m.sim.writes)
    r = m.run("apply")
    assert r.rc == 0, r.err
    assert (m.driver(NIC_A), m.driver(NIC_B)) == ("vfio-pci", "vfio-pci")
    assert not [w for w in m.sim.writes[writes:] if NIC_A in w[0] or w[1].strip() == NIC_A], \
        "NIC_A is not unbound again"


# -- restore by hand ---------------------------------------------------------------------------
def test_restore_by_hand_gives_a_kept_device_back(kept: Machine) -> None:
    m = kept
    m.run("restore", "--on-stop")
    r = m.run("restore")
    assert r.rc == 0, r.err
    assert (m.driver(NIC_A), m.driver(NIC_B)) == ("e1000e", "e1000e")
    assert m.override(NIC_A) is None
    assert m.state == {}
    assert r.err.splitlines()[-1] == "pcipassd: 1 restored, 0 failed"


def test_restore_by_hand_gives_back_kept_and_other_devices_alike(kept: Machine) -> None:
    assert kept.run("restore").rc == 0
    assert (kept.driver(NIC_A), kept.driver(NIC_B)) == ("e1000e", "e1000e")


def test_restore_with_an_address_gives_back_only_that_device(kept: Machine) -> None:
    m = kept
    r = m.run("restore", NIC_A)
    assert r.rc == 0, r.err
    assert (m.driver(NIC_A), m.driver(NIC_B)) == ("e1000e", "vfio-pci")
    assert list(m.state) == [NIC_B]
    assert (m.root / "run/pcipass/armed").exists(), "NIC_B is still held"
    r = m.run("restore", "00:02.0")
    assert r.rc == 1
    assert r.err.splitlines()[-1] == (
        "pcipassd: error: pcipassd holds no device at 0000:00:02.0: nothing was given back "
        "(hint: `pcipassd status` shows the devices it holds)")
    assert m.run("restore", "00:02.9").rc == 1
    assert m.driver(NIC_B) == "vfio-pci"


# -- reload once the entry is edited away --------------------------------------------------------
def test_reload_after_its_entry_is_edited_away_keeps_it_and_says_how_to_release_it(
        kept: Machine, journal: FakeJournal) -> None:
    m = kept
    only_b(m)
    plan = m.run("plan")
    [row] = [line for line in plan.out.splitlines() if line.startswith(NIC_A)]
    assert " keep " in row and RELEASE in row
    r = m.run("apply")
    assert r.rc == 0, r.err
    assert (m.driver(NIC_A), m.driver(NIC_B)) == ("vfio-pci", "vfio-pci")
    assert m.state[NIC_A]["on_stop"] == "keep"
    [line] = [e for e in journal.device(NIC_A) if e.get("PCIPASS_ACTION") == "keep"]
    assert line["MESSAGE"] == (f"{NIC_A} [8086:10d3] no longer configured, but on_stop: keep: "
                               f"left on vfio-pci; {RELEASE} (/etc/pcipass.yaml:4)")
    assert line["PRIORITY"] == "4"
    assert line["PCIPASS_ON_STOP"] == "keep"
    hold = (m.root / HOLD_LIST).read_text()
    assert NIC_A not in hold and f"dev {NIC_B} 8086:10d3 vfio-pci" in hold, \
        "the next boot holds only what is configured"
    status = m.run("status")
    assert status.rc == 0, status.out
    assert (f"kept: {NIC_A} stays on vfio-pci when pcipassd stops (on_stop: keep; no longer "
            f"configured): {RELEASE}") in status.out
    # the unit's stop leaves it too; `pcipassd restore ADDRESS` is the one line that releases it
    assert m.run("restore", "--on-stop").rc == 0
    assert (m.driver(NIC_A), m.driver(NIC_B)) == ("vfio-pci", "e1000e")
    assert m.run("restore", NIC_A).rc == 0
    assert m.driver(NIC_A) == "e1000e"
    assert m.state == {}


def test_a_config_that_lists_no_device_any_more_keeps_it_too(kept: Machine) -> None:
    m = kept
    m.config("version: 1\ndevices: []\n")
    m.config("version: 1\n")
    r = m.run("apply")
    assert r.rc == 0, r.err
    assert (m.driver(NIC_A), m.driver(NIC_B)) == ("vfio-pci", "e1000e")
    assert "no longer configured, but on_stop: keep" in r.err
    assert not (m.root / HOLD_LIST).exists()


def test_the_entry_switched_back_to_restore_is_given_back_on_stop(kept: Machine) -> None:
    m = kept
    both(m, "restore")
    assert m.run("apply").rc == 0
    assert "on_stop" not in m.state[NIC_A], "absent reads as restore"
    assert m.run("restore", "--on-stop").rc == 0
    assert (m.driver(NIC_A), m.driver(NIC_B)) == ("e1000e", "e1000e")


def test_the_next_boot_does_not_hold_a_kept_device_whose_entry_is_gone(kept: Machine) -> None:
    """What a reload decided is what the next boot does: the device stays held until restore
    or reboot, and the boot, whose hold list no longer names it, leaves it to its driver."""
    m = kept
    only_b(m)
    assert m.run("apply").rc == 0
    assert m.run("restore", "--on-stop").rc == 0  # poweroff
    assert m.driver(NIC_A) == "vfio-pci"
    # power on: /run is empty, the devices appear without a driver, the initramfs holds from
    # the hold list, then udev's coldplug probes every device
    shutil.rmtree(m.root / "run/pcipass")
    for bdf, group in ((NIC_A, 2), (NIC_B, 3)):
        m.sim.remove_device(bdf)
        m.sim.add_device(bdf, 0x8086, 0x10D3, subsystem=(0x8086, 0xA01F), driver=None,
                         iommu_group=group)
    env = {"PATH": os.environ["PATH"], "PCIPASS_ROOT": str(m.root)}
    stage = subprocess.run(["sh", str(SCRIPT), "boot", "initramfs"], env=env, check=False,
                           capture_output=True, text=True, timeout=30)
    assert stage.returncode == 0, stage.stderr
    for bdf in (NIC_A, NIC_B):
        m.sim.write(m.root / "sys/bus/pci/drivers_probe", bdf)
    assert (m.override(NIC_A), m.override(NIC_B)) == (None, "vfio-pci")
    r = m.run("apply")
    assert r.rc == 0, r.err
    assert (m.driver(NIC_A), m.driver(NIC_B)) == ("e1000e", "vfio-pci")
    assert list(m.state) == [NIC_B]


# -- entries that do not ask -------------------------------------------------------------------
def test_entries_without_on_stop_are_given_back_on_stop_and_their_records_do_not_name_it(
        m: Machine) -> None:
    m.with_guest_nic()
    assert m.run("apply").rc == 0
    assert "on_stop" not in m.state[NIC_A], "a file older pcipassd versions read as before"
    r = m.run("restore", "--on-stop")
    assert r.rc == 0
    assert m.driver(NIC_A) == "e1000e"
    assert r.err.splitlines()[-1] == "pcipassd: 1 restored, 0 failed"


def test_an_entry_edited_away_without_on_stop_is_given_back_on_reload(m: Machine) -> None:
    m.config(f'version: 1\ndevices:\n  - address: "{NIC_A}"\n  - address: "{NIC_B}"\n')
    m.run("apply")
    m.config(f'version: 1\ndevices:\n  - address: "{NIC_B}"\n')
    assert m.run("apply").rc == 0
    assert (m.driver(NIC_A), m.driver(NIC_B)) == ("e1000e", "pci-stub")


# -- the state file ------------------------------------------------------------------------------
def test_a_record_without_on_stop_reads_as_restore_and_a_wrong_one_is_left_alone(
        kept: Machine) -> None:
    m = kept
    path = m.root / "run/pcipass/state.json"
    data = json.loads(path.read_text())
    assert data["format"] == 2
    for record in data["devices"]:
        if record["bdf"] == NIC_A:
            del record["on_stop"]  # as a pcipassd without the field wrote it
        else:
            record["on_stop"] = "maybe"
    path.write_text(json.dumps(data))
    r = m.run("restore", "--on-stop")
    assert r.rc == 1
    assert m.driver(NIC_A) == "e1000e"
    assert m.driver(NIC_B) == "vfio-pci", "a bad record's device is not touched"
    assert (f'state.json: device {NIC_B}: on_stop: "maybe" is not one of restore, keep; '
            "left as it is") in r.err


# -- the schema ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "hint"), [
    ("kep", "did you mean 'keep'?"),
    ("yes", "yes/no/on/off are true/false in YAML; write restore or keep"),
    ("[keep]", "expected one of: restore, keep"),
])
def test_a_wrong_value_is_one_line_with_file_line_and_a_hint(m: Machine, value: str,
                                                             hint: str) -> None:
    both(m, value)
    for verb in ("validate", "apply"):
        r = m.run(verb)
        assert r.rc == 2
        text = r.out + r.err
        assert "/etc/pcipass.yaml:6:14: devices[0].on_stop: " in text, text
        assert "is not restore or keep (restore: give the device back when pcipassd stops, " \
               "the default; keep: leave it held)" in text
        assert hint in text
    assert m.driver(NIC_A) == "e1000e"


def test_the_schema_knows_both_values() -> None:
    from pcipassd.config import schema_text  # noqa: PLC0415

    schema = json.loads(schema_text())
    assert tuple(schema["$defs"]["device"]["properties"]["on_stop"]["enum"]) == ON_STOP


def test_two_entries_that_disagree_on_on_stop_for_a_device_are_refused(m: Machine) -> None:
    m.config(f"""\
        version: 1
        devices:
          - id: "8086:10d3"
          - address: "{NIC_A}"
            on_stop: keep
        """)
    r = m.run("apply")
    assert r.rc == 1
    assert (f"/etc/pcipass.yaml:4:5: devices[1]: {NIC_A} is also selected by "
            "/etc/pcipass.yaml:3 with on_stop: restore, here with on_stop: keep") in r.err
    assert "give both entries the same on_stop, or remove one" in r.err
    assert (m.driver(NIC_A), m.driver(NIC_B)) == ("e1000e", "e1000e")


def test_two_address_entries_that_disagree_on_on_stop_are_invalid_offline(m: Machine) -> None:
    m.config(f"""\
        version: 1
        devices:
          - address: "00:02.*"
          - address: "{NIC_A}"
            on_stop: keep
        """)
    r = m.run("validate", "--offline")
    assert r.rc == 2
    assert (f"/etc/pcipass.yaml:4:5: devices[1]: {NIC_A} is also selected by "
            "/etc/pcipass.yaml:3 with on_stop: restore, here with on_stop: keep") in r.out
