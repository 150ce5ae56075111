"""The parse cache (pcipassd/parsecache.py): a run whose configuration files have not changed
since the last apply needs no YAML parser; any change, damage or doubt means a parse, and every
check and refusal is the same either way."""

from __future__ import annotations

import json
import os

import pytest
from machine import Machine
from simkernel import NIC_A, NIC_E1000

from pcipassd import yamldoc

CACHE = "var/cache/pcipassd/parsed.json"


def without_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on PyYAML is as if it were not installed: a parse fails as its import would."""

    def missing() -> None:
        raise ModuleNotFoundError("No module named 'yaml'", name="yaml")

    monkeypatch.setattr(yamldoc, "_yaml", missing)


def stub_entry(driver: str = "") -> str:
    return (f'version: 1\ndevices:\n  - address: "{NIC_A}"\n    name: guest-nic\n'
            + (f"    driver: {driver}\n" if driver else ""))


@pytest.fixture
def applied(m: Machine) -> Machine:
    m.config(stub_entry())
    assert m.run("apply").rc == 0
    assert m.driver(NIC_A) == "pci-stub"
    return m


def test_an_unchanged_config_is_not_parsed_again(applied: Machine,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    without_parser(monkeypatch)
    r = applied.run("apply")
    assert r.rc == 0
    assert r.err.splitlines()[-1] == "pcipassd: 0 bound, 1 unchanged, 0 restored, 0 failed"
    assert f"{NIC_A} [8086:10d3] already on pci-stub (/etc/pcipass.yaml:3)" in r.err
    assert applied.run("status").rc == 0


def test_an_edited_config_is_parsed_again_and_applied(applied: Machine) -> None:
    applied.config(stub_entry("vfio-pci"))
    r = applied.run("apply")
    assert r.rc == 0, r.err
    assert applied.driver(NIC_A) == "vfio-pci"


def test_an_edited_config_needs_the_parser(applied: Machine,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    without_parser(monkeypatch)
    applied.config(stub_entry("vfio-pci"))
    r = applied.run("apply")
    assert r.rc == 1
    assert "pcipassd apply needs the Python module yaml, which is not installed" in r.err
    assert applied.driver(NIC_A) == "pci-stub"


def test_a_mistake_is_said_at_every_run(applied: Machine) -> None:
    applied.config(stub_entry() + "    colour: blue\n")
    for _ in range(2):
        r = applied.run("apply")
        assert r.rc == 2
        assert r.err.startswith("pcipassd: error: /etc/pcipass.yaml:5:5: devices[0].colour: "
                                "unknown key 'colour'"), r.err
        assert applied.driver(NIC_A) == "pci-stub"


def test_a_dropin_added_or_removed_is_seen(applied: Machine) -> None:
    dropin = applied.dropin("more.yaml", 'version: 1\ndevices:\n  - id: "8086:100e"\n')
    assert applied.run("apply").rc == 0
    assert applied.driver(NIC_E1000) == "pci-stub"
    dropin.unlink()
    assert applied.run("apply").rc == 0
    assert applied.driver(NIC_E1000) == "e1000"


def test_a_damaged_cache_means_a_parse_and_is_written_again(applied: Machine) -> None:
    cache = applied.root / CACHE
    cache.write_bytes(b'{"format": 1, "files": {"/etc/pcipass.yaml": [')
    r = applied.run("apply")
    assert r.rc == 0
    assert r.err.splitlines()[-1] == "pcipassd: 0 bound, 1 unchanged, 0 restored, 0 failed"
    assert json.loads(cache.read_text())["format"] == 1


def test_a_cache_others_can_write_is_not_used(applied: Machine) -> None:
    cache = applied.root / CACHE
    data = json.loads(cache.read_text())
    entry = data["files"]["/etc/pcipass.yaml"]
    entry["data"]["devices"][0]["driver"] = "vfio-pci"  # not what the file says
    cache.write_text(json.dumps(data))
    cache.chmod(0o666)
    assert applied.run("apply").rc == 0
    assert applied.driver(NIC_A) == "pci-stub"


def test_validate_always_parses(applied: Machine, monkeypatch: pytest.MonkeyPatch) -> None:
    without_parser(monkeypatch)
    r = applied.run("validate")
    assert r.rc == 1
    assert "needs the Python module yaml" in r.err


def test_the_cache_is_root_s_alone(applied: Machine) -> None:
    assert os.stat(applied.root / CACHE).st_mode & 0o077 == 0


def test_another_config_file_keeps_its_own_parse(applied: Machine,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    other = applied.config(stub_entry("vfio-pci"), "other.yaml")
    assert applied.run("--config", str(other), "apply").rc == 0
    assert applied.driver(NIC_A) == "vfio-pci"
    without_parser(monkeypatch)
    assert applied.run("apply").rc == 0  # /etc/pcipass.yaml's parse is still kept
    assert applied.driver(NIC_A) == "pci-stub"
    assert applied.run("--config", str(other), "apply").rc == 0
    assert applied.driver(NIC_A) == "vfio-pci"


def test_a_candidate_main_file_is_always_parsed(applied: Machine,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    candidate = applied.root / "tmp/candidate.yaml"
    candidate.parent.mkdir(parents=True, exist_ok=True)
    candidate.write_text(stub_entry())
    assert applied.run("--config", str(candidate), "apply").rc == 0  # its parse is kept
    without_parser(monkeypatch)
    assert applied.run("--config", str(candidate), "plan").rc == 0  # and used
    r = applied.run("plan", "--main", str(candidate))
    assert r.rc == 1
    assert "needs the Python module yaml" in r.err
