"""What apply would do to each device, decided without touching anything.

A Plan joins the selection (what the config wants) with the state file (what pcipassd did
before) and the inventory (what the kernel has now).
"""

from __future__ import annotations

from collections.abc import Mapping

from pcipassd.card import give_back_order
from pcipassd.errors import Problem
from pcipassd.inventory import Device, Inventory
from pcipassd.model import KEEP_ON_STOP, RESTORE_ON_STOP, Action, Record
from pcipassd.selection import Selection
from pcipassd.value import frozen, replace


@frozen
class Step:
    bdf: str
    id: str
    action: Action
    driver: str | None  # the driver now
    target: str | None  # the stub driver its entry asks for; None for a restore
    group: str | None
    entry: str | None  # FILE:LINE that selected it
    name: str | None = None
    via: str | None = None  # pulled in by `group: bind` from this BDF
    reason: str = ""
    forget: bool = False  # drop it from the state file: there is nothing left to undo
    warning: str = ""  # logged as a warning when apply binds it (`group: ignore`)
    selects: str | None = None  # what its entry selects (`address 0000:02:00.0`), for status
    forced: str = ""  # what `force:` overrode to bind it; shown by every verb, in the journal
    original: str | None = None  # the original driver a restore gives it back to (None: unbound)
    # sysfs `reset_method`: what its entry asks for ("bus"; None: nothing), what it is now
    # (None: not read, or no file), and what it was before pcipassd first wrote it (its
    # record's; None: pcipassd has not changed it), which a give-back writes back
    reset_method: str | None = None
    reset_now: str | None = None
    reset_original: str | None = None
    # what the unit's stop does to it: its entry's `on_stop:`, else its record's (restore, keep)
    on_stop: str = RESTORE_ON_STOP
    entry_kept: bool = False  # a KEEP because its entry has a problem (refused), whatever on_stop

    @property
    def kept(self) -> bool:
        """Left on its target, held, because its record says `on_stop: keep`: by the unit's stop,
        or by apply once its entry is gone (a KEEP that is no problem)."""
        return self.action is Action.KEEP and self.on_stop == KEEP_ON_STOP and not self.entry_kept

    @property
    def forced_note(self) -> str:
        """`forced: carries the default route via eth0`, or nothing."""
        return f"forced: {self.forced}" if self.forced else ""

    @property
    def moves_to(self) -> str | None:
        """The driver the step leaves the device on: its target, or, for a restore, its
        original driver; a keep leaves it on its driver."""
        return self.driver if self.action is Action.KEEP else self.target or self.original

    @property
    def reset_to(self) -> str | None:
        """The sysfs `reset_method` the step leaves (None: it does not change it): the entry's
        on a bind, the original on a restore, or when the entry no longer sets one."""
        if self.action is Action.RESTORE or self.reset_method is None:
            return self.reset_original
        return self.reset_method

    @property
    def reset_due(self) -> bool:
        """Its sysfs `reset_method` is still to be written: the entry's, or the original given
        back (by a restore, or when the entry no longer sets one)."""
        if self.action is not Action.RESTORE and self.reset_method is not None:
            return self.reset_method != self.reset_now
        return self.reset_original is not None

    @property
    def reset_note(self) -> str:
        """`reset_method: bus (now: flr bus)`, `reset_method back to: flr bus`, or nothing."""
        to = self.reset_to
        if to is None:
            return ""
        shown = to or "(none: reset disabled)"
        if self.action is Action.RESTORE or self.reset_method is None:
            return f"reset_method back to: {shown}"
        now = "" if self.reset_now in (None, to) else f" (now: {self.reset_now or '(none)'})"
        return f"reset_method: {shown}{now}"

    @property
    def journal_fields(self) -> dict[str, str]:
        fields = {
            "PCIPASS_DEVICE": self.bdf,
            "PCIPASS_ID": self.id,
            "PCIPASS_DRIVER_FROM": self.driver or "none",
            "PCIPASS_DRIVER_TO": self.moves_to or "none",
            "PCIPASS_ACTION": str(self.action),
        }
        if self.entry:
            fields["PCIPASS_ENTRY"] = self.entry
        if self.name:
            fields["PCIPASS_NAME"] = self.name
        if self.forced:
            fields["PCIPASS_FORCED"] = self.forced
        if self.reset_to is not None:
            fields["PCIPASS_RESET_METHOD"] = self.reset_to or "none"
        if self.on_stop == KEEP_ON_STOP:
            fields["PCIPASS_ON_STOP"] = self.on_stop
        return fields

    @property
    def source(self) -> str:
        """` (/etc/pcipass.yaml:7)`, or nothing when no entry selected it."""
        return f" ({self.entry})" if self.entry else ""

    @property
    def summary(self) -> str:
        """`0000:02:00.0 [14e4:1639] bnx2 -> pci-stub (/etc/pcipass.yaml:7)`"""
        moves = f"{self.driver or '(none)'} -> {self.moves_to or '(none)'}"
        return f"{self.bdf} [{self.id}] {moves}{self.source}"


@frozen
class Plan:
    steps: tuple[Step, ...]
    problems: tuple[Problem, ...]

    def count(self, action: Action) -> int:
        return sum(1 for s in self.steps if s.action is action)

    @property
    def converged(self) -> bool:
        return not self.problems and all(
            (s.action is Action.UNCHANGED and not s.reset_due) or s.kept for s in self.steps)


def _hardware_changed(device: Device, record: Record) -> str:
    return (f"is now {device.id} but was {record.id} when pcipassd bound it: "
            "the hardware changed; not touching it")


