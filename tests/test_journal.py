"""What reaches journald under systemd: structured PCIPASS_* fields on every device message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from machine import FakeJournal, Machine
from simkernel import NIC_A, NIC_B

from pcipassd import log as logsetup


def test_bind_sends_the_structured_fields(m: Machine, journal: FakeJournal) -> None:
    m.with_guest_nic()
    r = m.run("apply")
    assert r.rc == 0
    assert r.err == "", "under systemd everything goes to the journal"
    [entry] = journal.device(NIC_A)
    assert entry["MESSAGE"] == f"{NIC_A} [8086:10d3] e1000e -> pci-stub (/etc/pcipass.yaml:3)"
    assert entry["PRIORITY"] == "6"
    assert entry["SYSLOG_IDENTIFIER"] == "pcipassd"
    assert {k: v for k, v in entry.items() if k.startswith("PCIPASS_")} == {
        "PCIPASS_DEVICE": NIC_A,
        "PCIPASS_ID": "8086:10d3",
        "PCIPASS_DRIVER_FROM": "e1000e",
        "PCIPASS_DRIVER_TO": "pci-stub",
        "PCIPASS_ACTION": "bind",
        "PCIPASS_ENTRY": "/etc/pcipass.yaml:3",
        "PCIPASS_NAME": "guest-nic",
    }
    assert journal.entries[-1]["MESSAGE"] == "1 bound, 0 unchanged, 0 restored, 0 failed"
    assert not journal.device(NIC_B)


def test_unchanged_and_restore_actions(m: Machine, journal: FakeJournal) -> None:
    m.with_guest_nic()
    m.run("apply")
    m.run("apply")
    m.run("restore")
    actions = [(e["PCIPASS_ACTION"], e["PCIPASS_DRIVER_FROM"], e["PCIPASS_DRIVER_TO"])
               for e in journal.device(NIC_A)]
    assert actions == [("bind", "e1000e", "pci-stub"), ("unchanged", "pci-stub", "pci-stub"),
                       ("restore", "pci-stub", "e1000e")]
    assert journal.entries[-1]["MESSAGE"] == "1 restored, 0 failed"


def test_failure_is_an_error_with_action_fail(m: Machine, journal: FakeJournal) -> None:
    m.with_guest_nic()
    m.sim.modprobe("pci_stub")
    m.sim.set_probe_error("pci-stub", NIC_A, 12)
    assert m.run("apply").rc == 1
    entries = journal.device(NIC_A)
    fail = [e for e in entries if e["PCIPASS_ACTION"] == "fail"]
    assert len(fail) == 1
    assert fail[0]["PRIORITY"] == "3"
    assert "the kernel bound it to no driver, not to pci-stub" in fail[0]["MESSAGE"]
    assert entries[-1]["PCIPASS_ACTION"] == "restore"  # the rollback
    assert entries[-1]["PCIPASS_DRIVER_TO"] == "e1000e"


def test_config_errors_reach_the_journal_with_file_line_col(m: Machine,
                                                            journal: FakeJournal) -> None:
    m.config('version: 1\ndevices:\n  - address: "0000:00:02"\n')
    assert m.run("apply").rc == 2
    messages = [e["MESSAGE"] for e in journal.entries]
    assert messages[0].startswith("/etc/pcipass.yaml:3:14: devices[0].address: '0000:00:02' is "
                                  "not a PCI address")
    assert all(e["PRIORITY"] == "3" for e in journal.entries)


def test_without_systemd_python_it_logs_to_stderr(m: Machine,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    m.with_guest_nic()
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    monkeypatch.setattr(logsetup, "_journal_send", lambda: None)
    r = m.run("apply")
    assert r.rc == 0
    # sd-daemon(3) priority prefixes, so the journal keeps priorities; it adds the name itself
    assert f"<6>{NIC_A} [8086:10d3] e1000e -> pci-stub (/etc/pcipass.yaml:3)" in r.err.splitlines()
    assert "pcipassd:" not in r.err
    m.config('version: 1\ndevices:\n  - address: "0000:07:00.0"\n')
    assert "<3>/etc/pcipass.yaml:3:5: devices[0]: no device at 0000:07:00.0" in m.run("apply").err


def test_the_journal_gets_what_systemd_journal_send_would_send(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """pcipassd calls systemd-python's C sender itself (importing systemd.journal costs a boot
    run time): the same fields as systemd.journal.send, once the real module is installed."""
    journal = pytest.importorskip("systemd.journal", reason="systemd-python not installed")
    import systemd._journal  # noqa: PLC0415

    sent: dict[str, list[tuple[Any, ...]]] = {"pcipassd": [], "systemd": []}
    monkeypatch.setattr(systemd._journal, "sendv", lambda *a: sent["pcipassd"].append(a))
    monkeypatch.setattr(journal, "sendv", lambda *a: sent["systemd"].append(a))
    fields = {"PRIORITY": "6", "SYSLOG_IDENTIFIER": "pcipassd", "CODE_FILE": "/x/apply.py",
              "CODE_LINE": 42, "CODE_FUNC": "bind", "MESSAGE_ID": logsetup.MESSAGE_IDS["bind"],
              "PCIPASS_DEVICE": NIC_A}
    send = logsetup._journal_send()
    assert send is not None
    send("0000:00:02.0 [8086:10d3] e1000e -> pci-stub\nsecond line", **fields)
    journal.send("0000:00:02.0 [8086:10d3] e1000e -> pci-stub\nsecond line", **fields)
    ours, theirs = sent["pcipassd"], sent["systemd"]
    assert len(ours) == len(theirs) == 1
    assert sorted(ours[0]) == sorted(theirs[0])
    assert "CODE_LINE=42" in ours[0]


CATALOG = Path(__file__).resolve().parent.parent / "systemd" / "pcipassd.catalog"


def catalog_subjects() -> dict[str, str]:
    """The catalog's entries: MESSAGE_ID -> Subject (journalctl's format: `-- ID` headers)."""
    entries: dict[str, str] = {}
    current = ""
    for line in CATALOG.read_text().splitlines():
        if line.startswith("-- "):
            current = line[3:].strip()
            entries[current] = ""
        elif line.startswith("Subject: ") and current:
            entries[current] = line[len("Subject: "):]
    return entries


def test_every_kind_of_event_has_a_catalog_entry() -> None:
    subjects = catalog_subjects()
    assert set(subjects) == set(logsetup.MESSAGE_IDS.values())
    assert all(len(i) == 32 and int(i, 16) for i in subjects)
    assert all(subjects.values())


def test_events_carry_their_message_id(m: Machine, journal: FakeJournal) -> None:
    m.config(f"""\
        version: 1
        devices:
          - address: "{NIC_A}"
          - address: "0000:07:00.0"
        """)
    m.run("apply")
    m.run("restore")
    ids = {v: k for k, v in logsetup.MESSAGE_IDS.items()}
    kinds = [ids[e["MESSAGE_ID"]] for e in journal.entries if "MESSAGE_ID" in e]
    assert kinds == ["refused", "bind", "reboot needed", "restore"]
    subject = catalog_subjects()[logsetup.MESSAGE_IDS["bind"]]
    assert subject == "PCI device @PCIPASS_DEVICE@ handed to @PCIPASS_DRIVER_TO@"
