"""IOMMU-group policy and the host-critical guard, applied to a selection. Pure.

- `group: isolated` (default): every other endpoint in a selected device's IOMMU group must be
  selected too, or be unbound or on a stub driver; otherwise the entry is refused.
- `group: bind`: the other endpoints are bound with it (bridges never are).
- `group: ignore`: bind what was selected, with a warning that VFIO will not accept the group.
- A device that is host-critical (root disk controller, NIC with the default route, boot VGA,
  console GPU), or that shares an IOMMU group with one, is refused unless its entry's `force:`
  overrides every one of its reasons: `true` overrides all, a list only the kinds it names
  (storage, network, boot-vga, console), so that `force: [console]` still refuses the root
  disk's controller. The refusal names the reasons left and the `force:` list that binds it.
A refused entry binds nothing; the devices it matched are kept as they are.
"""

from __future__ import annotations

from collections.abc import Mapping

from pcipassd.config import STUB_DRIVERS, Entry
from pcipassd.errors import Problem
from pcipassd.guard import KINDS, Reason, describe
from pcipassd.inventory import Device, Inventory
from pcipassd.selection import Selected, Selection


def _busy(devices: list[Device]) -> str:
    return ", ".join(f"{d.bdf} [{d.id}] on {d.driver_label}" for d in devices)


def _group_mates(dev: Device, inventory: Inventory) -> list[Device]:
    return [d for d in inventory.group_members(dev.group) if d.bdf != dev.bdf and not d.is_bridge]


def _apply_group_policy(
    entry: Entry, items: list[Selected], inventory: Inventory, selected: set[str]
) -> tuple[list[Selected], Problem | None]:
    out = list(items)
    for i, sel in enumerate(items):
        dev = sel.device
        mates = _group_mates(dev, inventory)
        if entry.group == "bind":  # every other endpoint, whatever it is on now: also on re-apply
            for mate in mates:
                if mate.bdf not in selected:
                    selected.add(mate.bdf)
                    out.append(Selected(mate, entry, via=dev.bdf,
                                        notes=(f"in IOMMU group {dev.group} with {dev.bdf}",)))
            continue
        loose = [d for d in mates
                 if d.bdf not in selected and d.driver not in (None, *STUB_DRIVERS)]
        if not loose:
            continue
        if entry.group == "isolated":
            return [], entry.problem(
                f"IOMMU group {dev.group} of {dev.bdf} also holds {_busy(loose)}",
                "select those devices too, or set `group: bind` to bind them with it, "
                "or `group: ignore`",
            )
        note = (f"IOMMU group {dev.group} is not viable for VFIO: it also holds "
                f"{_busy(loose)}")
        out[i] = Selected(dev, entry, sel.via, sel.notes, note)
    return out, None


def blocking(
    dev: Device, entry: Entry, inventory: Inventory, critical: Mapping[str, tuple[Reason, ...]]
) -> tuple[Device, list[Reason]] | None:
    """What keeps the guard from binding `dev` for `entry`: the device (itself or a member of
    its IOMMU group) and its reasons that the entry's `force:` does not override."""
    for other in [dev, *_group_mates(dev, inventory)]:
        reasons = [r for r in critical.get(other.bdf, ()) if r.kind not in entry.force]
        if reasons:
            return other, reasons
    return None


def _guard(
    entry: Entry, items: list[Selected], inventory: Inventory,
    critical: Mapping[str, tuple[Reason, ...]],
) -> Problem | None:
    for sel in items:
        dev = sel.device
        found = blocking(dev, entry, inventory, critical)
        if found is not None:
            other, reasons = found
            shared = "" if other is dev else f", and shares IOMMU group {dev.group} with {dev.bdf}"
            needed = {r.kind for r in reasons} | entry.force
            force = ", ".join(kind for kind in KINDS if kind in needed)
            return entry.problem(
                f"refusing {dev.bdf}: {other.bdf} {describe(reasons)}{shared}",
                f"unbinding it could cut the host off; add `force: [{force}]` to the entry to "
                "bind it anyway",
            )
    return None


def enforce(
    selection: Selection, inventory: Inventory, critical: Mapping[str, tuple[Reason, ...]]
) -> Selection:
    """The selection with group members added and refused entries taken out."""
    by_entry: dict[Entry, list[Selected]] = {}
    for sel in selection.chosen.values():
        by_entry.setdefault(sel.entry, []).append(sel)
    selected = set(selection.chosen)
    problems = list(selection.problems)
    kept = set(selection.kept)
    chosen: dict[str, Selected] = {}
    for entry, items in by_entry.items():
        grown, problem = _apply_group_policy(entry, items, inventory, selected)
        found = [p for p in (problem, _guard(entry, grown or items, inventory, critical)) if p]
        if found:  # every reason at once, not only the first
            problems += found
            kept.update(s.device.bdf for s in items)
            continue
        chosen.update((s.device.bdf, s) for s in grown)
    return Selection(dict(sorted(chosen.items())), tuple(problems), frozenset(kept))
