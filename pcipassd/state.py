"""What pcipassd changed, so that it can be undone: /run/pcipass/state.json.

Each device is recorded *before* it is touched, with the driver and driver_override it had.
Writes are atomic (safefile.write_atomic: a temp file with a fresh random name, fsync, rename)
and never follow symlinks, so a crash between two writes leaves either the old or the new
state, never a torn one.

What is read back is untrusted (safefile.read_untrusted): the file is opened without following
symlinks or blocking, must be a regular file of at most 1 MiB, and every field of every record
must have its type and grammar (a canonical BDF, driver and module names that cannot name a
path or an option). A file that cannot be read as a whole stops the verb with one line
(StateError), before any device is touched. A single bad record is kept aside (`State.invalid`,
written back as it was): its device is left exactly as it is and named, and every other device
is handled as usual.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

from pcipassd.address import BDF_RE
from pcipassd.errors import StateError
from pcipassd.host import Host
from pcipassd.model import ON_STOP, RESTORE_ON_STOP, STUB_DRIVERS, Record
from pcipassd.safefile import Refused, file_kind, read_untrusted, remove_temps, write_atomic
from pcipassd.value import asdict, fields, frozen

TYPE_CHECKING = False  # as typing's, without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any

# 2: a record's `held` is now `stage`. Fields added since are optional and written only when
# they say something (`forced`, `original_reset_method`, `on_stop: keep`): a file without them is
# what an older pcipassd wrote and reads, so the format stays 2. A pcipassd older than a field
# finds it unknown, and leaves that device as it is (a bad record), never gives it back wrongly.
FORMAT = 2
READS = (1, FORMAT)  # format 1 (before an upgrade reloaded the service) is read too
LIMIT = 1 << 20  # bytes: a record is about 300, so room for thousands of devices
MAX_DEPTH = 8  # a valid file nests 3 deep (object, list, record)
STAGES = ("initramfs", "early", "udev", "late")

# A driver as sysfs names it (e1000e, virtio-pci, snd_hda_intel), and a module (e1000e,
# snd_hda_intel): no '/', no leading '.' or '-', so neither a path nor an option.
DRIVER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
MODULE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")
ID_RE = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{4}\Z")
_TEMP_PREFIX = ".state.json."
_HINT_DAMAGED = ("pcipassd moves no device while it cannot read this file: move it away; "
                 "`pcipassd list` then shows the devices still held, to give back by hand")


@frozen
class BadRecord:
    """A record that fails its grammar: kept in the file as it was, its device left alone."""

    index: int  # 1-based, in the file's `devices`
    bdf: str | None  # the device it is about, when its bdf is a valid address
    problem: str
    raw: Any  # as read, written back unchanged

    @property
    def label(self) -> str:
        return f"device {self.bdf}" if self.bdf else f"record {self.index}"


def _show(value: Any) -> str:
    """A value from the file, short and on one line, as JSON writes it."""
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _text(name: str, value: Any, pattern: re.Pattern[str], what: str,
          optional: bool = False) -> str | None:
    """The field's value if it is a string of the grammar `pattern`; else ValueError."""
    if value is None and optional:
        return None
    if not isinstance(value, str) or not pattern.match(value):
        raise ValueError(f"{name}: {_show(value)} is not {what}")
    return value


def _one_of(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name}: {_show(value)} is not one of {', '.join(allowed)}")
    return value


def _entry(value: Any) -> str:
    """FILE:LINE, or empty: printable, one line, bounded (it is logged)."""
    if (not isinstance(value, str) or len(value) > 4096
            or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)):
        raise ValueError(f"entry: {_show(value)} is not a FILE:LINE")
    return value


_OPTIONAL = ("stage", "forced", "original_reset_method", "on_stop")  # absent from older files
def _forced(value: Any) -> str:
    """What `force:` overrode: printable, one line, bounded (it is logged and shown)."""
    if (not isinstance(value, str) or len(value) > 4096
            or any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in value)):
        raise ValueError(f"forced: {_show(value)} is not a line of text")
    return value


RESET_METHOD_RE = re.compile(r"^[a-z_]{1,20}( [a-z_]{1,20}){0,15}\Z")


