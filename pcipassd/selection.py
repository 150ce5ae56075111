"""Which present devices each config entry selects, and which entries must be refused.

Pure: works on a Config and an Inventory. An entry with a problem selects nothing (it is
refused whole), but the devices it matched are `kept`: if pcipassd bound them earlier they stay
as they are rather than being restored by a config mistake.
"""

from __future__ import annotations

from pcipassd.value import frozen, replace

TYPE_CHECKING = False  # as typing's, without importing typing (mypy knows the name)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from pcipassd.config import Config, Entry
    from pcipassd.errors import Problem
    from pcipassd.inventory import Device, Inventory
    from pcipassd.model import Record

LSPCI_HINT = "list the devices with `lspci -Dnn`; addresses change after hardware or BIOS changes"


@frozen
class Selected:
    device: Device
    entry: Entry
    via: str | None = None  # set when the device was pulled in by `group: bind`, the BDF that did
    notes: tuple[str, ...] = ()
    warning: str = ""  # what the admin must know when it is bound (a group VFIO will refuse)
    forced: str = ""  # the host-critical reasons its entry's `force:` overrode to bind it
    # its sysfs `reset_method` now, read only when its entry sets `reset_method:` (None: no
    # such file, or not read)
    reset_now: str | None = None

    @property
    def target(self) -> str:
        return self.entry.driver

    @property
    def reset_method(self) -> str | None:
        """What its entry asks for its sysfs `reset_method` ("bus"), None when nothing: only for
        the devices the entry selects itself, not those `group: bind` adds."""
        if self.via or self.entry.reset_method is None:
            return None
        return " ".join(self.entry.reset_method)


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
            elif j != i and other.on_stop != entry.on_stop:  # kept by one, given back by other
                problems.append(entry.problem(
                    f"{dev.bdf} is also selected by {other.source} with on_stop: "
                    f"{other.on_stop}, here with on_stop: {entry.on_stop}",
                    "give both entries the same on_stop, or remove one",
                ))
                refused.update((i, j))
    for i, entry in enumerate(config.entries):
        if i in refused:
            continue
        for dev in matches[i]:
            chosen.setdefault(dev.bdf, Selected(dev, entry))
    return Selection(chosen, tuple(problems), frozenset(kept))


def check_resets(selection: Selection, now: Mapping[str, str | None],
                 records: Mapping[str, Record]) -> Selection:
    """Refuse each entry whose `reset_method:` a device it selects cannot take, before anything
    is touched (the kernel would refuse the write with EINVAL, or there is no file to write):
    the methods a device offers are its sysfs `reset_method` as pcipassd first found it (its
    record's original), else as it is now (`now`, by BDF; None: no file). The others get their
    `reset_now`."""
    problems: list[Problem] = []
    refused: set[str] = set()  # the entries' sources
    for bdf, sel in selection.chosen.items():
        want = sel.reset_method
        if want is None or sel.entry.source in refused:
            continue
        record = records.get(bdf)
        current = now.get(bdf)
        offered = (record.original_reset_method if record is not None
                   and record.original_reset_method is not None else current)
        problem = None
        if current is None:
            problem = sel.entry.problem(
                f"{bdf} has no reset_method in sysfs (a kernel before 5.15, or no reset method "
                f"for this device): cannot set reset_method {want}; nothing bound",
                "remove `reset_method:` from this entry")
        elif missing := [m for m in want.split() if m not in (offered or "").split()]:
            offers = ", ".join(offered.split()) if offered else "none (reset is disabled)"
            problem = sel.entry.problem(
                f"{bdf} does not offer reset method {', '.join(missing)} (the kernel would "
                f"refuse it: EINVAL); it offers: {offers}; nothing bound",
                f"write only methods it offers, e.g. reset_method: [{offered.split()[0]}]"
                if offered else "remove `reset_method:` from this entry")
        if problem is not None:
            problems.append(problem)
            refused.add(sel.entry.source)
    chosen = {bdf: sel if sel.reset_method is None else replace(sel, reset_now=now.get(bdf))
              for bdf, sel in selection.chosen.items() if sel.entry.source not in refused}
    kept = {bdf for bdf, sel in selection.chosen.items() if sel.entry.source in refused}
    return Selection(chosen, (*selection.problems, *problems), selection.kept | kept)
