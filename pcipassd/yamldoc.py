"""Read one YAML file into plain data, remembering where every value stands (line, column).

Every way a file can be unusable (missing, a directory, unreadable, too large, not UTF-8, not
YAML, several documents, an alias bomb, duplicate keys) becomes a `Problem`, never a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pcipassd.errors import Problem

MAX_BYTES = 1 << 20  # a config is a few kB; anything this big is a mistake
MAX_NODES = 50_000  # bounds alias expansion ("billion laughs")

JsonPath = tuple[str | int, ...]

try:  # the C loader is faster where libyaml is present; both give node marks
    _Loader: type[yaml.SafeLoader] = yaml.CSafeLoader  # type: ignore[assignment]
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _Loader = yaml.SafeLoader


@dataclass
class Document:
    file: str  # as shown to the admin
    data: Any
    marks: dict[JsonPath, tuple[int, int]] = field(default_factory=dict)  # 1-based line, col

    def where(self, path: JsonPath) -> tuple[int, int]:
        """The position of `path`, or of its nearest ancestor that has one."""
        while path not in self.marks and path:
            path = path[:-1]
        return self.marks.get(path, (1, 1))

    def problem(self, path: JsonPath, message: str, hint: str = "") -> Problem:
        line, col = self.where(path)
        return Problem(self.file, line, col, format_path(path), message, hint)


def format_path(path: JsonPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


class _TooBig(Exception):
    pass


class _Builder:
    """Turns a composed node tree into Python data and a path -> position map."""

    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.nodes = 0
        self.problems: list[Problem] = []
        self.constructor = yaml.SafeLoader("")

    def build(self, node: yaml.Node, path: JsonPath) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _TooBig
        self.doc.marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self.scalar(key_node) if isinstance(key_node, yaml.ScalarNode) else None
                if not isinstance(key, str):
                    line, col = key_node.start_mark.line + 1, key_node.start_mark.column + 1
                    self.problems.append(Problem(
                        self.doc.file, line, col, format_path(path),
                        "keys must be plain words", "write the key as text, e.g. driver:",
                    ))
                    continue
                if key in out:
                    line, col = key_node.start_mark.line + 1, key_node.start_mark.column + 1
                    self.problems.append(Problem(
                        self.doc.file, line, col, format_path((*path, key)),
                        f"duplicate key {key!r}", "each key may appear once per mapping",
                    ))
                    continue
                out[key] = self.build(value_node, (*path, key))
                # the key's own position is better than the value's for "unknown key" messages
                self.doc.marks[(*path, key, "<key>")] = (
                    key_node.start_mark.line + 1, key_node.start_mark.column + 1,
                )
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        return self.scalar(node)

    def scalar(self, node: yaml.Node) -> Any:
        value = self.constructor.construct_object(node, deep=True)
        # YAML 1.1 reads unquoted 02:00.0 as the base-60 number 120.0; YAML 1.2 dropped that.
        # A value with a colon in it is always meant as text here (addresses, IDs).
        if node.tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float") and ":" in str(
            node.value
        ):
            return str(node.value)
        return value


def load(path: Path, shown: str) -> tuple[Document | None, list[Problem]]:
    """Read `path` (named `shown` in messages). Returns the document, or None and why not."""

    def whole(message: str, hint: str = "") -> tuple[None, list[Problem]]:
        return None, [Problem(shown, 0, 0, "", message, hint)]

    try:
        with path.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return whole("no such file", "create it from the example: make install, or see README")
    except IsADirectoryError:
        return whole("is a directory, not a YAML file")
    except PermissionError:
        return whole("cannot read: permission denied", "run as root")
    except OSError as e:
        return whole(f"cannot read: {e.strerror}")
    if len(raw) > MAX_BYTES:
        return whole(f"is larger than {MAX_BYTES // 1024} KiB; not a pcipassd config")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return whole(f"is not UTF-8 text (byte {e.start})", "is this the right file?")
    if not text.strip():
        return whole("is empty", "a config needs at least `version: 1` and `devices:`")
    doc = Document(shown, None)
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        what = " ".join(x for x in (e.context, e.problem) if x)
        return None, [Problem(shown, line, col, "", f"YAML syntax: {what}",
                              "check the indentation and quoting on that line")]
    except yaml.YAMLError as e:
        return whole(f"YAML syntax: {e}")
    if node is None:
        return whole("is empty", "a config needs at least `version: 1` and `devices:`")
    builder = _Builder(doc)
    try:
        doc.data = builder.build(node, ())
    except _TooBig:
        return whole(f"has more than {MAX_NODES} values (YAML aliases expanding?)",
                     "write the devices out; pcipassd does not expand large aliases")
    except yaml.YAMLError as e:
        return whole(f"YAML: {e}")
    return (None if builder.problems else doc), builder.problems
