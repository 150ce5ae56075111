"""/run/pcipass/state.json as untrusted input, and a state file that cannot be saved: what the
admin sees (the driver each device ends on, the exit code, the one line on stderr)."""

from __future__ import annotations

import errno
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from machine import Machine, Result, deadline
from simkernel import NIC_A, NIC_B, NIC_E1000, ORIGINAL, Intercept

from pcipassd.cli import main

STATE = "/run/pcipass/state.json"
THREE = f"""\
    version: 1
    devices:
      - id: "8086:10d3"
      - address: "{NIC_E1000}"
    """


@pytest.fixture
def fresh(m: Machine) -> Machine:
    """The typical machine configured with THREE, nothing bound yet."""
    m.config(THREE)
    return m


@pytest.fixture
def recorded(fresh: Machine) -> Machine:
    """The typical machine with both e1000e NICs and the e1000 on pci-stub, recorded."""
    r = fresh.run("apply")
    assert r.rc == 0, r.err
    assert set(fresh.state) == set(ORIGINAL)
    return fresh


def state_file(m: Machine) -> Path:
    return m.root / STATE.lstrip("/")


def records(m: Machine) -> list[dict[str, Any]]:
    data = json.loads(state_file(m).read_text())
    devices: list[dict[str, Any]] = data["devices"]
    return sorted(devices, key=lambda r: str(r.get("bdf")))


def write_records(m: Machine, devices: list[Any], fmt: int = 2) -> None:
    state_file(m).write_text(json.dumps({"format": fmt, "devices": devices}))


def errors(r: Result) -> list[str]:
    assert "Traceback" not in r.err
    return [line for line in r.err.splitlines() if line.startswith("pcipassd: error: ")]


def drivers(m: Machine) -> dict[str, str | None]:
    return {bdf: m.driver(bdf) for bdf in ORIGINAL}


def touched(m: Machine, bdf: str, since: int) -> list[tuple[str, str]]:
    """The sysfs writes since `since` that concern `bdf`."""
    return [w for w in m.sim.writes[since:] if bdf in w[0] or bdf in w[1]]


# -- a file that cannot be read as a whole: one line, nothing touched ------------------------
VALID = {"format": 2, "devices": []}
DAMAGED: dict[str, tuple[bytes, str]] = {
    "a list": (b"[]", "it is a list, not an object with format and devices"),
    "null": (b"null", "it is null"),
    "a number": (b"1", "it is a number"),
    "a string": (b'"0000:00:02.0"', "it is a string"),
    "100,000 [": (b"[" * 100_000, "nested too deeply"),
    "nested 50 deep": (b"[" * 50 + b"]" * 50, "nested too deeply"),
    "empty": (b"", "it is not JSON (line 1, column 1)"),
    "truncated": (b'{"format": 2, "devices": [{"bdf": "0000:00:02.0", ', "it is not JSON"),
    "not UTF-8": (b'{"format": 2, "devices": ["\xff\xfe"]}', "it is not JSON"),
    "binary": (bytes(range(256)), "it is not JSON"),
    "format 3": (b'{"format": 3, "devices": []}', "format is 3, not 1 or 2"),
    "format true": (b'{"format": true, "devices": []}', "format is true, not 1 or 2"),
    "format string": (b'{"format": "2", "devices": []}', 'format is "2", not 1 or 2'),
    "no format": (b'{"devices": []}', "it has no format"),
    "devices an object": (b'{"format": 2, "devices": {}}', "devices is an object, not a list"),
    "no devices": (b'{"format": 2}', "it has no devices"),
    "over 1 MiB": (b'{"format": 2, "devices": []}' + b" " * (1 << 20), "larger than 1 MiB"),
}


@pytest.mark.parametrize("name", list(DAMAGED))
def test_a_damaged_file_stops_every_verb_in_one_line_and_touches_nothing(
        recorded: Machine, name: str) -> None:
    m = recorded
    body, why = DAMAGED[name]
    state_file(m).write_bytes(body)
    before = len(m.sim.writes)
    for verb in ("restore", "status", "apply"):
        with deadline(10):
            r = m.run(verb)
        assert r.rc == 1, verb
        assert errors(r) == [line for line in r.err.splitlines() if line], r.err
        (line,) = errors(r)
        assert line.startswith(f"pcipassd: error: {STATE} is damaged: ")
        assert why in line
        assert ("(hint: pcipassd moves no device while it cannot read this file: move it "
                "away") in line
        assert drivers(m) == dict.fromkeys(ORIGINAL, "pci-stub")
        assert m.sim.writes[before:] == []
        assert state_file(m).read_bytes() == body, "left for the admin to look at"


