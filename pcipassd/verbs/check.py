"""`pcipassd check`: is the IOMMU on, can passthrough work, and can this kernel have the drivers
the configuration binds devices to? Each finding with its fix."""

from __future__ import annotations

from pcipassd.exits import EXIT_FAIL, EXIT_INVALID, EXIT_OK
from pcipassd.output import message, preflight_json, preflight_text, problem_lines

TYPE_CHECKING = False  # as typing's, without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from pcipassd.config import Config
    from pcipassd.context import Context
    from pcipassd.errors import Problem
    from pcipassd.iommu import Finding
    from pcipassd.preflight import Preflight


def _configured(ctx: Context) -> tuple[Config | None, list[Problem]]:
    """The configuration, or its problems. No config file is no problem here: `check` is about
    the host."""
    from pcipassd.errors import InvalidConfig, NothingConfigured  # noqa: PLC0415

    paths = ctx.config_paths()
    if paths is None and not ctx.host.config_file.exists():
        return None, []
    try:
        return ctx.load_config(), []
    except NothingConfigured:
        return None, []
    except InvalidConfig as e:
        return None, e.problems


def _preflight(ctx: Context, config: Config | None) -> Preflight | None:
    """With a configuration: what will go wrong with its display and audio functions."""
    from pcipassd.context import preflight  # noqa: PLC0415

    if config is None:
        return None
    inventory, _ = ctx.selection(config)
    return preflight(ctx, inventory)



def _finding_dict(f: Finding) -> dict[str, str]:
    return {"level": str(f.level), **message(f.what, f.fix)}



def run(ctx: Context) -> int:
    from pcipassd import initramfs  # noqa: PLC0415
    from pcipassd.iommu import Finding, Level, check, passthrough_possible  # noqa: PLC0415

    config, problems = _configured(ctx)
    wanted = frozenset(e.driver for e in config.entries) if config else frozenset()
    findings = check(ctx.host, wanted)
    if stale := initramfs.stale(ctx.host, look_inside=True):
        findings.append(Finding(Level.WARN, stale, initramfs.rebuild_command(ctx.host) or ""))
    ok = passthrough_possible(findings)
    ahead = _preflight(ctx, config)
    if ctx.args.json:
        ctx.out = {"passthrough_possible": ok, "findings": [_finding_dict(f) for f in findings],
                   "problems": [p.as_dict() for p in problems],
                   "preflight": preflight_json(ahead) if ahead else None}
    else:
        for f in findings:
            print(f"{f.level:<4}  {f.what}")
            if f.fix:
                print(f"      fix: {f.fix}")
        if problems:  # the drivers it names are unknown until it is fixed
            print("\n".join(["", *problem_lines(problems)]))
            print(f"the configuration is invalid ({len(problems)} problem"
                  f"{'s' if len(problems) != 1 else ''}): `pcipassd validate`")
        if ahead is not None and (lines := preflight_text(ahead)):
            print("\n".join([*lines, ""]))
        print("passthrough can work" if ok else "passthrough cannot work until the FAILs are fixed")
    if problems:
        return EXIT_INVALID
    return EXIT_OK if ok else EXIT_FAIL
