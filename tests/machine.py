"""A test's view of a host: the simulated kernel, its config files, and the CLI run in-process
the way an admin runs it (exit code, stdout, stderr)."""

from __future__ import annotations

import contextlib
import json
import signal
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from simkernel import NIC_A, SimKernel

from pcipassd.cli import main


class Hang(BaseException):
    """A verb did not return in time (BaseException: no `except OSError` swallows it)."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise Hang in the code under test if it still runs after `seconds`."""

    def fire(signum: int, frame: FrameType | None) -> None:
        raise Hang(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@dataclass
class Result:
    rc: int
    out: str
    err: str


class Machine:
    def __init__(self, sim: SimKernel, capsys: pytest.CaptureFixture[str]) -> None:
        self.sim = sim
        self.root = sim.root
        self.capsys = capsys

    def config(self, text: str, name: str = "pcipass.yaml") -> Path:
        path = self.root / "etc" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    def with_guest_nic(self) -> Machine:
        """The config most CLI tests start from: NIC_A, by address, named guest-nic."""
        self.config(f"""\
            version: 1
            devices:
              - address: "{NIC_A}"
                name: guest-nic
            """)
        return self

    def dropin(self, name: str, text: str) -> Path:
        return self.config(text, f"pcipass.d/{name}")

    def run(self, *argv: str) -> Result:
        self.capsys.readouterr()
        rc = main(["--root", str(self.root), *argv], kernel=self.sim)
        captured = self.capsys.readouterr()
        return Result(rc, captured.out, captured.err)

    def driver(self, bdf: str) -> str | None:
        return self.sim.driver_of(bdf)

    def override(self, bdf: str) -> str | None:
        return self.sim.override_of(bdf)

    @property
    def state(self) -> dict[str, Any]:
        path = self.root / "run/pcipass/state.json"
        if not path.exists():
            return {}
        data: dict[str, Any] = json.loads(path.read_text())
        return {r["bdf"]: r for r in data["devices"]}

    def writes_to(self, suffix: str) -> list[tuple[str, str]]:
        return [w for w in self.sim.writes if w[0].endswith(suffix)]


class FakeJournal:
    """What pcipassd sends to journald (the `journal` fixture captures it)."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def send(self, message: str, **fields: Any) -> None:
        self.entries.append({"MESSAGE": message, **fields})

    def device(self, bdf: str) -> list[dict[str, Any]]:
        return [e for e in self.entries if e.get("PCIPASS_DEVICE") == bdf]
