"""`pcipassd list`: every PCI function of the host by IOMMU group, with what pcipassd says of it.

Pure: built from the inventory, the state records, the host-critical devices, what the config
selects (when there is a valid config) and the name database. For each group a verdict: it can
be passed through as a whole, or what blocks it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from pcipassd.address import Address, PciId
from pcipassd.inventory import Device, Inventory, group_key
from pcipassd.model import Record
from pcipassd.names import NameDb
from pcipassd.value import frozen


@frozen
class Row:
    device: Device
    cls: str  # "Ethernet controller"
    name: str  # "Intel Corporation 82574L Gigabit Network Connection"
    lspci: str  # the whole line as `lspci -nn` prints it
    notes: tuple[str, ...]  # held (initramfs), forced: ..., configured, host-critical: ...
    forced: str = ""  # what `force:` overrode to hold it (from its record)


@frozen
class Group:
    group: str | None  # None: no IOMMU group (the IOMMU is off)
    rows: tuple[Row, ...]
    verdict: str
    passable: bool


# The words people use for a class, as class-code prefixes (`--class gpu`): base class 03 is
# display, 02 network, 01 storage; 0108 NVMe, 0401/0403 audio (0403: a GPU's HDMI audio too),
# 0c03 USB.
CLASS_WORDS: dict[str, tuple[str, ...]] = {
    "gpu": ("03",), "display": ("03",), "vga": ("0300",), "network": ("02",),
    "ethernet": ("0200",), "storage": ("01",), "nvme": ("0108",), "audio": ("0401", "0403"),
    "usb": ("0c03",),
}
_CLASS_RE = re.compile(r"[0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9 /-]*")
_ID_RE = re.compile(r"[0-9a-fA-F]{1,4}(:[0-9a-fA-F]{0,4})?")


def class_arg(text: str) -> str:
    """`list --class`: a hex prefix of the class code or words of its name; ValueError if
    neither."""
    if not _CLASS_RE.fullmatch(text):
        raise ValueError(f"{text!r} is not a class: give a hex prefix (02, 0300) or a word "
                         f"({', '.join(CLASS_WORDS)})")
    return text


def id_arg(text: str) -> str:
    """`list --id`: VENDOR, VENDOR: or VENDOR:DEVICE, in hex; ValueError if not."""
    if not _ID_RE.fullmatch(text):
        raise ValueError(f"{text!r} is not a vendor[:device] ID in hex, e.g. 8086:10d3 or 10de:")
    return text


@frozen
class Filter:
    cls: str | None = None  # hex prefix of the class code ("02", "0200") or words of its name
    id: str | None = None  # "8086:10d3" or "8086"
    address: Address | None = None

    def matches(self, row: Row) -> bool:
        dev = row.device
        if self.address is not None and not self.address.matches(dev.bdf):
            return False
        if self.id is not None and not str(dev.id).startswith(self.id.lower()):
            return False
        if self.cls is not None:
            code = f"{dev.cls:06x}"
            want = self.cls.lower()
            prefixes = CLASS_WORDS.get(want, (want,))
            if not (any(code.startswith(p) for p in prefixes) or want in row.cls.lower()):
                return False
        return True


def _row(dev: Device, names: NameDb, record: Record | None, configured: bool,
         critical: str | None) -> Row:
    notes = []
    if record is not None:
        notes.append(f"held ({record.stage})")
        if record.forced:
            notes.append(f"forced: {record.forced}")
    elif configured:
        notes.append("configured")
    if critical:
        notes.append(f"host-critical: {critical}")
    if dev.is_bridge:
        notes.append("bridge")
    return Row(dev, names.class_name(dev.cls), names.model(dev.id), names.describe(dev.id, dev.cls),
               tuple(notes), record.forced if record is not None else "")


def _verdict(rows: list[Row], critical: Mapping[str, str]) -> tuple[str, bool]:
    blockers = [f"{r.device.bdf} {critical[r.device.bdf]}" for r in rows
                if r.device.bdf in critical]
    if blockers:
        return "blocked: " + "; ".join(blockers), False
    endpoints = [r for r in rows if not r.device.is_bridge]
    n = len(endpoints)
    if not n:
        return "bridges only: nothing to pass through", False
    return f"can be passed through as a whole ({n} endpoint{'s' if n != 1 else ''})", True


def survey(inventory: Inventory, names: NameDb, records: Mapping[str, Record],
           configured: frozenset[str], critical: Mapping[str, str], *,
           only: Filter | None = None) -> list[Group]:
    """The host's devices by IOMMU group (groups in numeric order, devices by address). A
    filter keeps the groups with a matching device, and only those devices."""
    by_group: dict[str | None, list[Row]] = {}
    for dev in inventory.devices.values():
        row = _row(dev, names, records.get(dev.bdf), dev.bdf in configured,
                   critical.get(dev.bdf))
        by_group.setdefault(dev.group, []).append(row)
    groups = []
    for group in sorted(by_group, key=group_key):
        rows = by_group[group]
        if group is None:
            verdict, passable = "no IOMMU group: the IOMMU is off (see `pcipassd check`)", False
        else:
            verdict, passable = _verdict(rows, critical)
        shown = [r for r in rows if only is None or only.matches(r)]
        if shown:
            groups.append(Group(group, tuple(shown), verdict, passable))
    return groups


def wanted(inventory: Inventory) -> list[tuple[PciId, int]]:
    """What to look up in the name database."""
    return [(d.id, d.cls) for d in inventory.devices.values()]
