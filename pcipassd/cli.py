"""The command line: `pcipassd VERB`. Errors are caught here, once, as one line plus a hint."""

from __future__ import annotations

import argparse
import sys

from pcipassd import __version__

# Each verb imports what it needs when it runs (see bench/noop_apply.py): `--version` and a
# converged `apply` stay near a bare interpreter start, and a missing dependency (PyYAML,
# jsonschema) is met inside main(), which names the package to install.
TYPE_CHECKING = False  # as typing's, without importing typing (mypy knows the name)
if TYPE_CHECKING:
    import logging
    from collections.abc import Callable, Sequence
    from pathlib import Path
    from typing import Any, NoReturn

    from pcipassd.config import Config
    from pcipassd.errors import Problem
    from pcipassd.host import Host
    from pcipassd.inventory import Inventory
    from pcipassd.iommu import Finding
    from pcipassd.kernel import Kernel
    from pcipassd.memory import Judgment
    from pcipassd.plan import Plan, Step
    from pcipassd.selection import Selection
    from pcipassd.state import Record, State
    from pcipassd.survey import Group

EXIT_OK, EXIT_FAIL, EXIT_INVALID, EXIT_PARTIAL = 0, 1, 2, 3
EXIT_USAGE = 64  # sysexits' EX_USAGE: the command line itself is wrong
# Every `--json` prints one object on every exit: {"format": 2, ...}. Any change to a key bumps
# it. Version 2: the envelope (verb, ok, exit, error, problems, warnings), findings with
# message/hint, and one shape of `groups` in list, plan and status.
JSON_FORMAT = 2
# Each verb's own keys, as they are when it could not run (an error): the same shape always.
JSON_KEYS: dict[str, dict[str, Any]] = {
    "validate": {"valid": None},
    "check": {"passthrough_possible": None, "findings": []},
    "plan": {"steps": [], "groups": []},
    "status": {"converged": None, "devices": [], "groups": []},
    "list": {"names": None, "groups": []},
}
EXIT_STOPPED = 128 + 15  # SIGTERM: stopped while applying; everything was given back

# A dependency that is not installed: the package to install, by distribution.
PACKAGES = {
    "yaml": "python3-yaml (Fedora/RHEL: python3-pyyaml; pip: PyYAML)",
    "jsonschema": "python3-jsonschema",
}


def _log() -> logging.Logger:
    """The `pcipassd` logger (logging is imported only once a verb runs)."""
    import logging  # noqa: PLC0415

    return logging.getLogger("pcipassd")


class Context:
    def __init__(self, args: argparse.Namespace, kernel: Kernel | None) -> None:
        from pathlib import Path  # noqa: PLC0415 - see the imports above

        from pcipassd.host import Host  # noqa: PLC0415

        self.args = args
        self.host: Host = Host(Path(args.root))
        self._kernel = kernel
        self._judgment: Judgment | None = None
        self.selected: Selection | None = None  # what the config selects, before the guard
        self.out: dict[str, Any] = {}  # with --json: what the verb found (see _envelope)

    @property
    def kernel(self) -> Kernel:
        from pcipassd.kernel import LiveKernel  # noqa: PLC0415

        return self._kernel or LiveKernel(self.host)

    def config_paths(self) -> list[Path] | None:
        from pathlib import Path  # noqa: PLC0415

        from pcipassd.config import config_files  # noqa: PLC0415

        files = getattr(self.args, "files", None)
        if files:
            return [Path(f) for f in files]
        if self.args.config:
            return config_files(self.host, Path(self.args.config))
        return None

    def load_config(self, *, full: bool = False) -> Config:
        """The validated config; `full` (validate): always run jsonschema too, for its exact
        messages, not only pcipassd's quick check (see config.load_config)."""
        from pcipassd.config import load_config  # noqa: PLC0415

        return load_config(self.host, self.config_paths(), full=full)

    def judgment(self, inventory: Inventory) -> Judgment:
        """The host-critical devices, with what the guard remembers at boot (once per run: its
        warnings are logged once)."""
        from pcipassd.memory import judge  # noqa: PLC0415

        if self._judgment is None:
            self._judgment = judge(self.host, inventory)
            for warning in self._judgment.warnings:
                _log().warning("%s", warning)
        return self._judgment

    def selection(self, config: Config) -> tuple[Inventory, Selection]:
        """Config -> devices, with the IOMMU-group policy and the host-critical guard."""
        from pcipassd.inventory import scan  # noqa: PLC0415
        from pcipassd.policy import enforce  # noqa: PLC0415
        from pcipassd.selection import select  # noqa: PLC0415

        inventory = scan(self.host)
        self.selected = select(config, inventory)
        critical = self.judgment(inventory).critical
        return inventory, enforce(self.selected, inventory, critical)


