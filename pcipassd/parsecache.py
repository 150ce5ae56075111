"""The configuration files as last parsed, kept so that a run whose files have not changed since
needs no YAML parser: importing PyYAML and parsing are a quarter of a converged `apply` in a TCG
guest, the run every boot makes (bench/late_rebind.py's profile).

Only the parse is skipped. Each file is still read with the same checks (owner, mode, size, the
StrictModes of its directories), and the configuration's checks (the schema, the entries, their
conflicts) run on its data as after a parse. A file's parse is used only when the file's text,
the name it is shown by, and the parser (pcipassd's version, yamldoc.py itself) are exactly
those it was made from; anything else (no cache, a damaged or foreign one, another format)
means a parse, silently. `apply` writes it, after a configuration without problems (a file with
problems is parsed, and its problems said, at every run), keeping the last 32 files' parses
(`--config` names other files): /var/cache/pcipassd/parsed.json, root's only. `validate` and
`--main` always parse.
"""

from __future__ import annotations

import json
import os

from pcipassd import __version__
from pcipassd.safefile import Refused, read_untrusted, remove_temps, write_atomic
from pcipassd.strictmodes import untrusted

TYPE_CHECKING = False  # as typing's, without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any

    from pcipassd.host import Host
    from pcipassd.yamldoc import Document

FILE = "/var/cache/pcipassd/parsed.json"
FORMAT = 1
LIMIT = 4 << 20  # bytes; a larger cache is not written (its files are parsed every time)
NAMES = 32  # files kept, the most recently used
_TEMP_PREFIX = ".parsed.json."


def _parser() -> str:
    """What made a parse: pcipassd's version and the parser's own file, so that an upgrade (or
    an edited yamldoc.py) parses again."""
    st = os.stat(os.path.join(os.path.dirname(__file__), "yamldoc.py"))
    return f"{__version__} {st.st_size} {st.st_mtime_ns}"


class Cache:
    """The parses of one run: those found (`lookup`) and made (`parsed`); `save` keeps them."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self._known: dict[str, Any] | None = None  # the file's entries, read on first lookup
        self._used: dict[str, dict[str, Any]] = {}  # this run's files, by name as shown
        self._changed = False

    def _entries(self) -> dict[str, Any]:
        if self._known is None:
            self._known = {}
            try:
                body = read_untrusted(self.host.path(FILE), LIMIT, check=untrusted)
                data = json.loads(body) if body else None
            except (OSError, Refused, ValueError, RecursionError):
                return self._known  # no cache, or not one to use: parse
            if (isinstance(data, dict) and data.get("format") == FORMAT
                    and data.get("parser") == _parser() and isinstance(data.get("files"), dict)):
                self._known = data["files"]
        return self._known

    def lookup(self, shown: str, text: str) -> Document | None:
        """The document of the file shown as `shown` whose text is `text`, as last parsed;
        None when it was not, or not from exactly this text."""
        entry = self._entries().get(shown)
        if not isinstance(entry, dict) or entry.get("text") != text:
            self._changed = True
            return None
        try:
            marks = {tuple(path): (line, col) for path, line, col in entry["marks"]}
            data = entry["data"]
        except (KeyError, TypeError, ValueError):
            self._changed = True
            return None
        from pcipassd.yamldoc import Document  # noqa: PLC0415 - a hit needs no PyYAML

        self._used[shown] = entry
        return Document(shown, data, marks)

    def parsed(self, doc: Document, text: str) -> None:
        """`doc` was parsed from `text` without problems: keep it, if JSON gives back exactly
        this data (it would not: keys that are not text, NaN)."""
        try:
            same = json.loads(json.dumps(doc.data)) == doc.data
        except (TypeError, ValueError, RecursionError):
            same = False
        if same:
            self._used[doc.file] = {"text": text, "data": doc.data, "marks": [
                [list(path), line, col] for path, (line, col) in doc.marks.items()]}
            self._changed = True

    def save(self) -> str:
        """Keep this run's new parses, with those of the other files the cache has (another
        `--config`, a drop-in since removed: harmless, since a parse is used only for exactly
        its text), the last NAMES files' in all; one line saying why not when it cannot be
        written ("" otherwise)."""
        if not self._changed:
            return ""
        older = [(name, entry) for name, entry in self._entries().items()
                 if name not in self._used]
        room = max(NAMES - len(self._used), 0)
        files = {**dict(older[len(older) - min(room, len(older)):]),
                 **self._used}  # this run's last: the most recent
        body = json.dumps({"format": FORMAT, "parser": _parser(), "files": files},
                          separators=(",", ":")).encode()
        if len(body) > LIMIT:
            return ""
        path = self.host.path(FILE)
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            remove_temps(path.parent, _TEMP_PREFIX)  # left by a save that was killed
            write_atomic(path, body, _TEMP_PREFIX, durable=False)
        except OSError as e:
            return f"cannot save {self.host.display(path)}: {e.strerror or e}"
        self._known = files
        self._changed = False
        return ""