@pytest.mark.parametrize("kind", ["a directory", "a FIFO", "a socket", "a symlink"])
def test_state_json_that_is_not_a_regular_file_is_named_and_never_hangs(
        recorded: Machine, kind: str, tmp_path: Path) -> None:
    m = recorded
    path = state_file(m)
    saved = path.read_bytes()
    path.unlink()
    if kind == "a directory":
        path.mkdir()
    elif kind == "a FIFO":
        os.mkfifo(path)
    elif kind == "a socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()
    else:  # a valid state, elsewhere: still not followed
        (tmp_path / "elsewhere.json").write_bytes(saved)
        path.symlink_to(tmp_path / "elsewhere.json")
    before = len(m.sim.writes)
    for verb in ("restore", "status", "apply"):
        with deadline(10):  # reading a FIFO without a writer would block for ever
            r = m.run(verb)
        assert r.rc == 1, verb
        assert errors(r) == [f"pcipassd: error: {STATE} is {kind}, not a regular file (hint: "
                             "remove it (pcipassd writes this file itself), then run the "
                             "command again)"]
        assert drivers(m) == dict.fromkeys(ORIGINAL, "pci-stub")
        assert m.sim.writes[before:] == []


@pytest.mark.parametrize("kind", ["a symlink", "a directory", "a FIFO"])
def test_a_lock_that_is_not_a_regular_file_is_named(recorded: Machine, kind: str,
                                                      tmp_path: Path) -> None:
    m = recorded
    lock = m.root / "run/pcipass/lock"
    lock.unlink()
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    if kind == "a symlink":
        lock.symlink_to(victim)
    elif kind == "a directory":
        lock.mkdir()
    else:
        os.mkfifo(lock)
    before = len(m.sim.writes)
    with deadline(10):
        r = m.run("restore")
    assert r.rc == 1
    (line,) = errors(r)
    assert line.startswith(f"pcipassd: error: /run/pcipass/lock is {kind}")
    assert "(hint: remove it (pcipassd creates it itself), then run the command again)" in line
    assert drivers(m) == dict.fromkeys(ORIGINAL, "pci-stub")
    assert m.sim.writes[before:] == []
    assert victim.read_text() == "keep\n"


@pytest.mark.parametrize("leftover", ["a file", "a symlink"])
def test_a_temp_file_left_by_a_killed_save_is_no_obstacle(
        recorded: Machine, leftover: str, tmp_path: Path) -> None:
    # The old name was .state.json.PID: a killed save's file blocked every save of a later
    # process with the same PID (here: this very process).
    m = recorded
    stale = m.root / f"run/pcipass/.state.json.{os.getpid()}"
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    if leftover == "a file":
        stale.write_text('{"format": 1, "devices": [')
    else:
        stale.symlink_to(victim)
    r = m.run("restore")
    assert r.rc == 0, r.err
    assert drivers(m) == ORIGINAL
    assert m.state == {}
    assert victim.read_text() == "keep\n"
    assert sorted(p.name for p in (m.root / "run/pcipass").iterdir()) == [
        "lock", "node.json", "state.json"]


# -- one bad record: its device is left exactly as it is, the others are restored ------------
BAD_RECORDS: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "a path as original_driver": (lambda r: {**r, "original_driver": "../../../../tmp/x"},
                                  'original_driver: "../../../../tmp/x" is not a driver name'),
    "a number as original_driver": (lambda r: {**r, "original_driver": 5},
                                    "original_driver: 5 is not a driver name"),
    "a list as original_driver": (lambda r: {**r, "original_driver": ["e1000e"]},
                                  'original_driver: ["e1000e"] is not a driver name'),
    "an option as original_module": (lambda r: {**r, "original_module": "-r"},
                                     'original_module: "-r" is not a module name'),
    "a path as original_module": (lambda r: {**r, "original_module": "../../evil"},
                                  'original_module: "../../evil" is not a module name'),
    "a path as original_override": (lambda r: {**r, "original_override": "a/b"},
                                    'original_override: "a/b" is not a driver name'),
    "a number as id": (lambda r: {**r, "id": 32787}, "id: 32787 is not a vendor:device ID"),
    "an upper-case id": (lambda r: {**r, "id": "8086:10D3"}, "is not a vendor:device ID"),
    "an original driver as target": (lambda r: {**r, "target": "e1000e"},
                                     'target: "e1000e" is not one of pci-stub, vfio-pci'),
    "a number as stage": (lambda r: {**r, "stage": 1}, "stage: 1 is not one of initramfs"),
    "format 1's held in format 2": (lambda r: {**{k: v for k, v in r.items() if k != "stage"},
                                               "held": "late"}, 'unknown field "held"'),
    "a newline in entry": (lambda r: {**r, "entry": "x\nerror: forged"},
                           "entry: \"x\\nerror: forged\" is not a FILE:LINE"),
    "an unknown field": (lambda r: {**r, "extra": 1}, 'unknown field "extra"'),
    "no target": (lambda r: {k: v for k, v in r.items() if k != "target"}, "no target"),
}


