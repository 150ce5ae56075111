"""The validation cache: digests of config files that passed the JSON schema.

A boot-time apply of an unchanged config then skips importing jsonschema, which costs more than
the rest of pcipassd together. Only the schema check is skipped; every other check runs. The
cache lives in /var/cache/pcipassd; losing it costs one full validation, nothing else.
"""

from __future__ import annotations

import logging
import os

from pcipassd.host import Host

log = logging.getLogger(__name__)

KEEP = 32  # digests remembered: enough for the main file and its drop-ins, old and new


class ValidationCache:
    def __init__(self, host: Host) -> None:
        self.file = host.path("/var/cache/pcipassd/validated")

    def load(self) -> list[str]:
        try:
            fd = os.open(self.file, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as f:
                text = f.read(KEEP * 65).decode("ascii", errors="replace")
        except OSError:
            return []
        return [line.strip() for line in text.splitlines() if line.strip()]

    def remember(self, digests: frozenset[str]) -> None:
        known = self.load()
        if digests.issubset(known):
            return
        keep = (sorted(digests) + [d for d in known if d not in digests])[:KEEP]
        tmp = self.file.with_name(f".validated.{os.getpid()}")
        try:
            self.file.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "w") as f:
                f.write("\n".join(keep) + "\n")
            os.replace(tmp, self.file)
        except OSError as e:  # a read-only /var only costs speed
            log.debug("cannot write %s: %s", self.file, e)
