"""IOMMU-group policy and the host-critical guard, applied to a selection. Pure.

- `group: isolated` (default): every other endpoint in a selected device's IOMMU group must be
  selected too, or be unbound or on a stub driver; otherwise the entry is refused.
- `group: bind`: the other endpoints are bound with it (bridges never are; the chipset's
  functions never are either: a group containing them is refused, naming them).
- `group: ignore`: bind what was selected, with a warning that VFIO will not accept the group.
- A device that is host-critical (root disk controller, NIC with the default route, boot VGA,
  console GPU, the chipset), or that shares an IOMMU group with one, is refused unless its
  entry's `force:` overrides every one of its reasons: `true` overrides all but the chipset, a
  list only the kinds it names (storage, network, boot-vga, console, chipset), so that
  `force: [console]` still refuses the root disk's controller. The refusal names the reasons
  left and the `force:` list that binds it; for an entry matching several devices, its hint
  first lists the matches the host can spare, by address, ready to paste.
- A device bound only because `force:` overrode a reason is `forced`, with those reasons.
- A card is one unit (card.py): an entry that takes only part of a card is refused, naming the
  functions left behind in the IOMMU group and the `address:` that takes it whole (the group's
  own message does not name them again); the rest in another IOMMU group, or `group: ignore`,
  is a warning instead.
A refused entry binds nothing; the devices it matched are kept as they are.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from pcipassd.card import Partial, partial_cards
from pcipassd.card import describe as describe_functions
from pcipassd.card import fix as card_fix
from pcipassd.config import Entry
from pcipassd.errors import Problem
from pcipassd.guard import Reason, cost, describe
from pcipassd.inventory import Device, Inventory
from pcipassd.model import CHIPSET, KINDS, STUB_DRIVERS
from pcipassd.selection import Selected, Selection
from pcipassd.value import replace

Critical = Mapping[str, tuple[Reason, ...]]


def _busy(devices: list[Device]) -> str:
    return ", ".join(f"{d.bdf} [{d.id}] on {d.driver_label}" for d in devices)


def _group_mates(dev: Device, inventory: Inventory) -> list[Device]:
    return [d for d in inventory.group_members(dev.group) if d.bdf != dev.bdf and not d.is_bridge]


def _chipset(dev: Device, critical: Critical) -> list[Reason]:
    return [r for r in critical.get(dev.bdf, ()) if r.kind == CHIPSET]


def _chipset_problem(entry: Entry, dev: Device, chipset: list[Device], critical: Critical,
                     hint: str) -> Problem:
    functions = "; ".join(f"{d.bdf} {describe(_chipset(d, critical))}" for d in chipset)
    return entry.problem(f"refusing {dev.bdf}: IOMMU group {dev.group} also contains the "
                         f"chipset, which the host needs: {functions}", hint)


def _apply_group_policy(
    entry: Entry, items: list[Selected], inventory: Inventory, selected: set[str],
    critical: Critical, *, said: frozenset[str] = frozenset(),
) -> tuple[list[Selected], Problem | None, frozenset[str]]:
    """The items with the group mates `group: bind` adds; the problem that refuses the entry;
    the chipset functions that problem names (the guard need not name them again). `said`:
    functions of a card the entry takes only part of, which the card's message names."""
    out = list(items)
    for i, sel in enumerate(items):
        dev = sel.device
        mates = _group_mates(dev, inventory)
        chipset = [m for m in mates if m.bdf not in selected and _chipset(m, critical)]
        if chipset and entry.group != "ignore":  # only an entry of their own binds them
            hint = ("`group: bind` never binds the chipset" if entry.group == "bind" else
                    "the chipset stays with the host (`group: bind` never binds it)")
            return [], _chipset_problem(
                entry, dev, chipset, critical,
                f"{hint}: this group cannot be passed through as a whole",
            ), frozenset(d.bdf for d in chipset)
        if entry.group == "bind":  # every other endpoint, whatever it is on now: also on re-apply
            for mate in mates:
                if mate.bdf not in selected:
                    selected.add(mate.bdf)
                    out.append(Selected(mate, entry, via=dev.bdf,
                                        notes=(f"in IOMMU group {dev.group} with {dev.bdf}",)))
            continue
        loose = [d for d in mates if d.bdf not in selected and d.bdf not in said
                 and d.driver not in (None, *STUB_DRIVERS)]
        if not loose:
            continue
        if entry.group == "isolated":
            return [], entry.problem(
                f"IOMMU group {dev.group} of {dev.bdf} also contains {_busy(loose)}",
                "select those devices too, or set `group: bind` to bind them with it, "
                "or `group: ignore`",
            ), frozenset()
        note = (f"IOMMU group {dev.group} is not viable for VFIO: it also contains "
                f"{_busy(loose)}")
        out[i] = Selected(dev, entry, sel.via, sel.notes, note)
    return out, None, frozenset()


