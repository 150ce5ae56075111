"""Fixtures: a simulated kernel over a tmp root, a typical host built on it, and a guard that
fails any test touching this machine's real /sys or running modprobe/rmmod/insmod."""

from __future__ import annotations

import functools
import os
import pathlib
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from machine import FakeJournal, Machine
from simkernel import (
    DISK,
    NIC_A,
    NIC_B,
    NIC_E1000,
    SimKernel,
    build_typical_machine,
    set_unit_state,
)

from pcipassd.host import Host

pytest_plugins = ["pytester"]


@pytest.fixture
def sim(tmp_path: Path) -> SimKernel:
    """An empty simulated kernel (no drivers, no devices) over tmp_path/"root"."""
    return SimKernel(tmp_path / "root")


@pytest.fixture
def host(sim: SimKernel) -> Host:
    """pcipassd's view of the simulated root."""
    return Host(sim.root)


@pytest.fixture
def sim_host(sim: SimKernel) -> SimKernel:
    """`sim` populated with the typical machine: see simkernel.build_typical_machine and the
    BDF constants HOST_BRIDGE, BOOT_VGA, NIC_A, NIC_B, NIC_E1000, PCIE_BRIDGE, DISK."""
    return build_typical_machine(sim)


@pytest.fixture
def m(sim_host: SimKernel, capsys: pytest.CaptureFixture[str]) -> Machine:
    """The typical machine (`sim_host`) as an admin drives it through the CLI, nothing
    configured yet. A test that needs a config writes it (`m.config(...)`, or
    `m.with_guest_nic()` for the usual one); a module whose every test starts from the same host
    adds to it in a fixture named after that host."""
    return Machine(sim_host, capsys)


@pytest.fixture
def cold(sim: SimKernel, capsys: pytest.CaptureFixture[str]) -> Machine:
    """The typical machine at power-on: the devices are there, e1000e and e1000 are modules
    nothing has loaded yet (udev's coldplug will), so no NIC has a driver."""
    sim.enable_iommu("intel")
    sim.add_driver("e1000e", [(0x8086, 0x10D3)], loaded=False)
    sim.add_driver("e1000", [(0x8086, 0x100E)], loaded=False)
    sim.add_driver("virtio-pci", [(0x1AF4, 0x1001)])
    sim.add_driver("pcieport", [(0x1B36, 0x000C)], builtin=True)
    sim.add_driver("pci-stub", loaded=False)
    sim.add_driver("vfio-pci", loaded=False, needs_iommu=True)
    sim.add_device(NIC_A, 0x8086, 0x10D3, iommu_group=2)
    sim.add_device(NIC_B, 0x8086, 0x10D3, iommu_group=3)
    sim.add_device(NIC_E1000, 0x8086, 0x100E, iommu_group=4)
    sim.add_device("0000:00:1c.0", 0x1B36, 0x000C, cls=0x060400, iommu_group=5)
    sim.add_device(DISK, 0x1AF4, 0x1001, cls=0x010000, iommu_group=6, parent="0000:00:1c.0")
    (sim.root / "proc/cmdline").write_text("root=/dev/vda ro quiet\n")
    set_unit_state(sim.root, "enabled")
    return Machine(sim, capsys)


# ---- the real-/sys guard ------------------------------------------------------------------------

_BLOCKED_PROGRAMS = frozenset({"modprobe", "rmmod", "insmod"})

# audit event -> positions of its path arguments (os.symlink: only the link itself, not its text)
_PATH_EVENTS: dict[str, tuple[int, ...]] = {
    "open": (0,),
    "os.listdir": (0,),
    "os.scandir": (0,),
    "os.chdir": (0,),
    "os.mkdir": (0,),
    "os.rmdir": (0,),
    "os.remove": (0,),
    "os.rename": (0, 1),
    "os.link": (0, 1),
    "os.symlink": (1,),
    "os.truncate": (0,),
    "os.chmod": (0,),
    "os.chown": (0,),
    "os.utime": (0,),
    "os.listxattr": (0,),
    "os.getxattr": (0,),
    "os.setxattr": (0,),
    "os.removexattr": (0,),
    "glob.glob": (0,),
    "pathlib.Path.glob": (0,),
    "pathlib.Path.rglob": (0,),
    "shutil.rmtree": (0,),
    "shutil.copyfile": (0, 1),
    "shutil.copytree": (0, 1),
    "shutil.move": (0, 1),
}
# audit event -> position of its argv (or command string)
_EXEC_EVENTS = {
    "subprocess.Popen": 1,
    "os.exec": 1,
    "os.posix_spawn": 1,
    "os.spawn": 2,
    "os.system": 0,
}


