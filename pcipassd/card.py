"""A card is one unit: function 0 with the multi-function bit in its header, together with the
other functions of its slot in the same IOMMU group (a GPU and its HDMI audio, USB-C and UCSI
functions). Pure: works on an Inventory (which read the header, see inventory.py) and the
guard's host-critical devices.

- SR-IOV VFs are never functions of a card, and host-critical functions never are: a slot whose
  function 0 is host-critical (the chipset's 00:1f, an APU whose GPU is the boot VGA device) is
  no card at all.
- The slot's functions in another IOMMU group are `apart`: VFIO can take them separately, but
  leaving them behind is still worth a warning.
- A selection that takes only part of a card is refused by the policy (policy.py), or warned
  about when the rest is apart; the functions of a card are given back in reverse order, the
  auxiliary functions first and function 0 last (`give_back_order`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from pcipassd.address import Address
from pcipassd.inventory import Device, Inventory
from pcipassd.value import frozen

TYPE_CHECKING = False  # as typing's, without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from pcipassd.guard import Reason


@frozen
class Card:
    slot: str  # "0000:41:00"
    functions: tuple[Device, ...]  # function 0 first, then the others of its IOMMU group
    apart: tuple[Device, ...] = ()  # the slot's other functions in another IOMMU group (or none)

    @property
    def group(self) -> str | None:
        return self.functions[0].group

    @property
    def fix(self) -> str:
        """The entry's line that takes the whole card."""
        return f'address: "{self.slot}.*"'


def _slot(bdf: str) -> str:
    return bdf.rsplit(".", 1)[0]


def card_of(dev: Device, inventory: Inventory,
            critical: Mapping[str, tuple[Reason, ...]]) -> Card | None:
    """The card `dev` is a function of (its own functions, or apart), None when it is none."""
    if dev.physfn is not None or dev.is_bridge or dev.bdf in critical:
        return None
    a = Address.parse(dev.bdf)
    slot = inventory.at(Address(a.domain, a.bus, a.slot, None))
    head = slot[0] if slot else None
    if (head is None or head.bdf[-1] != "0" or not head.multifunction or len(slot) < 2
            or head.is_bridge or head.bdf in critical):
        return None
    others = [d for d in slot[1:]
              if d.physfn is None and not d.is_bridge and d.bdf not in critical]
    same = tuple(d for d in others if head.group is not None and d.group == head.group)
    apart = tuple(d for d in others if d not in same)
    if dev is not head and dev not in same and dev not in apart:
        return None
    return Card(_slot(head.bdf), (head, *same), apart)


@frozen
class Partial:
    """A card that a selection takes only part of."""

    card: Card
    taken: tuple[Device, ...]  # its functions (apart ones too) selected
    left: tuple[Device, ...]  # not selected, in the IOMMU group of one taken: refused
    apart: tuple[Device, ...]  # not selected, in another IOMMU group: warned about


def partial_cards(devices: Iterable[Device], inventory: Inventory,
                  critical: Mapping[str, tuple[Reason, ...]],
                  selected: Collection[str]) -> list[Partial]:
    """The cards `devices` are functions of that `selected` (BDFs) does not take whole."""
    out: dict[str, Partial] = {}
    for dev in devices:
        card = card_of(dev, inventory, critical)
        if card is None or card.slot in out:
            continue
        every = (*card.functions, *card.apart)
        taken = tuple(d for d in every if d.bdf in selected)
        groups = {d.group for d in taken if d.group is not None}
        left = tuple(d for d in every if d.bdf not in selected and d.group in groups)
        apart = tuple(d for d in every if d.bdf not in selected and d not in left)
        if left or apart:
            out[card.slot] = Partial(card, taken, left, apart)
    return list(out.values())


def describe(devices: Iterable[Device]) -> str:
    """`0000:41:00.1 [10de:10f0] on snd_hda_intel, ...`"""
    return ", ".join(f"{d.bdf} [{d.id}] on {d.driver_label}" for d in devices)


def fix(partials: Collection[Partial]) -> str:
    """The one-line fix: the entry (one per card) that takes each card whole."""
    fixes = [p.card.fix for p in partials]
    if len(fixes) == 1:
        return f"take the whole card: {fixes[0]}"
    return f"take each card whole, one entry each: {'; '.join(fixes)}"


def give_back_order(bdf: str, restoring: bool, inventory: Inventory) -> tuple[str, int]:
    """Where a step on `bdf` goes in a plan: in BDF order, except that a card's functions are
    given back in reverse, the auxiliary functions first and function 0 last (a GPU's driver
    finds its audio function already back on the host's driver, as at boot)."""
    slot, function = _slot(bdf), int(bdf[-1], 16)
    head = inventory.devices.get(f"{slot}.0")
    if restoring and head is not None and head.multifunction:
        return slot, 7 - function
    return slot, function
