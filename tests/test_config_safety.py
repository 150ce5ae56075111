"""Reading the configuration safely: every odd file is one clear line (FILE[:LINE:COL], what to
do), never a traceback, a crash or a hang; only files that no one but root (or the user running
pcipassd) can have changed are used; config strings reach the terminal escaped."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from machine import Machine, Result
from simkernel import BOOT_VGA, NIC_A, NIC_B

import pcipassd

MAIN = "/etc/pcipass.yaml"
NIC = f'version: 1\ndevices:\n  - address: "{NIC_A}"\n'


def run(m: Machine, *argv: str) -> Result:
    r = m.run(*argv)
    assert "Traceback" not in r.out + r.err
    return r


def problem_lines(r: Result) -> list[str]:
    """`validate`'s output without the count line."""
    lines = r.out.splitlines()
    assert lines[-1].endswith(("problem found", "problems found")), r.out
    return lines[:-1]


def child(root: Path, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """`python -m pcipassd --root ROOT ARGV` in a fresh process: a crash or a hang shows."""
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID")}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(pcipassd.__file__).parent.parent), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run([sys.executable, "-m", "pcipassd", "--root", str(root), *argv],
                          capture_output=True, text=True, env=env, timeout=timeout, check=False)


# ---- 1. scalars YAML cannot convert -----------------------------------------------------------

HUGE = "9" * 4301


@pytest.mark.parametrize(("entry", "expected"), [
    (f"count: {HUGE}", [f"{MAIN}:4:12: devices[0].count: a number 4301 characters long is not "
                        "a pcipassd value", "    hint: is this the right file?"]),
    ('address: !!int "02:00.0"', [
        f"{MAIN}:3:14: devices[0].address: '02:00.0' is not a whole number (it is tagged !!int)",
        "    hint: remove the tag !!int"]),
    ("force: !!bool maybe", [
        f"{MAIN}:4:12: devices[0].force: 'maybe' is not true or false (it is tagged !!bool)",
        "    hint: remove the tag !!bool"]),
    ("count: !!float x1", [
        f"{MAIN}:4:12: devices[0].count: 'x1' is not a number (it is tagged !!float)",
        "    hint: remove the tag !!float"]),
    ("count: 0b_", [f"{MAIN}:4:12: devices[0].count: '0b_' is not a whole number",
                    "    hint: write the number plainly, or quote the text"]),
    ("name: !!binary aGVsbG8=", [
        f"{MAIN}:4:11: devices[0].name: YAML: the tag !!binary is not allowed",
        "    hint: pcipassd reads plain YAML: no tags (!x) or merge keys (<<)"]),
    ("name: !vault x", [f"{MAIN}:4:11: devices[0].name: YAML: the tag !vault is not allowed",
                        "    hint: pcipassd reads plain YAML: no tags (!x) or merge keys (<<)"]),
    ("name: !!python/tuple [a]", [
        f"{MAIN}:4:11: devices[0].name: YAML: the tag !!python/tuple is not allowed",
        "    hint: pcipassd reads plain YAML: no tags (!x) or merge keys (<<)"]),
    ("name: *nowhere", [f"{MAIN}:4:11: YAML syntax: found undefined alias 'nowhere'",
                        "    hint: define the anchor (&name) before the alias (*name)"]),
], ids=["4301-digits", "int-tag-on-address", "bool-maybe", "float-tag", "bad-binary-int",
        "binary", "local-tag", "python-tuple", "undefined-alias"])
def test_a_value_yaml_cannot_convert_is_one_line_in_every_verb(
        m: Machine, entry: str, expected: list[str]) -> None:
    address = "" if entry.startswith("address") else f'address: "{NIC_A}"\n    '
    m.config(f"version: 1\ndevices:\n  - {address}{entry}\n")
    r = run(m, "validate")
    assert (r.rc, problem_lines(r), r.err) == (2, expected, "")
    for verb in ("plan", "status", "apply"):
        r = run(m, verb)
        assert r.rc == 2
        assert r.err.splitlines()[0].startswith(f"pcipassd: error: {expected[0]}")
    assert run(m, "list").rc == 0  # a survey needs no config
    assert m.sim.writes == []