@pytest.mark.parametrize("name", list(BAD_RECORDS))
def test_a_bad_record_leaves_its_device_alone_and_the_others_are_restored(
        recorded: Machine, name: str) -> None:
    m = recorded
    mutate, why = BAD_RECORDS[name]
    devices = records(m)
    devices[0] = mutate(devices[0])
    assert devices[0]["bdf"] == NIC_A
    write_records(m, devices)
    m.sim.unload("e1000e")  # restoring NIC_B needs `modprobe e1000e`; NIC_A's module is bad
    before = len(m.sim.writes)
    r = m.run("restore")
    assert r.rc == 1
    (line,) = errors(r)
    assert line.startswith(f"pcipassd: error: {STATE}: device {NIC_A}: ")
    assert why in line
    assert line.endswith("; left as it is (hint: fix or delete that record, then run "
                         "`pcipassd restore`)")
    assert (m.driver(NIC_A), m.override(NIC_A)) == ("pci-stub", "pci-stub")
    assert touched(m, NIC_A, before) == [], "not even unbound"
    assert (m.driver(NIC_B), m.driver(NIC_E1000)) == ("e1000e", "e1000")
    assert m.sim.modprobes[-1:] == ["e1000e"], "only the good record's module"
    assert not (m.root / "tmp/x").exists()
    assert "2 restored, 1 failed" in r.err
    assert records(m) == [devices[0]], "kept as it was, for the admin to fix"


def test_a_non_string_original_driver_never_leaves_the_device_without_a_driver(
        recorded: Machine) -> None:
    m = recorded
    devices = records(m)
    devices[0]["original_driver"] = {"name": "e1000e"}
    write_records(m, devices)
    r = m.run("restore")
    assert r.rc == 1
    assert errors(r) == [f'pcipassd: error: {STATE}: device {NIC_A}: original_driver: '
                         '{"name": "e1000e"} is not a driver name like e1000e, or null; left '
                         'as it is (hint: fix or delete that record, then run `pcipassd '
                         'restore`)']
    assert drivers(m) == {**ORIGINAL, NIC_A: "pci-stub"}
    # Fixed by hand, as the hint says: the next restore gives it back.
    devices[0]["original_driver"] = "e1000e"
    write_records(m, devices[:1])
    r = m.run("restore")
    assert r.rc == 0, r.err
    assert drivers(m) == ORIGINAL
    assert m.state == {}


@pytest.mark.parametrize("bdf", [2, None, "0000:00:02.0\n", "00:02.0", "0000:00:02.0 ",
                                 "0000:00:02.8", "../../0000:00:02.0"])
def test_a_record_without_a_canonical_bdf_names_its_place_in_the_file(
        recorded: Machine, bdf: Any) -> None:
    m = recorded
    devices = records(m)
    devices[0]["bdf"] = bdf
    write_records(m, devices)
    before = len(m.sim.writes)
    r = m.run("restore")
    assert r.rc == 1
    assert errors(r) == [f"pcipassd: error: {STATE}: record 1: bdf: {json.dumps(bdf)} is not "
                         "a PCI address like 0000:02:00.0; left as it is (hint: fix or delete "
                         "that record, then run `pcipassd restore`)"]
    assert touched(m, NIC_A, before) == []
    assert drivers(m) == {**ORIGINAL, NIC_A: "pci-stub"}