def _reset_method(value: Any) -> str | None:
    """A device's sysfs reset_method as read ("flr bus"; "" when reset is disabled), or null:
    it is written back to sysfs, so only the kernel's grammar (names, single spaces)."""
    if value is None:
        return None
    if value == "":
        return ""
    if not isinstance(value, str) or not RESET_METHOD_RE.match(value):
        raise ValueError(f"original_reset_method: {_show(value)} is not a list of reset "
                         "methods like \"flr bus\", or null")
    return str(value)


def _saved(record: Record) -> dict[str, Any]:
    """The record as the file keeps it: `forced` only when set, so that a file without forced
    devices stays readable by a pcipassd that predates the field."""
    data = asdict(record)
    if not record.forced:
        del data["forced"]
    if record.original_reset_method is None:  # likewise
        del data["original_reset_method"]
    if record.on_stop == RESTORE_ON_STOP:  # likewise: absent, it reads as restore
        del data["on_stop"]
    return data


_REQUIRED = tuple(name for name in fields(Record) if name not in _OPTIONAL)
_KNOWN = (*_REQUIRED, *_OPTIONAL)


def parse_record(raw: Any, fmt: int = FORMAT) -> Record:
    """A record from the file, every field checked; ValueError says what is wrong. A record of
    format 1 names its stage `held`."""
    if not isinstance(raw, dict):
        raise ValueError(f"{_show(raw)} is not a record")
    if fmt == 1:
        if "stage" in raw:
            raise ValueError('unknown field "stage"')
        raw = {("stage" if k == "held" else k): v for k, v in raw.items()}
    unknown = sorted(str(k) for k in raw if k not in _KNOWN)
    if unknown:
        raise ValueError(f"unknown field {_show(unknown[0])}")
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise ValueError(f"no {missing[0]}")
    bdf = raw["bdf"]
    if not isinstance(bdf, str) or not BDF_RE.fullmatch(bdf):
        raise ValueError(f"bdf: {_show(bdf)} is not a PCI address like 0000:02:00.0")
    return Record(
        bdf=bdf,
        id=str(_text("id", raw["id"], ID_RE, "a vendor:device ID like 8086:10d3")),
        original_driver=_text("original_driver", raw["original_driver"], DRIVER_RE,
                              "a driver name like e1000e, or null", optional=True),
        original_override=_text("original_override", raw["original_override"], DRIVER_RE,
                                "a driver name, or null", optional=True),
        original_module=_text("original_module", raw["original_module"], MODULE_RE,
                              "a module name like e1000e, or null", optional=True),
        target=_one_of("target", raw["target"], STUB_DRIVERS),
        entry=_entry(raw["entry"]),
        stage=_one_of("stage", raw.get("stage", "late"), STAGES),
        forced=_forced(raw.get("forced", "")),
        original_reset_method=_reset_method(raw.get("original_reset_method")),
        on_stop=_one_of("on_stop", raw.get("on_stop", RESTORE_ON_STOP), ON_STOP),
    )


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    for t, name in ((bool, "a boolean"), (str, "a string"), (list, "a list"),
                    ((int, float), "a number")):
        if isinstance(value, t):
            return name
    return "an object"


def _too_deep(data: Any) -> bool:
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
    return False


class Unusable(Exception):
    """A JSON file pcipassd wrote cannot be used. `kind`: "not a file" (`text` is what it is),
    "cannot open", "cannot read" (`text` is the system's error) or "damaged" (`text` says how)."""

    def __init__(self, kind: str, text: str) -> None:
        super().__init__(text)
        self.kind = kind
        self.text = text

    def line(self, name: str) -> str:
        """One line for the admin about the file `name`."""
        if self.kind == "not a file":
            return f"{name} is {self.text}, not a regular file"
        if self.kind == "damaged":
            return f"{name} is damaged: {self.text}"
        return f"{self.kind} {name}: {self.text}"


def _read_bounded(path: Path, limit: int) -> bytes | None:
    """The file's bytes, None when there is none: read as untrusted (no symlink, nothing but a
    regular file, at most `limit` bytes). PermissionError passes through (not root); every
    other failure is Unusable."""
    try:
        return read_untrusted(path, limit)
    except Refused as e:
        if e.kind == "too large":
            raise Unusable("damaged", f"it is larger than {limit >> 20 or 1} MiB") from e
        raise Unusable("not a file" if e.kind == "changed" else e.kind, e.text) from e


