"""One run of a verb: the host it works on, the kernel, the configuration, what the guard
judged, and what the verb found (for the JSON envelope). The verbs (pcipassd/verbs/) and the
apply sequence (pcipassd/sequence.py) share it: the decision steps, config -> selection -> guard
-> plan, are glued here once."""

from __future__ import annotations

from pcipassd.output import log

TYPE_CHECKING = False  # as typing's, without importing typing (mypy knows the name)
if TYPE_CHECKING:
    import argparse
    from collections.abc import Mapping
    from pathlib import Path
    from types import SimpleNamespace
    from typing import Any

    from pcipassd.config import Config
    from pcipassd.host import Host
    from pcipassd.inventory import Inventory
    from pcipassd.kernel import Kernel
    from pcipassd.memory import Judgment
    from pcipassd.model import Record
    from pcipassd.parsecache import Cache
    from pcipassd.plan import Plan
    from pcipassd.preflight import Preflight
    from pcipassd.selection import Selection
    from pcipassd.sriov import Due
    from pcipassd.state import State
    from pcipassd.survey import Group


class Context:
    def __init__(self, args: argparse.Namespace | SimpleNamespace, kernel: Kernel | None) -> None:
        from pathlib import Path  # noqa: PLC0415 - see the imports above

        from pcipassd.host import Host  # noqa: PLC0415

        self.args = args
        self.host: Host = Host(Path(args.root))
        self._kernel = kernel
        self._judgment: Judgment | None = None
        self.selected: Selection | None = None  # what the config selects, before the guard
        self.inventory: Inventory | None = None  # the last scan selection() made
        self.vfs_due: list[Due] = []  # the PFs whose `vfs:` apply is to create (sriov.py)
        self.out: dict[str, Any] = {}  # with --json: what the verb found (see _envelope)
        self.parsed: Cache | None = None  # the files' parses, for apply to keep (parsecache.py)

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
        from pcipassd.config import config_files, load_config  # noqa: PLC0415

        main = getattr(self.args, "main", None)
        if main:  # a candidate main file with the drop-ins of the configuration
            from pathlib import Path  # noqa: PLC0415

            config = Path(self.args.config) if self.args.config else None
            return load_config(self.host, config_files(self.host, config), full=full,
                               candidate=Path(main))
        if full:
            return load_config(self.host, self.config_paths(), full=True)
        from pcipassd.parsecache import Cache  # noqa: PLC0415

        self.parsed = Cache(self.host)
        return load_config(self.host, self.config_paths(), full=False, cache=self.parsed)

    def judgment(self, inventory: Inventory) -> Judgment:
        """The host-critical devices, with what the guard remembers at boot (once per run: its
        warnings are logged once)."""
        from pcipassd.memory import judge  # noqa: PLC0415

        if self._judgment is None:
            self._judgment = judge(self.host, inventory)
            for warning in self._judgment.warnings:
                log().warning("%s", warning)
        return self._judgment

    def selection(self, config: Config, *, settle: bool = False,
                  records: Mapping[str, Record] | None = None) -> tuple[Inventory, Selection]:
        """Config -> devices, with the IOMMU-group policy, the host-critical guard and the
        devices' reset methods (`reset_method:`; `records`: the state file's, whose original
        reset methods are what a held device offers). With `settle` (apply), first wait for
        udev if a selected device may still be probed."""
        from pcipassd.inventory import scan  # noqa: PLC0415
        from pcipassd.policy import enforce  # noqa: PLC0415
        from pcipassd.selection import select  # noqa: PLC0415

        inventory = scan(self.host)
        self.selected = select(config, inventory)
        if settle:
            from pcipassd.settle import unsettled  # noqa: PLC0415

            if waiting := unsettled(self.selected, inventory):
                log().debug("waiting for udev before taking %s", ", ".join(waiting))
                self.kernel.settle()
                inventory = scan(self.host)
                self.selected = select(config, inventory)
        if any(e.vfs is not None for e in config.entries):
            from pcipassd import sriov  # noqa: PLC0415 - only for an entry with `vfs:`

            self.selected, self.vfs_due = sriov.expand(self.host, config, self.selected,
                                                       inventory, sriov.load(self.host))
        critical = self.judgment(inventory).critical
        self.inventory = inventory
        selection = enforce(self.selected, inventory, critical)
        if any(e.reset_method is not None for e in config.entries):
            from pcipassd.inventory import read_reset_method  # noqa: PLC0415
            from pcipassd.selection import check_resets  # noqa: PLC0415

            now = {bdf: read_reset_method(self.host, bdf)
                   for bdf, sel in selection.chosen.items() if sel.reset_method is not None}
            selection = check_resets(selection, now, records or {})
        return inventory, selection



def readable_state(ctx: Context) -> State:
    """The state file for a verb that only reads: without it (and saying so, on stderr) when
    only root may read it, so that a user can still run list, plan and status."""
    from pcipassd.state import State  # noqa: PLC0415

    state = State(ctx.host)
    if not state.load_if_readable():
        log().warning("cannot read %s (only root can): shown without the devices pcipassd "
                       "holds and how it took them; run as root to see them", state.name)
    return state



def planned(ctx: Context, config: Config, records: dict[str, Record]
             ) -> tuple[Plan, list[Group]]:
    """The plan as apply will fare on this kernel, and every IOMMU group it touches."""
    from pcipassd import modules  # noqa: PLC0415
    from pcipassd.inventory import iommu_active  # noqa: PLC0415
    from pcipassd.iommu import kernel_config  # noqa: PLC0415
    from pcipassd.model import STUB_DRIVERS  # noqa: PLC0415
    from pcipassd.plan import make_plan, predict  # noqa: PLC0415

    inventory, selection = ctx.selection(config, records=records)
    kconfig = kernel_config(ctx.host)
    unavailable = {d: m.message for d in STUB_DRIVERS
                   if (m := modules.missing(ctx.host, d, kconfig)) is not None}
    plan = predict(make_plan(selection, inventory, records), iommu_on=iommu_active(ctx.host),
                   iommu_policy=config.iommu, unavailable=unavailable)
    touched = {s.group for s in plan.steps if s.group}
    groups = survey_groups(ctx, inventory, records, frozenset(selection.chosen)) if touched else []
    return plan, [g for g in groups if g.group in touched]



def survey_groups(ctx: Context, inventory: Inventory, records: dict[str, Record],
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



def preflight(ctx: Context, inventory: Inventory, only: frozenset[str] | None = None
              ) -> Preflight:
    """Preflight (preflight.py) of the display and audio functions the configuration selects
    (`ctx.selected`, before the guard: the console's card is shown refused), or of those in
    `only` (list --verbose), each with its entry's target. Read-only verbs only: never apply."""
    from pcipassd.preflight import in_scope  # noqa: PLC0415
    from pcipassd.preflight import preflight as run  # noqa: PLC0415

    targets = ({bdf: s.target for bdf, s in ctx.selected.chosen.items()}
               if ctx.selected is not None else {})
    wanted = [(d, targets.get(d.bdf)) for d in inventory.devices.values()
              if in_scope(d) and d.bdf in (targets if only is None else only)]
    return run(ctx.host, wanted, ctx.judgment(inventory).critical)
