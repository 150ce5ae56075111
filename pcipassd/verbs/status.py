"""`pcipassd status`: each configured device, where it is and where it should be; or what to
give QEMU or libvirt for the devices held on vfio-pci."""

from __future__ import annotations

from pcipassd.context import planned, readable_state
from pcipassd.exits import EXIT_FAIL, EXIT_OK
from pcipassd.output import (
    groups_json,
    groups_text,
    message,
    preflight_json,
    problem_lines,
    table,
)

TYPE_CHECKING = False  # as typing's, without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from pcipassd import vfio
    from pcipassd.config import Config
    from pcipassd.context import Context
    from pcipassd.model import Record
    from pcipassd.plan import Plan, Step


def run(ctx: Context) -> int:
    from pcipassd.model import KEEP_ON_STOP, Action  # noqa: PLC0415
    from pcipassd.printable import printable  # noqa: PLC0415

    config = ctx.load_config()
    state = readable_state(ctx)
    records = state.records
    plan, groups = planned(ctx, config, records)
    _libvirt_options(ctx, config)
    # SR-IOV VFs share slots (01:10.0, 01:10.2, ...), but each goes to a VM alone: no card
    vfs = frozenset(bdf for bdf, d in (ctx.inventory.devices if ctx.inventory else {}).items()
                    if d.physfn is not None)
    if ctx.args.libvirt and ctx.args.entry is not None:
        return _libvirt_files(plan, ctx.args.entry, ctx.args.guest_slot, ctx.args.xml_dir, vfs)
    if ctx.args.qemu or ctx.args.libvirt or ctx.args.qemu_q35 is not None:
        return _handoff(plan, ctx.args.libvirt, ctx.args.qemu_q35, ctx.args.guest_slot, vfs)
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
        if ctx.inventory is not None:  # what will go wrong at the first VM start
            from pcipassd.context import preflight  # noqa: PLC0415

            ctx.out["preflight"] = preflight_json(preflight(ctx, ctx.inventory))
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
        if kept := [s for s in plan.steps if s.on_stop == KEEP_ON_STOP and s.target
                    and s.action is not Action.RESTORE]:
            print("\n".join(["", *(f"kept: {s.bdf} stays on {s.target} when pcipassd stops "
                                    f"(on_stop: keep{'' if s.selects else '; no longer configured'}"
                                    f"): `pcipassd restore {s.bdf}` gives it back"
                                    for s in kept)]))
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



def _handoff(plan: Plan, libvirt: bool, q35: int | None = None,
             guest_slot: int | None = None, vfs: frozenset[str] = frozenset()) -> int:
    """`status --qemu` / `--qemu-q35 BASE` / `--libvirt [--guest-slot SLOT]`: what to give QEMU
    or libvirt for each device held on vfio-pci; for the others, why not and what to change.
    Notes are `#` lines (XML comments in libvirt's XML)."""
    from pcipassd import vfio  # noqa: PLC0415
    from pcipassd.engines import held_on_vfio  # noqa: PLC0415

    ready = held_on_vfio(plan, "libvirt" if libvirt else "QEMU")
    if libvirt:
        layout = vfio.libvirt_layout([s.bdf for s in ready], _slot_or_default(guest_slot), vfs)
        for s in ready:
            guest = layout.get(s.bdf)
            if guest is not None and guest.function == 0:
                print(_card_note(guest))
            print(_hostdev_xml(s, guest))
    elif q35 is not None:
        print("\n".join(vfio.qemu_q35_args([s.bdf for s in ready], q35, vfs)))
    else:
        print("\n".join(vfio.qemu_args([s.bdf for s in ready], vfs)))
    return EXIT_OK if len(ready) == len(plan.steps) else EXIT_FAIL


def _slot_or_default(guest_slot: int | None) -> int:
    from pcipassd.vfio import GUEST_SLOT  # noqa: PLC0415

    return GUEST_SLOT if guest_slot is None else guest_slot


def _card_note(function0: vfio.GuestAddress) -> str:
    """The XML comment before a card's functions (no `--` in it: it would end the comment)."""
    return (f"<!-- a card: its functions in guest slot 0x{function0.slot:02x} of bus 0x00, "
            "function 0 multifunction='on'; libvirt cannot hot-plug a multi-function card: "
            "add it with the VM shut off (virsh edit) -->")


def _hostdev_xml(step: Step, guest: vfio.GuestAddress | None) -> str:
    """A function's <hostdev>, after an XML comment naming it (its address, ID and entry)."""
    from pcipassd import vfio  # noqa: PLC0415
    from pcipassd.printable import in_xml_comment  # noqa: PLC0415

    name = f" {in_xml_comment(step.name)}" if step.name else ""
    return f"<!-- {step.bdf} [{step.id}]{name} -->\n{vfio.libvirt_hostdev(step.bdf, guest)}"