def _restore_step(record: Record, device: Device | None, reason: str = "") -> Step:
    """Restore, unless the device is gone or is no longer the device pcipassd bound."""
    if device is None:
        return Step(record.bdf, record.id, Action.FAIL, None, None, None,
                    record.entry, reason="device is gone (hot-removed?); forgetting it",
                    forget=True, forced=record.forced, original=record.original_driver)
    if str(device.id) != record.id:
        return Step(record.bdf, str(device.id), Action.FAIL, device.driver,
                    None, device.group, record.entry,
                    reason=_hardware_changed(device, record), forget=True,
                    forced=record.forced, original=record.original_driver)
    return Step(record.bdf, record.id, Action.RESTORE, device.driver, None,
                device.group, record.entry, reason=reason, forced=record.forced,
                original=record.original_driver,
                reset_original=record.original_reset_method)


def make_plan(
    selection: Selection, inventory: Inventory, records: dict[str, Record]
) -> Plan:
    steps: list[Step] = []
    for bdf, sel in selection.chosen.items():
        dev, record = sel.device, records.get(bdf)
        reason = "; ".join((*sel.notes, sel.warning) if sel.warning else sel.notes)
        if record is not None and record.id != str(dev.id):
            action = Action.FAIL
            reason = _hardware_changed(dev, record)
        else:
            action = Action.UNCHANGED if dev.driver == sel.target else Action.BIND
        # What its record says first: the evidence as seen when it was bound (once held, a NIC
        # has no interface left to show it)
        forced = (record.forced if record is not None else "") or sel.forced
        steps.append(Step(bdf, str(dev.id), action, dev.driver, sel.target, dev.group,
                          sel.entry.source, sel.entry.name, sel.via, reason,
                          warning=sel.warning, selects=sel.entry.selects, forced=forced,
                          reset_method=sel.reset_method, reset_now=sel.reset_now,
                          reset_original=record.original_reset_method if record else None,
                          on_stop=sel.entry.on_stop))
    for bdf, record in records.items():
        if bdf in selection.chosen:
            continue
        device = inventory.devices.get(bdf)
        # A device its refused entry matched stays as it is, unless the early hold took it and
        # it never reached its target: then nothing would drive it, so it goes back.
        if bdf in selection.kept and device is not None and (
                record.stage == "late" or device.driver == record.target):
            steps.append(Step(bdf, record.id, Action.KEEP, device.driver, record.target,
                              device.group, record.entry,
                              reason="its entry has a problem; left as it is",
                              forced=record.forced, original=record.original_driver,
                              on_stop=record.on_stop, entry_kept=True))
            continue
        if (kept := _kept_step(record, device, "no longer configured, but ")) is not None:
            steps.append(kept)
            continue
        steps.append(_restore_step(record, device, "no longer configured"))
    return Plan(tuple(sorted(steps, key=lambda s: _order(s, inventory))), selection.problems)


def _order(step: Step, inventory: Inventory) -> tuple[str, int]:
    """BDF order, but a card's functions are given back function 0 last (card.py)."""
    return give_back_order(step.bdf, step.action is Action.RESTORE, inventory)


def _kept_step(record: Record, device: Device | None, why: str) -> Step | None:
    """A KEEP for a device whose record says `on_stop: keep` and that is on its target, as
    pcipassd left it; None for any other (given back as usual, or failed when it is gone or
    changed). The reason says how to give it back."""
    if (record.on_stop != KEEP_ON_STOP or device is None or str(device.id) != record.id
            or device.driver != record.target):
        return None
    return Step(record.bdf, record.id, Action.KEEP, device.driver, record.target, device.group,
                record.entry, forced=record.forced, original=record.original_driver,
                on_stop=record.on_stop,
                reason=f"{why}on_stop: keep: left on {record.target}; `pcipassd restore "
                f"{record.bdf}` gives it back")


def restore_plan(inventory: Inventory, records: dict[str, Record], *,
                 keep: str | None = None) -> Plan:
    """Everything pcipassd changed, back to where it was; with `keep` (the unit's stop: the
    start of each such step's reason), but the devices whose record says `on_stop: keep`."""
    steps = [(keep is not None and _kept_step(r, inventory.devices.get(bdf), keep))
             or _restore_step(r, inventory.devices.get(bdf)) for bdf, r in sorted(records.items())]
    return Plan(tuple(sorted(steps, key=lambda s: _order(s, inventory))), ())


def predict(plan: Plan, *, iommu_on: bool, iommu_policy: str,
            unavailable: Mapping[str, str]) -> Plan:
    """The plan as apply will fare on this kernel: each bind that cannot succeed becomes a
    FAIL that says why (for `plan` and `status`; apply finds out by trying). `unavailable`:
    each driver this kernel cannot have, and why, in the words `check` uses (modules.missing)."""
    from pcipassd import vfio  # noqa: PLC0415 - not on apply's path

    steps = []
    for s in plan.steps:
        why = ""
        if s.action is Action.BIND:
            if not iommu_on and iommu_policy == "required":
                why = "will not be bound: the IOMMU is off (iommu: required; see `pcipassd check`)"
            elif s.target is not None and s.target in unavailable:
                why = f"will fail: {unavailable[s.target]} (see `pcipassd check`)"
            elif s.target == vfio.DRIVER and s.group is None:
                why = ("will fail: vfio-pci needs an IOMMU group, and the IOMMU is off "
                       "(see `pcipassd check`)")
        steps.append(replace(s, action=Action.FAIL, reason=why) if why else s)
    return Plan(tuple(steps), plan.problems)
