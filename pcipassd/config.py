"""The configuration: /etc/pcipass.yaml plus /etc/pcipass.d/*.yaml (and *.yml), validated and
merged.

Merge rules (also in README):
- The main file comes first, then the drop-ins in name order; their `devices` lists are joined.
- Every file says `version: 1`.
- `driver` and `group` at the top of a file are the defaults for that file's entries; a drop-in
  that does not set them inherits the main file's.
- `iommu` is host-wide and may only be set in the main file.
- At least one device entry must exist across all files.
All problems of all files are reported at once.
"""

from __future__ import annotations

import functools
import json
import math
import re
from pathlib import Path

from pcipassd.address import Address, AddressError, PciId
from pcipassd.errors import InvalidConfig, NothingConfigured, Problem
from pcipassd.host import Host
from pcipassd.model import FORCE_TRUE, KINDS, ON_STOP, RESET_METHODS, RESTORE_ON_STOP, STUB_DRIVERS
from pcipassd.printable import printable, short
from pcipassd.strictmodes import untrusted_dirs
from pcipassd.value import frozen, replace

TYPE_CHECKING = False  # as typing's, without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any

    # yamldoc (PyYAML) is imported when a file is read: restore needs neither
    from pcipassd.parsecache import Cache
    from pcipassd.yamldoc import Document, JsonPath

NOTHING_CONFIGURED = "no devices are configured"
DEFAULT_DRIVER = "pci-stub"
DEFAULT_IOMMU = "required"
DEFAULT_GROUP = "isolated"
GROUPS = ("isolated", "bind", "ignore")
IOMMU = ("required", "warn")


@frozen
class Entry:
    """One item of a `devices:` list, with its defaults filled in."""

    file: str
    line: int
    col: int
    path: str  # e.g. devices[2]
    address: Address | None
    id: PciId | None
    expect: PciId | None
    count: int | None
    driver: str
    group: str
    force: frozenset[str]  # the kinds of host-critical reasons it overrides (model.KINDS)
    name: str | None
    # the kernel's reset methods to write to each selected device's sysfs `reset_method`, in
    # order; None: leave it as the kernel has it
    reset_method: tuple[str, ...] | None = None
    vfs: Vfs | None = None  # `vfs:`: SR-IOV VFs to create on the one PF it selects
    # what the unit's stop does to the devices it selects: restore (give back) or keep (ON_STOP)
    on_stop: str = RESTORE_ON_STOP

    @property
    def source(self) -> str:
        """FILE:LINE of the item, shown in every message about it."""
        return f"{self.file}:{self.line}"

    def problem(self, message: str, hint: str = "") -> Problem:
        return Problem(self.file, self.line, self.col, self.path, message, hint)

    @property
    def selects(self) -> str:
        """What the entry selects, as `status` names it: `address 0000:02:00.0`, `id 8086:10d3`."""
        return f"address {self.address}" if self.address else f"id {self.id}"

    @property
    def label(self) -> str:
        what = str(self.address) if self.address else f"id {self.id}"
        return f"{what} ({self.name})" if self.name else what


@frozen
class Vfs:
    """An entry's `vfs:`: SR-IOV virtual functions to create on the PF it selects (sriov.py)."""

    count: int
    driver: str  # the target of the VFs it holds
    hold: tuple[int, ...] | None  # the indexes held (virtfnN); None: all of them
    move_pf: bool  # the entry says `driver:`, which moves the PF; else it stays on its driver


@frozen
class Config:
    files: tuple[str, ...]
    iommu: str
    entries: tuple[Entry, ...]
    node_labels: bool = False  # write the Node Feature Discovery labels (node.py)


@functools.cache
def schema_text() -> str:
    return Path(__file__).with_name("schema.json").read_text()


DROPIN_SUFFIXES = (".yaml", ".yml")  # .yml: Ansible's habit