def read_document(path: Path, limit: int, fmt: int | tuple[int, ...],
                  key: str) -> dict[str, Any] | None:
    """A JSON object pcipassd wrote, read as untrusted: a regular file (no symlink) of at most
    `limit` bytes, not nested deeper than MAX_DEPTH, with `"format": fmt` and a list under
    `key` (`fmt`: the format, or the formats, it may have). None when there is no file;
    Unusable (one line: what is wrong) otherwise."""
    formats = fmt if isinstance(fmt, tuple) else (fmt,)
    body = _read_bounded(path, limit)
    if body is None:
        return None
    try:
        data = json.loads(body)
    except RecursionError:
        raise Unusable("damaged", "it is nested too deeply") from None
    except json.JSONDecodeError as e:
        raise Unusable("damaged", f"it is not JSON (line {e.lineno}, column {e.colno})") from None
    except ValueError:  # not UTF-8, a number too long to convert
        raise Unusable("damaged", "it is not JSON") from None
    if _too_deep(data):
        raise Unusable("damaged", "it is nested too deeply")
    if not isinstance(data, dict):
        raise Unusable("damaged", f"it is {_kind(data)}, not an object with format and {key}")
    version = data.get("format")
    if type(version) is not int or version not in formats:
        wanted = " or ".join(str(f) for f in formats)
        raise Unusable("damaged", f"format is {_show(version)}, not {wanted}"
                       if "format" in data else "it has no format")
    if not isinstance(data.get(key), list):
        raise Unusable("damaged", f"{key} is {_kind(data.get(key))}, not a list"
                       if key in data else f"it has no {key}")
    return data


# /run/pcipass: everyone may enter it to read node.json (the node document, node.py); only its
# owner (root) may write in it. state.json, the lock, early.log and `armed` are 0600, root's.
DIR_MODE = 0o755


