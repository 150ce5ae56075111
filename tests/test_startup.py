"""Start-up: each verb imports only what it needs, so a missing dependency is one line that
names the package to install (never a traceback), and `--version` loads nothing but the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from machine import Machine
from simkernel import BOOT_VGA, NIC_A, SimKernel, build_typical_machine

import pcipassd

REPO = Path(__file__).resolve().parent.parent

# Run `python -m pcipassd ARGS` as an admin would, with the module `missing` not installed: a
# meta-path finder that fails its import as Python does when it is absent.
BLOCKED = """\
import runpy, sys
missing = sys.argv[1]
class Missing:
    def find_spec(self, name, path=None, target=None):
        if name == missing or name.startswith(missing + "."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Missing())
sys.argv = ["pcipassd", *sys.argv[2:]]
runpy.run_module("pcipassd", run_name="__main__", alter_sys=True)
"""

YAML_LINE = ("pcipassd: error: pcipassd {verb} needs the Python module yaml, which is not "
             "installed (hint: install python3-yaml (Fedora/RHEL: python3-pyyaml; pip: PyYAML))")
JSONSCHEMA_LINE = ("pcipassd: error: pcipassd {verb} needs the Python module jsonschema, which "
                   "is not installed (hint: install python3-jsonschema)")


def without(module: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCKED, module, *argv], cwd=REPO,
                          capture_output=True, text=True, check=False, timeout=60)


@pytest.mark.parametrize("verb", ["validate", "plan", "apply", "status", "list"])
def test_without_pyyaml_each_verb_names_the_package(m: Machine, verb: str) -> None:
    m.with_guest_nic()
    r = without("yaml", "--root", str(m.root), verb)
    assert (r.returncode, r.stderr.splitlines(), r.stdout) == (
        1, [YAML_LINE.format(verb=verb)], "")
    assert m.sim.writes == []


class _Missing:
    """A meta-path finder for which `module` is not installed."""

    def __init__(self, module: str) -> None:
        self.module = module

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == self.module or name.startswith(self.module + "."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


def test_without_pyyaml_restore_still_gives_the_devices_back(
        m: Machine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Restore needs no config, so not the YAML reader either: a broken installation must not
    keep devices from coming back. (In-process, for the simulated kernel: pcipassd's modules
    are imported afresh, as in a new process, with PyYAML gone.)"""
    m.with_guest_nic()
    assert m.run("apply").rc == 0
    assert m.driver("0000:00:02.0") == "pci-stub"
    for name in list(sys.modules):
        if name.partition(".")[0] == "yaml" or (name.startswith("pcipassd.") and name not in (
                "pcipassd.cli", "pcipassd.errors")):  # errors: the simulated kernel raises them
            monkeypatch.delitem(sys.modules, name)
            # else `from pcipassd import early` finds it (a subpackage's modules are not attributes)
            if name.startswith("pcipassd.") and name.count(".") == 1:
                monkeypatch.delattr(pcipassd, name.partition(".")[2])
    monkeypatch.setattr(sys, "meta_path", [_Missing("yaml"), *sys.meta_path])
    r = m.run("restore")
    assert (r.rc, r.err.splitlines()[-1]) == (0, "pcipassd: 1 restored, 0 failed")
    assert m.driver("0000:00:02.0") == "e1000e"
    assert "yaml" not in sys.modules
    assert "pcipassd.config" not in sys.modules  # nor the configuration's code at all


def test_without_jsonschema_validate_names_the_package(m: Machine) -> None:
    m.with_guest_nic()
    r = without("jsonschema", "--root", str(m.root), "validate")
    assert (r.returncode, r.stderr.splitlines(), r.stdout) == (
        1, [JSONSCHEMA_LINE.format(verb="validate")], "")


def test_without_jsonschema_a_converged_apply_still_works(m: Machine) -> None:
    """The validation cache spares a boot the schema check, and so the dependency."""
    m.with_guest_nic()
    assert m.run("apply").rc == 0
    before = m.driver("0000:00:02.0")
    r = without("jsonschema", "--root", str(m.root), "apply")
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines()[-1] == "pcipassd: 0 bound, 1 unchanged, 0 restored, 0 failed"
    assert m.driver("0000:00:02.0") == before == "pci-stub"