def config_files(host: Host, main: Path | None = None) -> list[Path]:
    """The main file, then the drop-ins next to it (`*.yaml`, `*.yml`) in name order. Hidden
    files (an editor's `.#x.yaml` lock, `.x.yaml`) are not drop-ins; neither is `x.yaml~`."""
    main = main or host.config_file
    dropins = main.parent / "pcipass.d"
    found = (sorted(p for p in dropins.iterdir()
                    if p.suffix in DROPIN_SUFFIXES and not p.name.startswith("."))
             if dropins.is_dir() else [])
    return [main, *found]


def load_config(host: Host, files: list[Path] | None = None, *, full: bool = True,
                candidate: Path | None = None, cache: Cache | None = None) -> Config:
    """Read and validate every file; raise InvalidConfig listing every problem.

    `candidate` (`--main FILE`): the main file about to be installed, checked in place of
    /etc/pcipass.yaml with the real drop-ins. Its installer may own it and its directory (its
    private temp directory), so StrictModes is not asked of it, only that it is a regular file
    (no symlink) of at most MAX_BYTES; the drop-ins keep StrictModes.

    `full` False (every verb but validate): a file that passes pcipassd's own strict check of
    the schema (`conforms`, microseconds) is not checked again by jsonschema, whose import is
    the slowest part of a boot-time apply; any other file is, for the exact messages. So a
    file the schema rejects is never used, whatever `full` says.

    `cache` (not with `full` or `candidate`): the files parsed before are not parsed again
    (parsecache.py); the checks above and below run on their data all the same."""
    from pcipassd import yamldoc  # noqa: PLC0415 - see the imports above

    paths = files or config_files(host)
    if candidate is not None:
        paths = [candidate, *paths[1:]]
    shown = [printable(host.display(p)) for p in paths]
    docs: list[Document | None] = []  # None: the file is unusable (its problems are listed)
    problems = _untrusted_dirs(host, [p for p in paths if p != candidate])
    for path, name in zip(paths, shown):
        doc, found = yamldoc.load(path, name, candidate=path == candidate,
                                  cache=None if full or candidate else cache)
        if doc is not None and (full or not conforms(doc.data)):
            found = _check_schema(doc)
        problems += found
        docs.append(None if found else doc)
    config, found = _build(docs, shown[0])  # also checks the usable files when others are not
    problems += found
    if problems:  # in file order (main file first), then by position
        order = {name: i for i, name in reversed(list(enumerate(shown)))}
        problems.sort(key=lambda p: (order.get(p.file, len(order)), p.line, p.col))
        if len(problems) == 1 and problems[0].message == NOTHING_CONFIGURED:
            raise NothingConfigured(problems)
        raise InvalidConfig(problems)
    return config


def _untrusted_dirs(host: Host, paths: list[Path]) -> list[Problem]:
    """StrictModes for the directories above the files, up to the root: see strictmodes.py."""
    problems, seen = [], set()
    for path in paths:
        for directory, why in untrusted_dirs(path, host.root):
            if directory in seen:
                continue
            seen.add(directory)
            name = printable(host.display(directory)).replace("/.", "/") or "/"
            problems.append(Problem(
                name, 0, 0, "", f"directory {why}; pcipassd does not use a config others "
                "can change", f"chown root:root {name}; chmod go-w {name}"))
    return problems


@functools.cache
def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(schema_text())
    return schema


# -- the quick check: the schema, read strictly -------------------------------------------------
# A value of exactly these Python types satisfies the schema's "type" (stricter than jsonschema:
# a bool is never a number, 2.0 is not an integer; strictness only costs a full check).
_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "boolean": (bool,),
    "integer": (int,), "number": (int, float), "null": (type(None),)}
_NOTES = frozenset({"description", "title", "$schema", "$defs", "$comment"})


def conforms(data: Any) -> bool:
    """True only if `data` certainly satisfies schema.json; False also when not sure (a keyword
    this reading does not know). Never raises: a False only means "ask jsonschema"."""
    schema = _schema()
    try:
        return _conforms(data, schema, schema)
    except (KeyError, TypeError, ValueError, IndexError, re.error, RecursionError):
        return False


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and bool(a == b)


