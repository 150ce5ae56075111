"""`pcipassd list`: every PCI function by IOMMU group, what pcipassd says of it, and what can be
passed through. Needs no configuration."""

from __future__ import annotations

from pcipassd.context import readable_state, survey_groups
from pcipassd.exits import EXIT_FAIL, EXIT_OK
from pcipassd.output import groups_json, message, preflight_json, preflight_text, table

TYPE_CHECKING = False  # as typing's, without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from pcipassd.context import Context
    from pcipassd.errors import Problem


def run(ctx: Context) -> int:
    from pcipassd import survey  # noqa: PLC0415 - not on the boot path (apply)
    from pcipassd.address import Address, AddressError  # noqa: PLC0415
    from pcipassd.errors import InvalidConfig, PcipassError  # noqa: PLC0415
    from pcipassd.inventory import scan  # noqa: PLC0415

    inventory = scan(ctx.host)
    problems: list[Problem] = []
    try:
        _, selection = ctx.selection(ctx.load_config())
        configured = frozenset(selection.chosen)
        note = ""
    except PcipassError as e:  # a survey needs no config: it is how one writes the first
        configured, note = frozenset(), f"(nothing marked configured: {e.message})"
        problems = e.problems if isinstance(e, InvalidConfig) else []
    try:
        only = survey.Filter(ctx.args.cls, ctx.args.id,
                             Address.parse(ctx.args.address) if ctx.args.address else None)
    except AddressError as e:
        raise PcipassError(f"--address: {e}", "e.g. --address 0000:02:00.0 or 02:00.*") from e
    groups = survey_groups(ctx, inventory, readable_state(ctx).records, configured, only)
    ahead = None
    if getattr(ctx.args, "verbose", False):
        from pcipassd.context import preflight  # noqa: PLC0415

        ahead = preflight(ctx, inventory, frozenset(r.device.bdf for g in groups for r in g.rows))
    if ctx.args.json:
        ctx.out.update({"groups": groups_json(groups),
                        "preflight": preflight_json(ahead) if ahead else None,
                        "problems": [p.as_dict() for p in problems],
                        "warnings": [message(note[1:-1], "")] if note else []})
        return EXIT_OK if groups else EXIT_FAIL
    rows = [[r.device.bdf, str(r.device.id), r.device.driver_label, "; ".join(r.notes)]
            for g in groups for r in g.rows]
    lines = iter(table(rows, ["DEVICE", "ID", "DRIVER", "PCIPASSD"]))
    print(f"  {next(lines)}")
    for g in groups:
        title = f"IOMMU group {g.group}" if g.group is not None else "(no IOMMU group)"
        print(f"{title}: {g.verdict}")
        for r in g.rows:  # the device, then its name as `lspci -nn` prints it, indented
            print(f"  {next(lines)}")
            name = r.lspci.removesuffix(f" [{r.device.id}]")
            print(f"    {name if len(name) <= 96 else name[:95] + '…'}")
    if not groups:
        print("no device matches")
    from pcipassd import sriov  # noqa: PLC0415

    if pfs := sriov.lines(ctx.host, inventory):
        print("\n".join(pfs))
    if note:
        print(note)
    if ahead is not None:
        print("\n".join(preflight_text(ahead)))
    return EXIT_OK if groups else EXIT_FAIL
