"""Which present devices each config entry selects, and which entries must be refused.

Pure: works on a Config and an Inventory. An entry with a problem selects nothing (it is
refused whole), but the devices it matched are `kept`: if pcipassd bound them earlier they stay
as they are rather than being restored by a config mistake.
"""

from __future__ import annotations

from pcipassd.value import frozen

TYPE_CHECKING = False  # as typing's, without importing typing (mypy knows the name)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from pcipassd.config import Config, Entry
    from pcipassd.errors import Problem
    from pcipassd.inventory import Device, Inventory

LSPCI_HINT = "list the devices with `lspci -Dnn`; addresses change after hardware or BIOS changes"


@frozen
class Selected:
    device: Device
    entry: Entry
    via: str | None = None  # set when the device was pulled in by `group: bind`, the BDF that did
    notes: tuple[str, ...] = ()
    warning: str = ""  # what the admin must know when it is bound (a group VFIO will refuse)
    forced: str = ""  # the host-critical reasons its entry's `force:` overrode to bind it

    @property
    def target(self) -> str:
        return self.entry.driver


@frozen
class Selection:
    chosen: Mapping[str, Selected]
    problems: tuple[Problem, ...] = ()
    kept: frozenset[str] = frozenset()


def _describe(devices: list[Device]) -> str:
    shown = ", ".join(f"{d.bdf} [{d.id}]" for d in devices[:4])
    return shown + (f" and {len(devices) - 4} more" if len(devices) > 4 else "")


def match(entry: Entry, inventory: Inventory) -> tuple[list[Device], list[Problem]]:
    """The devices `entry` selects, and every problem that refuses it."""
    if entry.address is not None:
        address = entry.address
        devices = inventory.at(address)
        if not devices:
            return [], [entry.problem(f"no device at {address}", LSPCI_HINT)]
    else:
        assert entry.id is not None  # the schema requires address or id
        devices = inventory.with_id(entry.id)
        if not devices:
            return [], [entry.problem(f"no device with ID {entry.id} is present", LSPCI_HINT)]
    problems = []
    if entry.expect is not None:
        wrong = [d for d in devices if d.id != entry.expect]
        if wrong:
            problems.append(entry.problem(
                f"{_describe(wrong)} is not the expected {entry.expect}; nothing bound",
                "the hardware changed, or the address is wrong: " + LSPCI_HINT,
            ))
    if entry.count is not None and len(devices) != entry.count:
        problems.append(entry.problem(
            f"count: {entry.count}, but {len(devices)} present: {_describe(devices)}",
            "a card was added or removed? fix the hardware or the count",
        ))
    bridges = [d for d in devices if d.is_bridge]
    if bridges:
        problems.append(entry.problem(
            f"{_describe(bridges)} is a PCI bridge; bridges are never bound",
            "select the devices behind the bridge instead",
        ))
    return devices, problems


def select(config: Config, inventory: Inventory) -> Selection:
    chosen: dict[str, Selected] = {}
    problems: list[Problem] = []
    kept: set[str] = set()
    refused: set[int] = set()
    owner: dict[str, int] = {}
    matches: list[list[Device]] = []
    for i, entry in enumerate(config.entries):
        devices, found = match(entry, inventory)
        matches.append(devices)
        kept.update(d.bdf for d in devices)
        if found:
            problems += found
            refused.add(i)
            continue
        for dev in devices:
            j = owner.setdefault(dev.bdf, i)
            other = config.entries[j]
            if j != i and other.driver != entry.driver:
                problems.append(entry.problem(
                    f"{dev.bdf} is also selected by {other.source} with driver {other.driver}, "
                    f"here with {entry.driver}",
                    "give both entries the same driver, or remove one",
                ))
                refused.update((i, j))
    for i, entry in enumerate(config.entries):
        if i in refused:
            continue
        for dev in matches[i]:
            chosen.setdefault(dev.bdf, Selected(dev, entry))
    return Selection(chosen, tuple(problems), frozenset(kept))