def _readable_state(ctx: Context) -> State:
    """The state file for a verb that only reads: without it (and saying so, on stderr) when
    only root may read it, so that a user can still run list, plan and status."""
    from pcipassd.state import State  # noqa: PLC0415

    state = State(ctx.host)
    if not state.load_if_readable():
        _log().warning("cannot read %s (only root can): shown without the devices pcipassd "
                       "holds and how it took them; run as root to see them", state.name)
    return state


def _envelope(verb: str | None, rc: int, out: dict[str, Any],
              error: tuple[str, str] | None = None,
              problems: Sequence[Problem] = ()) -> dict[str, Any]:
    """The one JSON shape: `format` first, then what every verb has (its exit status, the
    error that stopped it, the config's problems, warnings: each a `message` and a `hint`),
    then the verb's own keys, present even when an error kept it from filling them."""
    return {
        "format": JSON_FORMAT, "verb": verb, "ok": rc == EXIT_OK, "exit": rc,
        "error": {"message": error[0], "hint": error[1]} if error else None,
        "problems": out.get("problems", [p.as_dict() for p in problems]),
        "warnings": out.get("warnings", []),
        **{k: out.get(k, v) for k, v in JSON_KEYS.get(verb or "", {}).items()},
    }


def _print_json(data: dict[str, Any]) -> None:
    import json  # noqa: PLC0415

    print(json.dumps(data, indent=2))


def _message(message: str, hint: str = "") -> dict[str, str]:
    """A finding or a warning in JSON: the same keys as a problem's."""
    return {"message": message, "hint": hint}


def _hint_text(hint: str) -> str:
    """A hint of several lines (a config to paste): the lines after the first indented."""
    return hint.replace("\n", "\n    ")


def _problem_lines(problems: Sequence[Problem]) -> list[str]:
    out = []
    for p in problems:
        out.append(str(p))
        if p.hint:
            out.append(f"    hint: {_hint_text(p.hint)}")
    return out


def _log_problems(problems: Sequence[Problem], kind: str | None = None) -> None:
    from pcipassd.log import event  # noqa: PLC0415

    fields = event(kind) if kind else {}
    for p in problems:
        _log().error("%s%s", p, f" (hint: {_hint_text(p.hint)})" if p.hint else "",
                     extra={"journal": fields})


