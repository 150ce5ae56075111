"""The man pages and the bash completion, generated at build time (tools/gendocs.py) from the
argument parser and the schema: everything the program accepts is in them."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pcipassd.cli import VERBS
from pcipassd.config import schema_text
from pcipassd.model import STUB_DRIVERS, Action
from pcipassd.state import STAGES

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("doc")
    subprocess.run([sys.executable, str(REPO / "tools/gendocs.py"), str(out)], check=True)
    return out


def test_pcipassd_8_names_every_verb_and_option(docs: Path) -> None:
    page = (docs / "pcipassd.8").read_text()
    for verb in VERBS:
        assert f"\\fB{verb}\\fR" in page, verb
    for option in ("\\-\\-json", "\\-\\-qemu", "\\-\\-libvirt", "\\-\\-offline", "\\-\\-root",
                   "\\-\\-class", "\\-\\-address", "\\-\\-kubevirt",
                   "\\-\\-proxmox\\-mapping", "\\-\\-main"):
        assert option in page, option
    assert "143 apply stopped by SIGTERM" in page


def test_pcipass_yaml_5_names_every_key_of_the_schema(docs: Path) -> None:
    page = (docs / "pcipass.yaml.5").read_text()
    schema = json.loads(schema_text())
    for key in [*schema["properties"], *schema["$defs"]["device"]["properties"]]:
        assert f"\\fB{key}\\fR: " in page, key
    assert "\\fBdriver\\fR: \\fIpci\\-stub | vfio\\-pci\\fR" in page


@pytest.mark.skipif(shutil.which("man") is None, reason="man is not installed")
@pytest.mark.parametrize("page", ["pcipassd.8", "pcipass.yaml.5"])
def test_man_renders_the_pages_without_warnings(docs: Path, page: str) -> None:
    r = subprocess.run(["man", "--warnings", "-l", str(docs / page)], capture_output=True,
                       text=True, check=False, env={"MANWIDTH": "100", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert "NAME" in r.stdout and "SEE ALSO" in r.stdout


def complete(docs: Path, *words: str) -> list[str]:
    script = (f'source {docs / "pcipassd.bash-completion"}; COMP_WORDS=({" ".join(words)}); '
              f'COMP_CWORD={len(words) - 1}; _pcipassd; echo "${{COMPREPLY[@]}}"')
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                          check=True).stdout.split()


def test_completion_knows_the_verbs_and_their_options(docs: Path) -> None:
    assert complete(docs, "pcipassd", "st") == ["status"]
    assert sorted(complete(docs, "pcipassd", "")) == sorted([*VERBS, "--help", "--version"])
    assert {"--qemu", "--libvirt", "--json", "--kubevirt", "--proxmox-mapping"} <= set(
        complete(docs, "pcipassd", "status", "--"))
    assert "--main" in complete(docs, "pcipassd", "validate", "--m")
    assert "--class" in complete(docs, "pcipassd", "list", "--c")


def test_completion_finds_the_verb_after_options_and_their_values(docs: Path) -> None:
    """`pcipassd --root DIR --config FILE VERB`: the form the man page documents."""
    assert {"--qemu", "--libvirt"} <= set(
        complete(docs, "pcipassd", "--root", "/mnt", "--config", "x.yaml", "status", "--"))
    assert complete(docs, "pcipassd", "--debug", "--root", "/mnt", "st") == ["status"]
    assert complete(docs, "pcipassd", "--r") == ["--root"]


def test_completion_completes_classes_and_files(docs: Path, tmp_path: Path) -> None:
    assert sorted(complete(docs, "pcipassd", "list", "--class", "")) == sorted(
        ["gpu", "display", "vga", "network", "ethernet", "storage", "nvme", "audio", "usb"])
    assert complete(docs, "pcipassd", "--root", "/", "list", "--class", "n") == [
        "network", "nvme"]
    (tmp_path / "10-vm.yml").write_text("version: 1\n")
    assert complete(docs, "pcipassd", "validate", f"{tmp_path}/10") == [f"{tmp_path}/10-vm.yml"]
    assert complete(docs, "pcipassd", "--config", f"{tmp_path}/1") == [f"{tmp_path}/10-vm.yml"]
    assert complete(docs, "pcipassd", "plan", "--main", f"{tmp_path}/1") == [
        f"{tmp_path}/10-vm.yml"]


def _glossary() -> dict[str, str]:
    """The README's `## Words`, as tools/gendocs.py reads it for pcipassd(8): word -> meaning."""
    spec = importlib.util.spec_from_file_location("gendocs", REPO / "tools/gendocs.py")
    assert spec is not None and spec.loader is not None
    gendocs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gendocs)
    items: list[tuple[list[str], str]] = gendocs.words((REPO / "README.md").read_text())
    return {term: meaning for terms, meaning in items for term in terms}


def test_the_glossary_has_one_line_per_word() -> None:
    assert list(_glossary()) == [
        "device", "address", "entry", "select", "hold", "held", "hold list", "target",
        "original driver", "stage", "action", "restore", "kept", "card", "PF", "VF",
        "preflight", "refuse", "fail", "force", "converged"]


def test_the_glossary_words_are_the_programs() -> None:
    """The action words are the Action enum's (plan, status, JSON, journal), the stages the state
    file's, the targets the stub drivers."""
    words = _glossary()
    quoted = {term: re.findall(r"`([^`]+)`", meaning) for term, meaning in words.items()}
    assert [w for w in quoted["action"] if w.islower() and w.isalpha()][:5] == [
        a.value for a in Action]
    assert quoted["stage"] == list(STAGES)
    assert [w for w in quoted["target"] if w in STUB_DRIVERS] == list(STUB_DRIVERS)


def test_pcipassd_8_has_the_glossary(docs: Path) -> None:
    page = (docs / "pcipassd.8").read_text()
    assert ".SH WORDS" in page
    for term in _glossary():
        assert f"\\fB{term}\\fR" in page, term
    words = page.partition(".SH WORDS")[2].partition(".SH ")[0]
    assert "`" not in words and "**" not in words


def test_the_readme_shows_the_status_and_plan_headers_the_program_prints() -> None:
    readme = (REPO / "README.md").read_text()
    status = inspect.getsource(importlib.import_module("pcipassd.verbs.status"))
    plan = inspect.getsource(importlib.import_module("pcipassd.verbs.plan"))
    for header, source in (
            ("DEVICE ID DRIVER TARGET GROUP STAGE ACTION ENTRY", status),
            ("DEVICE ID DRIVER TARGET GROUP ACTION ENTRY NOTE", plan)):
        assert repr(header.split()).replace("'", '"')[1:-1] in " ".join(source.split()), header
        assert any(line.split() == header.split() for line in readme.splitlines()), header
