"""`pcipassd validate`: the configuration files, every problem at once."""

from __future__ import annotations

from pcipassd.exits import EXIT_FAIL, EXIT_OK
from pcipassd.output import problem_lines

TYPE_CHECKING = False  # as typing's, without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from pcipassd.context import Context
    from pcipassd.errors import Problem


def run(ctx: Context) -> int:
    from pcipassd.errors import InvalidConfig  # noqa: PLC0415

    summary = ""
    rc = EXIT_FAIL  # the files are valid, but do not fit this host (as `plan` says too)
    try:
        config = ctx.load_config(full=True)
        problems: list[Problem] = []
        if not ctx.args.offline:
            _, selection = ctx.selection(config)
            problems = list(selection.problems)
        n = len(config.entries)
        summary = f"{', '.join(config.files)}: valid, {n} entr{'y' if n == 1 else 'ies'}"
    except InvalidConfig as e:
        problems, rc = e.problems, e.exit_code
    if ctx.args.json:
        ctx.out = {"valid": not problems, "problems": [p.as_dict() for p in problems]}
    elif problems:
        print("\n".join(problem_lines(problems)))
        print(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} found")
    else:
        print(summary)
    return rc if problems else EXIT_OK
