"""Build pcipassd's Debian package and RPM from the working tree, as an admin would from a clean
clone, for tests/test_packaging.py and the VM images (tests/vm/image.py).

The tracked and new (not ignored) files are copied into a build directory, so a build never
dirties the checkout and sees uncommitted edits. Builds are cached under ``build/pkg`` by a
digest of those files, so a test session builds each package once:

* :func:`build_deb`: ``dpkg-buildpackage -us -uc -b``; ``revision`` builds the same tree as a
  newer Debian revision (an upgrade).
* :func:`build_rpm`: ``rpmbuild -bb --nodeps`` from a tarball of the same files (``--nodeps``:
  Fedora's build dependencies, systemd-rpm-macros and python3-pyyaml, are not Debian packages).

Also a script: ``python3 tests/pkgbuild.py OUTDIR`` builds both, runs lintian, copies them to
OUTDIR (CI keeps them as artifacts).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NAME = "pcipassd"
#: dpkg-buildpackage, lintian and rpmbuild see this PATH, not a virtual environment's python3.
BUILD_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "HOME": "/root"}


class PackageBuildError(RuntimeError):
    """A package build failed; the message names its log."""


def cache_root() -> Path:
    return Path(os.environ.get("PCIPASSD_PKG_CACHE", str(REPO / "build" / "pkg")))


def upstream_version(repo: Path = REPO) -> str:
    text = (repo / NAME / "__init__.py").read_text()
    m = re.search(r'^__version__ = "([^"]+)"$', text, re.M)
    if not m:
        raise PackageBuildError(f"no __version__ in {repo / NAME / '__init__.py'}")
    return m.group(1)


def debian_version(repo: Path = REPO) -> str:
    """The version of the newest entry of debian/changelog, e.g. ``0.1.0-1``."""
    first = (repo / "debian/changelog").read_text().splitlines()[0]
    m = re.match(r"^\S+ \(([^)]+)\)", first)
    if not m:
        raise PackageBuildError(f"debian/changelog: cannot read a version from {first!r}")
    return m.group(1)


def source_files(repo: Path = REPO) -> list[str]:
    """Tracked files and new ones git does not ignore, as a clean clone plus your edits has."""
    out = subprocess.run(
        ["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True, check=True,
    ).stdout.decode()
    return sorted({f for f in out.split("\0") if f and (repo / f).is_file()})


def source_digest(files: Sequence[str], repo: Path = REPO) -> str:
    h = hashlib.sha256()
    for f in files:
        path = repo / f
        h.update(f.encode() + b"\0" + oct(path.stat().st_mode & 0o777).encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def stage(files: Sequence[str], dest: Path, repo: Path = REPO) -> None:
    for f in files:
        target = dest / f
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / f, target)


def add_changelog_entry(src: Path, version: str) -> None:
    """Put a new top entry for ``version`` into ``src``'s debian/changelog (as dch would)."""
    changelog = src / "debian/changelog"
    old = changelog.read_text()
    maintainer = re.search(r"^ -- (.+?)  ", old, re.M)
    who = maintainer.group(1) if maintainer else "pcipassd maintainers <pcipassd@example.org>"
    entry = (f"{NAME} ({version}) unstable; urgency=medium\n\n"
             f"  * Rebuild as {version}.\n\n"
             f" -- {who}  {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}\n\n")
    changelog.write_text(entry + old)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (made if missing): one build or image at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run_logged(cmd: Sequence[str], cwd: Path, log: Path) -> None:
    with log.open("w") as out:
        proc = subprocess.run(list(cmd), cwd=cwd, env=BUILD_ENV, stdout=out,
                              stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:])
        raise PackageBuildError(f"{' '.join(cmd)} failed (exit {proc.returncode}); "
                                f"log: {log}\n{tail}")


def _build_dir(kind: str, revision: str | None, repo: Path) -> tuple[Path, list[str]]:
    files = source_files(repo)
    current = f"{kind}-{source_digest(files, repo)}"
    _prune(kind, keep=current)
    return cache_root() / (current + (f"-{revision}" if revision else "")), files


