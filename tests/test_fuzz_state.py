"""Mutated and garbage /run/pcipass/state.json files, from a fixed seed: `status` and `restore`
never raise, never hang, never print a traceback, and never move a device whose record is
broken; a device whose record is intact is still given back. Then many more through the loader
alone: it raises nothing but StateError, and sets every broken record aside."""

from __future__ import annotations

import functools
import json
import os
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from machine import Hang, Machine, deadline
from simkernel import NIC_E1000, ORIGINAL, SimKernel

from pcipassd import cli
from pcipassd.errors import StateError
from pcipassd.host import Host
from pcipassd.model import Record
from pcipassd.state import State, parse_record
from pcipassd.value import asdict

SEED = 20261125
STATE = "/run/pcipass/state.json"
THREE = f"""\
    version: 1
    devices:
      - id: "8086:10d3"
      - address: "{NIC_E1000}"
    """

WRONG_TYPES: list[Any] = [0, 1, -1, 2.5, True, False, [], {}, ["e1000e"], {"name": "e1000e"}]
BAD_NAMES: list[Any] = ["", ".", "..", "../x", "../../../../tmp/x", "a/b", "/e1000e", "-r",
                        "--force", ".hidden", "e1000e\n", " e1000e", "e1000e ", "e 1000",
                        "é1000", "x" * 65, "e1000e;reboot", "$(reboot)", "\x00", "e1000e/.."]
# Values each field must refuse (none of them valid for that field).
BAD: dict[str, list[Any]] = {
    "bdf": [*WRONG_TYPES, None, "", "00:02.0", "0000:00:02.0\n", "0000:00:02.0 ",
            " 0000:00:02.0", "0000:00:1F.0", "0000:00:20.0", "0000:00:02.8", "0000:0:02.0",
            "../0000:00:02.0", "0000:00:02.0/..", "0000:00:02.*"],
    "id": [*WRONG_TYPES, None, "", "8086:10D3", "8086-10d3", "808610d3", "8086:10d3 ",
           "8086:10d", "../x"],
    "original_driver": [*WRONG_TYPES, *BAD_NAMES],
    "original_override": [*WRONG_TYPES, *BAD_NAMES],
    "original_module": [*WRONG_TYPES, *BAD_NAMES, "e1000.e", "virtio.pci"],
    "target": [*WRONG_TYPES, None, "", "e1000e", "PCI-STUB", "vfio_pci", "pci-stub\n",
               "../pci-stub"],
    "stage": [*WRONG_TYPES, None, "", "Late", "boot", "late "],
    "entry": [*WRONG_TYPES, None, "a\nb", "\x1b[2J", "x\x7f", "x" * 5000],
}
REQUIRED = [k for k in BAD if k != "stage"]


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(7 if depth < 3 else 4)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.choice([0, 1, -7, 1.5, 10**30, 1e300])
    if kind == 2:
        return "".join(chr(rng.randrange(1, 0x250)) for _ in range(rng.randrange(12)))
    if kind == 3:
        return rng.choice(BAD["bdf"] + BAD_NAMES)
    if kind == 4:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["bdf", "id", "format", "devices", "x", ""]): _random_json(rng, depth + 1)
            for _ in range(rng.randrange(4))}


Case = tuple[bytes, frozenset[str], frozenset[str]]  # body, broken devices, intact devices