Found = list[tuple[Device, list[Reason]]]  # devices near a selected one, and their reasons


def _near(dev: Device, inventory: Inventory, critical: Critical, skip: Iterable[str] = (),
          force: frozenset[str] = frozenset()) -> Found:
    """The device and its IOMMU group mates with host-critical reasons `force` leaves."""
    found = []
    for other in [dev, *_group_mates(dev, inventory)]:
        reasons = [r for r in critical.get(other.bdf, ()) if r.kind not in force]
        if reasons and other.bdf not in skip:
            found.append((other, reasons))
    return found


def _which(dev: Device, found: Found) -> str:
    """What makes `dev` host-critical: "carries the default route via eth0"; for a device that
    is not, the group mates that are."""
    own = [describe(reasons) for other, reasons in found if other is dev]
    if own:
        return "; ".join(own)
    if len(found) == 1:
        other, reasons = found[0]
        return f"shares IOMMU group {dev.group} with {other.bdf}, which {describe(reasons)}"
    kinds = {r.kind for _, reasons in found for r in reasons}
    return (f"shares IOMMU group {dev.group} with {', '.join(o.bdf for o, _ in found)} "
            f"({', '.join(k for k in KINDS if k in kinds)})")


def _paste(entry: Entry, devices: list[Device]) -> list[str]:
    """The devices as entries of their own, ready to paste under `devices:`."""
    lines = []
    for dev in devices:
        lines += [f'  - address: "{dev.bdf}"', f"    driver: {entry.driver}"]
        if entry.group != "isolated":
            lines.append(f"    group: {entry.group}")
    return lines


def _refusal_hint(entry: Entry, items: list[Selected], refused: dict[str, Found],
                  inventory: Inventory, critical: Critical, *, force: str) -> str:
    """Safe first: the matches the host can spare, by address; then what `force:` costs."""
    matches = [s.device for s in items if s.via is None]
    spare = [d for d in matches if not _near(d, inventory, critical)]
    if len(matches) < 2 or not spare:
        chipset = any(r.kind == CHIPSET for found in refused.values() for _, reasons in found
                      for r in reasons)
        return (f"unbinding it could cut the host off; add `force: [{force}]` to the entry to "
                "bind it anyway" + (" (`force: true` does not cover the chipset)"
                                    if chipset and entry.force else ""))
    taken = [d for d in matches if d not in spare]
    which = [f"{d.bdf}{' too' if i == 0 else ''}"
             + (f", which {_which(d, refused[d.bdf])}" if d.bdf in refused else "")
             for i, d in enumerate(taken)]
    kinds = {r.kind for found in refused.values() for _, reasons in found for r in reasons}
    return "\n".join([
        "to bind only the matches the host can spare, replace the entry with:",
        *_paste(entry, spare),
        f"or add `force: [{force}]` to take {', and '.join(which)}: {cost(kinds)}",
    ])


def blocking(
    dev: Device, entry: Entry, inventory: Inventory, critical: Mapping[str, tuple[Reason, ...]]
) -> tuple[Device, list[Reason]] | None:
    """What keeps the guard from binding `dev` for `entry`: the device (itself or a member of
    its IOMMU group) and its reasons that the entry's `force:` does not override."""
    found = _near(dev, inventory, critical, force=entry.force)
    return found[0] if found else None


