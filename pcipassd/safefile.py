"""Files, each kind handled one way: what pcipassd writes, what it must not trust, what the host
offers.

- `write_atomic`: every file pcipassd writes that matters (the state file, the guard's memory,
  the hold list). A temp file with a fresh random name in the same directory (O_EXCL, never
  following a symlink), fsync, rename; then, when the file must survive a power cut
  (`durable`), fsync the directory. A crash leaves the old file or the new one, never a torn one.
- `read_untrusted`: every file others may have planted or damaged (the config, the state file,
  the guard's memory, early.log). A regular file only: no symlink (unless told), no FIFO or
  device opened (so nothing blocks), at most `limit` bytes. One error, `Refused`, says why not.
- `read_host`: a small host file (/proc, /sys, /lib/modules, /etc/pcipass.early) as text,
  None when it is absent or unreadable: for evidence that may simply not be there.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

TYPE_CHECKING = False  # as typing's, without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Callable, Optional

    Check = Callable[[os.stat_result], Optional[str]]  # why the opened file is refused, or None


# -- writing ---------------------------------------------------------------------------------
def write_atomic(path: Path, body: bytes, prefix: str, *, durable: bool,
                 mode: int = 0o600) -> None:
    """Replace `path` with `body` atomically: a temp file named `prefix` + a fresh random name
    in the same directory (never following a symlink), fsync, rename; when `durable`, fsync the
    directory too, so that the rename survives a power cut. OSError when it cannot be written
    (the temp file is removed then), or, when `durable`, when the directory cannot be synced
    (the new file is in place, but may not survive a power cut)."""
    tmp = None
    try:
        fd, tmp = _temp(path.parent, prefix, mode)
        try:
            view = memoryview(body)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    if durable:
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def remove_temps(directory: Path, prefix: str) -> None:
    """Remove the temp files of writes that were killed. Only under the lock that serialises
    the writes (apply's), when no write is under way."""
    with contextlib.suppress(OSError):
        for name in os.listdir(directory):
            if name.startswith(prefix):
                with contextlib.suppress(OSError):
                    os.unlink(directory / name)


def _temp(directory: Path, prefix: str, mode: int) -> tuple[int, str]:
    """A new temp file in `directory`, with a name no earlier write can have left."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    while True:
        tmp = str(directory / f"{prefix}{os.urandom(8).hex()}")
        try:
            return os.open(tmp, flags, mode), tmp
        except FileExistsError:
            continue


# -- reading what is not trusted -------------------------------------------------------------
class Refused(Exception):
    """An untrusted file that is not read. `kind`, with `text`:

    - "not a file": it is not a regular file; `text` says what it is ("a symlink", "a FIFO"),
      `mode` is its st_mode (None for a symlink refused by open).
    - "changed": it was a regular file, but what was opened is not (swapped in between).
    - "cannot open", "cannot read": `text` is the system's error.
    - "refused": the `check` refused it; `text` says why.
    - "too large": it is larger than the limit.
    """

    def __init__(self, kind: str, text: str = "", mode: int | None = None) -> None:
        super().__init__(f"{kind}: {text}" if text else kind)
        self.kind, self.text, self.mode = kind, text, mode


def file_kind(mode: int) -> str:
    """What a file that is not a regular file is, as the admin would say it."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISLNK, "a symlink")):
        if test(mode):
            return name
    return "a special file"


def _strerror(e: OSError) -> str:
    return e.strerror or errno.errorcode.get(e.errno or 0, str(e))


def read_untrusted(path: Path, limit: int, *, follow_symlinks: bool = False,
                   check: Check | None = None, partial: bool = False) -> bytes | None:
    """The bytes of a file pcipassd does not trust, None when there is none.

    Only a regular file is opened (never a FIFO or a device: nothing blocks), and, unless
    `follow_symlinks`, never through a symlink. `check` may refuse what was opened (by its
    fstat). At most `limit` bytes are read: a larger file is Refused("too large"), or, when
    `partial`, its first `limit` bytes are returned. PermissionError passes through (the caller
    knows whether it runs as root); every other failure is Refused."""
    try:
        st = os.stat(path) if follow_symlinks else os.lstat(path)
    except FileNotFoundError:
        return None
    except PermissionError:
        raise
    except OSError as e:
        raise Refused("cannot open", _strerror(e)) from e
    if not stat.S_ISREG(st.st_mode):
        raise Refused("not a file", file_kind(st.st_mode), st.st_mode)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags if follow_symlinks else flags | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except PermissionError:
        raise
    except OSError as e:
        if e.errno == errno.ELOOP and not follow_symlinks:
            raise Refused("not a file", "a symlink") from e
        raise Refused("cannot open", _strerror(e)) from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # swapped in since the stat
            raise Refused("changed", file_kind(st.st_mode), st.st_mode)
        why = check(st) if check is not None else None
        if why:
            raise Refused("refused", why)
        body = read_at_most(fd, limit)
    except OSError as e:
        raise Refused("cannot read", _strerror(e)) from e
    finally:
        os.close(fd)
    if len(body) > limit:
        if not partial:
            raise Refused("too large")
        body = body[:limit]
    return body


def read_at_most(fd: int, limit: int) -> bytes:
    """Up to `limit` + 1 bytes of an open file: more than `limit` means it is too large."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = os.read(fd, limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


# -- reading the host ------------------------------------------------------------------------
def read_host(path: Path) -> str | None:
    """A small host file's text (undecodable bytes replaced), None when it is absent or cannot
    be read: for evidence that may simply not be there (/proc/cmdline, a DMI attribute)."""
    try:
        return path.read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return None
