"""Forced binds are visible, the safe choice is offered first, and the chipset is host-critical:
end to end through the CLI on a workstation-like host (tests/workstation.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hosttree import FakeHost
from machine import FakeJournal, Machine
from simkernel import SimKernel
from workstation import (
    GPU_AUDIO,
    I2C,
    LPC,
    NIC_2,
    NIC_3,
    NICS,
    PCH,
    PCH_AUDIO,
    PCH_GROUP,
    PMC,
    SMBUS,
    SPI,
    SRAM,
    THERMAL,
    UPLINK,
    XHCI,
    build_workstation,
    evidence,
    uplink_gone,
)

from pcipassd import log as logsetup
from pcipassd.guard import Reason, critical_devices
from pcipassd.host import Host
from pcipassd.model import CHIPSET
from pcipassd.state import State

FORCED_UPLINK = "carries the default route via eth0"


@pytest.fixture
def ws(sim: SimKernel, capsys: pytest.CaptureFixture[str]) -> Machine:
    build_workstation(sim)
    evidence(sim)
    return Machine(sim, capsys)


def config(m: Machine, body: str) -> None:
    m.config("version: 1\ndevices:\n" + body)


# --- the safe choice first ----------------------------------------------------------------------

ID_ENTRY = '  - id: "8086:1533"\n    driver: vfio-pci\n'


def test_an_id_entry_matching_the_uplink_offers_the_other_nics_by_address_first(
        ws: Machine) -> None:
    config(ws, ID_ENTRY)
    r = ws.run("plan")
    assert r.rc == 1
    problem = r.out.splitlines()[-7:]
    assert problem == [
        f"/etc/pcipass.yaml:3:5: devices[0]: refusing {UPLINK}: {UPLINK} {FORCED_UPLINK}",
        "    hint: to bind only the matches the host can spare, replace the entry with:",
        f'      - address: "{NIC_2}"',
        "        driver: vfio-pci",
        f'      - address: "{NIC_3}"',
        "        driver: vfio-pci",
        f"    or add `force: [network]` to take {UPLINK} too, which {FORCED_UPLINK}: the host "
        "loses its network",
    ], "one problem: FILE:LINE, then the hint's lines"
    [entry] = json.loads(ws.run("plan", "--json").out)["problems"]
    assert entry["line"] == 3
    assert entry["hint"].splitlines()[1:3] == [f'  - address: "{NIC_2}"', "    driver: vfio-pci"]

    pasted = "\n".join(line[4:] for line in problem[2:6])  # as the admin copies it
    config(ws, pasted + "\n")
    r = ws.run("apply")
    assert r.rc == 0, r.err
    assert [ws.driver(nic) for nic in NICS] == ["igb", "vfio-pci", "vfio-pci"]
    assert "forced" not in r.err


def test_a_count_entry_offers_the_safe_matches_too_and_apply_says_so(ws: Machine) -> None:
    config(ws, '  - id: "8086:1533"\n    count: 3\n')
    r = ws.run("apply")
    assert r.rc == 1
    assert (f'(hint: to bind only the matches the host can spare, replace the entry with:\n'
            f'      - address: "{NIC_2}"\n        driver: pci-stub\n'
            f'      - address: "{NIC_3}"\n        driver: pci-stub\n'
            f"    or add `force: [network]` to take {UPLINK} too") in r.err
    assert [ws.driver(nic) for nic in NICS] == ["igb"] * 3, "refused whole: binds nothing"


def test_one_device_refused_keeps_the_one_line_hint(ws: Machine) -> None:
    config(ws, f'  - address: "{UPLINK}"\n')
    r = ws.run("plan")
    assert r.out.splitlines()[-1] == ("    hint: unbinding it could cut the host off; add "
                                      "`force: [network]` to the entry to bind it anyway")


# --- a forced bind is flagged everywhere -------------------------------------------------------

def test_forced_uplink_is_flagged_by_every_verb_and_in_the_journal(
        ws: Machine, capsys: pytest.CaptureFixture[str]) -> None:
    config(ws, ID_ENTRY + "    force: [network]\n")
    r = ws.run("plan")
    assert r.rc == 0, r.out
    notes = {line.split()[0]: line for line in r.out.splitlines()[1:4]}
    assert notes[UPLINK].endswith(f"bind    /etc/pcipass.yaml:3  forced: {FORCED_UPLINK}")
    assert "forced" not in notes[NIC_2] + notes[NIC_3], "only the device force: took"
    steps = {s["device"]: s for s in json.loads(ws.run("plan", "--json").out)["steps"]}
    assert {bdf: s["forced"] for bdf, s in steps.items()} == {
        UPLINK: FORCED_UPLINK, NIC_2: None, NIC_3: None}

    r = ws.run("apply")
    assert r.rc == 0, r.err
    assert [ws.driver(nic) for nic in NICS] == ["vfio-pci"] * 3
    assert (f"pcipassd: warning: {UPLINK} [8086:1533] forced: {FORCED_UPLINK} "
            "(/etc/pcipass.yaml:3)") in r.err.splitlines()
    assert r.err.count("forced") == 1
    assert ws.state[UPLINK]["forced"] == FORCED_UPLINK
    assert "forced" not in ws.state[NIC_2], "written only when set"

    # Once held, eth0 is gone: only the record knows the uplink was taken by force.
    uplink_gone(FakeHost(ws.root))
    assert not critical_devices(Host(ws.root)).get(UPLINK)
    r = ws.run("status")
    assert r.rc == 0
    assert f"warning: {UPLINK}: forced: {FORCED_UPLINK}" in r.out.splitlines()
    devices = {d["device"]: d for d in json.loads(ws.run("status", "--json").out)["devices"]}
    assert (devices[UPLINK]["forced"], devices[NIC_2]["forced"]) == (FORCED_UPLINK, None)
    r = ws.run("list", "--class", "02")
    row = next(line for line in r.out.splitlines() if line.startswith(f"  {UPLINK}"))
    assert f"held (late); forced: {FORCED_UPLINK}" in row
    rows = {d["device"]: d for g in json.loads(ws.run("list", "--json").out)["groups"]
            for d in g["devices"]}
    assert (rows[UPLINK]["forced"], rows[NIC_2]["forced"]) == (FORCED_UPLINK, None)
    r = ws.run("plan")
    assert f"unchanged  /etc/pcipass.yaml:3  forced: {FORCED_UPLINK}" in r.out


def test_the_journal_gets_the_forced_warning_with_its_message_id(
        ws: Machine, journal: FakeJournal) -> None:
    config(ws, ID_ENTRY + "    force: [network]\n")
    assert ws.run("apply").rc == 0
    forced_id = logsetup.MESSAGE_IDS["forced"]
    [warning] = [e for e in journal.entries if e.get("MESSAGE_ID") == forced_id]
    assert warning["MESSAGE"] == (f"{UPLINK} [8086:1533] forced: {FORCED_UPLINK} "
                                  "(/etc/pcipass.yaml:3)")
    assert warning["PRIORITY"] == "4"
    assert (warning["PCIPASS_DEVICE"], warning["PCIPASS_FORCED"]) == (UPLINK, FORCED_UPLINK)
    bound = [e for e in journal.entries if e.get("MESSAGE_ID") == logsetup.MESSAGE_IDS["bind"]]
    assert {e["PCIPASS_DEVICE"]: e.get("PCIPASS_FORCED") for e in bound} == {
        UPLINK: FORCED_UPLINK, NIC_2: None, NIC_3: None}
    assert list(logsetup.MESSAGE_IDS.values()).count(forced_id) == 1, "its own MESSAGE_ID"

    journal.entries.clear()
    uplink_gone(FakeHost(ws.root))
    assert ws.run("apply").rc == 0  # a reload: still flagged, from the record
    assert [e["PCIPASS_DEVICE"] for e in journal.entries
            if e.get("MESSAGE_ID") == forced_id] == [UPLINK]
    journal.entries.clear()
    assert ws.run("restore").rc == 0
    [back] = [e for e in journal.entries if e.get("PCIPASS_DEVICE") == UPLINK]
    assert (back["PCIPASS_ACTION"], back["PCIPASS_FORCED"]) == ("restore", FORCED_UPLINK)


def test_a_record_from_before_the_forced_field_learns_it_on_the_next_apply(ws: Machine) -> None:
    config(ws, f'  - address: "{UPLINK}"\n    force: [network]\n')
    assert ws.run("apply").rc == 0
    path = ws.root / "run/pcipass/state.json"
    data = json.loads(path.read_text())
    del data["devices"][0]["forced"]  # as an older pcipassd wrote it
    path.write_text(json.dumps(data))
    r = ws.run("apply")
    assert "0 bound, 1 unchanged" in r.err
    assert ws.state[UPLINK]["forced"] == FORCED_UPLINK


def test_a_state_file_from_before_the_forced_field_still_loads(ws: Machine) -> None:
    config(ws, f'  - address: "{NIC_2}"\n')
    assert ws.run("apply").rc == 0
    path = ws.root / "run/pcipass/state.json"
    data = json.loads(path.read_text())
    assert "forced" not in data["devices"][0]
    data["devices"][0]["forced"] = "carries \x1b[2J the default route"
    path.write_text(json.dumps(data))
    state = State(Host(ws.root)).load()
    assert [(b.bdf, b.problem) for b in state.invalid] == [
        (NIC_2, 'forced: "carries \\u001b[2J the default route" is not a line of text')]
    data["devices"][0]["forced"] = "carries / (nvme0n1p2)"
    path.write_text(json.dumps(data))
    assert State(Host(ws.root)).load().records[NIC_2].forced == "carries / (nvme0n1p2)"


# --- the chipset -------------------------------------------------------------------------------

def test_the_chipset_functions_are_host_critical_by_class_and_place(ws: Machine) -> None:
    found = critical_devices(Host(ws.root))
    chipset = {bdf: [r.text for r in reasons] for bdf, reasons in found.items()
               if any(r.kind == CHIPSET for r in reasons)}
    assert chipset == {
        LPC: ["is the chipset's LPC/eSPI bridge (SuperIO, TPM, PS/2, firmware flash)"],
        PMC: ["is the chipset's power management controller (sleep states, resets)"],
        SMBUS: ["is the chipset's SMBus controller (sensors, memory SPD)"],
        SPI: ["is the chipset's serial bus controller (the firmware flash's SPI controller)"],
    }
    for spared in (PCH_AUDIO, SRAM, THERMAL, XHCI, I2C):  # 0403, 0500, 1180, 0c03, 0c80 at 15.0
        assert spared not in found, spared


def test_an_lpc_bridge_on_an_add_in_card_is_not_the_chipset(tmp_path: Any) -> None:
    fake = FakeHost(tmp_path)
    fake.pci("0000:00:1f.0", cls=0x060100)
    fake.pci("0000:00:1c.3", "0000:06:00.0", cls=0x060100)  # a PCIe-to-ISA card, for old cards
    fake.pci("0000:00:1c.4", "0000:07:00.0", cls=0x0C0500)  # an SMBus function on a card
    assert critical_devices(fake.host) == {"0000:00:1f.0": (Reason(
        "0000:00:1f.0", "is the chipset's LPC/eSPI bridge (SuperIO, TPM, PS/2, firmware flash)",
        CHIPSET),)}


CHIPSET_SHARED = (f"IOMMU group {PCH_GROUP} also contains the chipset, which the host needs: "
                f"{LPC} is the chipset's LPC/eSPI bridge (SuperIO, TPM, PS/2, firmware flash); "
                f"{PMC} is the chipset's power management controller (sleep states, resets); "
                f"{SMBUS} is the chipset's SMBus controller (sensors, memory SPD); "
                f"{SPI} is the chipset's serial bus controller (the firmware flash's SPI "
                "controller)")


@pytest.mark.parametrize("force", ["", "    force: true\n", "    force: [chipset]\n"])
def test_group_bind_on_the_pch_audio_refuses_the_group_and_names_the_chipset(
        ws: Machine, force: str) -> None:
    config(ws, f'  - address: "{PCH_AUDIO}"\n    group: bind\n' + force)
    r = ws.run("apply")
    assert r.rc == 1
    assert (f"error: /etc/pcipass.yaml:3:5: devices[0]: refusing {PCH_AUDIO}: {CHIPSET_SHARED} "
            "(hint: `group: bind` never binds the chipset: this group cannot be passed through "
            "as a whole)") in r.err
    assert r.err.count("refusing") == 1, "said once"
    assert [ws.driver(bdf) for bdf in PCH] == [
        "lpc_ich", None, "snd_hda_intel", "i801_smbus", "intel-spi"]
    assert not ws.sim.writes


def test_the_pch_audio_alone_is_refused_without_suggesting_group_bind(ws: Machine) -> None:
    config(ws, f'  - address: "{PCH_AUDIO}"\n')
    r = ws.run("plan")
    assert r.rc == 1
    assert r.out.splitlines()[-2:] == [
        f"/etc/pcipass.yaml:3:5: devices[0]: refusing {PCH_AUDIO}: {CHIPSET_SHARED}",
        "    hint: the chipset stays with the host (`group: bind` never binds it): this group "
        "cannot be passed through as a whole"]


def test_force_true_does_not_cover_the_chipset_and_force_chipset_does(ws: Machine) -> None:
    config(ws, '  - address: "0000:00:1f.*"\n    force: true\n')
    r = ws.run("apply")
    assert r.rc == 1
    assert (f"refusing {LPC}: {LPC} is the chipset's LPC/eSPI bridge (SuperIO, TPM, PS/2, "
            "firmware flash) (hint: unbinding it could cut the host off; add `force: [chipset]` "
            "to the entry to bind it anyway (`force: true` does not cover the chipset))"
            ) in r.err
    assert not ws.sim.writes

    config(ws, '  - address: "0000:00:1f.*"\n    force: [chipset]\n')
    r = ws.run("apply")
    assert r.rc == 0, r.err
    assert [ws.driver(bdf) for bdf in PCH] == ["pci-stub"] * 5
    forced = [line.split()[2] for line in r.err.splitlines() if " forced: " in line]
    assert forced == [LPC, PMC, SMBUS, SPI]
    assert ws.state[SMBUS]["forced"] == "is the chipset's SMBus controller (sensors, memory SPD)"
    assert "forced" not in ws.state[PCH_AUDIO]


def test_list_does_not_call_the_pch_group_passable(ws: Machine) -> None:
    r = ws.run("list")
    assert f"IOMMU group {PCH_GROUP}: blocked: {LPC} is the chipset's LPC/eSPI bridge" in r.out
    groups = {g["group"]: g for g in json.loads(ws.run("list", "--json").out)["groups"]}
    assert not groups[PCH_GROUP]["passable"]
    assert groups[PCH_GROUP]["verdict"] == "blocked: " + CHIPSET_SHARED.split(": ", 1)[1]
    assert groups["7"]["verdict"] == "can be passed through as a whole (2 endpoints)", (
        "the xHCI controller with the PCH's shared SRAM")
    assert groups["8"]["passable"] and groups["9"]["passable"]  # thermal, Serial IO I2C
    assert groups["2"]["passable"], GPU_AUDIO
