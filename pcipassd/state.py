"""What pcipassd changed, so that it can be undone: /run/pcipass/state.json.

Each device is recorded *before* it is touched, with the driver and driver_override it had.
Writes are atomic (temp file, fsync, rename, fsync of the directory) and never follow symlinks,
so a crash between two writes leaves either the old or the new state, never a torn one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from pcipassd.errors import StateError
from pcipassd.host import Host

FORMAT = 1


@dataclass(frozen=True)
class Record:
    bdf: str
    id: str  # vendor:device when it was bound, to notice changed hardware
    original_driver: str | None  # None: it was unbound, and stays so on restore
    original_override: str | None
    original_module: str | None  # the module providing original_driver, loaded on restore
    target: str
    entry: str  # FILE:LINE that selected it
    # How it was held: initramfs, early (before udev's coldplug), udev (added later) or late
    # (moved by the main service). Held before any driver bound it, original_driver is None and
    # restore gives it to the driver udev would load for it (see apply.py).
    held: str = "late"

    @property
    def native_unknown(self) -> bool:
        """Held before any driver bound it: its driver is whatever udev would load for it."""
        return self.original_driver is None and self.held != "late"


class State:
    def __init__(self, host: Host) -> None:
        self.host = host
        self.dir = host.state_dir
        self.file = self.dir / "state.json"
        self.records: dict[str, Record] = {}

    def _check_dir(self, create: bool) -> bool:
        try:
            st = os.lstat(self.dir)
        except FileNotFoundError:
            if not create:
                return False
            self.dir.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(self.dir, 0o700)
            st = os.lstat(self.dir)
        if not stat.S_ISDIR(st.st_mode):
            raise StateError(
                f"{self.host.display(self.dir)} is not a directory (a symlink?)",
                "remove it; pcipassd keeps its state in a directory it owns",
            )
        if create and st.st_mode & 0o077:  # only writers mend it: reading writes nothing
            os.chmod(self.dir, 0o700)
        return True

    def load(self) -> State:
        if not self._check_dir(create=False):
            return self
        try:
            fd = os.open(self.file, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return self
        except PermissionError:
            raise  # not root: main() says so in one line
        except OSError as e:
            raise StateError(f"cannot open {self.host.display(self.file)}: {e.strerror}",
                             "it must be a regular file, not a symlink") from e
        try:
            with os.fdopen(fd, "rb") as f:
                data = json.loads(f.read())
            if data.get("format") != FORMAT:
                raise ValueError(f"unknown format {data.get('format')!r}")
            self.records = {r["bdf"]: Record(**r) for r in data["devices"]}
        except (ValueError, KeyError, TypeError) as e:
            raise StateError(
                f"{self.host.display(self.file)} is damaged: {e}",
                "check the devices with `pcipassd status`, then move the file away",
            ) from e
        return self

    def save(self) -> None:
        self._check_dir(create=True)
        data = {"format": FORMAT, "devices": [asdict(r) for r in self.records.values()]}
        body = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
        tmp = self.dir / f".state.json.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.file)
        dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def put(self, record: Record) -> None:
        self.records[record.bdf] = record
        self.save()

    def drop(self, bdf: str) -> None:
        if self.records.pop(bdf, None) is not None:
            self.save()

    @contextlib.contextmanager
    def locked(self) -> Iterator[State]:
        """Hold /run/pcipass/lock: one pcipassd changes devices at a time."""
        self._check_dir(create=True)
        fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self.load()
        finally:
            os.close(fd)
