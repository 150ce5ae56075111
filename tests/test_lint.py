"""The linters are part of the test suite: ruff, mypy --strict, and vermin for the oldest Python."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _run(tool: str, *argv: str) -> subprocess.CompletedProcess[str]:
    # vermin has no __main__ module: call its entry point with this interpreter
    call = ["-c", "import sys, vermin; sys.exit(vermin.main())"] if tool == "vermin" \
        else ["-m", tool]
    return subprocess.run([sys.executable, *call, *argv], cwd=REPO, capture_output=True,
                          text=True, check=False)


@pytest.mark.parametrize("tool", ["ruff", "mypy", "vermin"])
def test_tool_is_installed(tool: str) -> None:
    assert _run(tool, "--version").returncode == 0, f"{tool} missing: pip install -e .[test]"


def test_ruff() -> None:
    r = _run("ruff", "check", "pcipassd", "tests", "tools", "bench", "ansible")
    assert r.returncode == 0, r.stdout + r.stderr


#: Shell that runs where no Python can help: the early hold (initramfs, real root, udev) and the
#: package's maintainer scripts.
SHELL_SCRIPTS = ("early/pcipassd-early", "early/initramfs-tools/hooks/pcipassd",
                 "early/initramfs-tools/scripts/init-top/pcipassd",
                 "early/initramfs-tools/scripts/init-bottom/pcipassd",
                 "early/dracut/90pcipassd/pcipassd-hold.sh",
                 "early/dracut/90pcipassd/pcipassd-release.sh",
                 "debian/pcipassd.postinst", "debian/pcipassd.postrm", "debian/pcipassd.prerm")


def test_shellcheck() -> None:
    assert shutil.which("shellcheck"), "shellcheck missing: apt install shellcheck"
    r = subprocess.run(["shellcheck", "--shell=sh", *SHELL_SCRIPTS], cwd=REPO,
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    # dracut sources module-setup.sh from bash
    r = subprocess.run(["shellcheck", "--shell=bash", "early/dracut/90pcipassd/module-setup.sh"],
                       cwd=REPO, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_strict() -> None:
    r = _run("mypy")  # files and strictness come from pyproject.toml
    assert r.returncode == 0, r.stdout + r.stderr


def test_runs_on_python_3_9() -> None:
    # RHEL 9 ships Python 3.9: nothing in the package or the build tools may need a newer one.
    r = _run("vermin", "--no-tips", "--violations", "--eval-annotations", "-t=3.9-",
             "pcipassd", "tools", "tests", "bench", "ansible/roles/pcipassd/library")
    assert r.returncode == 0, r.stdout + r.stderr


def test_makefile_install_layout(tmp_path: Path) -> None:
    make = shutil.which("make")
    assert make, "make is needed to install pcipassd"
    subprocess.run([make, "-s", "install", f"DESTDIR={tmp_path}", "PREFIX=/usr"], cwd=REPO,
                   check=True)
    unit = (tmp_path / "usr/lib/systemd/system/pcipassd.service").read_text()
    assert "ExecStart=/usr/sbin/pcipassd apply" in unit
    assert not re.search(r"@[A-Z]+@", unit), "every placeholder substituted"
    assert (tmp_path / "etc/pcipass.yaml").read_text() == (REPO / "etc/pcipass.yaml").read_text()
    launcher = (tmp_path / "usr/sbin/pcipassd").read_text()
    assert 'sys.path.insert(0, "/usr/lib/pcipassd")' in launcher
    assert (tmp_path / "usr/lib/pcipassd/pcipassd/schema.json").exists()
    # the dracut module where dracut looks, naming pcipassd-early where it is installed
    setup = (tmp_path / "usr/lib/dracut/modules.d/90pcipassd/module-setup.sh").read_text()
    assert "inst_simple /usr/lib/pcipassd/pcipassd-early " in setup
    assert not re.search(r"@[A-Z]+@", setup)
    version = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]);"
                              "from pcipassd.cli import main; main(['--version'])",
                              str(tmp_path / "usr/lib/pcipassd")],
                             capture_output=True, text=True, check=False)
    assert version.stdout.startswith("pcipassd 0."), version.stderr
    # every module of the package, subpackages too (a verb is imported only when it runs)
    installed = tmp_path / "usr/lib/pcipassd"
    assert ({str(f.relative_to(installed)) for f in installed.rglob("*.py")}
            == {str(f.relative_to(REPO)) for f in (REPO / "pcipassd").rglob("*.py")})
    schema = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]);"
                             "from pcipassd.cli import main; raise SystemExit(main(['schema']))",
                             str(installed)], capture_output=True, text=True, check=False)
    assert schema.returncode == 0 and '"$schema"' in schema.stdout, schema.stderr
    # an existing config is never overwritten
    (tmp_path / "etc/pcipass.yaml").write_text("mine\n")
    subprocess.run([make, "-s", "install", f"DESTDIR={tmp_path}", "PREFIX=/usr"], cwd=REPO,
                   check=True)
    assert (tmp_path / "etc/pcipass.yaml").read_text() == "mine\n"
