"""The one exception hierarchy. Every error carries one line and a hint; main() prints them."""

from __future__ import annotations

from pcipassd.value import frozen


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


class UsageError(PcipassError):
    """A command line argparse accepts but that names what is not there (`status --entry` of
    no entry) or combines options that do not go together: exit 64, as a wrong command line."""

    exit_code = 64  # exits.EXIT_USAGE


class StateError(PcipassError):
    """The state file under /run/pcipass cannot be read or written safely."""


class KernelError(PcipassError):
    """A sysfs write or a module load failed."""



@frozen
class Problem:
    """One thing wrong with the configuration, at FILE:LINE:COL and a path inside the document."""

    file: str
    line: int  # 1-based; 0 when the problem is the file as a whole
    col: int
    path: str  # e.g. devices[2].address; "" for the whole document
    message: str
    hint: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"

    def as_dict(self) -> dict[str, object]:
        return {
            "file": self.file, "line": self.line, "column": self.col,
            "path": self.path, "message": self.message, "hint": self.hint,
        }

class InvalidConfig(ConfigError):
    """The configuration has problems; all of them are listed, nothing was changed."""

    def __init__(self, problems: list[Problem]) -> None:
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"{first}{more}", first.hint)
        self.problems = problems


class NothingConfigured(InvalidConfig):
    """The config is valid but lists no device: `validate` and `plan` say so (exit 2); `apply`,
    the service, holds nothing and succeeds, so that a freshly installed, enabled unit does
    not fail at every boot before the admin has listed a device."""
