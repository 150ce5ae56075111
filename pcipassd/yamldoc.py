"""Read one YAML file into plain data, remembering where every value stands (line, column).

Every way a file can be unusable (missing, a directory, unreadable, too large, not UTF-8, not
YAML, several documents, an alias bomb, duplicate keys) becomes a `Problem`, never a traceback.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from pcipassd.errors import Problem

MAX_BYTES = 1 << 20  # a config is a few kB; anything this big is a mistake
MAX_NODES = 50_000  # bounds alias expansion ("billion laughs")
MAX_DEPTH = 64  # bounds nesting: libyaml's composer recurses in C and overflows the stack

JsonPath = tuple[Union[str, int], ...]  # a runtime "|" needs Python 3.10
# a character YAML does not accept in a stream (PyYAML's reader allows only these); compiled
# only when a file has one, since compiling it costs more than reading a config
_NOT_YAML_TEXT = r"[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"

try:  # the C loader is faster where libyaml is present; both give node marks
    _Loader: type[yaml.SafeLoader] = yaml.CSafeLoader  # type: ignore[assignment]
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _Loader = yaml.SafeLoader


@dataclass
class Document:
    file: str  # as shown to the admin
    data: Any
    raw: bytes = b""  # the file's bytes, as read
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
        if part == "<key>":  # the position of a key, not a value: same path
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


class _TooBig(Exception):
    pass


class _TooDeep(Exception):
    pass


class _Cycle(Exception):
    def __init__(self, node: yaml.Node) -> None:
        super().__init__()
        self.node = node


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _too_deep(text: str) -> bool:
    """Whether the flow collections ([...], {...}) nest deeper than MAX_DEPTH. Block nesting
    needs indentation, so a file under MAX_BYTES cannot nest deep enough to harm the composer;
    flow nesting can (a 60 kB file of brackets crashed it). The event parser does not recurse."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return False  # every config an admin writes: no second parse
    depth = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    return False


class _Builder:
    """Turns a composed node tree into Python data and a path -> position map."""

    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.nodes = 0
        self.open: list[yaml.Node] = []  # the collections being built, outermost first
        self.problems: list[Problem] = []
        self.constructor = yaml.SafeLoader("")

    def build(self, node: yaml.Node, path: JsonPath) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _TooBig
        self.doc.marks[path] = _mark(node)
        if not isinstance(node, yaml.ScalarNode):
            if any(node is n for n in self.open):
                raise _Cycle(node)  # `a: &x [*x]`: an alias inside itself
            if len(self.open) >= MAX_DEPTH:
                raise _TooDeep
            self.open.append(node)
            try:
                return self.collection(node, path)
            finally:
                self.open.pop()
        return self.scalar(node)

    def collection(self, node: yaml.Node, path: JsonPath) -> Any:
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
                key_path: JsonPath = (*path, key, "<key>")
                self.doc.marks[key_path] = (
                    key_node.start_mark.line + 1, key_node.start_mark.column + 1,
                )
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        return self.scalar(node)  # pragma: no cover - a node is a scalar, mapping or sequence

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
        return whole("cannot read: permission denied",
                     "check its mode and owner (and SELinux/AppArmor labels)")
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
    doc = Document(shown, None, raw)
    too_deep = whole(f"nests more than {MAX_DEPTH} levels deep; not a pcipassd config",
                     "is this the right file?")
    try:
        if _too_deep(text):
            return too_deep
        node = yaml.compose(text, Loader=_Loader)
    except yaml.reader.ReaderError as e:  # a control character: binary data, not text
        bad = re.search(_NOT_YAML_TEXT, text)
        line = text.count("\n", 0, bad.start()) + 1 if bad else 0
        col = bad.start() - text.rfind("\n", 0, bad.start()) if bad else 0
        return None, [Problem(shown, line, col, "",
                              f"not a text file: control character #x{e.character:04x}",
                              "is this the right file? a config is plain text")]
    except yaml.MarkedYAMLError as e:
        return _marked(shown, e, "YAML syntax", "check the indentation and quoting on that line")
    except yaml.YAMLError as e:
        return whole(" ".join(f"YAML syntax: {e}".split()))
    except RecursionError:  # pragma: no cover - the pure-Python composer, when not caught above
        return too_deep
    if node is None:
        return whole("is empty", "a config needs at least `version: 1` and `devices:`")
    builder = _Builder(doc)
    try:
        doc.data = builder.build(node, ())
    except _TooBig:
        return whole(f"has more than {MAX_NODES} values (YAML aliases expanding?)",
                     "write the devices out; pcipassd does not expand large aliases")
    except _TooDeep:
        return too_deep
    except _Cycle as e:
        line, col = _mark(e.node)
        return None, [Problem(shown, line, col, "", "a YAML alias refers to itself",
                              "write the devices out; pcipassd does not expand large aliases")]
    except yaml.MarkedYAMLError as e:  # e.g. a tag (!!python/..., !foo) or a merge key (<<)
        return _marked(shown, e, "YAML", "pcipassd reads plain YAML: no tags (!x) or merge "
                       "keys (<<)")
    except yaml.YAMLError as e:  # pragma: no cover - the constructor's errors carry a mark
        return whole(" ".join(f"YAML: {e}".split()))
    return (None if builder.problems else doc), builder.problems


def _marked(
    shown: str, e: yaml.MarkedYAMLError, what: str, hint: str
) -> tuple[None, list[Problem]]:
    """One line, at the error's position, from PyYAML's multi-line message."""
    mark = e.problem_mark or e.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
    text = " ".join(" ".join(x.split()) for x in (e.context, e.problem) if x)
    return None, [Problem(shown, line, col, "", f"{what}: {text}", hint)]