class State:
    def __init__(self, host: Host) -> None:
        self.host = host
        self.dir = host.state_dir
        self.file = self.dir / "state.json"
        self.records: dict[str, Record] = {}
        self.invalid: list[BadRecord] = []
        self._reported = False

    @property
    def name(self) -> str:
        return self.host.display(self.file)

    # -- reading ---------------------------------------------------------------------------
    def _check_dir(self, create: bool) -> bool:
        try:
            st = os.lstat(self.dir)
        except FileNotFoundError:
            if not create:
                return False
            self.dir.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(self.dir, DIR_MODE)
            st = os.lstat(self.dir)
        if not stat.S_ISDIR(st.st_mode):
            raise StateError(
                f"{self.host.display(self.dir)} is not a directory (a symlink?)",
                "remove it; pcipassd keeps its state in a directory it owns",
            )
        if create and st.st_uid != os.geteuid():
            raise StateError(
                f"{self.host.display(self.dir)} is owned by uid {st.st_uid}, not by "
                f"{'root' if os.geteuid() == 0 else f'uid {os.geteuid()}'}",
                "remove it; pcipassd keeps its state in a directory it owns",
            )
        if create and stat.S_IMODE(st.st_mode) != DIR_MODE:  # only writers mend it
            os.chmod(self.dir, DIR_MODE)  # no one else may write in it; all may read node.json
        return True

    def load(self) -> State:
        self.records, self.invalid = {}, []
        if not self._check_dir(create=False):
            return self
        try:
            data = read_document(self.file, LIMIT, READS, "devices")
        except PermissionError:
            raise  # not root: main() says so in one line
        except Unusable as e:
            hint = (_HINT_DAMAGED if e.kind != "not a file" else
                    "remove it (pcipassd writes this file itself), then run the command again")
            raise StateError(e.line(self.name), hint) from None
        if data is not None:
            self._parse(data["devices"], data["format"])
        return self

    def load_if_readable(self) -> bool:
        """load(), for the verbs that only read: False, with no records, when only root may
        read the file (they then run without what pcipassd holds, and say so)."""
        try:
            self.load()
        except PermissionError:
            self.records, self.invalid = {}, []
            return False
        return True

    def _parse(self, devices: list[Any], fmt: int = FORMAT) -> None:
        good: list[tuple[int, Record]] = []
        for i, raw in enumerate(devices, 1):
            try:
                good.append((i, parse_record(raw, fmt)))
            except ValueError as e:
                bdf = raw.get("bdf") if isinstance(raw, dict) else None
                ok = isinstance(bdf, str) and BDF_RE.fullmatch(bdf)
                self.invalid.append(BadRecord(i, bdf if ok else None, str(e), raw))
        seen: dict[str, int] = {}
        for bdf in [r.bdf for _, r in good] + [b.bdf for b in self.invalid if b.bdf]:
            seen[bdf] = seen.get(bdf, 0) + 1
        for i, record in good:
            if seen[record.bdf] > 1:  # which one is true? neither is used
                self.invalid.append(BadRecord(i, record.bdf,
                                              "more than one record for it",
                                              _saved(record)))
            else:
                self.records[record.bdf] = record

    @property
    def invalid_bdfs(self) -> frozenset[str]:
        """The devices that have a bad record: never touched."""
        return frozenset(b.bdf for b in self.invalid if b.bdf)

    def describe(self, bad: BadRecord) -> str:
        """One line for a bad record: the file, the device, what is wrong."""
        return f"{self.name}: {bad.label}: {bad.problem}; left as it is"

    def problems(self) -> list[str]:
        return [self.describe(b) for b in self.invalid]

    def unreported(self) -> list[BadRecord]:
        """The bad records, the first time only (apply and its early release share a State)."""
        if self._reported:
            return []
        self._reported = True
        return list(self.invalid)

    # -- writing -------------------------------------------------------------------------
    def save(self) -> None:
        """Write the records (and the bad ones, unchanged) atomically; StateError if not."""
        data = {"format": FORMAT,
                "devices": [_saved(r) for r in self.records.values()]
                + [b.raw for b in self.invalid]}
        body = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
        try:
            self._check_dir(create=True)
            write_atomic(self.file, body, _TEMP_PREFIX, durable=False)  # /run: a tmpfs
        except OSError as e:
            raise StateError(
                f"cannot save {self.name}: {e.strerror or e}",
                "free space in /run (df /run) and make it writable, then run the command "
                "again") from e

    def put(self, *records: Record) -> None:
        """Record devices, on disk, before they are touched, in one save; StateError (and
        nothing recorded, in memory either) when the file cannot be saved."""
        old = {r.bdf: self.records.get(r.bdf) for r in records}
        self.records.update((r.bdf, r) for r in records)
        try:
            self.save()
        except StateError:
            for bdf, was in old.items():
                if was is None:
                    del self.records[bdf]
                else:
                    self.records[bdf] = was
            raise

    def drop(self, *bdfs: str) -> None:
        """Forget devices, in one save; StateError (and the records kept) when the file cannot
        be saved."""
        gone = {bdf: self.records.pop(bdf) for bdf in bdfs if bdf in self.records}
        if not gone:
            return
        try:
            self.save()
        except StateError:
            self.records.update(gone)
            raise

    @contextlib.contextmanager
    def locked(self) -> Iterator[State]:
        """Take /run/pcipass/lock: one pcipassd changes devices at a time."""
        try:
            self._check_dir(create=True)
        except PermissionError:
            raise  # not root: main() says so in one line
        except OSError as e:
            raise StateError(f"cannot create {self.host.display(self.dir)}: {e.strerror}",
                             "/run must be writable (is it mounted read-only?)") from e
        fd = self._open_lock()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._remove_temps()
            yield self.load()
        finally:
            os.close(fd)

    def _open_lock(self) -> int:
        lock = self.dir / "lock"
        shown = self.host.display(lock)
        flags = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT | flags, 0o600)
            except OSError as e:
                if e.errno != errno.EROFS:
                    raise
                fd = os.open(lock, os.O_RDONLY | flags)  # a read-only /run: flock still works
        except PermissionError:
            raise  # not root: main() says so in one line
        except OSError as e:
            what = {errno.ELOOP: "is a symlink", errno.EISDIR: "is a directory"}.get(
                e.errno or 0, f"cannot be opened: {e.strerror}")
            raise StateError(f"{shown} {what}",
                             "remove it (pcipassd creates it itself), then run the command "
                             "again") from e
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise StateError(f"{shown} is {file_kind(st.st_mode)}, not a regular file",
                             "remove it (pcipassd creates it itself), then run the command "
                             "again")
        return fd

    def _remove_temps(self) -> None:
        """Temp files of saves that were killed: under the lock, no save is under way."""
        remove_temps(self.dir, _TEMP_PREFIX)

