"""The boot path skips jsonschema without a cache: a config that passes pcipassd's own strict
reading of the schema (config.conforms) is not checked again by jsonschema; anything else is.
A config the schema rejects is never applied, whatever a cache file says."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
from machine import Machine
from simkernel import BOOT_VGA, NIC_A

from pcipassd import config as config_module
from pcipassd.errors import Problem
from pcipassd.yamldoc import Document

CONFIG = f'version: 1\ndevices:\n  - address: "{NIC_A}"\n'
MAIN = "/etc/pcipass.yaml"


@pytest.fixture(autouse=True)
def configured(m: Machine) -> None:
    """Every test here starts from the typical machine configured with CONFIG."""
    m.config(CONFIG)


def _schema_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = config_module._check_schema

    def spy(doc: Document) -> list[Problem]:
        calls.append(doc.file)
        return real(doc)

    monkeypatch.setattr(config_module, "_check_schema", spy)
    return calls


def test_a_valid_config_is_applied_without_jsonschema(
        m: Machine, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _schema_checks(monkeypatch)
    assert m.run("apply").rc == 0
    assert m.run("apply").rc == 0
    assert m.run("status").rc == 0
    assert calls == []
    assert m.driver(NIC_A) == "pci-stub"
    assert not (m.root / "var/cache/pcipassd/validated").exists(), "no validation cache"


def test_converged_apply_does_not_import_jsonschema(m: Machine) -> None:
    assert m.run("apply").rc == 0
    probe = ("import sys; from pcipassd.cli import main; rc = main(sys.argv[1:]); "
             "print('jsonschema' in sys.modules, rc)")
    out = subprocess.run([sys.executable, "-c", probe, "--root", str(m.root), "apply"],
                         capture_output=True, text=True, check=False).stdout
    assert out.split() == ["False", "0"]


def test_validate_always_checks_in_full(m: Machine, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _schema_checks(monkeypatch)
    assert m.run("validate").rc == 0
    assert calls == [MAIN]


def test_an_invalid_file_gets_jsonschemas_exact_message_in_every_verb(m: Machine) -> None:
    m.config(CONFIG + "    nmae: x\n")
    for verb in ("apply", "status", "plan"):
        r = m.run(verb)
        assert r.rc == 2
        assert r.err.splitlines()[0] == (
            f"pcipassd: error: {MAIN}:4:5: devices[0].nmae: unknown key 'nmae' "
            "(hint: did you mean 'name'?)")
    assert m.driver(NIC_A) == "e1000e"


def _old_cache_key(raw: bytes) -> str:
    """The key the removed validation cache trusted: anyone could compute (and plant) it."""
    h = hashlib.sha256(config_module.schema_text().encode())
    h.update(b"\0")
    h.update(raw)
    return h.hexdigest()


@pytest.mark.parametrize(("text", "line"), [
    (f'version: 1\ndevices:\n  - address: "{BOOT_VGA}"\n    force: "no"\n',
     f"{MAIN}:4:12: devices[0].force: expected true or false, or a list of"),
    (f'version: 2\ndevices:\n  - address: "{NIC_A}"\n',
     f"{MAIN}:1:10: version: version must be 1, not 2"),
], ids=["force-no", "version-2"])
def test_a_planted_cache_entry_does_not_make_an_invalid_config_apply(
        m: Machine, text: str, line: str) -> None:
    path = m.config(text)
    cache = m.root / "var/cache/pcipassd"
    cache.mkdir(parents=True)
    (cache / "validated").write_text(_old_cache_key(path.read_bytes()) + "\n")
    r = m.run("apply")
    assert r.rc == 2
    assert r.err.splitlines()[0].startswith(f"pcipassd: error: {line}")
    assert m.driver(BOOT_VGA) is None and m.override(BOOT_VGA) is None
    assert m.driver(NIC_A) == "e1000e"


@pytest.mark.parametrize(("entry", "line"), [
    ('force: "no"', f"{MAIN}:5:12: devices[0].force: 'no': its value cannot be used"),
    ("force: 1", f"{MAIN}:5:12: devices[0].force: 1: its value cannot be used"),
    ('count: "2"', f"{MAIN}:5:12: devices[0].count: '2': its value cannot be used"),
    ("count: 0", f"{MAIN}:5:12: devices[0].count: 0: its value cannot be used"),
    ("driver: nvidia", f"{MAIN}:5:13: devices[0].driver: 'nvidia': its value cannot be used"),
    ("name: [a]", f"{MAIN}:5:11: devices[0].name: a list: its value cannot be used"),
], ids=["force-text", "force-number", "count-text", "count-0", "driver", "name-list"])
def test_what_pcipassd_relies_on_holds_even_without_the_schema_check(
        m: Machine, monkeypatch: pytest.MonkeyPatch, entry: str, line: str) -> None:
    monkeypatch.setattr(config_module, "_check_schema", lambda doc: [])  # as if skipped
    force = "" if entry.startswith("force") else "    force: true\n"
    m.config(f'version: 1\ndevices:\n  - address: "{BOOT_VGA}"\n    expect: "1234:1111"\n'
             f"    {entry}\n{force}")
    r = m.run("apply")
    assert r.rc == 2
    assert r.err.splitlines()[0] == (
        f"pcipassd: error: {line} (hint: run `pcipassd validate`)")
    assert m.driver(BOOT_VGA) is None and m.override(BOOT_VGA) is None


@pytest.mark.parametrize(("top", "line"), [
    ("version: 2\n", f"{MAIN}:1:10: version: 2: its value cannot be used"),
    ("", f"{MAIN}:1:1: version: an empty value: its value cannot be used"),
    ("version: true\n", f"{MAIN}:1:10: version: true: its value cannot be used"),
], ids=["2", "missing", "true"])
def test_the_version_holds_even_without_the_schema_check(
        m: Machine, monkeypatch: pytest.MonkeyPatch, top: str, line: str) -> None:
    monkeypatch.setattr(config_module, "_check_schema", lambda doc: [])
    m.config(f'{top}devices:\n  - address: "{NIC_A}"\n')
    r = m.run("apply")
    assert r.rc == 2
    assert r.err.splitlines()[0] == f"pcipassd: error: {line} (hint: run `pcipassd validate`)"
    assert m.driver(NIC_A) == "e1000e"


def test_the_quick_check_is_strict() -> None:
    """Whatever it accepts, jsonschema accepts; what it is unsure of goes to jsonschema."""
    ok = {"version": 1, "devices": [{"address": "00:02.0", "force": True, "count": 1}]}
    assert config_module.conforms(ok)
    bad: object
    for bad in ({"version": True, "devices": [{"id": "8086:10d3"}]},
                {"version": 1, "devices": [{"address": "00:02.0\n"}]},
                {"version": 1, "devices": [{"address": "00:02.0", "count": 2.0}]},
                {"version": 1, "devices": [{"address": "00:02.0", "force": "no"}]},
                {"version": 1, "devices": []}, [], None):
        assert not config_module.conforms(bad), bad
