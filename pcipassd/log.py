"""Logging: to journald with structured fields under systemd, to stderr otherwise.

pcipassd's own small logger, not the standard library's `logging`: importing that (with
traceback, linecache, tokenize, string and threading) was a quarter of a converged `apply` in a
TCG guest, the run every boot makes (bench/late_rebind.py's importtime), and pcipassd needs one
destination, four levels and %-formatting. Code logs through `get_logger()`; per-device messages
carry their journal fields in `extra={"journal": {...}}`, sent as PCIPASS_* fields.
"""

from __future__ import annotations

import importlib
import os
import sys

TYPE_CHECKING = False  # as typing's, without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from types import FrameType
    from typing import Any

    Sender = Callable[..., Any]

DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40
# syslog priorities (journald's PRIORITY, sd-daemon(3)'s <N> prefixes)
PRIORITY = {DEBUG: 7, INFO: 6, WARNING: 4, ERROR: 3}
_STDERR_PREFIX = {WARNING: "warning: ", ERROR: "error: "}

IDENTIFIER = "pcipassd"

# One MESSAGE_ID per kind of event (an action's events by its word: bind, restore, fail);
# systemd/pcipassd.catalog explains each (`journalctl -x`). The IDs never change.
MESSAGE_IDS = {
    "bind": "f9ff3b866b0f4445822d3e9a68a942ed",
    "restore": "ddcee5c7c81a46b9b3838c5178dd00ea",
    "refused": "7491d00d408146cfa0f7b21f525edb05",
    "fail": "c18d0eb9df4448868ee4951bfcd2dca2",
    "early hold missed": "1a8126f48da14a3c9230b0bf84e94cad",
    "in use": "b1dd98260ef24d2da1ca14bea53b1fb1",
    "forced": "bc3a566ee4ed43a2ba44ae4513d200c1",
    "reboot needed": "31a47ba3e0b74b16b5968b1139c37f9a",
    "kept": "81ee3e79e07a4cd0861e528cc2a84a23",
}


def event(kind: str) -> dict[str, str]:
    """The journal field that names this kind of event for the catalog."""
    return {"MESSAGE_ID": MESSAGE_IDS[kind]}


class Logger:
    """pcipassd's logger: every message goes to the one destination `setup` set."""

    __slots__ = ()

    def log(self, level: int, msg: str, *args: object,
            extra: Mapping[str, Any] | None = None) -> None:
        _emit(level, msg, args, extra)

    def debug(self, msg: str, *args: object, extra: Mapping[str, Any] | None = None) -> None:
        _emit(DEBUG, msg, args, extra)

    def info(self, msg: str, *args: object, extra: Mapping[str, Any] | None = None) -> None:
        _emit(INFO, msg, args, extra)

    def warning(self, msg: str, *args: object, extra: Mapping[str, Any] | None = None) -> None:
        _emit(WARNING, msg, args, extra)

    def error(self, msg: str, *args: object, extra: Mapping[str, Any] | None = None) -> None:
        _emit(ERROR, msg, args, extra)


_LOGGER = Logger()


def get_logger() -> Logger:
    return _LOGGER


class Journal:
    """Sends each message to journald: MESSAGE, PRIORITY, SYSLOG_IDENTIFIER, where in the code
    it was logged, and its PCIPASS_* fields. `send` is systemd-python's sender (a stand-in in
    tests)."""

    def __init__(self, send: Sender, level: int) -> None:
        self.send = send
        self.level = level

    def emit(self, level: int, text: str, fields: Mapping[str, str], frame: FrameType) -> None:
        try:
            self.send(text, PRIORITY=str(PRIORITY.get(level, 6)), SYSLOG_IDENTIFIER=IDENTIFIER,
                      CODE_FILE=frame.f_code.co_filename, CODE_LINE=frame.f_lineno,
                      CODE_FUNC=frame.f_code.co_name, **fields)
        except Exception as e:  # logging must never take the service down: say it on stderr
            sys.stderr.write(f"<{PRIORITY.get(level, 6)}>{text} (journald: {e})\n")


class Stream:
    """Writes each message to stderr (whatever sys.stderr is then) as a line: `pcipassd:
    warning: ...` for a terminal; with `priorities` (under systemd without python3-systemd),
    sd-daemon(3) priority prefixes, so the journal keeps each line's priority (and adds the
    name itself)."""

    def __init__(self, level: int, *, priorities: bool) -> None:
        self.level = level
        self.priorities = priorities

    def emit(self, level: int, text: str, fields: Mapping[str, str], frame: FrameType) -> None:
        line = (f"<{PRIORITY.get(level, 6)}>{text}" if self.priorities
                else f"{IDENTIFIER}: {_STDERR_PREFIX.get(level, '')}{text}")
        try:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):  # stderr closed (`pcipassd plan | head`): nothing to say
            pass


# Before setup() (pcipassd used as a library): warnings and errors to stderr, as lines.
_destination: Journal | Stream = Stream(WARNING, priorities=False)


def _emit(level: int, msg: str, args: tuple[object, ...],
          extra: Mapping[str, Any] | None) -> None:
    destination = _destination
    if level < destination.level:
        return
    text = msg % args if args else msg
    fields: Mapping[str, str] = (extra or {}).get("journal", {})
    destination.emit(level, text, fields, sys._getframe(2))  # who called debug(), info()...


def under_systemd(environ: Mapping[str, str]) -> bool:
    return "JOURNAL_STREAM" in environ or "INVOCATION_ID" in environ


def _journal_send() -> Sender | None:
    """systemd-python's sender, imported only under systemd (most runs never need it).

    Its C function `sendv`, which `systemd.journal.send` calls with one "FIELD=value" per
    field, straight from `systemd._journal`: importing `systemd.journal` also imports uuid,
    platform, datetime and traceback, a tenth of a boot-time `apply` in a TCG guest
    (bench/late_rebind.py's importtime). The fields are the ones `send` would make."""
    try:  # systemd.journal imports its sendv from here: without it, it has no sender either
        sendv: Callable[..., None] = importlib.import_module("systemd._journal").sendv
    except (ImportError, AttributeError):
        return None

    def send_fields(message: str, /, **fields: Any) -> None:
        sendv(f"MESSAGE={message}", *(f"{key}={value}" for key, value in fields.items()))

    return send_fields


def setup(debug: bool = False, environ: Mapping[str, str] | None = None,
          send: Sender | None = None) -> Journal | Stream:
    """Send pcipassd's messages to journald or stderr. Returns the destination set."""
    global _destination  # noqa: PLW0603 - the one destination of the run
    environ = os.environ if environ is None else environ
    level = DEBUG if debug else INFO
    if send is None and under_systemd(environ):
        send = _journal_send()
    _destination = (Journal(send, level) if send is not None
                    else Stream(level, priorities=under_systemd(environ)))
    return _destination


def destination() -> Journal | Stream:
    """Where messages go now (tests restore it)."""
    return _destination


def restore_destination(saved: Journal | Stream) -> None:
    global _destination  # noqa: PLW0603
    _destination = saved
