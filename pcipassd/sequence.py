"""The apply and restore sequence, what the service runs (ExecStart and ExecReload: `apply`;
ExecStop: `restore`): take over what the early stages held, check the configuration and the
IOMMU, plan, apply, rewrite the hold list, arm the udev rule, tell systemd. The command line
calls it; so can anything else that has a Context."""

from __future__ import annotations

from pcipassd.exits import EXIT_FAIL, EXIT_OK, EXIT_PARTIAL, EXIT_STOPPED
from pcipassd.output import log, log_problems

TYPE_CHECKING = False  # as typing's, without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Mapping

    from pcipassd.address import Address
    from pcipassd.apply import Applier
    from pcipassd.config import Config
    from pcipassd.context import Context
    from pcipassd.inventory import Inventory
    from pcipassd.model import Record
    from pcipassd.plan import Plan
    from pcipassd.selection import Selection
    from pcipassd.sriov import Created
    from pcipassd.state import State


def sriov_records(ctx: Context) -> dict[str, Created]:
    """The VFs pcipassd created (sriov.json), read first: a damaged or unreadable file is a
    StateError before any device is touched, as state.json is (else the VFs it created would
    be left with nothing to remove them)."""
    from pcipassd import sriov  # noqa: PLC0415

    return sriov.load(ctx.host)


def apply(ctx: Context) -> int:
    from pcipassd import early, initramfs  # noqa: PLC0415
    from pcipassd.apply import Applier  # noqa: PLC0415
    from pcipassd.errors import NothingConfigured, PcipassError  # noqa: PLC0415
    from pcipassd.inventory import scan  # noqa: PLC0415
    from pcipassd.plan import make_plan  # noqa: PLC0415
    from pcipassd.service import notify_status, on_sigterm, status_text  # noqa: PLC0415
    from pcipassd.state import State  # noqa: PLC0415

    with State(ctx.host).locked() as state:
        applier = Applier(ctx.host, ctx.kernel, state)
        with on_sigterm(applier.stop):
            created = sriov_records(ctx)  # before any device is touched, as state.json
            early.adopt(ctx.host, state)
            try:
                config = ctx.load_config()
                _keep_parsed(ctx)
                require_iommu(ctx, config.iommu)
            except NothingConfigured as e:  # installed and enabled, not configured yet
                log().warning("%s: holding nothing (hint: %s)", e.message, e.hint)
                early.sync(ctx.host, "")  # the next boot holds nothing, kept devices neither
                rc = restore(ctx, state, verb="apply", keep="no longer configured, but ")
                notify_status(f"holding {len(state.records)} device(s) no longer configured "
                              "(on_stop: keep)" if state.records
                              else "holding nothing: no devices are configured")
                return rc
            except PcipassError as e:
                release(ctx, state)
                from pcipassd.node import kept  # noqa: PLC0415

                left = scan(ctx.host)  # what it still holds, kept as it is
                publish(ctx, "apply", state, (kept(left, state.records, e.message), left),
                        converged=False, error=(e.message, e.hint), labels=None)
                raise
            inventory, selection = ctx.selection(config, settle=True, records=state.records)
            if ctx.vfs_due:
                inventory, selection = _create_vfs(ctx, config, applier, state, inventory)
            _remember(ctx, inventory)
            plan = make_plan(selection, inventory, state.records)
            log_problems(plan.problems, "refused")
            outcome = applier.run(plan)
            if any(d.entry.vfs and d.entry.vfs.move_pf for d in ctx.vfs_due):
                # the PF is on the entry's driver now: its VFs can be created
                inventory, selection = ctx.selection(config, records=state.records)
                if ctx.vfs_due:
                    inventory, selection = _create_vfs(ctx, config, applier, state, inventory)
                    plan = make_plan(selection, inventory, state.records)
            hold_plan = plan
            if created or any(e.vfs is not None for e in config.entries):
                hold_plan = _vfs_given_back(ctx, applier, plan, selection)
            if early.sync(ctx.host, early.render(hold_plan, selection)) and (
                    stale := initramfs.stale(ctx.host)):
                log().warning("%s", stale)
            _say_reboot(ctx, plan, state)
            if applier.stopping:  # SIGTERM (`systemctl stop` while starting): give all back
                log().info("stopping before apply finished: giving every device back")
                restore(ctx, state, keep="")  # as the unit's stop: on_stop: keep stays held
                return EXIT_STOPPED
        held = len(state.records)
        early.arm(ctx.host, held > 0)
        after = plan
        if (outcome.counts["bind"] or outcome.counts["restore"] or outcome.failed
                or any(s.reset_due for s in plan.steps)):
            from pcipassd.inventory import read_reset_method  # noqa: PLC0415
            from pcipassd.node import settled  # noqa: PLC0415

            inventory = scan(ctx.host)  # what the devices are now, for the node document
            resets = {s.bdf: read_reset_method(ctx.host, s.bdf) for s in plan.steps
                      if s.reset_method is not None}
            after = settled(plan, inventory, state.records, resets)
        publish(ctx, "apply", state, (after, inventory),
                converged=after.converged and not outcome.failed and not state.invalid,
                error=None, labels=config.node_labels)
    log().info("%s", outcome.line("bind", "unchanged", "restore", "fail"))
    notify_status(status_text(held, plan.problems, outcome.failed))
    if not plan.problems and not outcome.failed and not outcome.in_use:
        return EXIT_OK
    return EXIT_PARTIAL if held else EXIT_FAIL



