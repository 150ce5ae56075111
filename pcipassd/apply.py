"""Carry out a plan: the only module that changes the host.

Bind (the kernel documentation's and libvirt's sequence): record the device in the state file
(the devices of a run in one save, before any of them is touched), write the target to
driver_override, unbind from the current driver, write the BDF to drivers_probe, verify the
`driver` link. new_id is never written: it would grab every device
with the same ID. A device that does not end up on its target is rolled back.

Restore: reset driver_override, unbind from the stub, re-probe, verify the original driver, and
bind it explicitly (loading its module) when the probe picked nothing. A device that was unbound
before stays unbound.

When things go wrong, every device ends whole, on one driver, and is named in one line:
- the state file cannot be saved: a device whose record is not on disk is not touched; a device
  given back whose record cannot be removed stays given back, and its record stays in the file
  (restoring a device that is back already only drops its record, so the next run mends it;
  the records of the devices given back are dropped at the end of the run, in one save);
- a record in the state file is invalid: its device is not touched (see state.py);
- a device vanishes (hot-removed) between two steps: its record is dropped;
and the other devices are still handled; the outcome counts each of them as failed.
"""

from __future__ import annotations

import errno
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from pcipassd.errors import KernelError, StateError
from pcipassd.host import Host
from pcipassd.inventory import (
    Device,
    driver_loaded,
    driver_of,
    modalias,
    module_of,
    read_device,
    read_reset_method,
)
from pcipassd.kernel import Kernel
from pcipassd.log import ERROR, INFO, MESSAGE_IDS, WARNING, event, get_logger
from pcipassd.model import KEEP_ON_STOP, VFIO_PCI, Action, Record
from pcipassd.plan import Plan, Step
from pcipassd.state import State
from pcipassd.value import replace

TYPE_CHECKING = False  # as typing's, without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from pcipassd.selection import Selection
    from pcipassd.sriov import Created, Due

log = get_logger()


class StepFailed(Exception):
    """One device could not be moved; the message says what the kernel answered."""


class DeviceGone(StepFailed):
    """The device's sysfs directory is gone: it was hot-removed."""


GONE = "is gone (hot-removed?); forgetting it"
UNSAVED = "records not removed"  # devices given back whose record stayed in the state file