def _conforms(value: Any, schema: dict[str, Any], root: dict[str, Any]) -> bool:
    if "$ref" in schema and not _conforms(  # "#/$defs/name", the only kind this schema uses
            value, root["$defs"][schema["$ref"].rsplit("/", 1)[1]], root):
        return False
    for key, want in schema.items():
        if key in _NOTES or key == "$ref":
            continue
        if key == "type":
            ok = type(value) in _TYPES[want] and not (
                isinstance(value, float) and not math.isfinite(value))
        elif key == "const":
            ok = _same(value, want)
        elif key == "enum":
            ok = any(_same(value, w) for w in want)
        elif key == "pattern":
            ok = isinstance(value, str) and re.fullmatch(want, value) is not None
        elif key == "minLength":
            ok = isinstance(value, str) and len(value) >= want
        elif key == "minimum":
            ok = type(value) in (int, float) and value >= want
        elif key == "minItems":
            ok = isinstance(value, list) and len(value) >= want
        elif key == "uniqueItems" and want is True:  # of strings: the only lists it is used on
            ok = (isinstance(value, list) and all(isinstance(v, str) for v in value)
                  and len(set(value)) == len(value))
        elif key == "items":
            ok = isinstance(value, list) and all(_conforms(v, want, root) for v in value)
        elif key == "required":
            ok = isinstance(value, dict) and all(k in value for k in want)
        elif key == "properties":
            ok = isinstance(value, dict) and all(
                _conforms(v, want[k], root) for k, v in value.items() if k in want)
        elif key == "additionalProperties" and want is False:
            ok = isinstance(value, dict) and all(k in schema.get("properties", {})
                                                 for k in value)
        elif key == "anyOf":
            ok = any(_conforms(value, s, root) for s in want)
        else:
            return False  # a keyword not read here: not sure
        if not ok:
            return False
    return True


def _check_schema(doc: Document) -> list[Problem]:
    import jsonschema  # noqa: PLC0415 - the slowest import of all; only when validating

    if not isinstance(doc.data, dict):
        return [doc.problem((), "the top level must be a mapping of keys (version:, devices:)",
                            "start the file with `version: 1`")]
    schema = _schema()
    validator = jsonschema.Draft7Validator(schema)  # draft 7: jsonschema 3.2 has no later one
    out = []
    for error in validator.iter_errors(doc.data):
        out += _explain(doc, schema, error)
    return out


def _subschema(schema: dict[str, Any], path: JsonPath) -> dict[str, Any]:
    """The schema of the object at `path` (only objects and arrays of objects occur here)."""
    node = schema
    for part in path:
        if isinstance(part, int):
            node = node.get("items", {})
        else:
            node = node.get("properties", {}).get(part, {})
        if "$ref" in node:
            node = schema["$defs"][node["$ref"].rsplit("/", 1)[1]]
    return node


def _did_you_mean(word: object, choices: list[str]) -> str:
    import difflib  # noqa: PLC0415 - only for a misspelt word

    lower = {c.lower(): c for c in choices}  # `ID:` or `VFIO-PCI` is still close to the right one
    if not isinstance(word, str) or len(word) > 40:
        return "expected one of: " + ", ".join(choices)
    close = difflib.get_close_matches(word.lower(), list(lower), n=1, cutoff=0.6)
    return (f"did you mean {lower[close[0]]!r}?" if close
            else "expected one of: " + ", ".join(choices))


# the schema's types and the parsed values' types, in the words of a YAML file
_WANTED = {"object": "a mapping (key: value)", "array": "a list (- item)",
           "integer": "a whole number", "string": "text", "boolean": "true or false"}
_GOT = {dict: "a mapping", list: "a list", int: "a number", float: "a number", str: "text",
        bool: "true/false", type(None): "nothing"}