def broken_records(rng: random.Random, snapshot: list[dict[str, Any]]) -> Case:
    """A well-formed file in which 1-3 records were broken (and the others maybe shuffled or
    changed in ways that keep them valid)."""
    devices: list[Any] = [dict(r) for r in snapshot]
    broken: set[str] = set()
    spoilt: set[int] = set()  # indices in devices
    for _ in range(rng.randrange(1, 4)):
        i = rng.randrange(len(snapshot))
        bdf = snapshot[i]["bdf"]
        if bdf in broken:
            continue
        broken.add(bdf)
        spoilt.add(i)
        how = rng.randrange(5)
        if how == 0:
            field = rng.choice(list(BAD))
            devices[i][field] = rng.choice(BAD[field])
        elif how == 1:
            del devices[i][rng.choice(REQUIRED)]
        elif how == 2:
            devices[i][rng.choice(["x", "bdf ", "Stage", "held", "original"])] = rng.choice(
                WRONG_TYPES)
        elif how == 3:
            devices[i] = rng.choice([*WRONG_TYPES, None, bdf, [bdf]])
        else:  # two records for one device: which is true? neither is used
            twin = {**devices[i], "original_driver": rng.choice(["e1000", "e1000e", None])}
            spoilt.add(len(devices))
            devices.append(twin)
    for i, record in enumerate(devices):  # valid changes to the intact ones
        if i not in spoilt:
            if rng.random() < 0.3:
                record.pop("stage", None)  # written before the field existed
            if rng.random() < 0.3:
                record["entry"] = "".join(chr(rng.randrange(0x20, 0x7F)) for _ in range(20))
            devices[i] = record
    rng.shuffle(devices)
    body = json.dumps({"format": 2, "devices": devices}).encode()
    return body, frozenset(broken), frozenset(ORIGINAL) - broken


def damaged_file(rng: random.Random, snapshot: list[dict[str, Any]]) -> Case:
    """A file that cannot be used as a whole: every device stays as it is."""
    good = json.dumps({"format": 2, "devices": snapshot}).encode()
    how = rng.randrange(7)
    if how == 0:
        body = json.dumps(rng.choice([[], None, 1, "x", snapshot, [snapshot]])).encode()
    elif how == 1:
        fmt = rng.choice([0, 3, "2", 2.0, True, None, [2]])
        body = json.dumps({"format": fmt, "devices": snapshot}).encode()
    elif how == 2:
        body = json.dumps({"format": 2, "devices": rng.choice([{}, None, "x", 3, {
            r["bdf"]: r for r in snapshot}])}).encode()
    elif how == 3:
        body = good[:rng.randrange(len(good) - 1)]  # a torn write
    elif how == 4:
        depth = rng.choice([9, 50, 5000, 200_000])
        body = good[:-2] + b"," + b"[" * depth + b"]" * depth + b"]}"
    elif how == 5:
        body = good + b"\n" + good  # two documents
    else:
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
        body = b"\x00" + body  # never valid JSON
    return body, frozenset(ORIGINAL), frozenset()


def flipped_bytes(rng: random.Random, snapshot: list[dict[str, Any]]) -> Case:
    """Random damage whose outcome is not known in advance: only the general rules hold."""
    body = bytearray(json.dumps({"format": 2, "devices": snapshot}, indent=2).encode())
    for _ in range(rng.randrange(1, 6)):
        how = rng.randrange(3)
        at = rng.randrange(len(body))
        if how == 0:
            body[at] = rng.randrange(256)
        elif how == 1:
            del body[at:at + rng.randrange(1, 8)]
        else:
            body[at:at] = json.dumps(_random_json(rng)).encode()
    return bytes(body), frozenset(), frozenset()