def _prune(kind: str, keep: str) -> None:
    """Delete the builds of earlier sources (the cache would grow with every edit)."""
    cache = cache_root()
    if not cache.is_dir():
        return
    for old in cache.glob(f"{kind}-*"):
        if old.is_dir() and not old.name.startswith(keep):
            shutil.rmtree(old, ignore_errors=True)
            old.with_name(old.name + ".lock").unlink(missing_ok=True)


def build_deb(revision: str | None = None, *, repo: Path = REPO) -> Path:
    """The .deb built from the working tree (cached); its .changes is next to it.

    ``revision``: build it as this Debian version instead (e.g. ``0.1.0-2``, an upgrade)."""
    out, files = _build_dir("deb", revision, repo)
    with locked(out.with_name(out.name + ".lock")):
        if not (out / ".complete").is_file():
            shutil.rmtree(out, ignore_errors=True)
            src = out / NAME
            src.mkdir(parents=True)
            stage(files, src, repo)
            if revision:
                add_changelog_entry(src, revision)
            _run_logged(["dpkg-buildpackage", "-us", "-uc", "-b"], src, out / "build.log")
            shutil.rmtree(src)
            (out / ".complete").touch()
    debs = sorted(out.glob(f"{NAME}_*_all.deb"))
    if len(debs) != 1:
        raise PackageBuildError(f"expected one {NAME}_*_all.deb in {out}, found {debs}")
    return debs[0]


def changes_of(deb: Path) -> Path:
    found = sorted(deb.parent.glob(f"{NAME}_*.changes"))
    if len(found) != 1:
        raise PackageBuildError(f"expected one .changes next to {deb}, found {found}")
    return found[0]


def build_rpm(*, repo: Path = REPO) -> Path:
    """The noarch RPM built from the working tree with rpmbuild (cached)."""
    out, files = _build_dir("rpm", None, repo)
    version = upstream_version(repo)
    with locked(out.with_name(out.name + ".lock")):
        if not (out / ".complete").is_file():
            shutil.rmtree(out, ignore_errors=True)
            (out / "SOURCES").mkdir(parents=True)
            with tarfile.open(out / "SOURCES" / f"{NAME}-{version}.tar.gz", "w:gz") as tar:
                for f in files:
                    tar.add(repo / f, arcname=f"{NAME}-{version}/{f}")
            _run_logged(["rpmbuild", "-bb", "--nodeps", "--define", f"_topdir {out}",
                         str(repo / f"{NAME}.spec")], out, out / "build.log")
            (out / ".complete").touch()
    rpms = sorted(out.glob(f"RPMS/noarch/{NAME}-*.noarch.rpm"))
    if len(rpms) != 1:
        raise PackageBuildError(f"expected one {NAME}-*.noarch.rpm in {out}/RPMS, found {rpms}")
    return rpms[0]


def lintian(changes: Path) -> list[str]:
    """lintian's E: and W: lines for the build (pedantic and info tags left out)."""
    proc = subprocess.run(["lintian", str(changes)],
                          capture_output=True, text=True, env=BUILD_ENV, check=False)
    if proc.returncode not in (0, 1, 2):
        raise PackageBuildError(f"lintian failed (exit {proc.returncode}): {proc.stderr}")
    return [line for line in proc.stdout.splitlines() if line[:2] in ("E:", "W:")]


def main(argv: Sequence[str]) -> int:
    if len(argv) != 1:
        print("usage: python3 tests/pkgbuild.py OUTDIR", file=sys.stderr)
        return 2
    dest = Path(argv[0])
    dest.mkdir(parents=True, exist_ok=True)
    try:
        deb, rpm = build_deb(), build_rpm()
        tags = lintian(changes_of(deb))
    except PackageBuildError as e:
        print(f"pkgbuild: {e}", file=sys.stderr)
        return 1
    for built in (deb, rpm):
        shutil.copy2(built, dest / built.name)
        print(dest / built.name)
    for line in tags:
        print(f"lintian: {line}")
    errors = [line for line in tags if line.startswith("E:")]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