def test_a_date_is_text(m: Machine) -> None:
    m.config(f'version: 1\ndevices:\n  - address: "{NIC_A}"\n    name: 2024-02-30\n')
    assert run(m, "validate").out == f"{MAIN}: valid, 1 entry\n"
    assert run(m, "apply").rc == 0
    status = run(m, "status")
    assert status.out.splitlines()[1].split()[-1] == "2024-02-30"


def test_a_date_where_a_number_belongs_is_named(m: Machine) -> None:
    m.config(f'version: 2024-01-01\ndevices:\n  - address: "{NIC_A}"\n')
    r = run(m, "validate")
    assert problem_lines(r) == [f"{MAIN}:1:10: version: version must be 1, not '2024-01-01'",
                                "    hint: write it as a number: version: 1"]


def test_tags_that_say_what_yaml_would_infer_are_fine(m: Machine) -> None:
    m.config(f'version: !!int 1\ndevices:\n  - address: !!str "{NIC_A}"\n'
             "    force: !!bool false\n    count: !!int 1\n")
    assert run(m, "validate").out == f"{MAIN}: valid, 1 entry\n"


def test_a_date_crashed_apply_at_boot_in_a_child_process(m: Machine) -> None:
    """The reproduction from the issue, as the unit runs it: a fresh interpreter."""
    m.config(f'version: 1\ndevices:\n  - address: "{NIC_A}"\n    count: {HUGE}\n')
    for verb in ("validate", "apply"):
        c = child(m.root, verb)
        assert c.returncode == 2
        assert "Traceback" not in c.stderr
        assert f"{MAIN}:4:12: devices[0].count: a number 4301" in c.stdout + c.stderr


# ---- 2. deep block nesting --------------------------------------------------------------------


def test_thirty_thousand_nested_sequences_on_one_line_do_not_crash(m: Machine) -> None:
    m.config("version: 1\ndevices:\n" + "- " * 30_000 + "x\n")
    c = child(m.root, "validate")
    assert (c.returncode, c.stderr) == (2, "")
    assert c.stdout.splitlines() == [
        f"{MAIN}:3:127: nests more than 64 levels deep; not a pcipassd config",
        "    hint: is this the right file?", "1 problem found"]


def test_deep_nesting_through_an_alias_is_refused_too(m: Machine) -> None:
    m.config("version: 1\nx: &d " + "[" * 40 + "]" * 40 + "\ny: " + "[" * 40 + "*d"
             + "]" * 40 + "\n")
    r = run(m, "validate")
    assert problem_lines(r)[0].endswith("nests more than 64 levels deep; not a pcipassd config")


# ---- 3. messages never fail to format ---------------------------------------------------------


def test_a_huge_hex_version_is_one_line(m: Machine) -> None:
    m.config("version: 0x" + "f" * 4000 + f'\ndevices:\n  - address: "{NIC_A}"\n')
    r = run(m, "validate")
    assert problem_lines(r) == [
        f"{MAIN}:1:10: version: a number 4002 characters long is not a pcipassd value",
        "    hint: is this the right file?"]


def test_a_big_number_is_shown_short(m: Machine) -> None:
    m.config("version: 0x" + "f" * 30 + f'\ndevices:\n  - address: "{NIC_A}"\n'
             "    driver: " + "x" * 5000 + "\n")
    r = run(m, "validate")
    assert problem_lines(r) == [
        f"{MAIN}:1:10: version: version must be 1, not a 120-bit number",
        "    hint: this pcipassd reads format version 1",
        f"{MAIN}:4:13: devices[0].driver: '{'x' * 58}… is not one of pci-stub, vfio-pci",
        "    hint: expected one of: pci-stub, vfio-pci"]


def test_a_long_unknown_key_is_shown_short(m: Machine) -> None:
    m.config(NIC + "k" * 1000 + ": 1\n")
    r = run(m, "validate")
    assert problem_lines(r)[0] == f"{MAIN}:4:1: {'k' * 59}…: unknown key '{'k' * 58}…"


# ---- 4. drop-ins: regular files only, no hidden files -----------------------------------------


