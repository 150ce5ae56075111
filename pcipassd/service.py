"""Talking to the service manager: the status text `systemctl status pcipassd` shows, and
SIGTERM (`systemctl stop` while apply runs).

The status text is sent over $NOTIFY_SOCKET (sd_notify(3); the unit sets NotifyAccess=all),
followed by a barrier so that systemd has read it before this process exits.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import FrameType

from pcipassd.errors import Problem

BARRIER_TIMEOUT_MS = 5000


def status_text(held: int, refused: Sequence[Problem], failed: int) -> str:
    """`holding 2 devices, 1 entry refused (/etc/pcipass.yaml:7: ...)`: what `systemctl status`
    shows without scrolling."""
    text = f"holding {held} device{'s' if held != 1 else ''}"
    if refused:
        first, n = refused[0], len(refused)
        text += (f", {n} entr{'y' if n == 1 else 'ies'} refused "
                 f"({first.file}:{first.line}: `pcipassd status` says why)")
    if failed:
        text += f", {failed} failed"
    return text


def notify_status(text: str, environ: Mapping[str, str] | None = None) -> bool:
    """Set the unit's status text; False when not running under systemd (or it failed)."""
    environ = os.environ if environ is None else environ
    address = environ.get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return False
    import array  # noqa: PLC0415 - only under systemd
    import select  # noqa: PLC0415
    import socket  # noqa: PLC0415

    if address[0] == "@":
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(f"STATUS={text}".encode())
            read_end, write_end = os.pipe()
            try:
                fds = array.array("i", [write_end])
                sock.sendmsg([b"BARRIER=1"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
                os.close(write_end)
                write_end = -1
                poller = select.poll()
                poller.register(read_end, select.POLLHUP)
                poller.poll(BARRIER_TIMEOUT_MS)  # systemd closes its copy once it has read both
            finally:
                os.close(read_end)
                if write_end >= 0:
                    os.close(write_end)
    except OSError:
        return False
    return True


@contextlib.contextmanager
def on_sigterm(callback: Callable[[], None]) -> Iterator[None]:
    """Call `callback` (instead of dying) when SIGTERM arrives inside the block."""

    def handler(signum: int, frame: FrameType | None) -> None:
        callback()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
