"""The Debian package and the RPM: built from the working tree as an admin builds them
(tests/pkgbuild.py, once per session), they ship what `make install` installs, lintian finds no
error, and their maintainer scripts do what admins expect of a service that holds devices:
enable on install without starting, never stop on upgrade (a stop gives every device back) but
reload, stop on removal. The VM test tests/vm/test_package.py runs the same steps for real."""

from __future__ import annotations

import io
import os
import re
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
from machine import Machine
from pkgbuild import (
    REPO,
    build_deb,
    build_rpm,
    changes_of,
    debian_version,
    lintian,
    upstream_version,
)
from simkernel import NIC_A, NIC_B, SimKernel

# the packages, built once by the system's tools: the same on every Python and library version
pytestmark = pytest.mark.same_everywhere

#: Files of the .deb that `make install` does not install: Debian's own.
DEBIAN_ONLY = {
    "/usr/share/doc/pcipassd/README.Debian",
    "/usr/share/doc/pcipassd/changelog.Debian.gz",
    "/usr/share/doc/pcipassd/copyright",
    "/usr/share/python3/runtime.d/pcipassd.rtupdate",  # dh_python3: recompile on a new python3
}
#: Files of `make install` the RPM leaves out: Fedora and RHEL build their initramfs with dracut.
NOT_IN_RPM_PREFIX = "/usr/share/initramfs-tools/"
UNITS = ("pcipassd.service", "pcipassd-early.service")


@pytest.fixture(scope="module")
def deb() -> Path:
    return build_deb()


@pytest.fixture(scope="module")
def rpm() -> Path:
    return build_rpm()


@pytest.fixture(scope="module")
def make_installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """Path -> permission bits of every file `make install DESTDIR=... PREFIX=/usr` installs."""
    dest = tmp_path_factory.mktemp("make-install")
    subprocess.run(["make", "-s", "install", f"DESTDIR={dest}", "PREFIX=/usr"], cwd=REPO,
                   check=True)
    return {"/" + str(p.relative_to(dest)): stat.S_IMODE(p.lstat().st_mode)
            for p in dest.rglob("*") if p.is_file() or p.is_symlink()}


def test_make_install_onto_the_live_system_compiles_the_journal_catalog(tmp_path: Path) -> None:
    """Without DESTDIR (the live system), `make install` and `make uninstall` run `journalctl
    --update-catalog`, as the packages' triggers do; a staged install (DESTDIR) does not. Every
    directory is pointed into tmp_path and journalctl is a stub: nothing lands on this machine."""
    stub = tmp_path / "bin"
    stub.mkdir()
    calls = tmp_path / "journalctl.calls"
    (stub / "journalctl").write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    (stub / "journalctl").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("DESTDIR", "MAKEFLAGS")}
    env["PATH"] = f"{stub}:{env['PATH']}"
    live = tmp_path / "live"
    dirs = [f"PREFIX={live}/usr", f"SYSCONFDIR={live}/etc", f"UDEVRULESDIR={live}/udev",
            f"INITRAMFSDIR={live}/initramfs", f"DRACUTMODDIR={live}/dracut",
            f"CATALOGDIR={live}/catalog"]

    def make(*args: str) -> None:
        subprocess.run(["make", "-s", *args, *dirs], cwd=REPO, env=env, check=True,
                       capture_output=True)

    make("install", f"DESTDIR={tmp_path / 'staged'}")
    assert not calls.exists(), "a staged install leaves the catalog to the package manager"
    make("install")
    assert (live / "catalog/pcipassd.catalog").is_file()
    assert calls.read_text() == "--update-catalog\n"
    assert (live / "dracut/90pcipassd/module-setup.sh").is_file()
    make("uninstall")
    assert not (live / "catalog/pcipassd.catalog").exists()
    assert not (live / "dracut/90pcipassd").exists()
    assert calls.read_text() == "--update-catalog\n--update-catalog\n"


def _deb_files(deb: Path) -> dict[str, int]:
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True,
                          check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name.lstrip("."): m.mode & 0o7777 for m in tar.getmembers()
                if m.isfile() or m.issym()}


