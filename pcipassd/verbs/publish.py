"""`pcipassd publish`: write the node document, and the node labels if they are there, again
from what the host shows now. Moves no device. pcipassd-publish.timer runs it hourly while the
service is active, so that the labels (which expire a day after they were written) stay while
pcipassd holds the devices, and say `ready=false` as soon as the node drifts from its config."""

from __future__ import annotations

from pcipassd.context import planned
from pcipassd.exits import EXIT_FAIL, EXIT_OK

TYPE_CHECKING = False  # as typing's, without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from pcipassd.context import Context


def run(ctx: Context) -> int:
    from pcipassd import node  # noqa: PLC0415
    from pcipassd.sequence import publish  # noqa: PLC0415
    from pcipassd.state import State  # noqa: PLC0415

    config = ctx.load_config()  # an edit not applied yet that is invalid: say so, write nothing
    with State(ctx.host).locked() as state:  # not beside an apply: the later file wins
        plan, _ = planned(ctx, config, state.records)
        converged = plan.converged and not state.invalid
        assert ctx.inventory is not None  # planned() scanned the host
        publish(ctx, "publish", state, (plan, ctx.inventory), converged=converged,
                error=node.last_error(ctx.host), labels=None)
    return EXIT_OK if converged else EXIT_FAIL