def _show(value: object) -> str:
    """A value as YAML would spell it: None and booleans are what `key:` and `off` become."""
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int) and value.bit_length() > 64:  # int -> str is slow, then refused
        return f"a {value.bit_length()}-bit number"
    if isinstance(value, (dict, list)):
        return "a mapping" if isinstance(value, dict) else "a list"
    return short(repr(value))


def _explain(doc: Document, schema: dict[str, Any], error: Any) -> list[Problem]:
    """Turn one jsonschema error into problems an admin can act on."""
    path: JsonPath = tuple(error.absolute_path)
    kind = error.validator
    if kind == "additionalProperties":
        allowed = sorted(_subschema(schema, path).get("properties", {}))
        return [
            doc.problem((*path, key, "<key>"), f"unknown key {_show(key)}",
                        _did_you_mean(key, allowed))
            for key in error.instance
            if key not in allowed
        ]
    if kind == "required":
        key = error.message.split("'")[1]
        return [doc.problem(path, f"missing required key {key!r}",
                            "add `version: 1` at the top" if key == "version" else "")]
    if kind == "anyOf" and path and path[-1] == "force":
        return _explain_force(doc, path, error.instance)
    if kind == "anyOf" and path and path[-1] == "reset_method":
        return _explain_reset_method(doc, path, error.instance)
    if kind == "enum" and path and path[-1] == "on_stop":
        return [_explain_on_stop(doc, path, error.instance)]
    if kind == "anyOf" and path and path[0] == "devices":
        return [doc.problem(path, "an entry needs `address` or `id`",
                            'e.g. - address: "0000:02:00.0"  or  - id: "8086:10d3"')]
    if kind == "const" and path == ("version",):
        return [doc.problem(path, f"version must be 1, not {_show(error.instance)}",
                            "write it as a number: version: 1" if isinstance(error.instance, str)
                            else "this pcipassd reads format version 1")]
    if kind == "enum":
        choices = [str(c) for c in error.validator_value]
        hint = _did_you_mean(error.instance, choices)
        if isinstance(error.instance, bool):
            hint = "yes/no/on/off are true/false in YAML; write one of: " + ", ".join(choices)
        return [doc.problem(path, f"{_show(error.instance)} is not one of {', '.join(choices)}",
                            hint)]
    if kind == "pattern":
        parse = Address.parse if path[-1] == "address" else PciId.parse
        try:
            parse(str(error.instance))  # only blanks around it, then
            reason = f"{_show(error.instance)} has blanks around it"
        except AddressError as e:
            reason = short(str(e), 120)
        example = '"0000:02:00.0"' if path[-1] == "address" else '"8086:10d3"'
        return [doc.problem(path, reason, f"write it like {example}, quoted")]
    if kind == "type":
        want = error.validator_value
        got = _GOT.get(type(error.instance), type(error.instance).__name__)
        hint = "quote it" if want == "string" else ""
        if want == "array":
            hint = "list the devices as `- address: ...` items"
        if want == "object" and path and path[0] == "devices":
            hint = 'write each entry as  - address: "0000:02:00.0"  or  - id: "8086:10d3"'
        return [doc.problem(path, f"expected {_WANTED.get(want, want)}, got {got}", hint)]
    if kind == "minItems":
        return [doc.problem(path, "must list at least one device",
                            "add an entry, or remove the key")]
    if kind == "minimum":
        return [doc.problem(path, f"must be at least {error.validator_value}")]
    if kind == "minLength":
        return [doc.problem(path, "must not be empty", "give it a value, or remove the key")]
    return [doc.problem(path, short(error.message, 120))]


# What pcipassd itself relies on, checked here too, whatever the schema check said (or if it
# was skipped): a wrong type here must never bind a device (`force: "no"` is not true).
_MEANING = "its value cannot be used"
_HINT = "run `pcipassd validate`"


def _is_one(value: object) -> bool:
    return type(value) in (int, float) and value == 1


def _is_count(value: object) -> bool:
    if type(value) is float:
        return value.is_integer() and value >= 1
    return type(value) is int and value >= 1


