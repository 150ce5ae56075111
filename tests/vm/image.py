"""Guest disk images for the pcipassd VM harness.

Two layers:

* The *base image*: a Debian minbase root filesystem with a kernel and a small
  initramfs, built once by ``build-base.sh`` (debootstrap) and cached under
  ``$PCIPASSD_VM_CACHE`` (default ``/var/cache/pcipassd-vm``), keyed on a hash
  of the suite, the package list and the build script itself.
* A per-test :class:`Image`: a copy of the base rootfs with the project
  installed from its Debian package (``dpkg -i`` in a chroot, :func:`install_from_deb`; or
  ``make install DESTDIR=...``), the scenario's ``/etc/pcipass.yaml``,
  the guest test runner and any extra files, packed into a raw ext4 disk with
  ``mkfs.ext4 -d`` (no loop devices, no mounts).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Union

from pkgbuild import build_deb, locked

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
GUEST_DIR = HERE / "guest"
BUILD_SCRIPT = HERE / "build-base.sh"
DRACUT_SCRIPT = HERE / "build-dracut.sh"

SUITE = "bookworm"
DEFAULT_PACKAGES: tuple[str, ...] = (
    "systemd-sysv",
    "udev",
    "kmod",
    "pciutils",
    "python3",
    "python3-yaml",
    "python3-jsonschema",
    "python3-systemd",
    "linux-image-amd64",
    "iproute2",
    "qemu-system-x86",  # a VM inside the guest that really takes a vfio-pci device
    "openssh-server",  # the fleet test: an Ansible controller on the CI machine, over SSH
    "sudo",  # ... as a non-root user with become
    "python3-apt",  # ... whose apt module installs the package
)
HOST_APT_PACKAGES: tuple[str, ...] = ("qemu-system-x86", "debootstrap", "e2fsprogs")
HOST_TOOLS: tuple[str, ...] = ("qemu-system-x86_64", "debootstrap", "mkfs.ext4")
DEFAULT_DISK_MB = 1536

#: An install step: given the staged root filesystem, install pcipassd into it.
Installer = Callable[[Path], None]
#: Content of an extra file: text, bytes, or (content, mode).
FileContent = Union[str, bytes, tuple[Union[str, bytes], int]]  # a runtime "|" needs 3.10


class ImageError(RuntimeError):
    """Building the base image or a test image failed."""


class HarnessUnavailable(RuntimeError):
    """This host cannot run the VM harness (not root, no qemu/debootstrap, ...)."""


# --------------------------------------------------------------------------
# host prerequisites


def missing_host_tools() -> list[str]:
    return [tool for tool in HOST_TOOLS if shutil.which(tool) is None]


def ensure_host_tools() -> None:
    """Make sure qemu, debootstrap and mkfs.ext4 exist, installing them with apt.

    Raises :class:`HarnessUnavailable` with one clear reason when that is not
    possible.
    """
    if os.geteuid() != 0:
        raise HarnessUnavailable("VM tests need root (debootstrap, mkfs.ext4 -d with owners)")
    if not missing_host_tools():
        return
    if shutil.which("apt-get") is None:
        raise HarnessUnavailable(f"missing {missing_host_tools()} and no apt-get to install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *HOST_APT_PACKAGES]
    if subprocess.run(cmd, env=env, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, check=False)
        subprocess.run(cmd, env=env, check=False)
    if missing := missing_host_tools():
        raise HarnessUnavailable(f"could not install {missing} with apt-get")


# --------------------------------------------------------------------------
# the Debian mirror, read from apt's own configuration


def _deb822_stanzas(text: str) -> Iterator[dict[str, str]]:
    for chunk in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for line in chunk.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line[0] in " \t" and key:
                fields[key] += " " + line.strip()
                continue
            name, sep, value = line.partition(":")
            if sep:
                key = name.strip().lower()
                fields[key] = value.strip()
        if fields:
            yield fields


def _one_line_sources(text: str) -> Iterator[tuple[str, str, list[str]]]:
    for raw in text.splitlines():
        line = re.sub(r"\[[^\]]*\]", " ", raw.split("#", 1)[0]).split()
        if len(line) >= 3 and line[0] == "deb":
            yield line[1], line[2], line[3:]


def apt_mirror(suite: str = SUITE, apt_dir: Path = Path("/etc/apt")) -> str:
    """The URI apt uses for ``suite`` ``main`` (``$PCIPASSD_VM_MIRROR`` overrides)."""
    if override := os.environ.get("PCIPASSD_VM_MIRROR"):
        return override
    files = [apt_dir / "sources.list"]
    parts = apt_dir / "sources.list.d"
    if parts.is_dir():
        files += sorted(parts.iterdir())
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for st in _deb822_stanzas(text):
                if st.get("enabled", "yes").lower() == "no":
                    continue
                if "deb" not in st.get("types", "").split():
                    continue
                if (
                    suite in st.get("suites", "").split()
                    and "main" in st.get("components", "").split()
                ):
                    return st["uris"].split()[0]
        elif path.suffix == ".list" or path.name == "sources.list":
            for uri, dist, comps in _one_line_sources(text):
                if dist == suite and "main" in comps:
                    return uri
    raise HarnessUnavailable(f"no apt source for {suite} main in {apt_dir}")


# --------------------------------------------------------------------------
# base image


@dataclass(frozen=True)
class BaseImage:
    """A cached, fully built base root filesystem plus its kernel and initrd."""

    dir: Path
    key: str

    @property
    def rootfs(self) -> Path:
        return self.dir / "rootfs"

    @property
    def kernel(self) -> Path:
        return self.dir / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.dir / "initrd.img"

    @property
    def kernel_release(self) -> str:
        return (self.dir / "kernel-release").read_text().strip()

    @property
    def build_seconds(self) -> float | None:
        """How long the cold build of this base took (None if unknown)."""
        try:
            return float((self.dir / "build-seconds").read_text())
        except (OSError, ValueError):
            return None


def cache_root() -> Path:
    return Path(os.environ.get("PCIPASSD_VM_CACHE", "/var/cache/pcipassd-vm"))


def base_key(packages: Sequence[str] = DEFAULT_PACKAGES, suite: str = SUITE) -> str:
    h = hashlib.sha256()
    h.update(suite.encode() + b"\0")
    h.update(",".join(sorted(packages)).encode() + b"\0")
    h.update(BUILD_SCRIPT.read_bytes())
    return h.hexdigest()[:16]


def ensure_base(
    *,
    packages: Sequence[str] = DEFAULT_PACKAGES,
    suite: str = SUITE,
    cache: Path | None = None,
    log: Path | None = None,
) -> BaseImage:
    """Return the cached base image, building it first if needed (minutes).

    Concurrent callers serialise on a lock file; only one builds.  The build's
    output goes to ``log`` (default: ``<cache>/<key>.build.log``).
    """
    cache = cache or cache_root()
    key = f"{suite}-{base_key(packages, suite)}"

    def command(out: Path) -> list[str]:
        return ["bash", str(BUILD_SCRIPT), str(out), suite, apt_mirror(suite), ",".join(packages)]

    return _cached_build(cache, key, "base image", command, log,
                         built=lambda: _prune_stale(cache, suite, keep=key))


def ensure_dracut_base(base: BaseImage, *, suite: str = SUITE,
                       log: Path | None = None) -> BaseImage:
    """The dracut variant of ``base`` (``build-dracut.sh``): the same root file system with
    Debian's ``dracut`` package instead of initramfs-tools, from the same mirror; cached beside
    ``base`` and rebuilt when the base or the script changes (about a minute)."""
    cache = base.dir.parent
    digest = hashlib.sha256(DRACUT_SCRIPT.read_bytes()).hexdigest()[:8]
    key = f"{base.key}-dracut-{digest}"

    def command(out: Path) -> list[str]:
        return ["bash", str(DRACUT_SCRIPT), str(base.dir), str(out), suite, apt_mirror(suite)]

    return _cached_build(cache, key, "dracut variant", command, log,
                         built=lambda: _prune_stale(cache, f"{suite}-*-dracut", keep=key))


def _cached_build(cache: Path, key: str, what: str, command: Callable[[Path], list[str]],
                  log: Path | None, *, built: Callable[[], None]) -> BaseImage:
    """The image cached as ``<cache>/<key>``; built first by ``command(dir)`` if needed, then
    ``built()`` runs. Concurrent callers serialise on a lock file; only one builds."""
    image = BaseImage(cache / key, key)
    if (image.dir / ".complete").is_file():
        return image
    ensure_host_tools()
    with locked(cache / f"{key}.lock"):
        if (image.dir / ".complete").is_file():
            return image
        log = log or cache / f"{key}.build.log"
        cmd = command(image.dir)
        print(f"pcipassd-vm: building {what} {key} (log: {log})", file=sys.stderr)
        start = time.monotonic()
        with log.open("w") as out:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False)
        if proc.returncode != 0 or not (image.dir / ".complete").is_file():
            raise ImageError(f"{what} build failed (rc={proc.returncode}); see {log}")
        elapsed = time.monotonic() - start
        (image.dir / "build-seconds").write_text(f"{elapsed:.1f}\n")
        print(f"pcipassd-vm: {what} built in {elapsed:.0f}s", file=sys.stderr)
        built()
    return image


def _prune_stale(cache: Path, prefix: str, keep: str) -> None:
    """Delete images of earlier versions of the build (a few hundred MB each): those named
    ``<prefix>-*`` but ``keep``. A base's variants (``<keep>-*``) go with their base."""
    for old in cache.glob(f"{prefix}-*"):
        if old.is_dir() and old.name != keep and not old.name.startswith(f"{keep}-"):
            shutil.rmtree(old, ignore_errors=True)
            for suffix in (".lock", ".build.log"):
                (cache / f"{old.name}{suffix}").unlink(missing_ok=True)