def test_version_and_schema_need_no_dependency() -> None:
    r = without("yaml", "--version")
    assert (r.returncode, r.stdout, r.stderr) == (0, "pcipassd 0.1.0\n", "")
    r = without("jsonschema", "schema")
    assert r.returncode == 0
    assert '"$schema": "http://json-schema.org/draft-07/schema#"' in r.stdout


def test_version_loads_only_the_command_line() -> None:
    probe = ("import sys\nfrom pcipassd.cli import main\ntry:\n    main(['--version'])\n"
             "except SystemExit:\n    pass\n"
             "print(' '.join(sorted(m for m in sys.modules if m.startswith('pcipassd') or m in "
             "('yaml', 'jsonschema', 'json', 'logging', 'dataclasses', 'typing'))))")
    r = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True,
                       check=True, timeout=60)
    assert r.stdout.splitlines() == ["pcipassd 0.1.0", "pcipassd pcipassd.cli pcipassd.cmdline"]


@pytest.mark.parametrize("argv", [
    ["--root", "/x", "plan", "--json"], ["--root=/x", "--debug", "status"], ["--ro", "/x", "list"],
    ["--config", "apply", "check"], ["--co=apply", "schema"],
])
def test_the_verb_is_found_past_the_common_options(argv: list[str]) -> None:
    from pcipassd.cli import _verb, parser  # noqa: PLC0415

    assert _verb(argv) == argv[-1] if argv[-1] != "--json" else "plan"
    assert parser(_verb(argv)).parse_args(argv).verb == parser().parse_args(argv).verb


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["--root", "/x"], ["nonsense"],
                                  ["--root", "/x", "-h", "plan"]])
def test_without_a_plain_verb_every_verb_is_built(argv: list[str]) -> None:
    from pcipassd.cli import _verb  # noqa: PLC0415

    assert _verb(argv) is None


# What a converged apply (every boot) must not import: each was made lazy for its start-up time
# (bench/noop_apply.py). A behaviour test of imports, never of times.
NOT_ON_BOOT = ("typing", "shutil", "argparse", "locale", "pcipassd.cmdline", "pcipassd.iommu",
               "pcipassd.modules", "pcipassd.vfio", "pcipassd.reboot", "pcipassd.survey",
               "pcipassd.names", "pcipassd.preflight", "pcipassd.resetbugs",
               "jsonschema", "dataclasses", "inspect", "yaml", "logging", "traceback")


def test_a_converged_apply_imports_nothing_it_does_not_need(m: Machine) -> None:
    m.with_guest_nic()
    assert m.run("apply").rc == 0
    # At boot the state is the early stages' (/run is new): no device moved late, so the node
    # document needs no reboot advice (a reload after a late move does import pcipassd.reboot)
    state = m.root / "run/pcipass/state.json"
    data = json.loads(state.read_text())
    for record in data["devices"]:
        record["stage"] = "early"
    state.write_text(json.dumps(data))
    probe = ("import sys\nfrom pcipassd.cli import main\nrc = main(sys.argv[1:4])\n"
             "sys.stdout.flush()\nprint(rc, *sorted(set(sys.modules) & set(sys.argv[4:])))")
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID")}
    r = subprocess.run([sys.executable, "-c", probe, "--root", str(m.root), "apply",
                        *NOT_ON_BOOT], cwd=REPO, capture_output=True, text=True, check=False,
                       timeout=60, env=env)
    assert r.stderr.splitlines()[-1] == "pcipassd: 0 bound, 1 unchanged, 0 restored, 0 failed"
    assert r.stdout.splitlines() == ["0"]