_TOP_CHECKS = (("version", _is_one), ("driver", STUB_DRIVERS.__contains__),
               ("group", GROUPS.__contains__), ("iommu", IOMMU.__contains__),
               ("node_labels", lambda v: type(v) is bool),
               ("devices", lambda v: isinstance(v, list) and all(isinstance(i, dict) for i in v)))
def _is_force(value: object) -> bool:
    if type(value) is bool:
        return True
    return (isinstance(value, list) and bool(value) and len(set(map(str, value))) == len(value)
            and all(isinstance(k, str) and k in KINDS for k in value))


def _is_reset_method(value: object) -> bool:
    if isinstance(value, str):
        return value in RESET_METHODS
    return (isinstance(value, list) and bool(value) and len(set(map(str, value))) == len(value)
            and all(isinstance(k, str) and k in RESET_METHODS for k in value))


def _is_vfs(value: object) -> bool:
    if not isinstance(value, dict) or not _is_count(value.get("count")):
        return False
    hold = value.get("hold", [0])
    return (set(value) <= {"count", "driver", "hold"}
            and value.get("driver", STUB_DRIVERS[0]) in STUB_DRIVERS
            and isinstance(hold, list) and bool(hold)
            and all(type(i) is int and i >= 0 for i in hold))


_ENTRY_CHECKS = (("force", _is_force), ("count", _is_count), ("vfs", _is_vfs),
                 ("reset_method", _is_reset_method), ("on_stop", ON_STOP.__contains__),
                 ("driver", STUB_DRIVERS.__contains__), ("group", GROUPS.__contains__),
                 ("name", lambda v: isinstance(v, str) and v != ""),
                 *((k, lambda v: isinstance(v, str)) for k in ("address", "id", "expect")))


def _unusable(doc: Document, path: JsonPath, data: object,
              checks: tuple[tuple[str, Any], ...]) -> list[Problem]:
    """The keys of `data` (a mapping) whose values pcipassd cannot use; version is required."""
    if not isinstance(data, dict):
        return [doc.problem(path, f"expected a mapping, got {_show(data)}", _HINT)]
    return [doc.problem((*path, key), f"{_show(data.get(key))}: {_MEANING}", _HINT)
            for key, ok in checks
            if (key in data or (key == "version" and not path)) and not _safe(ok, data.get(key))]


def _safe(check: Any, value: object) -> bool:
    try:
        return bool(check(value))
    except TypeError:  # e.g. an unhashable value looked up in a tuple: not usable
        return False


def _explain_force(doc: Document, path: JsonPath, value: object) -> list[Problem]:
    """`force:` is true, false, or a list of what it overrides: each wrong item by name."""
    kinds = ", ".join(KINDS)
    if not isinstance(value, list):
        got = _GOT.get(type(value), type(value).__name__)
        return [doc.problem(path, f"expected true or false, or a list of {kinds}; got {got}",
                            "e.g. force: [console] overrides only the console")]
    if not value:
        return [doc.problem(path, "an empty list overrides nothing",
                            "name what to override, e.g. force: [console], or remove the key")]
    out = []
    for i, item in enumerate(value):
        if item not in KINDS:
            out.append(doc.problem((*path, i), f"{_show(item)} is not one of {kinds}",
                                   _did_you_mean(item, list(KINDS))))
        elif item in value[:i]:
            out.append(doc.problem((*path, i), f"{item!r} is listed twice", "name it once"))
    return out


def _explain_reset_method(doc: Document, path: JsonPath, value: object) -> list[Problem]:
    """`reset_method:` is one of the kernel's reset methods, or a list of them: each wrong
    item by name, with the name it is closest to."""
    names = ", ".join(RESET_METHODS)
    if isinstance(value, str):
        return [doc.problem(path, f"{_show(value)} is not a reset method the kernel knows "
                            f"({names})", _did_you_mean(value, list(RESET_METHODS)))]
    if not isinstance(value, list):
        got = _GOT.get(type(value), type(value).__name__)
        return [doc.problem(path, f"expected a reset method or a list of them ({names}); "
                            f"got {got}", "e.g. reset_method: [bus]")]
    if not value:
        return [doc.problem(path, "an empty list names no reset method",
                            "name the methods, e.g. reset_method: [bus], or remove the key")]
    out = []
    for i, item in enumerate(value):
        if item not in RESET_METHODS:
            out.append(doc.problem((*path, i), f"{_show(item)} is not a reset method the "
                                   f"kernel knows ({names})",
                                   _did_you_mean(item, list(RESET_METHODS))))
        elif item in value[:i]:
            out.append(doc.problem((*path, i), f"{item!r} is listed twice", "name it once"))
    return out