# --------------------------------------------------------------------------
# installing the project


def project_has_make_install(repo: Path = REPO_ROOT) -> bool:
    if not (repo / "Makefile").is_file():
        return False
    probe = subprocess.run(
        ["make", "-C", str(repo), "-n", "install", "DESTDIR=/nonexistent", "PREFIX=/usr"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


def install_with_make(rootfs: Path, repo: Path = REPO_ROOT) -> None:
    """The real thing: the project's own ``make install`` into the staged root."""
    cmd = [
        "make",
        "-C",
        str(repo),
        "install",
        f"DESTDIR={rootfs}",
        "PREFIX=/usr",
        "PYTHON=/usr/bin/python3",
        f"BUILD_PYTHON={sys.executable}",  # generates the man pages: needs pcipassd's imports
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ImageError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")


#: The environment of commands run in a chroot of the staged root.
CHROOT_ENV = ("PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8",
              "DEBIAN_FRONTEND=noninteractive")


def install_debs(rootfs: Path, debs: Sequence[Path]) -> None:
    """``dpkg -i`` the packages in a chroot of the staged root, as on a host: the maintainer
    scripts enable the units and byte-compile the package, the initramfs trigger rebuilds the
    staged root's initramfs. Nothing is mounted in the chroot, and nothing runs there that
    could start a service: it has no /run/systemd/system, and a policy-rc.d refuses starts."""
    policy = rootfs / "usr/sbin/policy-rc.d"
    had_policy = policy.exists() or policy.is_symlink()
    staged = [rootfs / "tmp" / deb.name for deb in debs]
    try:
        if not had_policy:
            _write(policy, "#!/bin/sh\nexit 101\n", 0o755)
        for deb in debs:
            shutil.copy2(deb, rootfs / "tmp" / deb.name)
        cmd = ["chroot", str(rootfs), "/usr/bin/env", "-i", *CHROOT_ENV, "dpkg", "-i",
               *(f"/tmp/{deb.name}" for deb in debs)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ImageError(f"dpkg -i {' '.join(d.name for d in debs)} in the image failed:\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    finally:
        for copy in staged:
            copy.unlink(missing_ok=True)
        if not had_policy:
            policy.unlink(missing_ok=True)


def install_from_deb(rootfs: Path) -> None:
    """The package an admin installs: pcipassd's .deb, built from the working tree once per
    session (tests/pkgbuild.py), installed with :func:`install_debs`."""
    install_debs(rootfs, [build_deb()])


def install_stub(rootfs: Path) -> None:
    """A stand-in pcipassd (shell script + oneshot unit) for harness work."""
    _write(rootfs / "usr/sbin/pcipassd", (GUEST_DIR / "stub-pcipassd").read_bytes(), 0o755)
    _write(
        rootfs / "usr/lib/systemd/system/pcipassd.service",
        (GUEST_DIR / "stub-pcipassd.service").read_bytes(),
        0o644,
    )


def install_project(rootfs: Path) -> None:
    """The Debian package when the project has one, else ``make install``, else the stub.

    ``$PCIPASSD_VM_INSTALL`` = ``deb``, ``make`` or ``stub`` forces one of them.
    """
    mode = os.environ.get("PCIPASSD_VM_INSTALL", "auto")
    if mode == "stub":
        install_stub(rootfs)
    elif mode == "deb" or (mode == "auto" and (REPO_ROOT / "debian/control").is_file()):
        install_from_deb(rootfs)
    elif mode == "make" or project_has_make_install():
        install_with_make(rootfs)
    else:
        install_stub(rootfs)


def no_install(rootfs: Path) -> None:
    """Leave pcipassd out of the image entirely."""


# --------------------------------------------------------------------------
# per-test images


def _write(path: Path, content: str | bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    path.chmod(mode)


def _guest_path(rootfs: Path, guest: str) -> Path:
    rel = Path(guest.lstrip("/"))
    if not guest.startswith("/") or ".." in rel.parts:
        raise ValueError(f"guest path must be absolute and without '..': {guest!r}")
    return rootfs / rel


def enable_unit(rootfs: Path, unit: str) -> list[str]:
    """Enable ``unit`` offline, as ``systemctl enable`` would, from its [Install] section.

    Returns the targets it was hooked into.
    """
    for d in ("etc/systemd/system", "usr/lib/systemd/system", "lib/systemd/system"):
        unit_file = rootfs / d / unit
        if unit_file.is_file():
            break
    else:
        raise ImageError(f"unit {unit} not found in image")
    wanted: list[tuple[str, str]] = []
    also: list[str] = []
    section = ""
    for raw in unit_file.read_text().splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line
        elif section == "[Install]" and "=" in line:
            key, _, value = line.partition("=")
            if key.strip() in ("WantedBy", "RequiredBy"):
                suffix = ".wants" if key.strip() == "WantedBy" else ".requires"
                wanted += [(t, suffix) for t in value.split()]
            elif key.strip() == "Also":
                also += value.split()
    if not wanted:
        wanted = [("multi-user.target", ".wants")]
    for target, suffix in wanted:
        link = rootfs / "etc/systemd/system" / (target + suffix) / unit
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(f"/{unit_file.relative_to(rootfs)}")
    for other in also:
        enable_unit(rootfs, other)
    return [t for t, _ in wanted]


@dataclass(frozen=True)
class Image:
    """A bootable per-test disk: raw ext4 ``disk`` plus the base's kernel/initrd.

    The disk is persistent across boots, so a multi-boot scenario boots the
    same Image several times.
    """

    base: BaseImage
    workdir: Path
    disk: Path
    own_initrd: Path | None = None  # boot this initrd (from the guest's /boot), not the base's

    @property
    def kernel(self) -> Path:
        return self.base.kernel

    @property
    def initrd(self) -> Path:
        return self.own_initrd or self.base.initrd

    def with_guest_initrd(self) -> Image:
        """This disk, booted with the initrd the guest built itself (`update-initramfs -u` in
        the guest): /boot/initrd.img-<release>, read out of the ext4 image with debugfs."""
        out = self.workdir / "guest-initrd.img"
        out.unlink(missing_ok=True)
        name = f"/boot/initrd.img-{self.base.kernel_release}"
        proc = subprocess.run(["debugfs", "-R", f"dump {name} {out}", str(self.disk)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not out.is_file() or out.stat().st_size == 0:
            raise ImageError(f"debugfs could not read {name}: {proc.stderr.strip()}")
        return replace(self, own_initrd=out)


def build_image(
    config_yaml: str | None,
    guest_script: str,
    extra_files: Mapping[str, FileContent] | None = None,
    *,
    base: BaseImage | None = None,
    workdir: Path | None = None,
    install: Installer = install_project,
    enable_pcipassd: bool = True,
    remove_files: Sequence[str] = (),
    disk_mb: int = DEFAULT_DISK_MB,
) -> Image:
    """Make a bootable disk for one test.

    ``config_yaml``: written to /etc/pcipass.yaml (None: keep what ``install``
    left there, if anything).  ``guest_script``: the scenario, a bash fragment
    run by ``pcipass-test.service`` after pcipassd.service, with the helpers of
    ``guest/lib.sh`` (``result``, ``blob``, ``capture``, ``next_action``, ``log``)
    already sourced.  ``extra_files``: guest path -> content; text starting with
    ``#!`` is made executable, or give ``(content, mode)``.  ``install``: how
    pcipassd gets into the image (:func:`install_project`, :func:`install_from_deb`,
    :func:`install_stub`, :func:`install_with_make`, :func:`no_install`, or your own).
    """
    base = base or ensure_base()
    workdir = workdir or Path(tempfile.mkdtemp(prefix="pcipassd-vm-"))
    workdir.mkdir(parents=True, exist_ok=True)
    stage = workdir / "rootfs"
    if stage.exists():
        shutil.rmtree(stage)
    try:
        subprocess.run(["cp", "-a", "--reflink=auto", str(base.rootfs), str(stage)], check=True)
        install(stage)
        if enable_pcipassd and any(
            (stage / d / "pcipassd.service").is_file()
            for d in ("usr/lib/systemd/system", "lib/systemd/system", "etc/systemd/system")
        ):
            enable_unit(stage, "pcipassd.service")
        if config_yaml is not None:
            _write(stage / "etc/pcipass.yaml", config_yaml, 0o644)

        lib = stage / "usr/lib/pcipass-test"
        _write(lib / "lib.sh", (GUEST_DIR / "lib.sh").read_bytes(), 0o644)
        _write(lib / "run", (GUEST_DIR / "run").read_bytes(), 0o755)
        _write(lib / "scenario.sh", guest_script, 0o755)
        _write(
            stage / "etc/modprobe.d/pcipass-vm.conf",
            (GUEST_DIR / "modprobe-pcipass-vm.conf").read_bytes(),
            0o644,
        )
        _write(
            stage / "etc/systemd/system/pcipass-test.service",
            (GUEST_DIR / "pcipass-test.service").read_bytes(),
            0o644,
        )
        enable_unit(stage, "pcipass-test.service")

        for guest, content in (extra_files or {}).items():
            if isinstance(content, tuple):
                data, mode = content
            else:
                data = content
                head = data[:2] if isinstance(data, bytes) else data[:2].encode()
                mode = 0o755 if head == b"#!" else 0o644
            _write(_guest_path(stage, guest), data, mode)
        for guest in remove_files:
            target = _guest_path(stage, guest)
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)

        disk = workdir / "disk.img"
        disk.unlink(missing_ok=True)
        mkfs = subprocess.run(
            [
                "mkfs.ext4",
                "-q",
                "-F",
                "-L",
                "pcipass-root",
                "-d",
                str(stage),
                str(disk),
                f"{disk_mb}M",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if mkfs.returncode != 0:
            raise ImageError(f"mkfs.ext4 -d failed: {mkfs.stdout}{mkfs.stderr}")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return Image(base=base, workdir=workdir, disk=disk)
