"""The validation cache keeps jsonschema off the boot path, and never hides a problem."""

from __future__ import annotations

import subprocess
import sys

import pytest
from machine import Machine
from simkernel import NIC_A, SimKernel

from pcipassd import config as config_module
from pcipassd.errors import Problem
from pcipassd.yamldoc import Document

CONFIG = f'version: 1\ndevices:\n  - address: "{NIC_A}"\n'


@pytest.fixture
def m(sim_host: SimKernel, capsys: pytest.CaptureFixture[str]) -> Machine:
    machine = Machine(sim_host, capsys)
    machine.config(CONFIG)
    return machine


def _schema_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = config_module._check_schema

    def spy(doc: Document) -> list[Problem]:
        calls.append(doc.file)
        return real(doc)

    monkeypatch.setattr(config_module, "_check_schema", spy)
    return calls


def test_unchanged_config_skips_the_schema_check(m: Machine,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _schema_checks(monkeypatch)
    assert m.run("apply").rc == 0
    assert calls == ["/etc/pcipass.yaml"]
    assert (m.root / "var/cache/pcipassd/validated").exists()
    assert m.run("apply").rc == 0
    assert m.run("status").rc == 0
    assert calls == ["/etc/pcipass.yaml"], "checked once, then trusted byte for byte"


def test_converged_apply_does_not_import_jsonschema(m: Machine) -> None:
    assert m.run("apply").rc == 0
    probe = ("import sys; from pcipassd.cli import main; rc = main(sys.argv[1:]); "
             "print('jsonschema' in sys.modules, rc)")
    out = subprocess.run([sys.executable, "-c", probe, "--root", str(m.root), "apply"],
                         capture_output=True, text=True, check=False).stdout
    assert out.split() == ["False", "0"]


def test_an_edited_file_is_checked_again(m: Machine) -> None:
    assert m.run("apply").rc == 0
    m.config(CONFIG + "    nmae: x\n")
    r = m.run("apply")
    assert r.rc == 2
    assert "unknown key 'nmae'" in r.err


def test_validate_always_checks_in_full(m: Machine, monkeypatch: pytest.MonkeyPatch) -> None:
    m.run("apply")
    calls = _schema_checks(monkeypatch)
    assert m.run("validate").rc == 0
    assert calls == ["/etc/pcipass.yaml"]


def test_a_garbage_or_unwritable_cache_only_costs_speed(m: Machine) -> None:
    cache = m.root / "var/cache/pcipassd"
    cache.mkdir(parents=True)
    (cache / "validated").write_bytes(b"\xff\xfe garbage\n" * 10)
    assert m.run("apply").rc == 0
    cache_file = cache / "validated"
    cache_file.unlink()
    cache_file.mkdir()  # cannot be replaced by a file
    assert m.run("apply").rc == 0