class Outcome:
    """What a run did: how many devices of each kind (bound, unchanged, failed...)
    (a plain class: a dataclass costs start-up time, see bench/noop_apply.py)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    @property
    def failed(self) -> int:
        """Devices that did not end where they should, and records that could not be
        removed: the run did not fully succeed."""
        return self.counts["fail"] + self.counts[UNSAVED]

    @property
    def in_use(self) -> int:
        """Devices left on vfio-pci because a VM has them open."""
        return self.counts["in use"]

    def line(self, *kinds: str) -> str:
        """`2 bound, 0 unchanged, ...` (`kinds`: action words); devices left to a VM, and
        records that could not be removed, are counted when there are any."""
        extra = tuple(k for k in ("in use", UNSAVED) if self.counts[k])
        return ", ".join(f"{self.counts[k]} {_DONE.get(k, k)}" for k in (*kinds, *extra))


def _reset_done(step: Step) -> str:
    """`; reset_method: bus (was: flr bus)` or `; reset_method back to: flr bus` once the step
    wrote it; nothing when it wrote none."""
    if not step.reset_due:
        return ""
    to = step.reset_to or "(none: reset disabled)"
    if step.action is Action.RESTORE or step.reset_method is None:
        return f"; reset_method back to: {to}"
    was = f" (was: {step.reset_now or '(none)'})" if step.reset_now is not None else ""
    return f"; reset_method: {to}{was}"


# for Outcome.line
_DONE = {"bind": "bound", "restore": "restored", "keep": "kept", "fail": "failed"}


class Applier:
    def __init__(self, host: Host, kernel: Kernel, state: State) -> None:
        self.host = host
        self.kernel = kernel
        self.state = state
        self.outcome = Outcome()
        self.stopping = False  # set on SIGTERM: finish the device in hand, start no other
        self._recorded: dict[str, tuple[Record, Device]] = {}  # saved by _record, untouched yet
        self._forgotten: list[Step] = []  # records to drop at the end of the run
        self.done: set[str] = set()  # VFs create_vfs held this run: the plan's step is said

    def stop(self) -> None:
        """Finish the device in hand, then start no other (SIGTERM)."""
        self.stopping = True

    # -- the writes ----------------------------------------------------------------------
    def _write(self, path: str, data: str) -> None:
        full = self.host.path(path)
        log.debug("write %r to %s", data, path)
        try:
            self.kernel.write(full, data)
        except OSError as e:
            name = errno.errorcode.get(e.errno or 0, str(e.errno))
            raise StepFailed(f"writing {data.strip() or 'an empty line'} to {path} failed: "
                             f"{name} ({e.strerror})") from e

    def _set_override(self, bdf: str, driver: str | None) -> None:
        self._write(f"/sys/bus/pci/devices/{bdf}/driver_override", (driver or "") + "\n")

    def _unbind(self, bdf: str, driver: str) -> None:
        self._write(f"/sys/bus/pci/drivers/{driver}/unbind", bdf)

    def _probe(self, bdf: str) -> None:
        self._write("/sys/bus/pci/drivers_probe", bdf)

    def _bind(self, bdf: str, driver: str) -> None:
        self._write(f"/sys/bus/pci/drivers/{driver}/bind", bdf)

    def _set_reset_method(self, bdf: str, methods: str) -> None:
        """Write the reset methods ("bus", "flr bus"; "" disables reset) to the device's sysfs
        `reset_method`. The kernel refuses a method the device does not offer (EINVAL) and then
        leaves the methods as they were."""
        try:
            self._write(f"/sys/bus/pci/devices/{bdf}/reset_method", methods + "\n")
        except StepFailed as e:
            offered = read_reset_method(self.host, bdf)
            offers = ("it has no reset_method" if offered is None else
                      f"its reset methods: {offered or '(none)'}")
            raise StepFailed(f"{e}; {offers}") from e

    def _device(self, bdf: str) -> Device:
        dev = read_device(self.host, bdf)
        if dev is None:
            raise DeviceGone(f"{bdf} disappeared")
        return dev

    def _gone(self, step: Step) -> None:
        """The device vanished: nothing is left to undo; forget it, in one line."""
        self._report(replace(step, target=None, original=None), Action.FAIL,
                     f"{step.bdf} [{step.id}] {GONE}{step.source}", ERROR)
        self._forget(step)

    def _forget(self, step: Step) -> None:
        """Drop the device's record at the end of the run, with the others in one save (until
        then it stays in the file, and a device back already only drops its record)."""
        self._forgotten.append(step)

    def _forget_all(self) -> None:
        steps, self._forgotten = self._forgotten, []
        if not steps:
            return
        try:
            self.state.drop(*(s.bdf for s in steps))
        except StateError as e:
            for step in steps:
                self._unsaved(step, e)

    def _unsaved(self, step: Step, e: StateError) -> None:
        """The device is whole, but its record stays in the state file."""
        self.outcome.counts[UNSAVED] += 1
        log.error("%s: its record stays: %s (hint: %s)", step.bdf, e.message, e.hint,
                  extra={"journal": replace(step, action=Action.FAIL).journal_fields})

    def _driver(self, bdf: str) -> str | None:
        """The device's driver now: after a write, only the `driver` link needs reading."""
        driver = driver_of(self.host, bdf)
        if driver is None:
            return self._device(bdf).driver  # unbound, or gone: say which
        return driver

    def ensure_driver(self, driver: str, module: str | None = None) -> None:
        """Load the module behind `driver` unless its driver directory exists."""
        if driver_loaded(self.host, driver):
            return
        module = module or driver.replace("-", "_")
        log.info("loading module %s for driver %s", module, driver)
        self.kernel.modprobe(module)
        if not driver_loaded(self.host, driver):
            raise KernelError(f"module {module} loaded, but no PCI driver {driver} appeared",
                              f"is {driver} the driver's name? see /sys/bus/pci/drivers/")

    # -- per device ----------------------------------------------------------------------
    def _in_use(self, step: Step, dev: Device) -> bool:
        """A VM has the device open through VFIO: unbinding it would block in the kernel until
        the VM lets go. Leave it (and its record) as it is, and say who has it."""
        from pcipassd import vfio  # noqa: PLC0415 - only for a device to move

        users = vfio.users(self.host, dev)
        if not users:
            return False
        who = ", ".join(str(u) for u in users)
        self._report(replace(step, driver=dev.driver), Action.KEEP,
                     f"{who} has {dev.bdf} open: stop the VM first; left on {dev.driver}"
                     f"{step.source}", WARNING, kind="in use")
        return True

    def _new_record(self, step: Step, dev: Device) -> Record:
        """The device's record for binding it to the step's target."""
        assert step.target is not None
        record = self.state.records.get(step.bdf) or Record(
            bdf=step.bdf, id=str(dev.id), original_driver=dev.driver,
            original_override=dev.override,
            original_module=module_of(self.host, dev.driver) if dev.driver else None,
            target=step.target, entry=step.entry or "",
        )
        original_reset = record.original_reset_method
        if step.reset_method is not None and original_reset is None:  # before the first write
            original_reset = read_reset_method(self.host, step.bdf)
        return replace(record, target=step.target, entry=step.entry or "", forced=step.forced,
                       original_reset_method=original_reset, on_stop=step.on_stop)

    def _record(self, steps: list[Step]) -> None:
        """Record the devices to bind in one save, before any of them is touched (one save per
        device rewrote the file once per device). A device on vfio-pci that is to move is left
        to bind(), which first asks whether a VM has it open; so is every device when the save
        fails (each then says so)."""
        ready: dict[str, tuple[Record, Device]] = {}
        for step in steps:
            dev = read_device(self.host, step.bdf)
            if dev is None or (dev.driver == VFIO_PCI and dev.driver != step.target):
                continue
            ready[step.bdf] = (self._new_record(step, dev), dev)
        if not ready:
            return
        try:
            self.state.put(*(record for record, _ in ready.values()))
        except StateError:
            return
        self._recorded = ready

    def bind(self, step: Step) -> None:
        assert step.target is not None
        if (recorded := self._recorded.pop(step.bdf, None)) is not None:
            record, dev = recorded
        else:
            dev = self._device(step.bdf)
            if dev.driver != step.target and self._in_use(step, dev):
                return
            record = self._new_record(step, dev)
            try:  # on disk before the device is touched
                self.state.put(record)
            except StateError as e:
                self._report(step, Action.FAIL, f"{step.summary}: not touched: {e.message} "
                             f"(hint: {e.hint})", ERROR)
                return
        if dev.driver is not None and dev.driver != step.target:
            self._warn_vf(step, dev)
        try:
            if step.reset_due:  # recorded above; before it moves, so before any VM can have it
                self._set_reset_method(step.bdf, step.reset_to or "")
            self._set_override(step.bdf, step.target)
            if dev.driver == step.target:  # held early, then bound when the target's module
                self._reset_given_back(step, record)  # loaded (driver_attach)
                self._report(step, Action.BIND, step.summary + _reset_done(step))
                return
            if dev.driver is not None:
                self._unbind(step.bdf, dev.driver)
            self._probe(step.bdf)
            now = self._driver(step.bdf)
            if now != step.target:
                raise StepFailed(f"the kernel bound it to {now or 'no driver'}, not to "
                                 f"{step.target} (see `dmesg` for the probe error)")
        except StepFailed as e:
            if self._vanished(step.bdf):
                self._gone(step)
                return
            self._report(step, Action.FAIL, f"{step.summary}: {e}", ERROR)
            self._rollback(step, record)
            return
        self._reset_given_back(step, record)
        self._report(step, Action.BIND, step.summary + _reset_done(step))

    def _warn_vf(self, step: Step, dev: Device) -> None:
        """A VF someone else created, which its host driver probed first: moved late."""
        from pcipassd import sriov  # noqa: PLC0415 - only for a device bound elsewhere

        if sriov.is_vf(self.host, dev.bdf):
            log.warning("%s [%s] is an SR-IOV VF created outside pcipassd: %s probed it before "
                        "it could be held (the kernel probes a VF before udev hears of it); "
                        "moving it late%s (hint: let pcipassd create the VFs: `vfs:` in the "
                        "PF's entry)", dev.bdf, dev.id, dev.driver, step.source,
                        extra={"journal": step.journal_fields})

    # -- SR-IOV: the VFs of an entry's `vfs:` (sriov.py) ------------------------------------
    def create_vfs(self, due: Due, recheck: Callable[[], Selection]) -> bool:
        """Create the PF's VFs and hold them, the race-free way: record, autoprobe 0, write
        the count, (the group and the guard judged again, the VFs now there), record the VFs,
        driver_override and drivers_probe each VF held, autoprobe back to what it was, then
        the others probed by the host's VF driver. Anything wrong: the PF is left as it was
        (its VFs removed) and one line says why. True when VFs were created and kept."""
        from pcipassd import sriov  # noqa: PLC0415

        entry, vfs = due.entry, due.entry.vfs
        assert vfs is not None
        pf_step = Step(due.pf, due.id, Action.FAIL, due.driver, due.driver, None, entry.source,
                       entry.name, selects=entry.selects)
        what = f"{due.pf} [{due.id}] {due.driver or '(none)'}"
        if due.refusal:
            self._report(pf_step, Action.FAIL, f"{what}: refusing to create {vfs.count} VFs: "
                         f"{due.refusal}{entry.source and f' ({entry.source})'}", ERROR)
            return False
        records = sriov.load(self.host)
        made = sriov.Created(due.pf, due.id, entry.source, 0, due.autoprobe)
        try:  # on disk before the PF is touched
            sriov.save(self.host, {**records, due.pf: made})
        except StateError as e:
            self._report(pf_step, Action.FAIL, f"{what}: no VFs created, not touched: "
                         f"{e.message} (hint: {e.hint})", ERROR)
            return False
        sysfs = f"/sys/bus/pci/devices/{due.pf}/"
        try:
            if due.autoprobe != "0":
                self._write(sysfs + "sriov_drivers_autoprobe", "0")
            self._write(sysfs + "sriov_numvfs", str(vfs.count))
        except StepFailed as e:
            self._undo_vfs(due, records, created=False)
            hint = f" (hint: {sriov.ENOENT_HINT})" if "ENOENT" in str(e) else ""
            self._report(pf_step, Action.FAIL, f"{what}: cannot create {vfs.count} VFs: {e}; "
                         f"left as it was ({entry.source}){hint}", ERROR)
            return False
        info = sriov.read_pf(self.host, due.pf)
        created = info.vfs if info else ()
        made = replace(made, vfs=created)
        held = [created[i] for i in due.hold if i < len(created)]
        selection = recheck()
        refused = [p for p in selection.problems if (p.file, p.line) == (entry.file, entry.line)]
        if refused or any(vf not in selection.chosen for vf in held):
            self._undo_vfs(due, records)
            why = refused[0].message if refused else "its VFs were not selected"
            hint = f" (hint: {refused[0].hint})" if refused and refused[0].hint else ""
            self._report(pf_step, Action.FAIL, f"{what}: VFs not held, so not kept: {why}; "
                         f"removed the {len(created)} VFs it had created ({entry.source})"
                         f"{hint}", ERROR)
            return False
        steps = [Step(vf, str(selection.chosen[vf].device.id), Action.BIND, None, vfs.driver,
                      selection.chosen[vf].device.group, entry.source,
                      selection.chosen[vf].entry.name, selects=entry.selects,
                      forced=selection.chosen[vf].forced,
                      warning=selection.chosen[vf].warning) for vf in held]
        try:
            sriov.save(self.host, {**records, due.pf: made})
            self.state.put(*(Record(bdf=s.bdf, id=s.id, original_driver=None,
                                    original_override=None, original_module=None,
                                    target=vfs.driver, entry=entry.source, forced=s.forced,
                                    on_stop=entry.on_stop)
                             for s in steps))
            self.ensure_driver(vfs.driver)
            for s in steps:
                self._set_override(s.bdf, vfs.driver)
            for s in steps:
                self._probe(s.bdf)
                if (now := self._driver(s.bdf)) != vfs.driver:
                    raise StepFailed(f"the kernel bound {s.bdf} to {now or 'no driver'}, not to "
                                     f"{vfs.driver} (see `dmesg` for the probe error)")
            if due.autoprobe != "0":
                self._write(sysfs + "sriov_drivers_autoprobe", due.autoprobe)
            for vf in created:  # the others: to the host's VF driver, as the kernel would
                if vf not in held:
                    self._probe(vf)
        except (StepFailed, StateError, KernelError) as e:
            text = e.message if isinstance(e, (StateError, KernelError)) else str(e)
            self._undo_vfs(due, records)
            self._forgotten.extend(steps)
            self._report(pf_step, Action.FAIL, f"{what}: VFs not held: {text}; removed the "
                         f"{len(created)} VFs it had created ({entry.source})", ERROR)
            return False
        log.info("%s: created %d VFs (%s) with sriov_drivers_autoprobe 0: no host VF driver "
                 "probed them; holding %d on %s%s", what, len(created), " ".join(created),
                 len(held), vfs.driver, pf_step.source,
                 extra={"journal": {"PCIPASS_DEVICE": due.pf, "PCIPASS_ID": due.id,
                                    "PCIPASS_VFS": " ".join(created),
                                    **({"PCIPASS_ENTRY": entry.source} if entry.source else {})}})
        for s in steps:
            self.done.add(s.bdf)
            self._report(s, Action.BIND, s.summary)
        return True

    def _undo_vfs(self, due: Due, records: Mapping[str, Created], created: bool = True) -> None:
        """Back to what the PF had: no VFs (removing them unbinds them), autoprobe as it was;
        its record dropped. Errors are logged: the PF is still whole."""
        from pcipassd import sriov  # noqa: PLC0415

        sysfs = f"/sys/bus/pci/devices/{due.pf}/"
        for path, data, needed in ((sysfs + "sriov_numvfs", "0", created),
                                   (sysfs + "sriov_drivers_autoprobe", due.autoprobe,
                                    due.autoprobe != "0")):
            if needed:
                try:
                    self._write(path, data)
                except StepFailed as e:
                    log.error("%s: %s", due.pf, e)
        try:
            sriov.save(self.host, {k: v for k, v in records.items() if k != due.pf})
        except StateError as e:
            log.warning("%s: %s (hint: %s)", due.pf, e.message, e.hint)

    def remove_vfs(self, pfs: Sequence[str]) -> None:
        """Give-back: remove the VFs pcipassd created on these PFs (sriov_numvfs back to what it
        was), once every VF it held is back (a VF a VM has open keeps its record: then its PF's
        VF count is left alone too, and that is said)."""
        from pcipassd import sriov  # noqa: PLC0415

        records = sriov.load(self.host)
        for pf in pfs:
            made = records.get(pf)
            if made is None:
                continue
            left = [vf for vf in made.vfs if vf in self.state.records]
            kept = [vf for vf in left if self.state.records[vf].on_stop == KEEP_ON_STOP]
            if kept:  # on_stop: keep: its VFs stay, so does the PF's VF count
                log.info("%s: its %d VFs stay (on_stop: keep: %s held); the VF count is left "
                         "alone; `pcipassd restore %s` gives them back and removes them", pf,
                         len(made.vfs), " ".join(kept), pf,
                         extra={"journal": {"PCIPASS_DEVICE": pf,
                                            "PCIPASS_ON_STOP": KEEP_ON_STOP}})
                continue
            if left:
                log.warning("%s: its %d VFs stay: %s still held (see above); the VF count is "
                            "left alone until it is given back", pf, len(made.vfs),
                            " ".join(left), extra={"journal": {"PCIPASS_DEVICE": pf}})
                continue
            try:
                self._write(f"/sys/bus/pci/devices/{pf}/sriov_numvfs", str(made.original_numvfs))
            except StepFailed as e:
                self.outcome.counts["fail"] += 1
                log.error("%s: VFs not removed: %s", pf, e,
                          extra={"journal": {"PCIPASS_DEVICE": pf,
                                             "PCIPASS_ACTION": str(Action.FAIL)}})
                continue
            records.pop(pf)
            try:
                sriov.save(self.host, records)
            except StateError as e:
                log.warning("%s: %s (hint: %s)", pf, e.message, e.hint)
            log.info("%s [%s]: removed the %d VFs pcipassd created (sriov_numvfs %d) (%s)", pf,
                     made.id, len(made.vfs), made.original_numvfs, made.entry,
                     extra={"journal": {"PCIPASS_DEVICE": pf, "PCIPASS_ID": made.id,
                                        "PCIPASS_ACTION": str(Action.RESTORE)}})

    def _reset_given_back(self, step: Step, record: Record) -> None:
        """Its entry no longer sets `reset_method:` and the original was written back: the
        record forgets the original (a later `reset_method:` records it anew)."""
        if step.reset_method is not None or record.original_reset_method is None:
            return
        current = self.state.records.get(step.bdf, record)
        try:
            self.state.put(replace(current, original_reset_method=None))
        except StateError as e:  # it is only written back once more on give-back
            log.warning("%s: %s (hint: %s)", step.bdf, e.message, e.hint)

    def _reset_held(self, step: Step) -> bool:
        """A device on its target already whose `reset_method` is still to be written (its
        entry's `reset_method:` changed, or the early stages held it): record the original
        first, then write it. False (said, as a failure) when it could not be done; its reset
        methods are then as they were."""
        record = self.state.records.get(step.bdf)
        if record is None:
            self._report(step, Action.FAIL, f"{step.bdf} [{step.id}] reset_method not written: "
                         f"pcipassd has no record of it to keep the original in{step.source}",
                         ERROR)
            return False
        if step.reset_method is not None and record.original_reset_method is None:
            original = read_reset_method(self.host, step.bdf)
            try:
                self.state.put(replace(record, original_reset_method=original))
            except StateError as e:
                self._report(step, Action.FAIL, f"{step.bdf} [{step.id}] reset_method not "
                             f"written: {e.message} (hint: {e.hint}){step.source}",
                             ERROR)
                return False
            record = self.state.records.get(step.bdf, record)
        try:
            self._set_reset_method(step.bdf, step.reset_to or "")
        except StepFailed as e:
            self._report(step, Action.FAIL, f"{step.bdf} [{step.id}] on {step.target}, "
                         f"reset_method not changed: {e}{step.source}", ERROR)
            return False
        log.info("%s [%s] on %s%s%s", step.bdf, step.id, step.target, _reset_done(step),
                 step.source, extra={"journal": step.journal_fields})
        self._reset_given_back(step, record)
        return True

    def _vanished(self, bdf: str) -> bool:
        return read_device(self.host, bdf) is None

    def _rollback(self, step: Step, record: Record) -> None:
        back = replace(step, action=Action.RESTORE, target=None,
                       original=record.original_driver)
        try:
            back = replace(back, driver=self._device(step.bdf).driver)
            now = self._restore_device(record)
        except StepFailed as e:
            if self._vanished(step.bdf):
                log.error("%s: rollback: %s", step.bdf, GONE,
                          extra={"journal": back.journal_fields})
                self._forget(step)
                return
            log.error("%s: rollback failed: %s", step.bdf, e,
                      extra={"journal": back.journal_fields})
            return
        log.warning("%s: rolled back to %s", step.bdf, now or "no driver",
                    extra={"journal": replace(back, original=now).journal_fields})
        self._forget(step)

    def _restore_device(self, record: Record, dev: Device | None = None) -> str | None:
        """Give the device back (`dev`: as just read), its original reset methods last (once
        its stub has let go of it); return the driver it is on now."""
        now = self._restore_driver(record, dev)
        if record.original_reset_method is not None:
            self._set_reset_method(record.bdf, record.original_reset_method)
        return now

    def _restore_driver(self, record: Record, dev: Device | None = None) -> str | None:
        """Give the device back to its original driver; return the driver it is on now."""
        bdf, stub, original = record.bdf, record.target, record.original_driver
        dev = dev or self._device(bdf)
        if original is not None and not record.original_unknown and dev.driver != original:
            try:  # before anything moves: a driver that cannot be had leaves it on the stub
                self.ensure_driver(original, record.original_module)
            except KernelError as e:
                raise StepFailed(f"{e.message}; left on {dev.driver or 'no driver'}") from e
        self._set_override(bdf, record.original_override)
        if dev.driver == stub or (dev.driver is not None and dev.driver != original):
            self._unbind(bdf, dev.driver)
        if record.original_unknown:
            # No original driver ever bound it: load what udev would have loaded (a blacklisted
            # module stays unloaded), and let the kernel pick, built-in drivers included.
            alias = modalias(self.host, bdf)
            if alias:
                self.kernel.load_original(alias)
            self._probe(bdf)
            return self._driver(bdf)
        if original is None:
            return None
        self._probe(bdf)
        now = self._driver(bdf)
        if now == original:
            return now
        if now is not None:  # the re-probe chose another driver: move it to the recorded one
            self._unbind(bdf, now)
        try:
            self.ensure_driver(original, record.original_module)
        except KernelError as e:
            raise StepFailed(e.message) from e
        if self._device(bdf).driver is None:  # loading the module may have bound it already
            self._bind(bdf, original)
        now = self._device(bdf).driver
        if now != original:
            raise StepFailed(f"it is on {now or 'no driver'}, not back on {original}")
        return now

    def restore(self, step: Step) -> None:
        record = self.state.records[step.bdf]
        try:
            dev = self._device(step.bdf)
            if self._in_use(step, dev):
                return
            now = self._restore_device(record, dev)
        except StepFailed as e:
            if self._vanished(step.bdf):
                self._gone(step)
                return
            self._report(step, Action.FAIL, f"{step.summary}: restore failed: {e}",
                         ERROR)
            return
        done = replace(step, original=now)
        note = ""
        if record.original_unknown and now is None:
            note = ("; no driver took it (its original driver is blacklisted, or it has none): "
                    "left unbound")
        note += _reset_done(step)
        self._report(done, Action.RESTORE, done.summary + note)
        self._forget(step)

    def _report(self, step: Step, action: Action, message: str,
                level: int = INFO, kind: str | None = None) -> None:
        kind = kind or str(action)
        self.outcome.counts[kind] += 1
        fields = replace(step, action=action).journal_fields
        if kind in MESSAGE_IDS:
            fields.update(event(kind))
        elif action is Action.KEEP and step.kept:
            fields.update(event("kept"))
        log.log(level, message, extra={"journal": fields})
        if step.warning and action in (Action.BIND, Action.UNCHANGED):
            log.warning("%s: %s", step.bdf, step.warning, extra={"journal": fields})
        if step.forced and action in (Action.BIND, Action.UNCHANGED):
            log.warning("%s [%s] %s%s", step.bdf, step.id, step.forced_note, step.source,
                        extra={"journal": {**fields, **event("forced")}})

    # -- the whole plan ------------------------------------------------------------------
    def run(self, plan: Plan) -> Outcome:
        for bad in self.state.unreported():  # their devices are never touched
            self.outcome.counts["fail"] += 1
            fields = {"PCIPASS_DEVICE": bad.bdf} if bad.bdf else {}
            log.error("%s (hint: fix or delete that record, then run `pcipassd restore`)",
                      self.state.describe(bad),
                      extra={"journal": {**fields, "PCIPASS_ACTION": str(Action.FAIL),
                                        **event("fail")}})
        untouchable = self.state.invalid_bdfs
        wanted = sorted({s.target for s in plan.steps if s.action is Action.BIND and s.target
                         and s.bdf not in untouchable})
        missing: dict[str, str] = {}
        for driver in wanted:
            try:
                self.ensure_driver(driver)
            except KernelError as e:
                missing[driver] = e.message
        self._record([s for s in plan.steps if s.action is Action.BIND
                      and s.bdf not in untouchable and s.target not in missing])
        try:
            for step in plan.steps:
                if self.stopping:
                    break
                if step.bdf in untouchable or (step.bdf in self.done
                                               and step.action is Action.UNCHANGED):
                    continue  # said above (or by create_vfs)
                try:
                    self._step(step, missing)
                except DeviceGone:
                    self._gone(step)
        finally:
            self._forget_all()
        return self.outcome

    def _step(self, step: Step, missing: dict[str, str]) -> None:
        if step.action is Action.BIND and step.target in missing:
            self._report(step, Action.FAIL, f"{step.summary}: {missing[step.target]}",
                         ERROR)
            if (record := self.state.records.get(step.bdf)) is not None:
                self._rollback(step, record)  # the early hold took it: give it back
        elif step.action is Action.BIND:
            self.bind(step)
        elif step.action is Action.RESTORE:
            self.restore(step)
        elif step.action is Action.FAIL:
            self._report(step, Action.FAIL, f"{step.bdf} [{step.id}] {step.reason}",
                         ERROR)
            if step.forget:
                self._forget(step)
        elif step.action is Action.KEEP and step.kept:  # on_stop: keep
            # the unit's stop: as asked, said once; apply, its entry gone: a warning to act on
            self._report(step, Action.KEEP, f"{step.bdf} [{step.id}] {step.reason}{step.source}",
                         WARNING if step.reason.startswith("no longer") else INFO)
        elif step.action is Action.KEEP:
            self._report(step, Action.KEEP, f"{step.bdf} [{step.id}] {step.reason}",
                         WARNING)
        else:
            if step.reset_due and not self._reset_held(step):
                return
            self._report(step, Action.UNCHANGED,
                         f"{step.bdf} [{step.id}] already on {step.target}{step.source}")
            self._remember_forced(step)
            self._remember_on_stop(step)

    def _remember_on_stop(self, step: Step) -> None:
        """A device on its target whose entry's `on_stop:` changed: its record says so now (the
        unit's stop reads it there)."""
        record = self.state.records.get(step.bdf)
        if record is None or record.on_stop == step.on_stop:
            return
        try:
            self.state.put(replace(record, on_stop=step.on_stop))
        except StateError as e:
            self._report(step, Action.FAIL, f"{step.bdf} [{step.id}] on_stop: {step.on_stop} not "
                         f"recorded: {e.message} (hint: {e.hint}){step.source}", ERROR)

    def _remember_forced(self, step: Step) -> None:
        """A device held by a record that does not say it was forced (written before the field
        existed): its record says so from now on (once held, the evidence may be gone)."""
        record = self.state.records.get(step.bdf)
        if record is None or not step.forced or record.forced:
            return
        try:
            self.state.put(replace(record, forced=step.forced))
        except StateError as e:  # only a note is lost: the device is where it should be
            log.warning("%s: %s (hint: %s)", step.bdf, e.message, e.hint)