def _table(rows: list[list[str]], header: list[str] | None, fit: int = 0) -> list[str]:
    """Aligned columns; with `fit`, the last column is cut short (…) to keep lines that wide."""
    every = [header, *rows] if header else rows
    widths = [max(len(r[i]) for r in every) for i in range(len(every[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
             for r in every]
    return [line if not fit or len(line) <= fit else line[: fit - 1] + "…" for line in lines]


# -- verbs -------------------------------------------------------------------------------
def cmd_schema(ctx: Context) -> int:
    from pcipassd.config import schema_text  # noqa: PLC0415

    sys.stdout.write(schema_text())
    return EXIT_OK


def cmd_validate(ctx: Context) -> int:
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
        print("\n".join(_problem_lines(problems)))
        print(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} found")
    else:
        print(summary)
    return rc if problems else EXIT_OK


def _configured_drivers(ctx: Context) -> tuple[frozenset[str], list[Problem]]:
    """The target drivers the configuration names, or its problems. No config file is no
    problem here: `check` is about the host."""
    from pcipassd.errors import InvalidConfig, NothingConfigured  # noqa: PLC0415

    paths = ctx.config_paths()
    if paths is None and not ctx.host.config_file.exists():
        return frozenset(), []
    try:
        config = ctx.load_config()
    except NothingConfigured:
        return frozenset(), []
    except InvalidConfig as e:
        return frozenset(), e.problems
    return frozenset(e.driver for e in config.entries), []


def _finding_dict(f: Finding) -> dict[str, str]:
    return {"level": str(f.level), **_message(f.what, f.fix)}


def cmd_check(ctx: Context) -> int:
    from pcipassd import early  # noqa: PLC0415
    from pcipassd.iommu import Finding, Level, check, passthrough_possible  # noqa: PLC0415

    wanted, problems = _configured_drivers(ctx)
    findings = check(ctx.host, wanted)
    if stale := early.stale_initramfs(ctx.host):
        findings.append(Finding(Level.WARN, stale, early.rebuild_command(ctx.host) or ""))
    ok = passthrough_possible(findings)
    if ctx.args.json:
        ctx.out = {"passthrough_possible": ok, "findings": [_finding_dict(f) for f in findings],
                   "problems": [p.as_dict() for p in problems]}
    else:
        for f in findings:
            print(f"{f.level:<4}  {f.what}")
            if f.fix:
                print(f"      fix: {f.fix}")
        if problems:  # the drivers it names are unknown until it is fixed
            print("\n".join(["", *_problem_lines(problems)]))
            print(f"the configuration is invalid ({len(problems)} problem"
                  f"{'s' if len(problems) != 1 else ''}): `pcipassd validate`")
        print("passthrough can work" if ok else "passthrough cannot work until the FAILs are fixed")
    if problems:
        return EXIT_INVALID
    return EXIT_OK if ok else EXIT_FAIL


def _require_iommu(ctx: Context, policy: str) -> None:
    from pcipassd.errors import PcipassError  # noqa: PLC0415
    from pcipassd.iommu import Level, check, iommu_active  # noqa: PLC0415

    if iommu_active(ctx.host):
        return
    findings = [f for f in check(ctx.host) if f.level is Level.FAIL]
    fixes = "; ".join(f.fix for f in findings if f.fix)
    if policy == "warn":
        _log().warning("the IOMMU is off (iommu: warn): binding anyway; vfio-pci will fail. "
                    "Fix: %s", fixes)
        return
    for f in findings:
        _log().error("%s%s", f.what, f" (fix: {f.fix})" if f.fix else "")
    raise PcipassError("the IOMMU is off: nothing was bound (iommu: required)",
                       fixes or "run `pcipassd check`")


def _planned(ctx: Context, config: Config, records: dict[str, Record]
             ) -> tuple[Plan, list[Group]]:
    """The plan as apply will fare on this kernel, and every IOMMU group it touches."""
    from pcipassd import modules  # noqa: PLC0415
    from pcipassd.config import STUB_DRIVERS  # noqa: PLC0415
    from pcipassd.iommu import iommu_active, kernel_config  # noqa: PLC0415
    from pcipassd.plan import make_plan, predict  # noqa: PLC0415

    inventory, selection = ctx.selection(config)
    kconfig = kernel_config(ctx.host)
    unavailable = {d: m.message for d in STUB_DRIVERS
                   if (m := modules.missing(ctx.host, d, kconfig)) is not None}
    plan = predict(make_plan(selection, inventory, records), iommu_on=iommu_active(ctx.host),
                   iommu_policy=config.iommu, unavailable=unavailable)
    touched = {s.group for s in plan.steps if s.group}
    groups = _survey(ctx, inventory, records, frozenset(selection.chosen)) if touched else []
    return plan, [g for g in groups if g.group in touched]


def _survey(ctx: Context, inventory: Inventory, records: dict[str, Record],
            configured: frozenset[str], only: Any = None) -> list[Group]:
    """The host's IOMMU groups as `list` shows them (survey.py): `plan` and `status` show
    the groups they touch the same way."""
    from pcipassd import survey  # noqa: PLC0415 - not on the boot path (apply)
    from pcipassd.guard import describe  # noqa: PLC0415
    from pcipassd.names import NameDb  # noqa: PLC0415

    critical = {bdf: describe(r) for bdf, r in ctx.judgment(inventory).critical.items()}
    names = NameDb.load(ctx.host, survey.wanted(inventory))
    groups = survey.survey(inventory, names, records, configured, critical, only=only)
    ctx.out["names"] = names.source
    return groups


def _groups_text(groups: list[Group]) -> list[str]:
    """Each group's members, one a line, with its name as lspci gives it, within 100 columns."""
    if not groups:
        return []
    rows = [[f"{g.group}:" if i == 0 else "", r.device.bdf, f"[{r.device.id}]",
             "(bridge)" if r.device.is_bridge else r.device.driver_label, r.name]
            for g in groups for i, r in enumerate(g.rows)]
    return ["", "IOMMU groups:", *(f"  {line}" for line in _table(rows, None, fit=98))]


def _groups_json(groups: list[Group]) -> list[dict[str, Any]]:
    """`groups` in every verb's JSON: each group with its verdict and its devices."""
    return [{"group": g.group, "passable": g.passable, "verdict": g.verdict, "devices": [
        {"device": r.device.bdf, "id": str(r.device.id), "class": f"{r.device.cls:06x}",
         "class_name": r.cls, "name": r.name, "lspci": r.lspci, "driver": r.device.driver,
         "bridge": r.device.is_bridge, "forced": r.forced or None, "notes": list(r.notes)}
        for r in g.rows]}
        for g in groups]


def cmd_plan(ctx: Context) -> int:
    from pcipassd.plan import Action  # noqa: PLC0415

    config = ctx.load_config()
    plan, groups = _planned(ctx, config, _readable_state(ctx).records)
    if ctx.args.json:
        ctx.out.update({"steps": [_step_dict(s) for s in plan.steps],
                        "groups": _groups_json(groups),
                        "problems": [p.as_dict() for p in plan.problems]})
    else:
        rows = [[s.bdf, s.id, s.current or "-", s.target or "-", s.group or "-", str(s.action),
                 s.entry or "-", "; ".join(n for n in (s.reason, s.forced_note) if n)]
                for s in plan.steps]
        print("\n".join(_table(rows, ["DEVICE", "ID", "DRIVER", "TARGET", "GROUP", "ACTION",
                                      "ENTRY", "NOTE"])))
        print("\n".join(_groups_text(groups)))
        if plan.problems:
            print("\n".join(["", *_problem_lines(plan.problems)]))
    failing = any(s.action is Action.FAIL for s in plan.steps)
    return EXIT_OK if not plan.problems and not failing else EXIT_FAIL


def _step_dict(step: Step) -> dict[str, Any]:
    return {"device": step.bdf, "id": step.id, "action": str(step.action),
            "driver": step.current, "target": step.target, "group": step.group,
            "entry": step.entry, "selects": step.selects, "name": step.name, "via": step.via,
            "note": step.reason, "forced": step.forced or None}


def cmd_apply(ctx: Context) -> int:
    from pcipassd import early  # noqa: PLC0415
    from pcipassd.apply import Applier  # noqa: PLC0415
    from pcipassd.errors import NothingConfigured, PcipassError  # noqa: PLC0415
    from pcipassd.plan import make_plan  # noqa: PLC0415
    from pcipassd.service import notify_status, on_sigterm, status_text  # noqa: PLC0415
    from pcipassd.state import State  # noqa: PLC0415

    with State(ctx.host).locked() as state:
        applier = Applier(ctx.host, ctx.kernel, state)
        with on_sigterm(applier.stop):
            early.adopt(ctx.host, state)
            try:
                config = ctx.load_config()
                _require_iommu(ctx, config.iommu)
            except NothingConfigured as e:  # installed and enabled, not configured yet
                _log().warning("%s: holding nothing (hint: %s)", e.message, e.hint)
                early.sync(ctx.host, "")
                rc = _restore(ctx, state)
                notify_status("holding nothing: no devices are configured")
                return rc
            except PcipassError:
                early.release(ctx.host, ctx.kernel, state)
                raise
            inventory, selection = ctx.selection(config)
            _remember(ctx, inventory)
            plan = make_plan(selection, inventory, state.records)
            _log_problems(plan.problems, "refused")
            outcome = applier.run(plan)
            if early.sync(ctx.host, early.render(plan, selection)) and (
                    stale := early.stale_initramfs(ctx.host)):
                _log().warning("%s", stale)
            _say_reboot(ctx, plan, state)
            if applier.stopping:  # SIGTERM (`systemctl stop` while starting): give all back
                _log().info("stopping before apply finished: giving every device back")
                _restore(ctx, state)
                return EXIT_STOPPED
        held = len(state.records)
        early.arm(ctx.host, held > 0)
    _log().info("%s", outcome.line("bound", "unchanged", "restored", "failed"))
    notify_status(status_text(held, plan.problems, outcome.failed))
    if not plan.problems and not outcome.failed and not outcome.in_use:
        return EXIT_OK
    return EXIT_PARTIAL if held else EXIT_FAIL


def _say_reboot(ctx: Context, plan: Plan, state: State) -> None:
    """Once per apply that moved a device late from its host driver: reboot to have it held
    from the first instant (see reboot.py)."""
    from pcipassd import reboot  # noqa: PLC0415
    from pcipassd.log import event  # noqa: PLC0415
    from pcipassd.plan import Action  # noqa: PLC0415

    moved = {s.bdf for s in plan.steps if s.action is Action.BIND}
    if not moved & {r.bdf for r in reboot.moved_late(ctx.host, state.records)}:
        return
    if advice := reboot.advice(ctx.host, state.records):
        _log().warning("%s", advice, extra={"journal": event("reboot needed")})


def _remember(ctx: Context, inventory: Inventory) -> None:
    """A live run (the guard sees the network up) writes down what it judged, for the boot."""
    from pcipassd import memory  # noqa: PLC0415

    judgment = ctx.judgment(inventory)
    if judgment.live and ctx.selected is not None:
        why = memory.save(ctx.host, memory.remember(judgment, inventory, ctx.selected, ctx.host))
        if why:
            _log().warning("%s", why)


def _restore(ctx: Context, state: State) -> int:
    from pcipassd import early  # noqa: PLC0415
    from pcipassd.apply import Applier  # noqa: PLC0415
    from pcipassd.inventory import scan  # noqa: PLC0415
    from pcipassd.plan import restore_plan  # noqa: PLC0415

    early.adopt(ctx.host, state)
    plan = restore_plan(scan(ctx.host), state.records)
    outcome = Applier(ctx.host, ctx.kernel, state).run(plan)
    early.arm(ctx.host, False)
    _log().info("%s", outcome.line("restored", "failed"))
    return EXIT_OK if not outcome.failed and not outcome.in_use else EXIT_FAIL


def cmd_restore(ctx: Context) -> int:
    # Restore needs no config: a broken config must never keep devices from coming back.
    from pcipassd.state import State  # noqa: PLC0415

    with State(ctx.host).locked() as state:
        return _restore(ctx, state)


def _warnings(ctx: Context, records: dict[str, Record]) -> list[tuple[str, str]]:
    """What the admin should know about how the devices were held: (message, hint)."""
    from pcipassd import early, reboot  # noqa: PLC0415

    out = [(f"{bdf}: {why}", "") for bdf, r in sorted(records.items())
           if (why := early.first_probe(ctx.host, r))]
    if stale := early.stale_initramfs(ctx.host):
        out.append((stale, early.rebuild_command(ctx.host) or ""))
    if advice := reboot.advice(ctx.host, records):
        out.append((advice, ""))
    return out


def cmd_list(ctx: Context) -> int:
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
    groups = _survey(ctx, inventory, _readable_state(ctx).records, configured, only)
    if ctx.args.json:
        ctx.out.update({"groups": _groups_json(groups),
                        "problems": [p.as_dict() for p in problems],
                        "warnings": [_message(note[1:-1], "")] if note else []})
        return EXIT_OK if groups else EXIT_FAIL
    rows = [[r.device.bdf, str(r.device.id), r.device.driver_label, "; ".join(r.notes)]
            for g in groups for r in g.rows]
    lines = iter(_table(rows, ["DEVICE", "ID", "DRIVER", "PCIPASSD"]))
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
    if note:
        print(note)
    return EXIT_OK if groups else EXIT_FAIL


def _handoff(plan: Plan, libvirt: bool) -> int:
    """`status --qemu` / `--libvirt`: what to give QEMU or libvirt for each device held on
    vfio-pci; for the others, why not and what to change. Notes are `#` lines."""
    from pcipassd import vfio  # noqa: PLC0415
    from pcipassd.errors import PcipassError  # noqa: PLC0415
    from pcipassd.plan import Action  # noqa: PLC0415
    from pcipassd.printable import in_xml_comment, printable  # noqa: PLC0415

    ready = []
    for s in plan.steps:
        if s.action not in (Action.UNCHANGED, Action.BIND):
            continue
        label = f"{s.bdf} [{s.id}]{f' {printable(s.name)}' if s.name else ''}"
        if s.target != vfio.DRIVER:
            print(f"# {label} is held on {s.target}, which QEMU cannot use (it needs vfio-pci): "
                  f"set `driver: vfio-pci` in its entry ({s.entry}) and run "
                  "`systemctl reload pcipassd`")
        elif s.action is Action.BIND:
            print(f"# {label} is not on vfio-pci yet: run `systemctl reload pcipassd`")
        else:
            ready.append(s)
    if not ready:  # say why on stderr, rather than print nothing
        to = "libvirt" if libvirt else "QEMU"
        if plan.steps:
            raise PcipassError(f"nothing to give {to}: no configured device is on vfio-pci",
                               "the `#` lines above say what to change")
        raise PcipassError(f"nothing to give {to}: the configuration selects no device "
                           "present on this host",
                           "`pcipassd status` shows why" if plan.problems
                           else "`pcipassd list` shows the devices")
    if libvirt:
        for s in ready:
            name = f" {in_xml_comment(s.name)}" if s.name else ""
            print(f"<!-- {s.bdf} [{s.id}]{name} -->")
            print(vfio.libvirt_hostdev(s.bdf))
    else:
        print("\n".join(vfio.qemu_args([s.bdf for s in ready])))
    return EXIT_OK if ready and len(ready) == len(plan.steps) else EXIT_FAIL


def _users(ctx: Context, plan: Plan) -> dict[str, list[str]]:
    """The processes (a VM) that have each device of the plan open through VFIO."""
    from pcipassd import vfio  # noqa: PLC0415
    from pcipassd.inventory import read_device  # noqa: PLC0415

    out = {}
    for s in plan.steps:
        dev = read_device(ctx.host, s.bdf) if s.current == vfio.DRIVER else None
        if dev is not None and (users := vfio.users(ctx.host, dev)):
            out[s.bdf] = [str(u) for u in users]
    return out


def cmd_status(ctx: Context) -> int:
    from pcipassd.plan import Action  # noqa: PLC0415
    from pcipassd.printable import printable  # noqa: PLC0415

    config = ctx.load_config()
    state = _readable_state(ctx)
    records = state.records
    plan, groups = _planned(ctx, config, records)
    if ctx.args.qemu or ctx.args.libvirt:
        return _handoff(plan, ctx.args.libvirt)
    warnings = [*((w, "") for w in state.problems()), *_warnings(ctx, records),
                *((f"{s.bdf}: {s.forced_note}", "") for s in plan.steps if s.forced)]
    users = _users(ctx, plan)
    converged = plan.converged and not state.invalid
    status = {Action.UNCHANGED: "ok", Action.BIND: "pending", Action.RESTORE: "stale",
              Action.KEEP: "kept", Action.FAIL: "failed"}

    def held(bdf: str) -> str | None:
        record = records.get(bdf)
        return record.held if record else None

    if ctx.args.json:
        ctx.out.update({"converged": converged,
                        "devices": [{**_step_dict(s), "status": status[s.action],
                                     "held": held(s.bdf), "in_use_by": users.get(s.bdf, [])}
                                    for s in plan.steps],
                        "groups": _groups_json(groups),
                        "problems": [p.as_dict() for p in plan.problems],
                        "warnings": [_message(w, h) for w, h in warnings]})
    else:
        rows = [[s.bdf, s.id, s.current or "-",
                 (s.target or "-") if s.action is not Action.RESTORE else "-",
                 s.group or "-", held(s.bdf) or "-", status[s.action],
                 printable(s.name or s.selects or "-")]
                for s in plan.steps]
        print("\n".join(_table(rows, ["DEVICE", "ID", "DRIVER", "WANTED", "GROUP", "HELD",
                                      "STATUS", "ENTRY"])))
        print("\n".join(_groups_text(groups)))
        if users:
            print("\n".join(["", *(f"in use: {bdf} is open in {', '.join(who)}"
                                    for bdf, who in users.items())]))
        if plan.problems:
            print("\n".join(["", *_problem_lines(plan.problems)]))
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


VERBS: dict[str, tuple[Callable[[Context], int], str]] = {
    "validate": (cmd_validate, "check the configuration files (all problems at once)"),
    "check": (cmd_check, "check that the IOMMU is on and passthrough can work"),
    "plan": (cmd_plan, "show what apply would do, changing nothing"),
    "apply": (cmd_apply, "bind the configured devices; restore those no longer configured"),
    "restore": (cmd_restore, "give every device pcipassd bound back to its original driver"),
    "status": (cmd_status, "show each configured device and whether it is where it should be"),
    "list": (cmd_list, "list every PCI device by IOMMU group, and what can be passed through"),
    "schema": (cmd_schema, "print the configuration's JSON schema"),
}


class _UsageError(Exception):
    """A wrong command line: main() says so and exits 64."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """A wrong command line exits 64, not 2: 2 means an invalid configuration."""
        self.print_usage(sys.stderr)
        raise _UsageError(f"{self.prog}: error: {message}")


def _verb(argv: Sequence[str]) -> str | None:
    """The verb of a command line, when it is plainly there: then only its own parser is built
    (building all eight costs more than a no-op apply's work). None: build them all."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        word = argv[i]
        if word in ("-h", "--help") or word.startswith("--v"):
            return None  # the help lists every verb; --version wants none
        takes_value = "=" not in word and len(word) > 2 and any(
            option.startswith(word) for option in ("--root", "--config"))  # also abbreviated
        i += 2 if takes_value else 1
    return argv[i] if i < len(argv) and argv[i] in VERBS else None


def _class_arg(text: str) -> str:
    from pcipassd.survey import class_arg  # noqa: PLC0415 - only when --class is given

    try:
        return class_arg(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _id_arg(text: str) -> str:
    from pcipassd.survey import id_arg  # noqa: PLC0415 - only when --id is given

    try:
        return id_arg(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The command line; with `verb`, only that verb's parser (see _verb)."""
    common = _Parser(add_help=False)
    common.add_argument("--root", metavar="DIR", default=argparse.SUPPRESS,
                        help="resolve every host path (sys, proc, etc, run) under DIR; "
                        "modprobe never runs unless DIR is /")
    common.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="main config file (default: ROOT/etc/pcipass.yaml, with drop-ins "
                        "from pcipass.d/ next to it)")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="log every sysfs write; show tracebacks")
    p = _Parser(
        prog="pcipassd", parents=[common],
        description="Hand PCI devices to virtual machines: bind them to pci-stub or vfio-pci "
        "as /etc/pcipass.yaml says, and give them back on restore.",
        epilog="Exit status: 0 done/converged/valid, 1 not converged or failed (or a valid "
        "config that does not fit this host), 2 invalid config, "
        "3 apply partly applied (holds devices; an entry was refused or a device failed), "
        "143 apply stopped by SIGTERM (every device given back), 64 a wrong command line.",
    )
    p.add_argument("--version", action="version", version=f"pcipassd {__version__}")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    for name, (_, help_text) in VERBS.items():
        if verb is not None and name != verb:
            continue
        sp = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        # `status --json` is one JSON object; --qemu and --libvirt print something else
        to = sp.add_mutually_exclusive_group() if name == "status" else sp
        if name in JSON_KEYS:
            to.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "validate":
            sp.add_argument("files", nargs="*", metavar="FILE",
                            help="files to validate (default: the configuration)")
            sp.add_argument("--offline", action="store_true",
                            help="check the files only, not against this host's devices")
        if name == "list":
            sp.add_argument("--class", dest="cls", metavar="CLASS", type=_class_arg,
                            help="only devices of this class: a hex prefix (02, 0300), a word "
                            "(gpu, display, vga, network, ethernet, storage, nvme, audio, usb) "
                            "or words of its name")
            sp.add_argument("--id", metavar="VENDOR[:DEVICE]", type=_id_arg,
                            help="only devices with this ID (hex: 8086:10d3, or 10de:)")
            sp.add_argument("--address", metavar="BDF", help="only this address (F may be *)")
        if name == "status":
            to.add_argument("--qemu", action="store_true",
                            help="print the QEMU arguments for the devices held on vfio-pci")
            to.add_argument("--libvirt", action="store_true",
                            help="print libvirt <hostdev> XML for the devices held on vfio-pci")
    return p


def main(argv: Sequence[str] | None = None, *, kernel: Kernel | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parser(_verb(argv)).parse_args(argv)
    except _UsageError as e:
        sys.stderr.write(f"{e}\n")
        if "--json" in argv:  # one object on every exit, a wrong command line too
            _print_json(_envelope(_verb(argv), EXIT_USAGE, {},
                                  (str(e).partition("error: ")[2], "see `pcipassd --help`")))
        raise SystemExit(EXIT_USAGE) from None
    for name, default in (("root", "/"), ("config", None), ("debug", False)):
        if not hasattr(args, name):
            setattr(args, name, default)
    ran: list[Context] = []
    try:
        rc, error, problems = _run(args, kernel, ran)
    except Exception as e:  # --debug, or a bug: the traceback follows the one object
        if getattr(args, "json", False):
            from pcipassd.errors import PcipassError  # noqa: PLC0415

            out = ran[0].out if ran else {}
            if isinstance(e, PcipassError):
                _print_json(_envelope(args.verb, e.exit_code, out, (e.message, e.hint)))
            else:
                _print_json(_envelope(args.verb, EXIT_FAIL, out, (
                    f"{type(e).__name__}: {e}",
                    "a bug in pcipassd: please report it with the traceback")))
        raise
    if getattr(args, "json", False):
        out = ran[0].out if ran else {}
        try:
            _print_json(_envelope(args.verb, rc, out, error, problems))
            sys.stdout.flush()
        except BrokenPipeError:
            sys.stderr.close()
            return EXIT_FAIL
    return rc


def _run(args: argparse.Namespace, kernel: Kernel | None,
         ran: list[Context]) -> tuple[int, tuple[str, str] | None, Sequence[Problem]]:
    """Run the verb; every error is caught here, once, and logged as one line plus a hint.
    Returns the exit status, the error (message, hint) and the config's problems, for the
    JSON envelope; `ran` gets the verb's Context (what it found before an error)."""
    from pcipassd import log as logsetup  # noqa: PLC0415 - after --version and --help
    from pcipassd.errors import InvalidConfig, PcipassError  # noqa: PLC0415

    logsetup.setup(debug=args.debug)
    try:
        ctx = Context(args, kernel)
        ran.append(ctx)
        rc = VERBS[args.verb][0](ctx)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at interpreter exit
        return rc, None, ()
    except InvalidConfig as e:
        _log_problems(e.problems)
        _log().error("invalid configuration: nothing was changed")
        return e.exit_code, ("invalid configuration: nothing was changed", e.hint), e.problems
    except PcipassError as e:
        _log().error("%s%s", e.message, f" (hint: {e.hint})" if e.hint else "")
        if args.debug:
            raise
        return e.exit_code, (e.message, e.hint), ()
    except KeyboardInterrupt:
        return 130, ("interrupted", ""), ()
    except BrokenPipeError:  # `pcipassd plan | head`: the reader is gone; nothing to say
        sys.stderr.close()  # and no "Exception ignored" when Python flushes stdout at exit
        return EXIT_FAIL, None, ()
    except PermissionError as e:
        _log().error("%s: %s", e.filename or "permission denied", e.strerror,
                  extra={"journal": {}})
        _log().error("pcipassd %s needs root", args.verb)
        if args.debug:
            raise
        return EXIT_FAIL, (f"{e.filename or 'permission denied'}: {e.strerror}",
                           f"pcipassd {args.verb} needs root"), ()
    except ModuleNotFoundError as e:
        module = (e.name or "").partition(".")[0]
        if module not in PACKAGES or args.debug:
            raise
        _log().error("pcipassd %s needs the Python module %s, which is not installed "
                  "(hint: install %s)", args.verb, module, PACKAGES[module])
        return EXIT_FAIL, (f"pcipassd {args.verb} needs the Python module {module}, which is "
                           "not installed", f"install {PACKAGES[module]}"), ()


if __name__ == "__main__":
    raise SystemExit(main())
