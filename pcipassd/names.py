"""Human names for PCI devices, printed the way `lspci -nn` prints them.

The names come from whichever ID database the host has, first found wins: udev's hwdb text
sources (20-pci-vendor-model.hwdb, with 20-pci-classes.hwdb beside it), then pci.ids, else none
and the raw IDs are shown. A database is read in one pass and only the names asked for are
kept. An unreadable or unrecognisable file counts as absent; naming never fails.
"""

from __future__ import annotations

from collections.abc import Iterable

from pcipassd.address import PciId
from pcipassd.host import Host
from pcipassd.safefile import read_host
from pcipassd.value import frozen

HWDB_DIRS = ("/usr/lib/udev/hwdb.d", "/lib/udev/hwdb.d")
PCI_IDS = ("/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids", "/usr/share/pci.ids")
_HEX = frozenset("0123456789abcdefABCDEF")


@frozen
class Name:
    """What the database calls a device; None for each part it does not know."""

    cls: str | None  # the subclass name if known, else the class name: "Ethernet controller"
    vendor: str | None  # "Intel Corporation"
    device: str | None  # "82574L Gigabit Network Connection"


def _entries(pci_id: PciId, cls: int) -> list[tuple[str, str, str]]:
    """(key, hwdb match line upper-cased, hwdb property) for the vendor, device, class and
    subclass names of one device. Keys: "v8086", "d8086:10d3", "c02", "s0200"."""
    v, d = f"{pci_id.vendor:04x}", f"{pci_id.device:04x}"
    c, s = f"{cls >> 16 & 0xFF:02x}", f"{cls >> 8 & 0xFF:02x}"
    return [
        ("v" + v, f"PCI:V0000{v}*".upper(), "ID_VENDOR_FROM_DATABASE"),
        (f"d{v}:{d}", f"PCI:V0000{v}D0000{d}*".upper(), "ID_MODEL_FROM_DATABASE"),
        ("c" + c, f"PCI:V*D*SV*SD*BC{c}*".upper(), "ID_PCI_CLASS_FROM_DATABASE"),
        ("s" + c + s, f"PCI:V*D*SV*SD*BC{c}SC{s}*".upper(), "ID_PCI_SUBCLASS_FROM_DATABASE"),
    ]




def _parse_hwdb(text: str, matches: dict[str, tuple[str, str]]) -> dict[str, str] | None:
    """The wanted names in a hwdb source; None when it contains no `pci:` record at all."""
    found: dict[str, str] = {}
    record: list[tuple[str, str]] = []  # (key, property) wanted from the current record
    recognised = in_properties = False
    for line in text.split("\n"):
        first = line[:1]
        if first in (" ", "\t"):
            in_properties = True
            if record:
                prop, _, value = line.strip().partition("=")
                for key, wanted in record:
                    if prop == wanted:
                        found[key] = value.strip()
        elif first == "#":
            continue
        elif not line.strip():
            record, in_properties = [], False
        else:
            if in_properties:  # a match line after properties starts the next record
                record, in_properties = [], False
            recognised = recognised or line.startswith("pci:")
            target = matches.get(line.rstrip().upper())
            if target is not None:
                record.append(target)
    return found if recognised else None


def _split(body: str, width: int) -> tuple[str, str] | None:
    """("10d3", "82574L ...") from a pci.ids entry with a `width`-digit ID, None if not one."""
    ident, name = body[:width], body[width:]
    if len(ident) != width or not _HEX.issuperset(ident) or not name[:1].isspace():
        return None
    return ident.lower(), name.strip()


def _parse_pci_ids(text: str, keys: set[str]) -> dict[str, str] | None:
    """The wanted names in a pci.ids file; None when it contains no vendor or class entry."""
    found: dict[str, str] = {}
    parent: str | None = None  # "v8086" or "c02" when the indented lines that follow are wanted
    recognised = False
    for line in text.split("\n"):
        if line[:1] == "\t":
            if parent is None or line[1:2] == "\t":
                continue  # an unwanted parent's, or a subsystem or prog-if: not named here
            entry = _split(line[1:], 4 if parent[0] == "v" else 2)
            key = f"d{parent[1:]}:" if parent[0] == "v" else "s" + parent[1:]
            if entry is not None and key + entry[0] in keys:
                found[key + entry[0]] = entry[1]
        elif line[:1] != "#" and line.strip():
            kind, entry = ("c", _split(line[2:], 2)) if line[:2] == "C " else ("v", _split(line, 4))
            parent = None
            if entry is not None:
                recognised = True
                if kind + entry[0] in keys:
                    parent = kind + entry[0]
                    found[parent] = entry[1]
    return found if recognised else None


class NameDb:
    """The names of the devices asked for at load; `source` is the host path of the database
    they came from (e.g. "/usr/share/misc/pci.ids"), None when the host has none."""

    def __init__(self, source: str | None = None, names: dict[str, str] | None = None) -> None:
        self.source = source
        self._names = names or {}

    @classmethod
    def load(cls, host: Host, wanted: Iterable[tuple[PciId, int]]) -> NameDb:
        """Read the host's database once, keeping the names of the (ID, 24-bit class) pairs
        in `wanted`."""
        entries = [e for pci_id, code in wanted for e in _entries(pci_id, code)]
        matches = {match: (key, prop) for key, match, prop in entries}
        for directory in HWDB_DIRS:
            models = f"{directory}/20-pci-vendor-model.hwdb"
            text = read_host(host.path(models))
            names = None if text is None else _parse_hwdb(text, matches)
            if names is not None:
                classes = read_host(host.path(f"{directory}/20-pci-classes.hwdb"))
                names.update((_parse_hwdb(classes, matches) if classes else None) or {})
                return cls(models, names)
        keys = {key for key, _, _ in entries}
        for path in PCI_IDS:
            text = read_host(host.path(path))
            names = None if text is None else _parse_pci_ids(text, keys)
            if names is not None:
                return cls(path, names)
        return cls()

    def name(self, pci_id: PciId, cls: int) -> Name:
        vendor, device, klass, subclass = (self._names.get(e[0]) for e in _entries(pci_id, cls))
        return Name(subclass or klass, vendor, device)

    def model(self, pci_id: PciId) -> str:
        """"Intel Corporation 82574L Gigabit Network Connection"; unknown parts read
        "Vendor 8086", "Device 10d3"."""
        n = self.name(pci_id, 0)
        return (f"{n.vendor or f'Vendor {pci_id.vendor:04x}'} "
                f"{n.device or f'Device {pci_id.device:04x}'}")

    def class_name(self, cls: int) -> str:
        """"Ethernet controller", or "Class 0200" when unknown."""
        return self.name(PciId(0, 0), cls).cls or f"Class {cls >> 8 & 0xFFFF:04x}"

    def describe(self, pci_id: PciId, cls: int) -> str:
        """Like `lspci -nn`: "Ethernet controller [0200]: Intel Corporation 82574L Gigabit
        Network Connection [8086:10d3]"; unknown parts read "Class [0200]", "Vendor 8086",
        "Device 10d3"."""
        known = self.name(pci_id, cls).cls or "Class"
        return f"{known} [{cls >> 8 & 0xFFFF:04x}]: {self.model(pci_id)} [{pci_id}]"