def _named_in(body: bytes) -> set[str]:
    """The devices a dict record in `body` names, as any JSON reader sees it."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return set()
    devices = data.get("devices") if isinstance(data, dict) else None
    if not isinstance(devices, list):
        return set()
    return {r["bdf"] for r in devices
            if isinstance(r, dict) and isinstance(r.get("bdf"), str) and r["bdf"] in ORIGINAL}


Generator = Callable[[random.Random, list[dict[str, Any]]], Case]
GENERATORS: list[tuple[Generator, int]] = [
    (broken_records, 80), (damaged_file, 30), (flipped_bytes, 40)]


def test_status_and_restore_survive_a_few_hundred_bad_state_files(
        sim_host: SimKernel, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # durability is not under test here
    monkeypatch.setattr(cli, "parser", functools.lru_cache(cli.parser))  # built once, not 400x
    m = Machine(sim_host, capsys)
    m.config(THREE)
    assert m.run("apply").rc == 0
    state = m.root / "run/pcipass/state.json"
    snapshot = sorted(json.loads(state.read_text())["devices"], key=lambda r: str(r["bdf"]))
    rng = random.Random(SEED)
    cases = [(gen, n) for gen, count in GENERATORS for n in range(count)]
    moved_total = 0
    for gen, n in cases:
        body, broken, intact = gen(rng, snapshot)
        label = f"{gen.__name__} #{n}: {body[:200]!r}"
        state.write_bytes(body)
        start = len(m.sim.writes)
        try:
            with deadline(10):
                status = m.run("status")
                after_status = len(m.sim.writes)
                restore = m.run("restore")
        except Hang:
            pytest.fail(f"{label}: hangs")
        for r in (status, restore):
            assert r.rc in (0, 1), label
            assert "Traceback" not in r.err + r.out, label
        assert after_status == start, f"{label}: status wrote to sysfs"
        named = _named_in(body)
        moved = {bdf for bdf in ORIGINAL
                 if any(bdf in w[0] or bdf in w[1] for w in m.sim.writes[start:])}
        assert not moved - named, f"{label}: moved {moved - named}, which it has no record of"
        assert not moved & broken, f"{label}: moved {moved & broken}, whose record is broken"
        for bdf in broken:
            assert (m.driver(bdf), m.override(bdf)) == ("pci-stub", "pci-stub"), label
        for bdf in intact:
            assert m.driver(bdf) == ORIGINAL[bdf], f"{label}: {bdf} not given back"
        if broken:
            assert restore.rc == 1, label
        moved_total += len(moved)
        for bdf in ORIGINAL:  # back on pci-stub for the next case, as apply leaves them
            if m.driver(bdf) != "pci-stub":
                m.sim.write(m.sim.device_dir(bdf) / "driver_override", "pci-stub\n")
                if (driver := m.driver(bdf)) is not None:
                    m.sim.write(m.sim.driver_dir(driver) / "unbind", bdf)
                m.sim.write(m.sim.pci / "drivers_probe", bdf)
            assert m.driver(bdf) == "pci-stub"
    assert moved_total > 80, "the intact records were given back"


def test_the_loader_sets_aside_every_broken_record_of_a_thousand_files(host: Host) -> None:
    state = State(host)
    state.dir.mkdir(parents=True)
    snapshot = [asdict(Record(bdf, "8086:10d3", driver, None, driver, "pci-stub",
                              "/etc/pcipass.yaml:3")) for bdf, driver in ORIGINAL.items()]
    rng = random.Random(SEED + 1)
    outcomes: Counter[str] = Counter()
    for gen, count in [(broken_records, 600), (damaged_file, 150), (flipped_bytes, 350)]:
        for n in range(count):
            body, broken, intact = gen(rng, snapshot)
            label = f"{gen.__name__} #{n}: {body[:200]!r}"
            state.file.write_bytes(body)
            refused: StateError | None = None
            try:
                with deadline(5):
                    state.load()
            except StateError as e:
                refused = e
            if refused is not None:
                assert refused.message.startswith(f"{STATE} is damaged: "), label
                assert "\n" not in refused.message, label
                assert not intact, f"{label}: intact records, but the file was refused"
                outcomes["refused"] += 1
                continue
            assert not broken & set(state.records), f"{label}: a broken record was taken"
            unnamed = any(i.bdf is None for i in state.invalid)  # its bdf was the damage
            assert all(b in state.invalid_bdfs or unnamed for b in broken), label
            assert intact <= set(state.records), f"{label}: an intact record was refused"
            assert all("\n" not in line for line in state.problems()), label
            for record in state.records.values():
                assert record == parse_record(asdict(record))
            outcomes["read"] += 1
    assert outcomes["refused"] > 150 and outcomes["read"] > 600, outcomes
