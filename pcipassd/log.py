"""Logging: to journald with structured fields under systemd, to stderr otherwise.

Library code logs through `logging` only. Per-device messages carry their journal fields in
`extra={"journal": {...}}`; `JournalHandler` sends them as PCIPASS_* fields.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

TYPE_CHECKING = False  # as typing's, without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any, ClassVar

    Sender = Callable[..., Any]

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


class JournalHandler(logging.Handler):
    """Sends each record to journald: MESSAGE, PRIORITY, SYSLOG_IDENTIFIER and the
    record's PCIPASS_* fields. `send` is systemd.journal.send (a stand-in in tests)."""

    _PRIORITY: ClassVar[dict[int, int]] = {
        logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
        logging.CRITICAL: 2,
    }

    def __init__(self, send: Sender) -> None:
        super().__init__()
        self.send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: Mapping[str, str] = getattr(record, "journal", {})
            self.send(
                self.format(record),
                PRIORITY=str(self._PRIORITY.get(record.levelno, 6)),
                SYSLOG_IDENTIFIER=IDENTIFIER,
                CODE_FILE=record.pathname,
                CODE_LINE=record.lineno,
                CODE_FUNC=record.funcName,
                **fields,
            )
        except Exception:  # logging must never take the service down
            self.handleError(record)


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
          send: Sender | None = None) -> logging.Handler:
    """Route the `pcipassd` loggers to journald or stderr. Returns the handler installed."""
    environ = os.environ if environ is None else environ
    handler: logging.Handler
    if send is None and under_systemd(environ):
        send = _journal_send()
    if send is not None:
        handler = JournalHandler(send)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        # Under systemd without python3-systemd: sd-daemon(3) priority prefixes, so the journal
        # keeps each line's priority (and adds the name itself).
        handler.setFormatter(_PriorityFormatter() if under_systemd(environ)
                             else _StderrFormatter())
    logger = logging.getLogger("pcipassd")
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.propagate = False
    return handler


class _PriorityFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"<{JournalHandler._PRIORITY.get(record.levelno, 6)}>{record.getMessage()}"


class _StderrFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = {logging.WARNING: "warning: ", logging.ERROR: "error: ",
                  logging.CRITICAL: "error: "}.get(record.levelno, "")
        return f"{IDENTIFIER}: {prefix}{record.getMessage()}"