def _create_vfs(ctx: Context, config: Config, applier: Applier, state: State,
                inventory: Inventory) -> tuple[Inventory, Selection]:
    """Create the VFs of the `vfs:` entries that have none yet (sriov.py), then select again.
    On a host-critical PF (the uplink) creating VFs drops its link: only at boot, before the
    network is up (the guard's run is not live), or with the entry's `force:` of that kind."""
    from pcipassd.guard import describe  # noqa: PLC0415
    from pcipassd.model import KINDS  # noqa: PLC0415
    from pcipassd.value import replace  # noqa: PLC0415

    judgment = ctx.judgment(inventory)
    for todo in list(ctx.vfs_due):
        due, vfs = todo, todo.entry.vfs
        if vfs is not None and vfs.move_pf and due.driver != due.entry.driver:
            continue  # its entry moves the PF first (the plan): then its VFs are created
        reasons = [r for r in judgment.critical.get(due.pf, ()) if r.kind not in due.entry.force]
        if reasons and judgment.live:
            kinds = ", ".join(k for k in KINDS if k in {r.kind for r in reasons})
            due = replace(due, refusal=(
                f"it {describe(reasons)}: creating VFs re-initialises it and drops its link; "
                f"pcipassd does it only at boot, before the network is up, or with "
                f"`force: [{kinds}]` in the entry"))
        elif reasons:
            log().warning("%s: creating VFs on it before the network is up (it %s): its link "
                          "is re-initialised now, not later", due.pf, describe(reasons))
        applier.create_vfs(due, lambda: ctx.selection(config, records=state.records)[1])
    return ctx.selection(config, records=state.records)


def _vfs_given_back(ctx: Context, applier: Applier, plan: Plan, selection: Selection) -> Plan:
    """Remove the VFs pcipassd created on PFs no entry asks VFs of any more (their VFs were
    given back by the plan); and the plan without VFs, for the hold list (the early stages
    cannot hold a device that does not exist before its PF's driver creates it)."""
    from pcipassd import sriov  # noqa: PLC0415
    from pcipassd.value import replace  # noqa: PLC0415

    wanted = set(selection.chosen) | selection.kept
    applier.remove_vfs([pf for pf, made in sriov.load(ctx.host).items()
                        if not any(vf in wanted for vf in made.vfs)])
    return replace(plan, steps=tuple(s for s in plan.steps if not sriov.is_vf(ctx.host, s.bdf)))


def _keep_parsed(ctx: Context) -> None:
    """A configuration without problems: keep its files' parses for the next run (only a
    quicker start is lost when they cannot be kept)."""
    if ctx.parsed is not None and (why := ctx.parsed.save()):
        log().debug("%s; the next run parses the configuration again", why)


