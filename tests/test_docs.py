"""The man pages and the bash completion, generated at build time (tools/gendocs.py) from the
argument parser and the schema: everything the program accepts is in them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pcipassd.cli import VERBS
from pcipassd.config import schema_text

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
                   "\\-\\-class", "\\-\\-address"):
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
    assert {"--qemu", "--libvirt", "--json"} <= set(complete(docs, "pcipassd", "status", "--"))
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