@pytest.mark.parametrize("raw", ["0000:00:02.0", None, 7, [], {}])
def test_a_record_that_is_not_an_object_is_named(recorded: Machine, raw: Any) -> None:
    m = recorded
    write_records(m, [raw, *records(m)[1:]])
    r = m.run("restore")
    assert r.rc == 1
    (line,) = errors(r)
    assert line.startswith(f"pcipassd: error: {STATE}: record 1: ")
    assert drivers(m) == {**ORIGINAL, NIC_A: "pci-stub"}


def test_two_records_for_one_device_leave_it_alone(recorded: Machine) -> None:
    m = recorded
    devices = records(m)
    write_records(m, [devices[0], {**devices[0], "original_driver": "e1000"}, *devices[1:]])
    before = len(m.sim.writes)
    r = m.run("restore")
    assert r.rc == 1
    assert errors(r) == [f"pcipassd: error: {STATE}: device {NIC_A}: more than one record "
                         "for it; left as it is (hint: fix or delete that record, then run "
                         "`pcipassd restore`)"] * 2
    assert touched(m, NIC_A, before) == []
    assert drivers(m) == {**ORIGINAL, NIC_A: "pci-stub"}


def test_apply_leaves_a_configured_device_with_a_bad_record_alone(recorded: Machine) -> None:
    m = recorded
    devices = records(m)
    devices[0]["original_driver"] = "../x"
    write_records(m, devices)
    m.run("restore")  # the others go back to their drivers; NIC_A stays
    before = len(m.sim.writes)
    r = m.run("apply")
    assert r.rc == 3, "holds devices, one failed"
    (line,) = errors(r)
    assert line.startswith(f"pcipassd: error: {STATE}: device {NIC_A}: original_driver: ")
    assert touched(m, NIC_A, before) == []
    assert drivers(m) == dict.fromkeys(ORIGINAL, "pci-stub")
    assert records(m)[0] == devices[0], "not overwritten with pci-stub as its original driver"


def test_status_names_a_bad_record_and_is_not_converged(recorded: Machine) -> None:
    m = recorded
    devices = records(m)
    devices[2]["stage"] = "later"
    write_records(m, devices)
    r = m.run("status")
    assert r.rc == 1
    assert (f'warning: {STATE}: device {NIC_E1000}: stage: "later" is not one of initramfs, '
            "early, udev, late; left as it is") in r.out
    assert "not converged: fix the problems above" in r.out
    assert "Traceback" not in r.err
    r = m.run("status", "--json")
    assert r.rc == 1
    data = json.loads(r.out)
    assert data["converged"] is False
    assert any(NIC_E1000 in w["message"] for w in data["warnings"])


def test_a_state_file_written_by_an_older_pcipassd_without_held_is_read(recorded: Machine) -> None:
    m = recorded
    devices = records(m)
    for d in devices:
        del d["stage"]
    write_records(m, devices, fmt=1)
    r = m.run("restore")
    assert r.rc == 0, r.err
    assert drivers(m) == ORIGINAL


def test_a_format_1_state_file_with_held_is_read_and_restored(recorded: Machine) -> None:
    """An upgrade reloads the service with the /run state file the older pcipassd wrote: format
    1, whose records name their stage `held`."""
    m = recorded
    devices = records(m)
    for d in devices:
        d["held"] = "early" if d["bdf"] == NIC_A else d.pop("stage")
        d.pop("stage", None)
    write_records(m, devices, fmt=1)
    data = json.loads(m.run("status", "--json").out)
    assert {d["device"]: d["stage"] for d in data["devices"]} == {
        NIC_A: "early", NIC_B: "late", NIC_E1000: "late"}
    r = m.run("restore")
    assert r.rc == 0, r.err
    assert drivers(m) == ORIGINAL
    assert "not 1" not in r.err


def test_a_format_1_file_is_written_back_as_format_2(recorded: Machine) -> None:
    m = recorded
    devices = records(m)
    for d in devices:
        d["held"] = d.pop("stage")
    write_records(m, devices, fmt=1)
    m.config(f'version: 1\ndevices:\n  - address: "{NIC_A}"\n  - address: "{NIC_B}"\n')
    assert m.run("apply").rc == 0
    data = json.loads(state_file(m).read_text())
    assert data["format"] == 2
    assert sorted((r["bdf"], r["stage"]) for r in data["devices"]) == [(NIC_A, "late"),
                                                                       (NIC_B, "late")]
    assert all("held" not in r for r in data["devices"])


# -- a state file that cannot be saved -----------------------------------------------------
def _in_state_dir(m: Machine, path: Any) -> bool:
    if not isinstance(path, (str, bytes, os.PathLike)):
        return False
    where = os.path.dirname(os.path.realpath(os.fsdecode(path)))
    return where == os.path.realpath(m.root / "run/pcipass")