def test_a_fifo_named_like_a_dropin_does_not_hang(m: Machine) -> None:
    m.config(NIC)
    (m.root / "etc/pcipass.d").mkdir()
    os.mkfifo(m.root / "etc/pcipass.d/x.yaml")
    fifo_line = ("/etc/pcipass.d/x.yaml: is a FIFO, not a regular file; pcipassd reads only "
                 "regular files")
    for verb in ("validate", "apply"):
        c = child(m.root, verb, timeout=20)
        assert c.returncode == 2
        assert fifo_line in c.stdout + c.stderr
    assert m.driver(NIC_A) == "e1000e"
    r = run(m, "validate")
    assert problem_lines(r) == [fifo_line, "    hint: remove it, or rename it so that its name "
                                "does not end in .yaml or .yml"]


def test_a_fifo_as_the_main_file(m: Machine) -> None:
    (m.root / "etc").mkdir()
    os.mkfifo(m.root / "etc/pcipass.yaml")
    c = child(m.root, "validate", timeout=20)
    assert c.returncode == 2
    assert c.stdout.startswith(f"{MAIN}: is a FIFO, not a regular file")


def test_hidden_and_backup_files_are_not_dropins(m: Machine) -> None:
    m.config(NIC)
    m.dropin(".x.yaml", "not: [yaml")
    m.dropin("y.yaml~", "not: [yaml")
    lock = m.root / "etc/pcipass.d/.#vm.yaml"  # emacs: a dangling symlink
    lock.symlink_to("root@host.1234:1700000000")
    m.dropin("vm.yaml", f'version: 1\ndevices:\n  - address: "{NIC_B}"\n')
    assert run(m, "validate").out == f"{MAIN}, /etc/pcipass.d/vm.yaml: valid, 2 entries\n"


# ---- 5. StrictModes ----------------------------------------------------------------------------


@pytest.fixture
def foreign(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], None]:
    """Make a file another user's: chown it to nobody when root; otherwise run as if pcipassd
    ran as nobody, so that this user's files are another user's."""

    def make(path: Path) -> None:
        if os.geteuid() == 0:
            os.chown(path, 65534, 65534)
        else:
            other = 65533 if os.geteuid() == 65534 else 65534  # then this user is not "me"
            monkeypatch.setattr(os, "geteuid", lambda: other)

    return make


def test_a_dropin_owned_by_another_user_cannot_bind_the_boot_vga(
        m: Machine, foreign: Callable[[Path], None]) -> None:
    m.config(NIC)
    evil = m.dropin("evil.yaml", f'version: 1\ndevices:\n  - address: "{BOOT_VGA}"\n'
                    "    force: true\n")
    foreign(evil)
    r = run(m, "apply")
    assert r.rc == 2
    assert any(line.startswith("pcipassd: error: /etc/pcipass.d/evil.yaml: is owned by ")
               and line.endswith(", not root; pcipassd does not use a config others can change "
                                 "(hint: chown root:root /etc/pcipass.d/evil.yaml; chmod go-w "
                                 "/etc/pcipass.d/evil.yaml)")
               for line in r.err.splitlines()), r.err
    assert m.driver(BOOT_VGA) is None and m.override(BOOT_VGA) is None
    assert m.driver(NIC_A) == "e1000e"


@pytest.mark.parametrize(("mode", "who"), [
    (0o666, "group and others (mode 0666)"), (0o620, "group (mode 0620)"),
    (0o602, "others (mode 0602)")])
def test_a_config_writable_by_others_is_refused(m: Machine, mode: int, who: str) -> None:
    m.config(NIC).chmod(mode)
    r = run(m, "validate")
    assert (r.rc, problem_lines(r)) == (2, [
        f"{MAIN}: is writable by {who}; pcipassd does not use a config others can change",
        f"    hint: chown root:root {MAIN}; chmod go-w {MAIN}"])