def _as_make_installs(path: str) -> str:
    """A .deb path as `make install PREFIX=/usr` names it: bookworm's units are in /lib
    (/usr/lib on a merged /usr), dh_compress gzips the man pages."""
    if path.startswith("/lib/"):
        path = "/usr" + path
    if path.startswith("/usr/share/man/") and path.endswith(".gz"):
        path = path[: -len(".gz")]
    return path


def _field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True,
                          check=True).stdout.strip()


# ---- versions ----------------------------------------------------------------------------------

def test_every_version_is_the_same() -> None:
    """pcipassd --version, pyproject.toml, debian/changelog and pcipassd.spec agree."""
    version = upstream_version()
    pyproject = re.search(r'^version = "([^"]+)"$', (REPO / "pyproject.toml").read_text(), re.M)
    assert pyproject and pyproject.group(1) == version
    assert debian_version().rsplit("-", 1)[0] == version
    spec = re.search(r"^Version:\s+(\S+)$", (REPO / "pcipassd.spec").read_text(), re.M)
    assert spec and spec.group(1) == version


# ---- the Debian package ------------------------------------------------------------------------

def test_deb_ships_what_make_install_installs(deb: Path, make_installed: dict[str, int]) -> None:
    shipped = _deb_files(deb)
    assert shipped.keys() >= DEBIAN_ONLY
    as_make = {_as_make_installs(p): mode for p, mode in shipped.items() if p not in DEBIAN_ONLY}
    assert sorted(as_make.keys() - make_installed.keys()) == [], "only in the .deb"
    assert sorted(make_installed.keys() - as_make.keys()) == [], "missing from the .deb"
    assert as_make == make_installed, "same permissions"
    assert "/lib/systemd/system/pcipassd.service" in shipped
    assert shipped["/usr/lib/pcipassd/pcipassd/node.schema.json"] == 0o644, "the node contract"


def test_deb_dependencies_and_conffile(deb: Path) -> None:
    assert _field(deb, "Version") == debian_version()
    assert _field(deb, "Architecture") == "all"
    depends = {d.strip().split()[0] for d in _field(deb, "Depends").split(",")}
    assert {"python3-yaml", "python3-jsonschema"} <= depends
    assert any(d.startswith("python3") and d.split(":")[0] == "python3" for d in depends), depends
    assert _field(deb, "Recommends") == "python3-systemd"
    control = subprocess.run(["dpkg-deb", "--ctrl-tarfile", str(deb)], capture_output=True,
                             check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(control)) as tar:
        def member(name: str) -> str:
            f = tar.extractfile(f"./{name}")
            assert f is not None, name
            return f.read().decode()
        assert member("conffiles").split() == ["/etc/pcipass.yaml"]
        # Installing, upgrading and removing the package rebuild the initramfs, so that no
        # initramfs is left holding devices after a removal. Debian's dracut (059-4, package
        # `dracut`) is interested in this trigger too and rebuilds every kernel's image with
        # dracut: there is no update-initramfs there.
        assert "activate-noawait update-initramfs" in member("triggers").splitlines()


def test_deb_ships_both_initramfs_stages(deb: Path) -> None:
    """Whichever builder the host has, initramfs-tools or Debian's dracut, has pcipassd's stage."""
    shipped = _deb_files(deb)
    assert shipped["/usr/share/initramfs-tools/hooks/pcipassd"] == 0o755
    assert shipped["/usr/lib/dracut/modules.d/90pcipassd/module-setup.sh"] == 0o755
    assert _field(deb, "Suggests") == "initramfs-tools | dracut"


def test_the_shipped_config_binds_nothing(deb: Path, sim_host: SimKernel,
                                          capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    """The unit is enabled on install: with the shipped /etc/pcipass.yaml, apply holds nothing."""
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path / "deb")], check=True)
    m = Machine(sim_host, capsys)
    m.config((tmp_path / "deb/etc/pcipass.yaml").read_text())
    before = {bdf: m.driver(bdf) for bdf in (NIC_A, NIC_B)}
    r = m.run("apply")
    assert r.rc == 0, "the enabled unit does not fail before it is configured"
    assert "no devices are configured" in r.out + r.err
    assert {bdf: m.driver(bdf) for bdf in (NIC_A, NIC_B)} == before
    assert m.writes_to("driver_override") == []
    assert m.writes_to("bind") == []
    assert m.state == {}