def _guard(
    entry: Entry, items: list[Selected], inventory: Inventory, critical: Critical,
    skip: frozenset[str] = frozenset(),
) -> tuple[Problem | None, dict[str, str]]:
    """The refusal, if any of `items` (or a group mate) is host-critical beyond what the
    entry's `force:` overrides; and what `force:` overrode for each device (BDF -> text)."""
    refused: dict[str, Found] = {}
    forced: dict[str, str] = {}
    own = {s.device.bdf for s in items}
    for sel in items:
        dev = sel.device
        found = _near(dev, inventory, critical, skip, entry.force)
        if found:
            refused[dev.bdf] = found
            continue
        overridden = [(other, reasons) for other, reasons in _near(dev, inventory, critical, skip)
                      if other is dev or other.bdf not in own]  # those bound too say it
        if overridden:
            forced[dev.bdf] = _which(dev, overridden)
    if not refused:
        return None, forced
    sel = next(s for s in items if s.device.bdf in refused)
    dev = sel.device
    other, reasons = refused[dev.bdf][0]
    shared = "" if other is dev else f", and shares IOMMU group {dev.group} with {dev.bdf}"
    # the kinds that bind every device of the entry (not `force: true`'s whole list)
    needed = {r.kind for s in items for _, rs in _near(s.device, inventory, critical, skip)
              for r in rs}
    force = ", ".join(kind for kind in KINDS if kind in needed)
    return entry.problem(
        f"refusing {dev.bdf}: {other.bdf} {describe(reasons)}{shared}",
        _refusal_hint(entry, items, refused, inventory, critical, force=force),
    ), forced


def _card_check(entry: Entry, own: Collection[str], partials: list[Partial]
                ) -> tuple[Problem | None, dict[str, str]]:
    """The refusal of an entry that takes only part of a card (its other functions in the same
    IOMMU group left behind), or, when the rest is in another IOMMU group, a warning for each
    of the card's devices it takes (BDF -> text). `group: ignore` is warned, not refused."""
    left = [p for p in partials if p.left]
    if left and entry.group != "ignore":
        taken = ", ".join(d.bdf for p in left for d in p.taken if d.bdf in own)
        behind = "; ".join(f"{describe_functions(p.left)} (card {p.card.slot}, IOMMU group "
                           f"{p.left[0].group})" for p in left)
        return entry.problem(
            f"refusing {taken}: a card is held as one unit, and this leaves behind {behind}",
            card_fix(left),
        ), {}
    warnings: dict[str, str] = {}
    for p in partials:
        behind = ", ".join(f"{describe_functions([d])} (IOMMU group {d.group})"
                           for d in (*p.left, *p.apart))
        text = (f"only part of card {p.card.slot} is held; left behind: {behind} "
                f"(hint: {card_fix([p])} in {entry.source})")
        for d in p.taken:
            if d.bdf in own:
                warnings[d.bdf] = text
    return None, warnings


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
        # a card's functions left behind in its group: said by the card's message, not the
        # group's (`group: bind` adds them, so it never leaves any)
        partials = ([] if entry.group == "bind" else
                    partial_cards((s.device for s in items), inventory, critical, selected))
        behind = frozenset(d.bdf for p in partials for d in p.left)
        grown, problem, said = _apply_group_policy(entry, items, inventory, selected, critical,
                                                   said=behind)
        if entry.group == "bind":  # what is left is in another IOMMU group
            partials = partial_cards((s.device for s in grown), inventory, critical, selected)
        whole, warnings = _card_check(entry, {s.device.bdf for s in grown or items},
                                      partials)
        refusal, forced = _guard(entry, grown or items, inventory, critical, said)
        found = [p for p in (whole, problem, refusal) if p]
        if found:  # every reason at once, not only the first
            problems += found
            kept.update(s.device.bdf for s in items)
            continue
        chosen.update((s.device.bdf, replace(
            s, forced=forced.get(s.device.bdf, ""),
            warning="; ".join(w for w in (s.warning, warnings.get(s.device.bdf, "")) if w)))
            for s in grown)
    return Selection(dict(sorted(chosen.items())), tuple(problems), frozenset(kept))
