"""`pcipassd status`: each configured device, where it is and where it should be; or what to
give QEMU or libvirt for the devices held on vfio-pci."""

from __future__ import annotations

from pcipassd.context import planned, readable_state
from pcipassd.exits import EXIT_FAIL, EXIT_OK
from pcipassd.output import groups_json, groups_text, message, problem_lines, table

TYPE_CHECKING = False  # as typing's, without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from pcipassd.context import Context
    from pcipassd.model import Record
    from pcipassd.plan import Plan, Step


def run(ctx: Context) -> int:
    from pcipassd.model import Action  # noqa: PLC0415
    from pcipassd.printable import printable  # noqa: PLC0415

    config = ctx.load_config()
    state = readable_state(ctx)
    records = state.records
    plan, groups = planned(ctx, config, records)
    if ctx.args.qemu or ctx.args.libvirt or ctx.args.qemu_q35 is not None:
        return _handoff(plan, ctx.args.libvirt, ctx.args.qemu_q35)
    if ctx.args.kubevirt or ctx.args.proxmox_mapping:
        return _engine(ctx, plan)
    warnings = [*((w, "") for w in state.problems()), *_warnings(ctx, records),
                *((f"{s.bdf}: {s.forced_note}", "") for s in plan.steps if s.forced)]
    users = _users(ctx, plan)
    converged = plan.converged and not state.invalid

    def stage(bdf: str) -> str | None:
        record = records.get(bdf)
        return record.stage if record else None

    if ctx.args.json:
        from pcipassd import node, sriov  # noqa: PLC0415

        models = {r.device.bdf: r.name for g in groups for r in g.rows if r.name}
        devices = node.describe(ctx.host, plan.steps, records,
                                ctx.inventory.devices if ctx.inventory else {}, models)
        ctx.out.update({**node.document(converged=converged, error=node.last_error(ctx.host),
                                        actions=node.needed_actions(ctx.host, records),
                                        devices=devices,
                                        sriov=sriov.pfs(ctx.host, ctx.inventory)
                                        if ctx.inventory else []),
                        "groups": groups_json(groups),
                        "problems": [p.as_dict() for p in plan.problems],
                        "warnings": [message(w, h) for w, h in warnings]})
        for d in ctx.out["devices"]:
            d["in_use_by"] = users.get(d["device"], [])
    else:
        rows = [[s.bdf, s.id, s.driver or "-",
                 (s.target or "-") if s.action is not Action.RESTORE else "-",
                 s.group or "-", stage(s.bdf) or "-", str(s.action),
                 printable(s.name or s.selects or "-")]
                for s in plan.steps]
        header = ["DEVICE", "ID", "DRIVER", "TARGET", "GROUP", "STAGE", "ACTION", "ENTRY"]
        if any(s.reset_to is not None for s in plan.steps):  # only where an entry sets one
            header.insert(6, "RESET_METHOD")
            for row, s in zip(rows, plan.steps):
                row.insert(6, _reset_column(s))
        print("\n".join(table(rows, header)))
        print("\n".join(groups_text(groups)))
        if ctx.inventory is not None and (pfs := _sriov_lines(ctx)):
            print("\n".join(pfs))
        if users:
            print("\n".join(["", *(f"in use: {bdf} is open in {', '.join(who)}"
                                    for bdf, who in users.items())]))
        if plan.problems:
            print("\n".join(["", *problem_lines(plan.problems)]))
        if warnings:
            print("\n".join(["", *(f"warning: {w}" for w, _ in warnings)]))
        if converged:
            verdict = "converged"
        elif plan.problems or state.invalid:
            verdict = "not converged: fix the problems above"
        else:
            verdict = "not converged: run `systemctl reload pcipassd`"
        print(f"\n{verdict}")
    return EXIT_OK if converged else EXIT_FAIL


def _sriov_lines(ctx: Context) -> list[str]:
    """`SR-IOV:`, each PF with VFs and its VFs by index (sriov.py)."""
    from pcipassd import sriov  # noqa: PLC0415

    assert ctx.inventory is not None
    return sriov.lines(ctx.host, ctx.inventory)


def _reset_column(step: Step) -> str:
    """Its sysfs reset_method: what it is (`bus`), or what it is and what apply would make it
    (`flr bus -> bus`); `-` when pcipassd does not set it."""
    to = step.reset_to
    if to is None:
        return "-"
    if not step.reset_due:
        return to or "(none)"
    now = "?" if step.reset_now is None else step.reset_now or "(none)"  # ?: not read
    return f"{now} -> {to or '(none)'}"


def _warnings(ctx: Context, records: dict[str, Record]) -> list[tuple[str, str]]:
    """What the admin should know about how the devices were held: (message, hint)."""
    from pcipassd import early, initramfs, reboot  # noqa: PLC0415

    out = [(f"{bdf}: {why}", "") for bdf, r in sorted(records.items())
           if (why := early.first_probe(ctx.host, r))]
    if stale := initramfs.stale(ctx.host, look_inside=True):
        out.append((stale, initramfs.rebuild_command(ctx.host) or ""))
    if advice := reboot.advice(ctx.host, records):
        out.append((advice, ""))
    return out



def _handoff(plan: Plan, libvirt: bool, q35: int | None = None) -> int:
    """`status --qemu` / `--qemu-q35 BASE` / `--libvirt`: what to give QEMU or libvirt for each
    device held on vfio-pci; for the others, why not and what to change. Notes are `#` lines."""
    from pcipassd import vfio  # noqa: PLC0415
    from pcipassd.engines import held_on_vfio  # noqa: PLC0415
    from pcipassd.printable import in_xml_comment  # noqa: PLC0415

    ready = held_on_vfio(plan, "libvirt" if libvirt else "QEMU")
    if libvirt:
        for s in ready:
            name = f" {in_xml_comment(s.name)}" if s.name else ""
            print(f"<!-- {s.bdf} [{s.id}]{name} -->")
            print(vfio.libvirt_hostdev(s.bdf))
    elif q35 is not None:
        print("\n".join(vfio.qemu_q35_args([s.bdf for s in ready], q35)))
    else:
        print("\n".join(vfio.qemu_args([s.bdf for s in ready])))
    return EXIT_OK if len(ready) == len(plan.steps) else EXIT_FAIL


def _engine(ctx: Context, plan: Plan) -> int:
    """`status --kubevirt` / `--proxmox-mapping`: see engines.py."""
    from pcipassd import engines  # noqa: PLC0415

    to = "KubeVirt" if ctx.args.kubevirt else "Proxmox"
    ready = engines.held_on_vfio(plan, to)
    print("\n".join(engines.kubevirt(ready) if ctx.args.kubevirt
                    else engines.proxmox_mapping(ctx.host, ready)))
    return EXIT_OK if len(ready) == len(plan.steps) else EXIT_FAIL


def _users(ctx: Context, plan: Plan) -> dict[str, list[str]]:
    """The processes (a VM) that have each device of the plan open through VFIO."""
    from pcipassd import vfio  # noqa: PLC0415
    from pcipassd.inventory import read_device  # noqa: PLC0415

    out = {}
    for s in plan.steps:
        dev = read_device(ctx.host, s.bdf) if s.driver == vfio.DRIVER else None
        if dev is not None and (users := vfio.users(ctx.host, dev)):
            out[s.bdf] = [str(u) for u in users]
    return out
