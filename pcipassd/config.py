"""The configuration: /etc/pcipass.yaml plus /etc/pcipass.d/*.yaml, validated and merged.

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
import hashlib
import json
from collections.abc import Container
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pcipassd.address import Address, AddressError, PciId
from pcipassd.errors import InvalidConfig, Problem
from pcipassd.host import Host

if TYPE_CHECKING:  # yamldoc (PyYAML) is imported when a file is read: restore needs neither
    from pcipassd.yamldoc import Document, JsonPath

STUB_DRIVERS = ("pci-stub", "vfio-pci")  # the targets the schema allows
DEFAULT_DRIVER = "pci-stub"
DEFAULT_IOMMU = "required"
DEFAULT_GROUP = "isolated"


@dataclass(frozen=True)
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
    force: bool
    name: str | None

    @property
    def source(self) -> str:
        """FILE:LINE of the item, shown in every message about it."""
        return f"{self.file}:{self.line}"

    def problem(self, message: str, hint: str = "") -> Problem:
        return Problem(self.file, self.line, self.col, self.path, message, hint)

    @property
    def label(self) -> str:
        what = str(self.address) if self.address else f"id {self.id}"
        return f"{what} ({self.name})" if self.name else what


@dataclass(frozen=True)
class Config:
    files: tuple[str, ...]
    iommu: str
    entries: tuple[Entry, ...]
    digests: frozenset[str] = frozenset()  # of the files, for the validation cache


def digest(doc: Document) -> str:
    """Names one file's content checked against this schema: a cache key, see cache.py."""
    h = hashlib.sha256(schema_text().encode())
    h.update(b"\0")
    h.update(doc.raw)
    return h.hexdigest()


@functools.cache
def schema_text() -> str:
    return Path(__file__).with_name("schema.json").read_text()


def config_files(host: Host, main: Path | None = None) -> list[Path]:
    """The main file, then the drop-ins next to it in name order."""
    main = main or host.config_file
    dropins = main.parent / "pcipass.d"
    found = sorted(p for p in dropins.glob("*.yaml")) if dropins.is_dir() else []
    return [main, *found]


def load_config(
    host: Host, files: list[Path] | None = None, known: Container[str] = ()
) -> Config:
    """Read and validate every file; raise InvalidConfig listing every problem.

    A file whose digest is in `known` passed the schema before, byte for byte: its schema check
    (and the import of jsonschema, the slowest part of a boot-time apply) is skipped. Every
    other check still runs."""
    from pcipassd import yamldoc  # noqa: PLC0415 - see the imports above

    paths = files or config_files(host)
    docs: list[Document | None] = []  # None: the file is unusable (its problems are listed)
    problems: list[Problem] = []
    for path in paths:
        doc, found = yamldoc.load(path, host.display(path))
        if doc is not None and digest(doc) not in known:
            found = _check_schema(doc)
        problems += found
        docs.append(None if found else doc)
    shown = [host.display(p) for p in paths]
    config, found = _build(docs, shown[0])  # also checks the usable files when others are not
    problems += found
    if problems:  # in file order (main file first), then by position
        order = {name: i for i, name in reversed(list(enumerate(shown)))}
        problems.sort(key=lambda p: (order.get(p.file, len(order)), p.line, p.col))
        raise InvalidConfig(problems)
    return config


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(schema_text())
    return schema


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
    close = difflib.get_close_matches(str(word).lower(), list(lower), n=1, cutoff=0.6)
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
    return repr(value)


def _explain(doc: Document, schema: dict[str, Any], error: Any) -> list[Problem]:
    """Turn one jsonschema error into problems an admin can act on."""
    path: JsonPath = tuple(error.absolute_path)
    kind = error.validator
    if kind == "additionalProperties":
        allowed = sorted(_subschema(schema, path).get("properties", {}))
        return [
            doc.problem((*path, key, "<key>"), f"unknown key {key!r}", _did_you_mean(key, allowed))
            for key in error.instance
            if key not in allowed
        ]
    if kind == "required":
        key = error.message.split("'")[1]
        return [doc.problem(path, f"missing required key {key!r}",
                            "add `version: 1` at the top" if key == "version" else "")]
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
            reason = f"{error.instance!r} has blanks around it"
        except AddressError as e:
            reason = str(e)
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
    return [doc.problem(path, error.message)]


def _build(docs: list[Document | None], main_file: str) -> tuple[Config, list[Problem]]:
    """Merge the files; a None (unusable) file is skipped, and the result is then unused."""
    problems: list[Problem] = []
    main = docs[0].data if docs and docs[0] else {}
    iommu = main.get("iommu", DEFAULT_IOMMU)
    entries: list[Entry] = []
    for i, doc in enumerate(docs):
        if doc is None:
            continue
        data = doc.data
        if i > 0 and "iommu" in data:
            problems.append(doc.problem(("iommu", "<key>"), "only the main file may set iommu",
                                        f"iommu is host-wide: move it to {main_file}"))
        driver = data.get("driver", main.get("driver", DEFAULT_DRIVER))
        group = data.get("group", main.get("group", DEFAULT_GROUP))
        for n, item in enumerate(data.get("devices", [])):
            entry, found = _entry(doc, ("devices", n), item, driver, group)
            problems += found
            if entry:
                entries.append(entry)
    first = docs[0] if docs else None
    if not entries and not problems and first and all(docs):
        problems.append(first.problem((), "no devices are configured",
                                      f"edit {main_file} first: add a `devices:` list with at "
                                      "least one entry (`pcipassd list` shows the devices)"))
    config = Config(tuple(d.file for d in docs if d), iommu, tuple(entries),
                    frozenset(digest(d) for d in docs if d))
    return config, problems


def _entry(
    doc: Document, path: JsonPath, item: dict[str, Any], driver: str, group: str
) -> tuple[Entry | None, list[Problem]]:
    from pcipassd.yamldoc import format_path  # noqa: PLC0415

    line, col = doc.where(path)
    address = Address.parse(item["address"]) if "address" in item else None
    pci_id = PciId.parse(item["id"]) if "id" in item else None
    expect = PciId.parse(item["expect"]) if "expect" in item else None
    problems = []
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
        count=item.get("count"),
        driver=item.get("driver", driver),
        group=item.get("group", group),
        force=item.get("force", False),
        name=item.get("name"),
    )
    return (None if problems else entry), problems