def release(ctx: Context, state: State) -> None:
    """The config cannot be applied: give back what the early stages held and pcipassd has not
    moved to its target yet. Devices already on their targets stay (nothing changes for them).
    Here rather than in early.py, so that early (which the hold list and `status` import) needs
    neither apply nor plan: apply stays the one module that writes /sys, and the only one that
    imports it is this sequence."""
    from pcipassd import early  # noqa: PLC0415
    from pcipassd.apply import Applier  # noqa: PLC0415
    from pcipassd.inventory import scan  # noqa: PLC0415
    from pcipassd.plan import restore_plan  # noqa: PLC0415

    inventory = scan(ctx.host)
    loose = {bdf: r for bdf, r in state.records.items() if r.stage != "late"
             and (d := inventory.devices.get(bdf)) is not None and d.driver != r.target}
    if loose:
        log().warning("giving back the %d device(s) the early stages held", len(loose))
        Applier(ctx.host, ctx.kernel, state).run(restore_plan(inventory, loose))
    early.arm(ctx.host, bool(state.records))


def require_iommu(ctx: Context, policy: str) -> None:
    from pcipassd.inventory import iommu_active  # noqa: PLC0415

    if iommu_active(ctx.host):
        return
    from pcipassd.errors import PcipassError  # noqa: PLC0415
    from pcipassd.iommu import Level, check  # noqa: PLC0415

    findings = [f for f in check(ctx.host) if f.level is Level.FAIL]
    fixes = "; ".join(f.fix for f in findings if f.fix)
    if policy == "warn":
        log().warning("the IOMMU is off (iommu: warn): binding anyway; vfio-pci will fail. "
                    "Fix: %s", fixes)
        return
    for f in findings:
        log().error("%s%s", f.what, f" (fix: {f.fix})" if f.fix else "")
    raise PcipassError("the IOMMU is off: nothing was bound (iommu: required)",
                       fixes or "run `pcipassd check`")



def _say_reboot(ctx: Context, plan: Plan, state: State) -> None:
    """Once per apply that moved a device late from its original driver: reboot to have it held
    from the first instant (see reboot.py)."""
    from pcipassd.model import Action  # noqa: PLC0415

    moved = {s.bdf for s in plan.steps if s.action is Action.BIND}
    if not moved:  # a converged boot: nothing moved, no hold list to read again
        return
    from pcipassd import reboot  # noqa: PLC0415
    from pcipassd.log import event  # noqa: PLC0415

    if not moved & {r.bdf for r in reboot.moved_late(ctx.host, state.records)}:
        return
    if advice := reboot.advice(ctx.host, state.records):
        log().warning("%s", advice, extra={"journal": event("reboot needed")})



def publish(ctx: Context, verb: str, state: State, planned: tuple[Plan, Inventory] | None, *,
            converged: bool, error: tuple[str, str] | None, labels: bool | None) -> None:
    """Write the node document (node.py) for what this run leaves; with `labels`, the Node
    Feature Discovery labels too (False: remove them; None, the config unread: rewrite them
    only if they are there, so that an error never leaves a stale `ready`)."""
    import time  # noqa: PLC0415

    from pcipassd import node  # noqa: PLC0415
    from pcipassd.output import JSON_FORMAT  # noqa: PLC0415

    devices = node.describe(ctx.host, planned[0].steps, state.records,
                            planned[1].devices) if planned else []
    from pcipassd.sriov import pfs  # noqa: PLC0415

    doc = {"format": JSON_FORMAT, "verb": verb,
           **node.document(converged=converged, error=error,
                           actions=node.needed_actions(ctx.host, state.records),
                           devices=devices,
                           sriov=pfs(ctx.host, planned[1]) if planned else [])}
    if why := node.write(ctx.host, doc):
        log().warning("%s", why)
    if labels is None:
        labels = ctx.host.path(node.FEATURES).exists()
    why = (node.write_labels(ctx.host, doc, time.time()) if labels
           else node.remove_labels(ctx.host))
    if why:
        log().warning("%s", why)



def _remember(ctx: Context, inventory: Inventory) -> None:
    """A live run (the guard sees the network up) writes down what it judged, for the boot."""
    from pcipassd import memory  # noqa: PLC0415

    judgment = ctx.judgment(inventory)
    if judgment.live and ctx.selected is not None:
        why = memory.save(ctx.host, memory.remember(judgment, inventory, ctx.selected, ctx.host))
        if why:
            log().warning("%s", why)



