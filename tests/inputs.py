"""The inputs of the pure decision modules (selection, policy, plan) built directly, in a line
each: config entries, devices, host-critical reasons and state records. No sysfs, no CLI."""

from __future__ import annotations

from pcipassd.address import Address, PciId
from pcipassd.config import Config, Entry
from pcipassd.guard import Reason
from pcipassd.inventory import Device, Inventory
from pcipassd.model import Record

CONFIG = "/etc/pcipass.yaml"
NIC = 0x020000
VGA = 0x030000
AUDIO = 0x040300
PCI_BRIDGE = 0x060400


def entry(
    line: int,
    *,
    address: str | None = None,
    id: str | None = None,
    expect: str | None = None,
    count: int | None = None,
    driver: str = "pci-stub",
    group: str = "isolated",
    force: tuple[str, ...] = (),
    name: str | None = None,
) -> Entry:
    """An item of /etc/pcipass.yaml's `devices:` at `line`, with the defaults filled in."""
    return Entry(
        CONFIG, line, 5, f"devices[{line}]",
        Address.parse(address) if address is not None else None,
        PciId.parse(id) if id is not None else None,
        PciId.parse(expect) if expect is not None else None,
        count, driver, group, frozenset(force), name,
    )


def config(*entries: Entry) -> Config:
    return Config((CONFIG,), "required", entries)


def device(bdf: str, pci_id: str = "8086:10d3", *, driver: str | None = "e1000e",
           group: str | None = None, cls: int = NIC) -> Device:
    """A device as the kernel shows it; `group` None: no IOMMU."""
    return Device(bdf, PciId.parse(pci_id), cls, driver, None, group)


def inventory(*devices: Device) -> Inventory:
    return Inventory({d.bdf: d for d in sorted(devices, key=lambda d: d.bdf)})


def reason(bdf: str, kind: str, text: str) -> dict[str, tuple[Reason, ...]]:
    """`bdf` is host-critical for one reason, as guard.critical_devices says it."""
    return {bdf: (Reason(bdf, text, kind),)}


def record(bdf: str, pci_id: str = "8086:10d3", *, original: str | None = "e1000e",
           target: str = "pci-stub", line: int = 3, stage: str = "late") -> Record:
    """What pcipassd wrote in its state file when it bound `bdf`."""
    return Record(bdf, pci_id, original, None, original, target, f"{CONFIG}:{line}", stage)