def fail_writes(m: Machine, monkeypatch: pytest.MonkeyPatch, code: int,
                allow: int = 0, times: int = 1 << 30, *, at: tuple[int, ...] = ()) -> list[int]:
    """os.write to a file in /run/pcipass fails with `code` `times` times, after `allow`
    writes succeeded (or, with `at`, exactly the writes of those numbers, from 1). Returns the
    list of failures so far."""
    real_write = os.write
    failures: list[int] = []
    seen = [0]

    def write(fd: int, data: Any) -> int:
        if _in_state_dir(m, f"/proc/self/fd/{fd}"):
            seen[0] += 1
            if seen[0] in at if at else allow < seen[0] <= allow + times:
                failures.append(code)
                raise OSError(code, os.strerror(code))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    return failures


def read_only_run(m: Machine, monkeypatch: pytest.MonkeyPatch) -> None:
    """/run as a read-only mount: opening for writing or renaming there fails with EROFS."""
    real_open, real_replace = os.open, os.replace

    def open_(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        writing = flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
        if writing and _in_state_dir(m, path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    def replace(src: Any, dst: Any, **kwargs: Any) -> None:
        if _in_state_dir(m, dst):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(dst))
        real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "replace", replace)


def test_a_device_whose_record_cannot_be_saved_is_not_touched(fresh: Machine) -> None:
    m = fresh
    with pytest.MonkeyPatch.context() as mp:
        failures = fail_writes(m, mp, errno.ENOSPC)
        r = m.run("apply")
    assert r.rc == 1, "holds nothing"
    assert len(failures) == 5, ("one save for all three devices, then one for each, then the "
                                "node document")
    assert "pcipassd: warning: cannot write /run/pcipass/node.json: No space left on device" \
        in r.err
    assert errors(r) == [
        f"pcipassd: error: {bdf} [{pci_id}] {ORIGINAL[bdf]} -> pci-stub "
        f"(/etc/pcipass.yaml:{line}): not touched: cannot save {STATE}: No space left on "
        "device (hint: free space in /run (df /run) and make it writable, then run the "
        "command again)"
        for bdf, pci_id, line in ((NIC_A, "8086:10d3", 3), (NIC_B, "8086:10d3", 3),
                                  (NIC_E1000, "8086:100e", 4))]
    assert drivers(m) == ORIGINAL
    assert [m.override(b) for b in ORIGINAL] == [None, None, None]
    assert not [w for w in m.sim.writes if w[0].startswith("sys/bus/pci/devices")]
    assert not (m.root / STATE.lstrip("/")).exists()
    assert sorted(p.name for p in (m.root / "run/pcipass").iterdir()) == ["lock"], \
        "no temp file left behind"


def test_when_one_save_fails_the_other_devices_still_apply(fresh: Machine) -> None:
    m = fresh
    with pytest.MonkeyPatch.context() as mp:
        # the save of all three fails; then NIC_A's is saved, NIC_B's not, NIC_E1000's is
        fail_writes(m, mp, errno.ENOSPC, at=(1, 3))
        r = m.run("apply")
    assert r.rc == 3, "partly applied"
    (line,) = errors(r)
    assert line.startswith(f"pcipassd: error: {NIC_B} [8086:10d3] e1000e -> pci-stub "
                           "(/etc/pcipass.yaml:3): not touched: cannot save")
    assert drivers(m) == {NIC_A: "pci-stub", NIC_B: "e1000e", NIC_E1000: "pci-stub"}
    assert m.override(NIC_B) is None
    assert set(m.state) == {NIC_A, NIC_E1000}
    assert "2 bound, 0 unchanged, 0 restored, 1 failed" in r.err
    r = m.run("apply")  # space again: it converges
    assert r.rc == 0, r.err
    assert drivers(m) == dict.fromkeys(ORIGINAL, "pci-stub")


