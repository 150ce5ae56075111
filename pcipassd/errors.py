"""The one exception hierarchy. Every error carries one line and a hint; main() prints them."""

from __future__ import annotations


class PcipassError(Exception):
    """An error the admin can act on: `message` says what, `hint` says how to fix it."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class ConfigError(PcipassError):
    """The configuration cannot be used; nothing was changed."""

    exit_code = 2


class StateError(PcipassError):
    """The state file under /run/pcipass cannot be read or written safely."""


class KernelError(PcipassError):
    """A sysfs write or a module load failed."""
