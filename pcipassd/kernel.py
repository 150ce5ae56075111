"""The only door through which pcipassd changes the host: sysfs writes and module loads.

`apply` talks to the kernel through a `Kernel`. `LiveKernel` writes real files and runs modprobe;
the test suite passes a simulated kernel that reacts to the same writes as Linux does.
"""

from __future__ import annotations

import os
from pathlib import Path

from pcipassd.errors import KernelError
from pcipassd.host import Host
from pcipassd.log import get_logger

TYPE_CHECKING = False  # as typing's, without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Protocol
else:  # a structural type for mypy only: nothing checks it at run time
    Protocol = object

log = get_logger()

SETTLE_TIMEOUT = 60  # seconds; the unit's TimeoutStartSec (120) bounds the whole start


class Kernel(Protocol):
    def write(self, path: Path, data: str) -> None:
        """Write `data` to the sysfs attribute `path`; raise OSError (with errno) on failure."""

    def modprobe(self, module: str) -> None:
        """Load a kernel module; raise KernelError when it cannot be loaded."""

    def load_original(self, modalias: str) -> None:
        """Load what udev would load for a device's `modalias`, honouring the module blacklist
        (`modprobe -b`). No module for it, or a blacklisted one, is not an error."""

    def settle(self) -> None:
        """Wait until udev has handled every queued event (coldplug's driver loads included);
        a timeout or a failure is not an error: pcipassd goes on with what it sees."""


class LiveKernel:
    """The real kernel under `host.root`. modprobe runs only when the root is `/`."""

    def __init__(self, host: Host) -> None:
        self.host = host

    def write(self, path: Path, data: str) -> None:
        # One write(2) per attribute, as sysfs expects; O_NOFOLLOW keeps a planted symlink from
        # redirecting the write. O_CREAT is never given: sysfs attributes exist or the write fails.
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.write(fd, data.encode())
        finally:
            os.close(fd)

    def modprobe(self, module: str) -> None:
        self._modprobe(module)

    def load_original(self, modalias: str) -> None:
        try:
            self._modprobe(modalias, "-b")
        except KernelError as e:  # the re-probe that follows tells what happened
            log.debug("%s", e.message)

    def settle(self) -> None:
        if not self.host.is_live:  # another root's udev is not this host's
            return
        import subprocess  # noqa: PLC0415 - only here, off the converged boot path

        log.debug("waiting for udev: udevadm settle --timeout=%d", SETTLE_TIMEOUT)
        try:
            subprocess.run(["udevadm", "settle", f"--timeout={SETTLE_TIMEOUT}"],
                           capture_output=True, check=False)
        except OSError as e:  # no udevadm (a container): nothing to wait for
            log.debug("udevadm settle: %s", e)

    def _modprobe(self, module: str, *options: str) -> None:
        if not self.host.is_live:
            raise KernelError(
                f"module {module} is not loaded under {self.host.root}",
                "with --root other than /, pcipassd never runs modprobe; load it yourself",
            )
        import shutil  # noqa: PLC0415 - only here, off the converged boot path
        import subprocess  # noqa: PLC0415

        exe = shutil.which("modprobe") or "/sbin/modprobe"
        log.debug("running %s %s", exe, module)
        proc = subprocess.run(
            [exe, *options, "--", module], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            detail = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
            raise KernelError(
                f"modprobe {module} failed: {detail[0]}",
                f"check that the module exists for this kernel: modinfo {module}",
            )
