"""Where the host's files are. Every path pcipassd reads or writes is resolved under one root,
so that tests (and `--root DIR`) run against a tree that is not this machine's."""

from __future__ import annotations

from pathlib import Path

from pcipassd.value import frozen


@frozen
class Host:
    """The host whose files are read and written: the machine itself, or a tree under `root`."""

    root: Path = Path("/")

    def path(self, absolute: str) -> Path:
        """The host path `absolute` (e.g. "/sys/bus/pci") under this root."""
        return self.root / absolute.lstrip("/")

    @property
    def is_live(self) -> bool:
        """True when this is the running system: only then may commands such as modprobe run."""
        return self.root.resolve() == Path("/")

    @property
    def sys(self) -> Path:
        return self.path("/sys")

    @property
    def pci_devices(self) -> Path:
        return self.path("/sys/bus/pci/devices")

    @property
    def pci_drivers(self) -> Path:
        return self.path("/sys/bus/pci/drivers")

    @property
    def config_file(self) -> Path:
        return self.path("/etc/pcipass.yaml")

    @property
    def state_dir(self) -> Path:
        return self.path("/run/pcipass")

    def display(self, path: Path) -> str:
        """How a path under this root is shown to the admin: as the host would name it."""
        if self.is_live:
            return str(path)
        try:
            return "/" + str(path.relative_to(self.root))
        except ValueError:
            return str(path)