def _explain_on_stop(doc: Document, path: JsonPath, value: object) -> Problem:
    """`on_stop:` is restore or keep: what each does, with the word it is closest to."""
    hint = _did_you_mean(value, list(ON_STOP))
    if isinstance(value, bool):
        hint = "yes/no/on/off are true/false in YAML; write restore or keep"
    return doc.problem(path, f"{_show(value)} is not restore or keep (restore: give the "
                       "device back when pcipassd stops, the default; keep: leave it held)", hint)


def _force_kinds(value: bool | list[str]) -> frozenset[str]:
    """What a valid `force:` value overrides: true is every kind of reason but the chipset
    (model.FORCE_TRUE), false none."""
    if value is True:
        return frozenset(FORCE_TRUE)
    return frozenset(value or ())


def _build(docs: list[Document | None], main_file: str) -> tuple[Config, list[Problem]]:
    """Merge the files; a None (unusable) file is skipped, and the result is then unused."""
    problems: list[Problem] = []
    usable: list[Document | None] = []
    for doc in docs:  # what the schema should have caught: never used, whatever it said
        found = [] if doc is None else _unusable(doc, (), doc.data, _TOP_CHECKS)
        if doc is not None and not found:
            for n, item in enumerate(doc.data.get("devices", [])):
                found += _unusable(doc, ("devices", n), item, _ENTRY_CHECKS)
        problems += found
        usable.append(None if found else doc)
    docs = usable
    main = docs[0].data if docs and docs[0] else {}
    iommu = main.get("iommu", DEFAULT_IOMMU)
    entries: list[Entry] = []
    for i, doc in enumerate(docs):
        if doc is None:
            continue
        data = doc.data
        for key in ("iommu", "node_labels"):
            if i > 0 and key in data:
                problems.append(doc.problem((key, "<key>"), f"only the main file may set {key}",
                                            f"{key} is host-wide: move it to {main_file}"))
        driver = data.get("driver", main.get("driver", DEFAULT_DRIVER))
        group = data.get("group", main.get("group", DEFAULT_GROUP))
        for n, item in enumerate(data.get("devices", [])):
            entry, found = _entry(doc, ("devices", n), item, driver, group)
            if "vfs" in item and entry is not None:
                entry, found = _vfs(doc, ("devices", n), item, entry, driver)
            problems += found
            if entry:
                entries.append(entry)
    problems += _conflicts(entries)
    first = docs[0] if docs else None
    if not entries and not problems and first and all(docs):
        problems.append(first.problem((), NOTHING_CONFIGURED,
                                      f"edit {main_file} first: add a `devices:` list with at "
                                      "least one entry (`pcipassd list` shows the devices)"))
    config = Config(tuple(d.file for d in docs if d), iommu, tuple(entries),
                    main.get("node_labels", False) is True)
    return config, problems