def restore(ctx: Context, state: State, verb: str = "restore", *, keep: str | None = None,
            only: tuple[str, ...] = ()) -> int:
    """Give back every device pcipassd holds; with `keep` (the unit's stop: how the line about
    each starts), but those whose record says `on_stop: keep`; `only`: just the devices at
    these addresses."""
    from pcipassd import early  # noqa: PLC0415
    from pcipassd.apply import Applier  # noqa: PLC0415
    from pcipassd.inventory import scan  # noqa: PLC0415
    from pcipassd.plan import restore_plan  # noqa: PLC0415

    created = sriov_records(ctx)  # read before any device is touched (damaged: StateError)
    early.adopt(ctx.host, state)
    records = state.records
    inventory = scan(ctx.host)
    if only:
        records = _addressed(records, only, created, inventory)
    plan = restore_plan(inventory, records, keep=keep)
    applier = Applier(ctx.host, ctx.kernel, state)
    outcome = applier.run(plan)
    if created:  # the VFs pcipassd created, once none is held (kept, or open in a VM)
        applier.remove_vfs([pf for pf, made in created.items() if not only
                            or any(a.matches(b) for a in _parsed(only) for b in (pf, *made.vfs))])
    early.arm(ctx.host, bool(only) and bool(state.records))
    inventory = scan(ctx.host)  # what is left held (a device a VM has open), for the document
    publish(ctx, verb, state, (restore_plan(inventory, state.records, keep=keep), inventory),
            converged=False, error=None, labels=None if only else False)
    log().info("%s", outcome.line("restore", *(("keep",) if outcome.counts["keep"] else ()),
                                  "fail"))
    return EXIT_OK if not outcome.failed and not outcome.in_use else EXIT_FAIL


def _parsed(addresses: tuple[str, ...]) -> list[Address]:
    """The addresses `restore ADDRESS` was given; PcipassError when one is not an address."""
    from pcipassd.address import Address, AddressError  # noqa: PLC0415
    from pcipassd.errors import PcipassError  # noqa: PLC0415

    try:
        return [Address.parse(text) for text in addresses]
    except AddressError as e:
        raise PcipassError(str(e), "write it like 0000:41:00.0") from None


def _addressed(records: dict[str, Record], addresses: tuple[str, ...],
               created: Mapping[str, Created], inventory: Inventory) -> dict[str, Record]:
    """The records of the devices at `addresses` (`0000:41:00.0`, `41:00.*`); the address of a
    PF pcipassd created VFs on stands for its VFs too. PcipassError, nothing touched, when one
    is not an address or pcipassd holds nothing there."""
    from pcipassd.errors import PcipassError  # noqa: PLC0415

    chosen: dict[str, Record] = {}
    for address in _parsed(addresses):
        vfs = {vf for pf, made in created.items() if address.matches(pf) for vf in made.vfs}
        found = {bdf: r for bdf, r in records.items() if address.matches(bdf) or bdf in vfs}
        if not found and not any(address.matches(pf) for pf in created):
            raise PcipassError(f"pcipassd holds no device at {address}: nothing was given back",
                               "`pcipassd status` shows the devices it holds")
        chosen.update(found)
    # A card goes back whole: the other functions pcipassd holds in a chosen device's slot too
    # (not a VF's: VFs share slots, but they are no card).
    def card_function(bdf: str) -> bool:
        device = inventory.devices.get(bdf)
        return (device is None or device.physfn is None) and not any(
            bdf in made.vfs for made in created.values())

    slots = {bdf.rsplit(".", 1)[0] for bdf in chosen if card_function(bdf)}
    with_card = {bdf: r for bdf, r in records.items()
                 if bdf in chosen or (bdf.rsplit(".", 1)[0] in slots and card_function(bdf))}
    for bdf in sorted(with_card.keys() - chosen.keys()):
        log().info("%s: given back with its card %s, which goes back as one unit", bdf,
                   bdf.rsplit(".", 1)[0])
    return with_card


def restore_all(ctx: Context) -> int:
    # Restore needs no config: a broken config must never keep devices from coming back.
    # `restore --on-stop` is the unit's stop (ExecStop: systemctl stop, poweroff): it leaves the
    # devices whose entry said `on_stop: keep` held; `restore` by hand gives back those too.
    from pcipassd.state import State  # noqa: PLC0415

    with State(ctx.host).locked() as state:
        return restore(ctx, state, keep="" if getattr(ctx.args, "on_stop", False) else None,
                       only=tuple(getattr(ctx.args, "devices", None) or ()))