def test_lintian_finds_no_error_and_the_readme_lists_its_warnings(deb: Path) -> None:
    tags = lintian(changes_of(deb))
    assert [t for t in tags if t.startswith("E:")] == []
    readme = (REPO / "README.md").read_text()
    for line in tags:
        tag = line.split()[2]
        assert f"`{tag}`" in readme, f"README.md does not explain lintian's {line}"


class Stubs:
    """A PATH of stand-ins for the commands maintainer scripts call; each records its argv."""

    COMMANDS = ("deb-systemd-helper", "deb-systemd-invoke", "systemctl", "py3compile",
                "py3clean", "dpkg-trigger", "update-initramfs", "dracut", "pcipassd")

    def __init__(self, root: Path) -> None:
        self.bin = root / "bin"
        self.bin.mkdir(parents=True)
        self.log = root / "calls"
        self.log.touch()
        self.systemd = root / "run-systemd-system"  # stands in for /run/systemd/system
        self.systemd.mkdir()
        self.features = root / "features.d"  # for NFD's features.d
        self.features.mkdir()
        self.labels = self.features / "pcipassd"
        self.run_pcipass = root / "run-pcipass"  # stands in for /run/pcipass
        self.run_pcipass.mkdir()
        self.state = self.run_pcipass / "state.json"
        for name in self.COMMANDS:
            stub = self.bin / name
            stub.write_text(f'#!/bin/sh\necho "{name} $*" >>"{self.log}"\nexit 0\n')
            stub.chmod(0o755)

    def run(self, script: Path, *args: str) -> list[str]:
        """Run a maintainer script as dpkg or rpm would; the calls it made, in order."""
        text = script.read_text().replace("/run/systemd/system", str(self.systemd)).replace(
            "/etc/kubernetes/node-feature-discovery/features.d", str(self.features)).replace(
            "/run/pcipass/", f"{self.run_pcipass}/")
        local = script.with_name(script.name + ".local")
        local.write_text(text)
        self.log.write_text("")
        path = f"{self.bin}:/usr/bin:/bin"
        proc = subprocess.run(["sh", "-e", str(local), *args], env={"PATH": path},
                              capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return self.log.read_text().splitlines()


SERVICE_ACTIONS = {"start", "stop", "restart", "try-restart", "reload", "reload-or-restart",
                   "try-reload-or-restart", "--now"}


def _service_actions(calls: list[str]) -> list[str]:
    """The calls that would start, stop, restart or reload a service."""
    return [c for c in calls if c.split()[0] in ("deb-systemd-invoke", "systemctl")
            and SERVICE_ACTIONS & set(c.split()[1:])]


@pytest.fixture(scope="module")
def deb_scripts(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("deb-control")
    subprocess.run(["dpkg-deb", "-e", str(deb), str(out)], check=True)
    return out


def test_deb_install_enables_both_units_and_starts_nothing(deb_scripts: Path,
                                                           tmp_path: Path) -> None:
    stubs = Stubs(tmp_path)
    calls = stubs.run(deb_scripts / "postinst", "configure", "")
    for unit in UNITS:
        assert f"deb-systemd-helper enable {unit}" in calls, calls
    assert _service_actions(calls) == []


def test_deb_upgrade_reloads_and_never_stops(deb_scripts: Path, tmp_path: Path) -> None:
    """dpkg's upgrade: old prerm upgrade, new postinst configure OLD-VERSION."""
    stubs = Stubs(tmp_path)
    assert _service_actions(stubs.run(deb_scripts / "prerm", "upgrade", "0.1.0-2")) == []
    calls = stubs.run(deb_scripts / "postinst", "configure", "0.1.0-0")
    assert _service_actions(calls) == ["deb-systemd-invoke try-reload-or-restart "
                                       "pcipassd.service"]


def test_deb_removal_stops_pcipassd(deb: Path, deb_scripts: Path, tmp_path: Path) -> None:
    """Stopping pcipassd.service gives every device back (ExecStop=pcipassd restore --on-stop)
    but those an entry keeps (`on_stop: keep`); then `pcipassd restore` gives those back too,
    since nothing would once pcipassd is gone. Nothing held (no records): only the stop."""
    stubs = Stubs(tmp_path)
    calls = stubs.run(deb_scripts / "prerm", "remove")
    assert _service_actions(calls) == ["deb-systemd-invoke stop pcipassd.service "
                                       "pcipassd-early.service"]
    assert "pcipassd restore" not in calls
    stubs.state.write_text('{"format": 2, "devices": [...]}\n')  # the unit's stop kept some
    calls = stubs.run(deb_scripts / "prerm", "remove")
    stop = calls.index("deb-systemd-invoke stop pcipassd.service pcipassd-early.service")
    assert calls.index("pcipassd restore") > stop
    assert "pcipassd restore" not in stubs.run(deb_scripts / "prerm", "upgrade", "0.1.0-2")
    unit = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True,
                          check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(unit)) as tar:
        f = tar.extractfile("./lib/systemd/system/pcipassd.service")
        assert f is not None
        assert "ExecStop=/usr/sbin/pcipassd restore --on-stop" in f.read().decode().splitlines()


# ---- the RPM -----------------------------------------------------------------------------------

def _rpm_query(rpm: Path, fmt: str) -> str:
    return subprocess.run(["rpm", "-qp", "--qf", fmt, str(rpm)], capture_output=True, text=True,
                          check=True).stdout


PARSED = "/var/cache/pcipassd/parsed.json"  # written by apply (parsecache.py)


def test_rpm_ships_what_make_install_installs(rpm: Path, make_installed: dict[str, int]) -> None:
    files: dict[str, int] = {}
    flags: dict[str, str] = {}
    for line in _rpm_query(rpm, "[%{FILEMODES:perms} %{FILEFLAGS:fflags} %{FILENAMES}\n]"
                           ).splitlines():
        perms, fflags, path = line.split(" ", 2)  # fflags is empty for a plain file
        if perms.startswith("-"):
            files[path] = _perm_bits(perms)
            flags[path] = fflags
    wanted = {p: m for p, m in make_installed.items() if not p.startswith(NOT_IN_RPM_PREFIX)}
    compiled = {p for p in files if "/__pycache__/" in p}  # Fedora byte-compiles at build time
    shipped = {p: m for p, m in files.items() if p not in compiled}
    assert shipped.pop("/etc/pcipass.early", None) is not None, "the hold list is owned (ghost)"
    assert shipped.pop(PARSED, None) is not None, "the parse cache is owned (ghost)"
    assert sorted(shipped.keys() - wanted.keys()) == [], "only in the RPM"
    assert sorted(wanted.keys() - shipped.keys()) == [], "missing from the RPM"
    assert shipped == wanted, "same permissions"
    assert flags["/etc/pcipass.yaml"] == "cn"  # %config(noreplace)
    assert flags["/etc/pcipass.early"] == "g"  # %ghost: removed with the package
    assert flags[PARSED] == "g"


def _perm_bits(perms: str) -> int:
    bits = 0
    for i, ch in enumerate(perms[1:10]):
        if ch != "-":
            bits |= 1 << (8 - i)
    return bits


def test_rpm_version_and_dependencies(rpm: Path) -> None:
    assert _rpm_query(rpm, "%{VERSION}") == upstream_version()
    requires = subprocess.run(["rpm", "-qp", "--requires", str(rpm)], capture_output=True,
                              text=True, check=True).stdout.split("\n")
    assert {"python3", "python3-pyyaml", "python3-jsonschema"} <= set(requires)
    recommends = subprocess.run(["rpm", "-qp", "--recommends", str(rpm)], capture_output=True,
                                text=True, check=True).stdout.split()
    assert recommends == ["python3-systemd"]


@pytest.fixture(scope="module")
def rpm_scripts(rpm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rpm-scripts")
    for tag in ("POSTIN", "PREUN", "POSTUN", "POSTTRANS"):
        (out / tag.lower()).write_text(_rpm_query(rpm, f"%{{{tag}}}\n"))
    return out


def test_rpm_scriptlets(rpm_scripts: Path, tmp_path: Path) -> None:
    """rpm passes the number of installed versions after the step: install 1, upgrade 2 (the
    old package's %preun/%postun then get 1), erase 0."""
    stubs = Stubs(tmp_path)
    # install: the presets decide (Fedora policy); nothing starts
    calls = stubs.run(rpm_scripts / "postin", "1")
    assert calls == ["systemctl --no-reload preset pcipassd.service pcipassd-early.service"]
    # upgrade: nothing stops; the old package's %postun reloads pcipassd
    assert _service_actions(stubs.run(rpm_scripts / "postin", "2")) == []
    assert _service_actions(stubs.run(rpm_scripts / "preun", "1")) == []
    stubs.labels.write_text("pcipassd.ready=true\n")
    calls = stubs.run(rpm_scripts / "postun", "1")
    assert _service_actions(calls) == ["systemctl try-reload-or-restart pcipassd.service"]
    assert not [c for c in calls if c.startswith("dracut")], "the new package's %posttrans does"
    # install and upgrade: every kernel's image gets this version's dracut module
    assert stubs.run(rpm_scripts / "posttrans") == ["dracut -f --regenerate-all"]
    assert stubs.labels.exists(), "an upgrade keeps them"
    # erase: stop (gives every device back but those kept by on_stop: keep), then those too
    calls = stubs.run(rpm_scripts / "preun", "0")
    assert _service_actions(calls) == [
        "systemctl --no-reload disable --now pcipassd.service pcipassd-early.service"]
    assert "pcipassd restore" not in calls, "nothing held"
    stubs.state.write_text('{"format": 2, "devices": [...]}\n')
    calls = stubs.run(rpm_scripts / "preun", "0")
    assert calls[-1] == "pcipassd restore"
    assert "pcipassd restore" not in stubs.run(rpm_scripts / "preun", "1"), "not on upgrade"
    stubs.labels.write_text("pcipassd.ready=true\n")
    calls = stubs.run(rpm_scripts / "postun", "0")
    assert _service_actions(calls) == []
    assert not stubs.labels.exists(), "no stale ready label once erased"
    assert "dracut -f --regenerate-all" in calls, "no image keeps the module"


def test_rpm_installs_the_dracut_module_where_dracut_looks(rpm: Path, tmp_path: Path) -> None:
    """The built RPM, installed into an empty root (no scriptlets, no dependencies: this is not
    Fedora), puts the module into dracut's modules.d, naming pcipassd-early where it is."""
    root = tmp_path / "root"
    r = subprocess.run(["rpm", "-i", "--root", str(root), "--dbpath", "/var/lib/rpm", "--nodeps",
                        "--noscripts", "--nosignature", str(rpm)],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    module = root / "usr/lib/dracut/modules.d/90pcipassd"
    assert sorted(p.name for p in module.iterdir()) == [
        "module-setup.sh", "pcipassd-hold.sh", "pcipassd-initrd.service", "pcipassd-release.sh"]
    assert stat.S_IMODE((module / "module-setup.sh").stat().st_mode) == 0o755
    assert "inst_simple /usr/lib/pcipassd/pcipassd-early " in (
        module / "module-setup.sh").read_text()
    assert (root / "usr/lib/pcipassd/pcipassd-early").is_file()
    assert not (root / "usr/share/initramfs-tools").exists()


def test_deb_removal_removes_the_node_labels(deb_scripts: Path, tmp_path: Path) -> None:
    stubs = Stubs(tmp_path)
    stubs.labels.write_text("pcipassd.ready=true\n")
    stubs.run(deb_scripts / "postrm", "upgrade", "0.1.0-2")
    assert stubs.labels.exists(), "an upgrade keeps them"
    stubs.run(deb_scripts / "postrm", "remove")
    assert not stubs.labels.exists(), "no stale ready label once removed"


def test_the_build_leaves_the_checkout_clean(deb: Path) -> None:
    status = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--ignored",
                             "debian"], capture_output=True, text=True, check=True).stdout
    assert status == "", status