class SysGuard:
    """Raises RuntimeError (and records it) on any access to /sys or modprobe-like command
    while `active`. `audit` is the audit hook; `check_path` also serves the patched os calls."""

    def __init__(self) -> None:
        self.active = False
        self.installed = False  # audit hooks cannot be removed: one per session
        self.violations: list[str] = []
        self._busy = threading.local()  # realpath() below calls the patched os.lstat/readlink

    def violation(self, what: str) -> None:
        message = f"test touched the real host: {what}"
        self.violations.append(message)
        raise RuntimeError(message)

    def check_path(self, event: str, path: Any) -> None:
        if not self.active or getattr(self._busy, "on", False):
            return
        if isinstance(path, int) or path is None:
            return  # a file descriptor, or the cwd
        try:
            text = os.fsdecode(os.fspath(path))
        except TypeError:
            return
        candidates = {os.path.abspath(text)}
        self._busy.on = True
        try:
            candidates.add(os.path.realpath(text))  # a symlink out of the tmp root counts too
        except (OSError, ValueError):
            pass  # e.g. an embedded NUL: the call itself will fail
        finally:
            self._busy.on = False
        for p in candidates:
            if p == "/sys" or p.startswith("/sys/"):
                self.violation(f"{event} {text}")

    def check_command(self, event: str, argv: Any) -> None:
        if not self.active:
            return
        args = [argv] if isinstance(argv, (str, bytes, os.PathLike)) else list(argv or ())
        texts = [
            os.fsdecode(a) if isinstance(a, (str, bytes, os.PathLike)) else str(a) for a in args
        ]
        words = [w for t in texts for w in t.split()]
        if any(os.path.basename(w) in _BLOCKED_PROGRAMS for w in words):
            self.violation(f"{event} {' '.join(words)}")

    def audit(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.active:
            return
        if event in _PATH_EVENTS:
            for i in _PATH_EVENTS[event]:
                if i < len(args):
                    self.check_path(event, args[i])
        elif event in _EXEC_EVENTS and _EXEC_EVENTS[event] < len(args):
            self.check_command(event, args[_EXEC_EVENTS[event]])


GUARD = SysGuard()


def _guarded(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """os.<name> checking its path first (os.readlink/stat/lstat raise no audit event)."""

    @functools.wraps(fn)
    def wrapper(path: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("dir_fd") is None:
            GUARD.check_path(f"os.{name}", path)
        return fn(path, *args, **kwargs)

    return wrapper


@pytest.fixture(autouse=True)
def _no_real_sys(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test runs guarded: touching /sys or running modprobe raises at once, and the test
    fails in teardown even if it swallowed that exception."""
    if not GUARD.installed:
        sys.addaudithook(GUARD.audit)
        GUARD.installed = True
    supports = (os.supports_dir_fd, os.supports_fd, os.supports_follow_symlinks)
    added: list[tuple[set[Callable[..., Any]], Callable[..., Any]]] = []
    for name in ("readlink", "stat", "lstat"):
        orig = getattr(os, name)
        wrapper = _guarded(name, orig)
        monkeypatch.setattr(os, name, wrapper)
        for s in supports:  # keep `os.stat in os.supports_fd`-style checks working
            if orig in s:
                s.add(wrapper)
                added.append((s, wrapper))
    accessor = getattr(pathlib, "_NormalAccessor", None)  # Python < 3.11: Path calls through it
    for name in ("readlink", "stat", "lstat"):
        if accessor is not None and hasattr(accessor, name):
            monkeypatch.setattr(accessor, name, staticmethod(getattr(os, name)))
    GUARD.violations.clear()
    GUARD.active = True
    try:
        yield
    finally:
        GUARD.active = False
        for s, wrapper in added:
            s.discard(wrapper)
    if GUARD.violations:
        found = "; ".join(GUARD.violations)
        GUARD.violations.clear()
        pytest.fail(f"{found} (tests must use the simulated root)", pytrace=False)


@pytest.fixture
def sys_guard() -> SysGuard:
    """The session's guard, for the tests that prove it works."""
    return GUARD


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """main() points pcipassd's messages at this test's stderr; undo that afterwards."""
    from pcipassd import log as logsetup  # noqa: PLC0415

    saved = logsetup.destination()
    yield
    logsetup.restore_destination(saved)


@pytest.fixture
def journal(monkeypatch: pytest.MonkeyPatch) -> FakeJournal:
    """Run as systemd runs the unit: INVOCATION_ID set, systemd.journal.send captured."""
    from pcipassd import log as logsetup  # noqa: PLC0415

    fake = FakeJournal()
    monkeypatch.setenv("INVOCATION_ID", "0123456789abcdef")
    monkeypatch.setattr(logsetup, "_journal_send", lambda: fake.send)
    return fake