def test_a_group_writable_dropin_directory_is_refused(m: Machine) -> None:
    m.config(NIC)
    m.dropin("b.yaml", f'version: 1\ndevices:\n  - address: "{NIC_B}"\n').parent.chmod(0o775)
    r = run(m, "apply")
    assert r.rc == 2
    assert r.err.splitlines()[0] == (
        "pcipassd: error: /etc/pcipass.d: directory is writable by group (mode 0775); pcipassd "
        "does not use a config others can change (hint: chown root:root /etc/pcipass.d; "
        "chmod go-w /etc/pcipass.d)")
    assert m.driver(NIC_A) == m.driver(NIC_B) == "e1000e"


def test_a_writable_directory_higher_up_is_refused_up_to_the_root(m: Machine) -> None:
    m.config(NIC)
    (m.root / "etc").chmod(0o777)
    assert problem_lines(run(m, "validate"))[0] == (
        "/etc: directory is writable by group and others (mode 0777); pcipassd does not use a "
        "config others can change")
    (m.root / "etc").chmod(0o1777)  # sticky, as /tmp: no one can replace another's files
    assert run(m, "validate").rc == 0


def test_a_directory_owned_by_another_user_is_refused(
        m: Machine, foreign: Callable[[Path], None]) -> None:
    m.config(NIC)
    foreign(m.root / "etc")
    lines = problem_lines(run(m, "validate"))
    at = next(i for i, line in enumerate(lines) if line.startswith("/etc: "))
    assert lines[at].startswith("/etc: directory is owned by ")
    assert lines[at + 1] == "    hint: chown root:root /etc; chmod go-w /etc"


def test_files_of_root_or_of_the_user_running_pcipassd_are_trusted(m: Machine) -> None:
    path = m.config(NIC)
    assert path.stat().st_uid == os.geteuid()  # the user running these tests: root in CI
    assert run(m, "validate").rc == 0


# ---- 7. config strings reach the terminal escaped ---------------------------------------------

NASTY = "\\e]0;pwned\\a\\e[2J\\nfake line\\u202e"  # YAML double-quoted escapes


def test_status_escapes_a_name(m: Machine) -> None:
    m.config(f'version: 1\ndevices:\n  - address: "{NIC_A}"\n    name: "{NASTY}"\n')
    assert run(m, "apply").rc == 0
    r = run(m, "status")
    assert r.rc == 0
    assert "\x1b" not in r.out and "\x07" not in r.out and "\u202e" not in r.out
    row = r.out.splitlines()[1]
    assert row.endswith("\\x1b]0;pwned\\x07\\x1b[2J\\x0afake line\\u202e")
    q = run(m, "status", "--qemu")
    assert "\x1b" not in q.out
    assert "\\x1b[2J\\x0afake line" in q.out


def test_a_dropin_name_with_control_characters_is_escaped(m: Machine) -> None:
    m.config(NIC)
    m.dropin("a\x1b[2J.yaml", "version: 1\ncolour: red\n")
    r = run(m, "validate")
    assert "\x1b" not in r.out
    assert problem_lines(r)[0] == "/etc/pcipass.d/a\\x1b[2J.yaml:2:1: colour: unknown key 'colour'"
    r = run(m, "apply")
    assert "\x1b" not in r.err


def test_a_link_in_a_trusted_directory_to_a_file_in_a_writable_one_is_refused(
        m: Machine, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "pcipass.yaml").write_text(NIC)
    shared.chmod(0o777)
    (m.root / "etc").mkdir()
    (m.root / "etc/pcipass.yaml").symlink_to(shared / "pcipass.yaml")
    lines = problem_lines(run(m, "validate"))
    assert lines == [
        f"{shared}: directory is writable by group and others (mode 0777); pcipassd does not "
        "use a config others can change",
        f"    hint: chown root:root {shared}; chmod go-w {shared}"]


def test_a_name_cannot_end_the_libvirt_xml_comment(m: Machine) -> None:
    m.config(f'version: 1\ndriver: vfio-pci\ndevices:\n  - address: "{NIC_A}"\n'
             '    name: "x ---> <hostdev/> <!-- \\e[2J -"\n')
    assert run(m, "apply").rc == 0
    r = run(m, "status", "--libvirt")
    comment = r.out.splitlines()[0]
    assert comment == f"<!-- {NIC_A} [8086:10d3] x - - -> <hostdev/> <!- - \\x1b[2J - -->"
    assert comment.count("--") == 2