def test_printable_skips_its_pattern_only_for_text_it_would_leave_alone() -> None:
    """printable() returns str.isprintable() text without compiling its pattern (start-up):
    no character the pattern escapes is printable."""
    import re  # noqa: PLC0415

    from pcipassd.printable import _UNSAFE  # noqa: PLC0415

    unsafe = re.compile(_UNSAFE)
    assert [c for c in map(chr, range(sys.maxunicode + 1))
            if c.isprintable() and unsafe.match(c)] == []


@pytest.mark.parametrize("argv", [
    ["apply"], ["restore"], ["--root", "/x", "apply"], ["--debug", "apply"],
    ["--config", "/c.yaml", "--root", "/x", "--debug", "restore"], ["--root", "apply", "apply"],
    ["--root", "/x y", "--config", "apply", "restore"], ["restore", "--on-stop"],
    ["--root", "/x", "--debug", "restore", "--on-stop"],
])
def test_the_units_command_lines_are_read_as_argparse_reads_them(argv: list[str]) -> None:
    """apply and restore as the units run them skip argparse (start-up); the same values."""
    from pcipassd.cli import _plain, _verb, parser  # noqa: PLC0415

    plain = _plain(argv)
    assert plain is not None
    assert vars(plain) == vars(parser(_verb(argv)).parse_args(argv))


@pytest.mark.parametrize("argv", [
    [], ["plan"], ["status"], ["apply", "--debug"], ["--root=/x", "apply"], ["--ro", "/x", "apply"],
    ["--root", "/x", "--root", "/y", "apply"], ["--debug", "--debug", "apply"],
    ["--root", "-x", "apply"], ["--root", "", "apply"], ["--root", "--", "apply"],
    ["--root"], ["apply", "restore"], ["--version", "apply"], ["-h", "apply"], ["--json", "apply"],
    ["--root", "/x", "apply", "--config", "/c"], ["apply", "--on-stop"],
    ["restore", "--on-stop", "--debug"], ["restore", "0000:02:00.0"], ["--on-stop", "restore"],
])
def test_every_other_command_line_is_left_to_argparse(argv: list[str]) -> None:
    from pcipassd.cli import _plain  # noqa: PLC0415

    assert _plain(argv) is None


SCENARIOS = {  # the config, and whether apply ran once before (a converged host)
    "converged": (f'version: 1\ndevices:\n  - address: "{NIC_A}"\n', True),
    "one to bind": (f'version: 1\ndevices:\n  - address: "{NIC_A}"\n', False),
    "a refused entry": (f'version: 1\ndevices:\n  - address: "{BOOT_VGA}"\n'
                        f'  - address: "{NIC_A}"\n', False),
    "an invalid config": ('version: 1\ndevices:\n  - id: "nope"\n', False),
}


@pytest.mark.parametrize("verb", ["apply", "restore"])
@pytest.mark.parametrize("systemd", [False, True])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_the_units_command_lines_run_as_argparse_would_have_them(
        *, tmp_path: Path, capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch, scenario: str, systemd: bool, verb: str) -> None:
    """The same run (exit status, output, journal fields, sysfs writes) whether the command
    line was read by cli._plain or by argparse."""
    from pcipassd import cli  # noqa: PLC0415

    journal = request.getfixturevalue("journal") if systemd else None
    config, converged = SCENARIOS[scenario]
    seen, rcs = [], []
    for reader in ("plain", "argparse"):
        machine = Machine(build_typical_machine(SimKernel(tmp_path / reader)), capsys)
        machine.config(config)
        if converged or verb == "restore":
            machine.run("apply")
        with monkeypatch.context() as patch:
            if reader == "argparse":
                patch.setattr(cli, "_plain", lambda argv: None)
            writes = len(machine.sim.writes)
            first = len(journal.entries) if journal else 0
            r = machine.run(verb)
        text = repr((r, machine.sim.writes[writes:], journal.entries[first:] if journal else []))
        seen.append(text.replace(str(machine.root), "ROOT"))
        rcs.append(r.rc)
    assert seen[0] == seen[1]
    assert rcs[0] == {"converged": 0, "one to bind": 0, "a refused entry": 3,
                      "an invalid config": 2}[scenario] if verb == "apply" else rcs[0] == 0
