"""Reading the host's /sys, /proc and /run for the host-critical guard: every path is resolved
under the host root, every symlink followed inside it; a missing or unreadable file is "no
evidence" (logged at debug level), never an error."""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from pcipassd.address import BDF_RE
from pcipassd.host import Host
from pcipassd.log import get_logger

log = get_logger()  # what the guard skips is logged at debug level

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")
_MAX_SYMLINK_HOPS = 40
_links: dict[str, str | None] | None = None  # inside a Snapshot: each path's readlink


class Snapshot:
    """Inside ``with Snapshot():`` each symlink is read once (and each path found not to be
    one): the guard's judgment resolves the same prefixes (/sys/class/net, /sys/devices/pci*,
    /etc/systemd/system) for every device, and a readlink is a system call, which a TCG guest
    makes slow. For a read-only pass over a tree that does not change meanwhile."""

    def __enter__(self) -> Snapshot:
        global _links  # noqa: PLW0603 - one pass's cache, gone when it ends
        self._outer = _links
        _links = {} if _links is None else _links
        return self

    def __exit__(self, *_: object) -> None:
        global _links  # noqa: PLW0603
        _links = self._outer


def _readlink(path: str) -> str | None:
    if _links is not None and path in _links:
        return _links[path]
    try:
        target: str | None = os.readlink(path)
    except OSError:  # not a symlink, or missing
        target = None
    if _links is not None:
        _links[path] = target
    return target


def resolve(host: Host, absolute: str | PurePosixPath) -> PurePosixPath | None:
    """The host path `absolute` with every symlink followed, never leaving the host root.

    Returns a host-absolute path (its last components may not exist), or None on a symlink loop.
    """
    pending = str(absolute).split("/")[::-1]  # a stack; "" and "." parts are skipped below
    done: list[str] = []
    # where each prefix of `done` is under the root, as text: this runs for every device
    # (bench/scale_plan.py), and building Paths costs more than the readlink calls
    where = [str(host.root).rstrip("/")]
    hops = 0
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if done:
                done.pop()
                where.pop()
            continue
        target = _readlink(f"{where[-1]}/{part}")
        if target is None:  # not a symlink, or missing: keep the name as it is
            done.append(part)
            where.append(f"{where[-1]}/{part}")
            continue
        hops += 1
        if hops > _MAX_SYMLINK_HOPS:
            log.debug("symlink loop at %s", absolute)
            return None
        if target.startswith("/"):
            done, where = [], where[:1]
        pending += target.split("/")[::-1]
    return PurePosixPath("/", *done)


_SLASH = Path("/")


def host_path(host: Host, absolute: str | PurePosixPath) -> Path | None:
    """Where to read the host path `absolute`. On the running system (root /) that is the path
    itself: the kernel follows its symlinks as resolve() would, and cannot leave /; resolve()
    in Python costs a system call per component, slow in a TCG guest (bench/late_rebind.py)."""
    if host.root == _SLASH:
        return Path(absolute)
    resolved = resolve(host, absolute)
    return None if resolved is None else host.path(str(resolved))


def read(host: Host, absolute: str | PurePosixPath, *, optional: bool = False) -> str | None:
    """A host file's text, or None. `optional`: a missing file is normal, not worth a log line."""
    raw = data(host, absolute, optional=optional)
    return None if raw is None else raw.decode("utf-8", errors="replace")


def data(host: Host, absolute: str | PurePosixPath, *, optional: bool = False) -> bytes | None:
    """A host file's bytes (a device's `config` space), or None, as read() reads text. What
    the kernel lets this user read: 64 bytes of `config` without CAP_SYS_ADMIN."""
    path = host_path(host, absolute)
    if path is None:
        return None
    try:
        return path.read_bytes()
    except FileNotFoundError:
        if not optional:
            log.debug("%s does not exist", absolute)
        return None
    except OSError as err:
        log.debug("cannot read %s: %s", absolute, err.strerror or err)
        return None


def value(host: Host, absolute: str | PurePosixPath, *, optional: bool = False) -> str:
    """A sysfs attribute's value without its newline; "" when it cannot be read."""
    return (read(host, absolute, optional=optional) or "").strip()


def lines(host: Host, absolute: str, *, optional: bool = False) -> list[str]:
    text = read(host, absolute, optional=optional)
    return [] if text is None else text.splitlines()


def names(host: Host, absolute: str | PurePosixPath) -> list[str]:
    """Sorted entry names of a host directory; empty when it is missing or unreadable."""
    path = host_path(host, absolute)
    if path is None:
        return []
    try:
        return sorted(entry.name for entry in path.iterdir())
    except OSError:
        return []


def exists(host: Host, absolute: str | PurePosixPath) -> bool:
    path = host_path(host, absolute)
    return path is not None and path.exists()


def nearest_bdf(path: PurePosixPath) -> str | None:
    """The deepest component of a resolved sysfs path that names a PCI function."""
    for part in reversed(path.parts):
        if BDF_RE.match(part):
            return part
    return None


def unescape(text: str) -> str:
    r"""Undo the kernel's octal escapes in /proc paths ("\040" is a space)."""
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), text)


def hex_int(text: str) -> int | None:
    try:
        return int(text, 16)
    except ValueError:
        return None


def natural_order(name: str) -> list[int | str]:
    """Sort key putting sda2 before sda10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def pci_classes(host: Host) -> dict[str, int]:
    """BDF -> 24-bit class code of every PCI function."""
    found = {}
    for bdf in names(host, "/sys/bus/pci/devices"):
        code = hex_int(value(host, f"/sys/bus/pci/devices/{bdf}/class", optional=True))
        if code is not None:
            found[bdf] = code
    return found
