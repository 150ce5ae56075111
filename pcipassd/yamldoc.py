"""Read one YAML file into plain data, remembering where every value stands (line, column).

Every way a file can be unusable (missing, a directory or a FIFO, unreadable, writable by
others, too large, not UTF-8, not YAML, several documents, nested too deep, an alias bomb,
duplicate keys, a value YAML cannot convert) becomes a `Problem`, never a traceback.

The tree is built here from PyYAML's event stream, not by PyYAML's composer and constructor:
the composer recurses (in C: a deep file crashed it), and the constructor raises on values it
cannot convert (`2024-02-30`, `!!int "02:00.0"`, a 4301-digit number). Here the depth is
counted as the events come, and every scalar converts or becomes a Problem at its position.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from pcipassd.errors import Problem
from pcipassd.printable import printable, short
from pcipassd.safefile import Refused, read_untrusted
from pcipassd.strictmodes import untrusted

TYPE_CHECKING = False  # as typing's, without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any, Union

    import yaml

    from pcipassd.parsecache import Cache

    JsonPath = tuple[Union[str, int], ...]  # a runtime "|" needs Python 3.10
    _Node = Union["_Scalar", "_Collection"]

MAX_BYTES = 1 << 20  # a config is a few kB; anything this big is a mistake
MAX_NODES = 50_000  # bounds alias expansion ("billion laughs")
MAX_DEPTH = 64  # bounds nesting, flow ([{) and block (indentation, `- - -`) alike
MAX_DIGITS = 100  # a longer number is not a pcipassd value (and int() refuses > 4300 digits)

Mark = tuple[int, int]  # 1-based line, column
# a character YAML does not accept in a stream (PyYAML's reader allows only these); compiled
# only when a file has one, since compiling it costs more than reading a config
_NOT_YAML_TEXT = r"[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"
_TAG = "tag:yaml.org,2002:"
_BOOLS = {"yes": True, "no": False, "true": True, "false": False, "on": True, "off": False}
_WHAT = {"int": "a whole number", "float": "a number", "bool": "true or false",
         "null": "an empty value"}
_NOT_PLAIN = "pcipassd reads plain YAML: no tags (!x) or merge keys (<<)"


def _yaml() -> Any:
    """PyYAML, imported only to parse: a file the parse cache has needs none (parsecache.py)."""
    import yaml  # noqa: PLC0415

    return yaml


def _loader() -> type[yaml.SafeLoader]:
    """The C parser where libyaml is present (faster); both give marks."""
    module = _yaml()
    loader: type[yaml.SafeLoader] = getattr(module, "CSafeLoader", module.SafeLoader)
    return loader


class Document:
    """A file's data, and where (line, column) each of its values is written. A plain class,
    not a value: `load` fills it in as it reads."""

    __slots__ = ("data", "file", "marks")

    def __init__(self, file: str, data: Any, marks: dict[JsonPath, Mark] | None = None) -> None:
        self.file = file  # as shown to the admin
        self.data = data
        self.marks: dict[JsonPath, Mark] = {} if marks is None else marks

    def __repr__(self) -> str:
        return f"Document(file={self.file!r}, data={self.data!r}, marks={self.marks!r})"

    def where(self, path: JsonPath) -> Mark:
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
        text = short(str(part))
        out += f"[{text}]" if isinstance(part, int) else (f".{text}" if out else text)
    return out


# -- the node tree --------------------------------------------------------------------------
# (plain classes: a dataclass costs start-up time, see bench/noop_apply.py)
class _Scalar:
    """A scalar node, before it becomes a value."""

    __slots__ = ("explicit", "mark", "tag", "value")

    def __init__(self, tag: str, explicit: bool, value: str, mark: Mark) -> None:
        self.tag = tag
        self.explicit = explicit  # the file wrote the tag (!!int 5), YAML did not infer it
        self.value = value
        self.mark = mark


class _Collection:
    """A mapping or sequence node, before it becomes a value."""

    __slots__ = ("items", "mapping", "mark", "tag")

    def __init__(self, mapping: bool, tag: str | None, mark: Mark) -> None:
        self.mapping = mapping  # a mapping: items are key, value, key, value...; else a sequence
        self.tag = tag  # an explicit tag, if the file wrote one
        self.mark = mark
        self.items: list[_Node] = []


class _Stop(Exception):
    """The file cannot be read as a config; `problem` (file-wide when it has no mark) says why."""

    def __init__(self, message: str, hint: str = "", mark: Mark | None = None) -> None:
        super().__init__(message)
        self.message, self.hint, self.mark = message, hint, mark


def _resolve(resolver: yaml.resolver.Resolver, value: str, implicit: tuple[bool, bool]) -> str:
    """The tag YAML gives an untagged scalar (plain: by its form; quoted: always text)."""
    node = _yaml().ScalarNode
    tag: str = resolver.resolve(node, value, implicit)  # type: ignore[no-untyped-call]
    return tag


def _mark(event: Any) -> Mark:
    return event.start_mark.line + 1, event.start_mark.column + 1


def _too_deep(mark: Mark | None = None) -> _Stop:
    return _Stop(f"nests more than {MAX_DEPTH} levels deep; not a pcipassd config",
                 "is this the right file?", mark)


def _compose(text: str) -> _Node | None:
    """The one document of `text` as a node tree; aliases are shared nodes. Never recurses."""
    yaml = _yaml()
    resolver = yaml.resolver.Resolver()
    anchors: dict[str, _Node] = {}
    opening: dict[str, _Collection] = {}  # anchors of the collections still open
    stack: list[tuple[_Collection, str | None]] = []
    root: _Node | None = None
    documents = 0

    def add(node: _Node) -> None:
        nonlocal root
        if stack:
            stack[-1][0].items.append(node)
        else:
            root = node

    for event in yaml.parse(text, Loader=_loader()):
        if isinstance(event, yaml.ScalarEvent):
            explicit = event.tag not in (None, "!")
            tag = (event.tag if explicit and event.tag
                   else _resolve(resolver, event.value, event.implicit))
            node: _Node = _Scalar(tag, explicit, event.value, _mark(event))
            if event.anchor:
                anchors[event.anchor] = node
            add(node)
        elif isinstance(event, yaml.CollectionStartEvent):
            if len(stack) >= MAX_DEPTH:
                raise _too_deep(_mark(event))
            coll = _Collection(isinstance(event, yaml.MappingStartEvent),
                               event.tag if event.tag not in (None, "!") else None, _mark(event))
            stack.append((coll, event.anchor))
            if event.anchor:
                opening[event.anchor] = coll
        elif isinstance(event, yaml.CollectionEndEvent):
            coll, anchor = stack.pop()
            if anchor:
                anchors[anchor] = opening.pop(anchor, coll)
            add(coll)
        elif isinstance(event, yaml.AliasEvent):
            if event.anchor in opening:  # `a: &x [*x]`: an alias inside itself
                raise _Stop("a YAML alias refers to itself",
                            "write the devices out; pcipassd does not expand large aliases",
                            opening[event.anchor].mark)
            if event.anchor not in anchors:
                raise _Stop(f"YAML syntax: found undefined alias {short(str(event.anchor))!r}",
                            "define the anchor (&name) before the alias (*name)", _mark(event))
            add(anchors[event.anchor])
        elif isinstance(event, yaml.DocumentStartEvent):
            documents += 1
            if documents > 1:
                raise _Stop("YAML syntax: expected a single document in the stream but found "
                            "another document", "check the indentation and quoting on that line",
                            _mark(event))
    return root


# -- node tree -> data ----------------------------------------------------------------------
class _Builder:
    """Turns the node tree into Python data and a path -> position map; every value that cannot
    be converted is a Problem at its position."""

    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.nodes = 0
        self.open: list[_Collection] = []  # the collections being built, outermost first
        self.problems: list[Problem] = []
        self.resolver = _yaml().resolver.Resolver()

    def problem(self, mark: Mark, path: JsonPath, message: str, hint: str = "") -> None:
        line, col = mark
        self.problems.append(Problem(self.doc.file, line, col, format_path(path), message, hint))

    def build(self, node: _Node, path: JsonPath) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _Stop(f"has more than {MAX_NODES} values (YAML aliases expanding?)",
                        "write the devices out; pcipassd does not expand large aliases")
        self.doc.marks[path] = node.mark
        if isinstance(node, _Scalar):
            return self.scalar(node, path)
        if len(self.open) >= MAX_DEPTH:  # an alias of a deep node, placed deep
            raise _too_deep(node.mark)
        self.open.append(node)
        try:
            return self.collection(node, path)
        finally:
            self.open.pop()

    def collection(self, node: _Collection, path: JsonPath) -> Any:
        wanted = f"{_TAG}map" if node.mapping else f"{_TAG}seq"
        if node.tag is not None and node.tag != wanted:
            self.problem(node.mark, path, f"YAML: the tag {_tag(node.tag)} is not allowed",
                         _NOT_PLAIN)
            return None
        if not node.mapping:
            return [self.build(item, (*path, i)) for i, item in enumerate(node.items)]
        out: dict[str, Any] = {}
        for key_node, value_node in zip(node.items[::2], node.items[1::2]):
            if isinstance(key_node, _Scalar) and key_node.tag == f"{_TAG}merge":
                self.problem(key_node.mark, path, "YAML: merge keys (<<) are not supported",
                             _NOT_PLAIN)
                continue
            key = self.scalar(key_node, path) if isinstance(key_node, _Scalar) else None
            if key is _BAD:
                continue
            if not isinstance(key, str):
                self.problem(key_node.mark, path, "keys must be plain words",
                             "write the key as text, e.g. driver:")
                continue
            if key in out:
                self.problem(key_node.mark, (*path, key), f"duplicate key {short(key)!r}",
                             "each key may appear once per mapping")
                continue
            out[key] = self.build(value_node, (*path, key))
            # the key's own position is better than the value's for "unknown key" messages
            key_path: JsonPath = (*path, key, "<key>")
            self.doc.marks[key_path] = key_node.mark
        return out

    def scalar(self, node: _Scalar, path: JsonPath) -> Any:
        tag, value = node.tag, node.value
        kind = tag[len(_TAG):] if tag.startswith(_TAG) else ""
        if node.explicit and kind in _WHAT:  # `!!int x`: x must be what the tag says
            plain = _resolve(self.resolver, value, (True, False))
            if plain != tag and not (kind == "float" and plain == f"{_TAG}int"):
                self.problem(node.mark, path, f"{short(value)!r} is not {_WHAT[kind]} "
                             f"(it is tagged {_tag(tag)})", f"remove the tag {_tag(tag)}")
                return _BAD
            kind = plain[len(_TAG):]
        elif node.explicit and kind not in ("str", "timestamp"):
            self.problem(node.mark, path, f"YAML: the tag {_tag(tag)} is not allowed",
                         _NOT_PLAIN)
            return _BAD
        if kind == "null":
            return None
        if kind == "bool":
            return _BOOLS[value.lower()]
        # YAML 1.1 reads unquoted 02:00.0 as the base-60 number 120.0; YAML 1.2 dropped that.
        # A value with a colon in it is always meant as text here (addresses, IDs).
        if kind in ("int", "float") and ":" not in value:
            if len(value) > MAX_DIGITS:
                self.problem(node.mark, path, f"a number {len(value)} characters long is not "
                             "a pcipassd value", "is this the right file?")
                return _BAD
            try:
                return _int(value) if kind == "int" else _float(value)
            except ValueError:  # a form the resolver lets through: 0b_, ._
                self.problem(node.mark, path, f"{short(value)!r} is not {_WHAT[kind]}",
                             "write the number plainly, or quote the text")
                return _BAD
        return value  # text; also dates (2024-02-30), which pcipassd never needs as dates


_BAD = object()  # a value that could not be converted: its Problem is already recorded


def _tag(tag: str) -> str:
    return short(f"!!{tag[len(_TAG):]}" if tag.startswith(_TAG) else tag)


def _int(text: str) -> int:
    """A YAML 1.1 integer (the resolver has checked the form): 10, -0x1f, 0b101, 017, 1_000."""
    text = text.replace("_", "")
    sign = -1 if text.startswith("-") else 1
    text = text.lstrip("+-")
    if text.startswith("0b"):
        return sign * int(text[2:], 2)
    if text.startswith("0x"):
        return sign * int(text[2:], 16)
    if len(text) > 1 and text.startswith("0"):
        return sign * int(text, 8)
    return sign * int(text)


def _float(text: str) -> float:
    text = text.replace("_", "").lower()
    sign = -1.0 if text.startswith("-") else 1.0
    text = text.lstrip("+-")
    if text == ".inf":
        return sign * float("inf")
    if text == ".nan":
        return float("nan")
    return sign * float(text)


# -- reading the file -----------------------------------------------------------------------
# Where the packages install the example (`make install`: $(PREFIX)/share/doc/pcipassd).
EXAMPLE = "/usr/share/doc/pcipassd/pcipass.yaml.example"
_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"),
          (stat.S_ISBLK, "a block device"))


def _read(path: Path, shown: str, *, candidate: bool = False) -> bytes | Problem:
    """The file's bytes, read only if it is a regular file (through symlinks: the directories
    they pass are checked elsewhere) that only root (or this user) can have written, of at most
    MAX_BYTES; else why not. A `candidate` (`--main`: a file about to be installed, which its
    installer may own, in its own temp directory) is read whoever owns it, but never through a
    symlink."""

    def whole(message: str, hint: str = "") -> Problem:
        return Problem(shown, 0, 0, "", message, hint)

    try:
        raw = read_untrusted(path, MAX_BYTES, follow_symlinks=not candidate,
                             check=None if candidate else untrusted)
    except PermissionError:
        return whole("cannot read: permission denied",
                     "run as root" if os.geteuid() != 0
                     else "check its mode and owner (and SELinux/AppArmor labels)")
    except Refused as e:
        if e.kind == "not a file" and e.text == "a symlink":
            return whole("is a symlink; pcipassd checks the file about to be installed, not a "
                         "link", f"give the file itself: {os.path.realpath(path)}")
        if e.kind == "not a file" and e.mode is not None and stat.S_ISDIR(e.mode):
            return whole("is a directory, not a YAML file")
        if e.kind == "not a file" and e.mode is not None:
            kind = next((name for test, name in _KINDS if test(e.mode)), "not a file")
            return whole(f"is {kind}, not a regular file; pcipassd reads only regular files",
                         "give --main the file about to be installed" if candidate else
                         "remove it, or rename it so that its name does not end in .yaml or .yml")
        if e.kind in ("not a file", "changed"):
            return whole("is not a regular file; pcipassd reads only regular files")
        if e.kind == "refused":
            return whole(f"{e.text}; pcipassd does not use a config others can change",
                         f"chown root:root {shown}; chmod go-w {shown}")
        if e.kind == "too large":
            return whole(f"is larger than {MAX_BYTES // 1024} KiB; not a pcipassd config")
        return whole(f"cannot read: {e.text}")
    if raw is None:
        if not shown.endswith("/pcipass.yaml"):
            return whole("no such file", "check its name")
        return whole("no such file", f"copy the annotated example: cp {EXAMPLE} {shown}, then "
                     "list your devices in it (`pcipassd list` shows them)")
    return raw


def load(path: Path, shown: str, *, candidate: bool = False, cache: Cache | None = None
         ) -> tuple[Document | None, list[Problem]]:
    """Read `path` (named `shown` in messages; a `candidate`: see _read). Returns the document,
    or None and why not. With `cache`, a file whose text was parsed before is not parsed again
    (see parsecache.py), and a new parse without problems is kept in it."""

    def whole(message: str, hint: str = "") -> tuple[None, list[Problem]]:
        return None, [Problem(shown, 0, 0, "", message, hint)]

    raw = _read(path, shown, candidate=candidate)
    if isinstance(raw, Problem):
        return None, [raw]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return whole(f"is not UTF-8 text (byte {e.start})", "is this the right file?")
    if not text.strip():
        return whole("is empty", "a config needs at least `version: 1` and `devices:`")
    if cache is not None and (known := cache.lookup(shown, text)) is not None:
        return known, []
    yaml = _yaml()
    doc = Document(shown, None)
    builder = _Builder(doc)
    try:
        node = _compose(text)
        if node is None:
            return whole("is empty", "a config needs at least `version: 1` and `devices:`")
        doc.data = builder.build(node, ())
    except _Stop as e:
        line, col = e.mark or (0, 0)
        return None, [Problem(shown, line, col, "", e.message, e.hint)]
    except yaml.reader.ReaderError as e:  # a control character: binary data, not text
        bad = re.search(_NOT_YAML_TEXT, text)
        line = text.count("\n", 0, bad.start()) + 1 if bad else 0
        col = bad.start() - text.rfind("\n", 0, bad.start()) if bad else 0
        return None, [Problem(shown, line, col, "",
                              f"not a text file: control character #x{e.character:04x}",
                              "is this the right file? a config is plain text")]
    except yaml.MarkedYAMLError as e:
        return _marked(shown, e, "YAML syntax", "check the indentation and quoting on that line")
    except yaml.YAMLError as e:  # pragma: no cover - the parser's errors carry a mark
        return whole(short(" ".join(f"YAML syntax: {e}".split()), 200))
    except RecursionError:  # pragma: no cover - nothing here recurses deeper than MAX_DEPTH
        return None, [Problem(shown, 0, 0, "", _too_deep().message, _too_deep().hint)]
    if builder.problems:
        return None, builder.problems
    if cache is not None:
        cache.parsed(doc, text)
    return doc, []


def _marked(
    shown: str, e: yaml.MarkedYAMLError, what: str, hint: str
) -> tuple[None, list[Problem]]:
    """One line, at the error's position, from PyYAML's multi-line message."""
    mark = e.problem_mark or e.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
    text = " ".join(" ".join(x.split()) for x in (e.context, e.problem) if x)
    return None, [Problem(shown, line, col, "", printable(short(f"{what}: {text}", 200)), hint)]
