"""`pcipassd plan`: what `apply` would do, changing nothing."""

from __future__ import annotations

from pcipassd.context import planned, readable_state
from pcipassd.exits import EXIT_FAIL, EXIT_OK
from pcipassd.output import groups_json, groups_text, problem_lines, step_dict, table

TYPE_CHECKING = False  # as typing's, without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from pcipassd.context import Context
    from pcipassd.plan import Step


def run(ctx: Context) -> int:
    from pcipassd.model import Action  # noqa: PLC0415

    config = ctx.load_config()
    plan, groups = planned(ctx, config, readable_state(ctx).records)
    if ctx.args.json:
        ctx.out.update({"steps": [step_dict(s) for s in plan.steps],
                        "groups": groups_json(groups),
                        "problems": [p.as_dict() for p in plan.problems]})
    else:
        rows = [[s.bdf, s.id, s.driver or "-", s.target or "-", s.group or "-", str(s.action),
                 s.entry or "-",
                 "; ".join(n for n in (_note(s), s.reset_note, s.forced_note) if n)]
                for s in plan.steps]
        print("\n".join(table(rows, ["DEVICE", "ID", "DRIVER", "TARGET", "GROUP", "ACTION",
                                      "ENTRY", "NOTE"])))
        print("\n".join(groups_text(groups)))
        if plan.problems:
            print("\n".join(["", *problem_lines(plan.problems)]))
    failing = any(s.action is Action.FAIL for s in plan.steps)
    return EXIT_OK if not plan.problems and not failing else EXIT_FAIL


def _note(step: Step) -> str:
    """Its reason; a restore also says where the device goes back to (its TARGET is `-`)."""
    from pcipassd.model import Action  # noqa: PLC0415

    if step.action is not Action.RESTORE:
        return step.reason
    back = f"back to {step.original}" if step.original else "unbound"
    return "; ".join(n for n in (step.reason, back) if n)