def _libvirt_options(ctx: Context, config: Config) -> None:
    """--guest-slot, --entry and --xml-dir go with --libvirt only; --xml-dir with --entry; an
    --entry names an entry of the configuration."""
    from pcipassd.errors import UsageError  # noqa: PLC0415
    from pcipassd.printable import short  # noqa: PLC0415

    args = ctx.args
    given = [option for option, value in (("--guest-slot", args.guest_slot),
                                          ("--entry", args.entry), ("--xml-dir", args.xml_dir))
             if value is not None]
    if given and not args.libvirt:
        raise UsageError(f"{given[0]} goes with --libvirt only",
                         f"add --libvirt: pcipassd status --libvirt {given[0]} ...")
    if args.xml_dir is not None and args.entry is None:
        raise UsageError("--xml-dir goes with --entry NAME only",
                         "pcipassd status --libvirt --entry NAME --xml-dir DIR")
    if args.entry is None:
        return
    names = sorted({e.name for e in config.entries if e.name})
    if args.entry not in names:
        known = (f"the entries' names: {', '.join(short(n) for n in names)}" if names
                 else "no entry has a `name:`: give the entry one")
        raise UsageError(f"--entry {short(args.entry)!r}: no entry has that name", known)


def _libvirt_files(plan: Plan, entry: str, guest_slot: int | None, xml_dir: str | None,
                   vfs: frozenset[str] = frozenset()) -> int:
    """`status --libvirt --entry NAME [--xml-dir DIR]`: one file per function of the entry's
    devices held on vfio-pci, each one <hostdev> (`virsh attach-device` takes one device at a
    time), and the `virsh attach-device DOMAIN FILE --config` commands in order, function 0 of
    a card first: the persistent definition never has a function without its function 0. A
    card's functions keep the guest slot `status --libvirt` gives them (numbered over every
    card held), so entries given to one VM do not clash."""
    import os  # noqa: PLC0415
    import shlex  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    from pcipassd import vfio  # noqa: PLC0415
    from pcipassd.engines import held_on_vfio, on_vfio  # noqa: PLC0415
    from pcipassd.errors import PcipassError  # noqa: PLC0415
    from pcipassd.plan import Plan  # noqa: PLC0415
    from pcipassd.printable import printable, short  # noqa: PLC0415
    from pcipassd.safefile import write_atomic  # noqa: PLC0415

    layout = vfio.libvirt_layout([s.bdf for s in plan.steps if on_vfio(s)],
                                 _slot_or_default(guest_slot), vfs)
    steps = tuple(s for s in plan.steps if s.name == entry)
    if not steps:
        raise PcipassError(f"entry {short(entry)!r} selects no device on this host",
                           "`pcipassd status` shows why")
    ready = sorted(held_on_vfio(Plan(steps, plan.problems), "libvirt"), key=lambda s: s.bdf)
    directory = xml_dir or "."
    if not os.path.isdir(directory):
        raise PcipassError(f"--xml-dir {printable(directory)}: no such directory",
                           "give a directory you can write, or create it")
    stem = _file_stem(entry)
    files = []
    for n, s in enumerate(ready, 1):
        path = os.path.join(directory, f"{stem}-{n}-{s.bdf.replace(':', '-')}.xml")
        body = _hostdev_xml(s, layout.get(s.bdf)) + "\n"
        try:
            write_atomic(Path(path), body.encode(), ".pcipassd-xml.", durable=False,
                         mode=0o644)
        except OSError as e:
            raise PcipassError(f"cannot write {printable(path)}: {e.strerror}",
                               "give a directory you can write: --xml-dir DIR") from e
        files.append(path)
    cards = sum(1 for s in ready if (g := layout.get(s.bdf)) is not None and g.function == 0)
    print(f"# wrote {len(files)} file{'s' if len(files) > 1 else ''} in "
          f"{printable(directory)}: one <hostdev> per function, as `virsh attach-device` "
          "takes one device at a time")
    if cards:
        print("# libvirt cannot hot-plug a multi-function card: shut the VM off, run these "
              "in order (function 0 first), then start it")
    else:
        print("# add --live to give it to the running VM as well")
    for path in files:
        print(printable(f"virsh attach-device DOMAIN {shlex.quote(path)} --config"))
    return EXIT_OK if len(ready) == len(steps) else EXIT_FAIL


def _file_stem(name: str) -> str:
    """An entry's name as the start of a file name: letters, digits, `.`, `_` and `-`, the
    others `_`; never hidden, never a path."""
    import re  # noqa: PLC0415

    stem = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:64].lstrip(".")
    return stem or "entry"


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