def _vfs(doc: Document, path: JsonPath, item: dict[str, Any], entry: Entry, driver: str
         ) -> tuple[Entry | None, list[Problem]]:
    """The entry with its valid `vfs:` (sriov.py does the rest, against the host)."""
    value = item["vfs"]
    count, hold = int(value["count"]), value.get("hold")
    problems = []
    if entry.address is not None and entry.address.function is None:
        problems.append(doc.problem((*path, "vfs"), f"vfs: needs one PF, and {entry.address} "
                                    "selects every function of the slot",
                                    "give the PF's address with its function, e.g. .0"))
    for i, index in enumerate(hold or ()):
        if index >= count:
            problems.append(doc.problem((*path, "vfs", "hold", i), f"VF index {index} is not "
                                        f"below count {count} (VFs are numbered from 0)",
                                        f"hold indexes 0 to {count - 1}"))
        elif index in hold[:i]:
            problems.append(doc.problem((*path, "vfs", "hold", i), f"{index} is listed twice",
                                        "name it once"))
    vfs = Vfs(count, value.get("driver", driver), None if hold is None else tuple(hold),
              "driver" in item)
    return (None, problems) if problems else (replace(entry, vfs=vfs), [])


def _reset_methods(value: str | list[str] | None) -> tuple[str, ...] | None:
    """A valid `reset_method:` value as the methods in order; None when not set."""
    if value is None:
        return None
    return (value,) if isinstance(value, str) else tuple(value)


def _overlap(a: Address, b: Address) -> Address | None:
    """The address both select (the narrower one), or None when they select no device alike."""
    if (a.domain, a.bus, a.slot) != (b.domain, b.bus, b.slot):
        return None
    if a.function is None or b.function is None or a.function == b.function:
        return a if a.function is not None else b
    return None


def _conflicts(entries: list[Entry]) -> list[Problem]:
    """Two entries for the same address with different drivers: a conflict in the files,
    whatever the host has there (conflicts through `id:` depend on the host: selection.py)."""
    problems = []
    for i, entry in enumerate(entries):
        for other in entries[:i]:
            if entry.address is None or other.address is None or (
                    entry.driver == other.driver and entry.on_stop == other.on_stop):
                continue
            if any(e.vfs is not None and not e.vfs.move_pf for e in (entry, other)):
                continue  # it leaves the PF on its driver
            shared = _overlap(entry.address, other.address)
            if shared is not None and entry.driver != other.driver:
                problems.append(entry.problem(
                    f"{shared} is also selected by {other.source} with driver {other.driver}, "
                    f"here with {entry.driver}",
                    "give both entries the same driver, or remove one"))
                break
            if shared is not None:
                problems.append(entry.problem(
                    f"{shared} is also selected by {other.source} with on_stop: "
                    f"{other.on_stop}, here with on_stop: {entry.on_stop}",
                    "give both entries the same on_stop, or remove one"))
                break
    return problems


def _entry(
    doc: Document, path: JsonPath, item: dict[str, Any], driver: str, group: str
) -> tuple[Entry | None, list[Problem]]:
    from pcipassd.yamldoc import format_path  # noqa: PLC0415

    line, col = doc.where(path)
    problems = []
    try:  # the schema has checked the form; this only guards against a gap between the two
        address = Address.parse(item["address"]) if "address" in item else None
        pci_id = PciId.parse(item["id"]) if "id" in item else None
        expect = PciId.parse(item["expect"]) if "expect" in item else None
    except AddressError as e:
        return None, [doc.problem(path, short(str(e), 120))]
    if pci_id and expect and pci_id != expect:
        problems.append(doc.problem((*path, "expect"), f"expect {expect} contradicts id {pci_id}",
                                    "keep one of them"))
    if "count" in item and address and address.function is not None and item["count"] != 1:
        problems.append(doc.problem((*path, "count"),
                                    f"count {item['count']} can never match one address",
                                    "an address selects one device; use * as the function"))
    entry = Entry(
        file=doc.file,
        line=line,
        col=col,
        path=format_path(path),
        address=address,
        id=pci_id,
        expect=expect or (pci_id if address else None),
        count=None if item.get("count") is None else int(item["count"]),  # 2.0 is 2
        driver=item.get("driver", driver),
        group=item.get("group", group),
        force=_force_kinds(item.get("force", False)),
        name=item.get("name"),
        reset_method=_reset_methods(item.get("reset_method")),
        on_stop=item.get("on_stop", RESTORE_ON_STOP),
    )
    return (None if problems else entry), problems