def test_restore_on_a_read_only_run_gives_every_device_back_and_keeps_the_records(
        recorded: Machine) -> None:
    m = recorded
    saved = state_file(m).read_bytes()
    with pytest.MonkeyPatch.context() as mp:
        read_only_run(m, mp)
        r = m.run("restore")
    assert r.rc == 1
    assert drivers(m) == ORIGINAL, "each device given back whole"
    assert [m.override(b) for b in ORIGINAL] == [None, None, None]
    assert errors(r) == [f"pcipassd: error: {bdf}: its record stays: cannot save {STATE}: "
                         "Read-only file system (hint: free space in /run (df /run) and make "
                         "it writable, then run the command again)" for bdf in ORIGINAL]
    assert "3 restored, 0 failed, 3 records not removed" in r.err
    assert state_file(m).read_bytes() == saved
    # /run writable again: the next restore finds them back and only drops the records
    r = m.run("restore")
    assert r.rc == 0, r.err
    assert drivers(m) == ORIGINAL
    assert m.state == {}


def test_apply_on_a_read_only_run_binds_nothing_and_says_why(fresh: Machine) -> None:
    m = fresh
    (m.root / "run/pcipass").mkdir(parents=True, mode=0o700)
    (m.root / "run/pcipass/lock").touch(mode=0o600)
    with pytest.MonkeyPatch.context() as mp:
        read_only_run(m, mp)
        r = m.run("apply")
    assert r.rc == 1
    assert len(errors(r)) == 3
    assert all("not touched: cannot save /run/pcipass/state.json: Read-only file system" in e
               for e in errors(r))
    assert drivers(m) == ORIGINAL
    assert "0 bound, 0 unchanged, 0 restored, 3 failed" in r.err


def test_a_rollback_whose_record_cannot_be_removed_still_ends_on_the_original_driver(
        fresh: Machine) -> None:
    m = fresh
    m.config(f"""\
        version: 1
        devices:
          - address: "{NIC_A}"
        """)
    m.sim.modprobe("pci_stub")
    m.sim.set_probe_error("pci-stub", NIC_A, errno.ENOMEM)
    with pytest.MonkeyPatch.context() as mp:
        fail_writes(m, mp, errno.ENOSPC, allow=1)  # the record is saved; its removal not
        r = m.run("apply")
    assert r.rc == 3, "it has a record"
    assert (m.driver(NIC_A), m.override(NIC_A)) == ("e1000e", None)
    assert f"{NIC_A}: rolled back to e1000e" in r.err
    assert f"pcipassd: error: {NIC_A}: its record stays: cannot save {STATE}" in r.err
    assert set(m.state) == {NIC_A}
    m.config(THREE.replace('- id: "8086:10d3"', f'- address: "{NIC_B}"'))
    r = m.run("apply")  # NIC_A no longer configured: its stale record is dropped
    assert r.rc == 0, r.err
    assert m.driver(NIC_A) == "e1000e"
    assert set(m.state) == {NIC_B, NIC_E1000}


class Crash(BaseException):
    """The process dies (power cut, SIGKILL) at a chosen sysfs write."""


def crash_at(m: Machine, name: str, nth: int) -> Intercept:
    """A kernel that kills pcipassd at its `nth` write to a file called `name`."""
    seen = [0]

    class At(Intercept):
        def write(self, path: Path, data: str) -> None:
            if path.name == name:
                seen[0] += 1
                if seen[0] == nth:
                    raise Crash
            self.sim.write(path, data)

    return At(m.sim)


def test_every_device_of_a_run_is_recorded_before_the_first_is_touched(fresh: Machine) -> None:
    m = fresh
    with pytest.raises(Crash):
        main(["--root", str(m.root), "apply"], kernel=crash_at(m, "unbind", 1))
    assert set(m.state) == set(ORIGINAL), "all three recorded, though only one was touched"
    assert drivers(m) == ORIGINAL, "killed before the first unbind"
    assert [m.override(b) for b in ORIGINAL] == ["pci-stub", None, None], "NIC_A's move begun"
    r = m.run("restore")
    assert (r.rc, errors(r)) == (0, [])
    assert drivers(m) == ORIGINAL
    assert m.state == {}


def test_a_restore_killed_halfway_is_mended_by_the_next_one(
        recorded: Machine) -> None:
    m = recorded
    with pytest.raises(Crash):
        main(["--root", str(m.root), "restore"], kernel=crash_at(m, "unbind", 2))
    assert m.driver(NIC_A) == ORIGINAL[NIC_A], "the first device was given back"
    assert (m.driver(NIC_B), m.override(NIC_B)) == ("pci-stub", None), "killed inside NIC_B's"
    assert set(m.state) >= {NIC_B, NIC_E1000}
    r = m.run("restore")
    assert (r.rc, errors(r)) == (0, [])
    assert drivers(m) == ORIGINAL
    assert m.state == {}
