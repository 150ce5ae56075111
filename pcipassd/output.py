"""The one output model: aligned tables for people, one JSON object (the envelope) for
programs, problems and warnings as a message with a hint. Every verb prints through these."""

from __future__ import annotations

from pcipassd.exits import EXIT_OK
from pcipassd.log import Logger, get_logger

TYPE_CHECKING = False  # as typing's, without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from pcipassd.errors import Problem
    from pcipassd.plan import Step
    from pcipassd.preflight import Finding, Preflight
    from pcipassd.survey import Group


# Every `--json` prints one object on every exit: {"format": 4, ...}. Any change to a key bumps
# it. Version 2: the envelope (verb, ok, exit, error, problems, warnings), findings with
# message/hint, and one shape of `groups` in list, plan and status. Version 3: one vocabulary
# (README: Words): a step's `target` is only the stub driver its entry asks for (null for a
# restore) and its new `original` is the original driver a restore gives it back to; status's
# `held` is `stage`, and its `status` word is gone (`action` says it). Version 4: status is
# the node document (node.py, node.schema.json): `last_error`, `actions`, `reboot_required`,
# and each device's IDs, class, model, NUMA node, group members, `device_warnings`; a device's
# `original` is also the original driver of a held device (it was only a restore's).
# `preflight` (check, list --verbose, status; null where not filled) is a key added in version
# 4, which no existing key changed for.
JSON_FORMAT = 4
# Each verb's own keys, as they are when it could not run (an error): the same shape always.
JSON_KEYS: dict[str, dict[str, Any]] = {
    "validate": {"valid": None},
    "check": {"passthrough_possible": None, "findings": [], "preflight": None},
    "plan": {"steps": [], "groups": []},
    "status": {"converged": None, "last_error": None, "actions": [], "reboot_required": None,
               "devices": [], "sriov": [], "groups": [], "preflight": None},
    "list": {"names": None, "groups": [], "preflight": None},
}


def log() -> Logger:
    """The `pcipassd` logger."""
    return get_logger()


def envelope(verb: str | None, rc: int, out: dict[str, Any],
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



def print_json(data: dict[str, Any]) -> None:
    import json  # noqa: PLC0415

    print(json.dumps(data, indent=2))



def message(message: str, hint: str = "") -> dict[str, str]:
    """A finding or a warning in JSON: the same keys as a problem's."""
    return {"message": message, "hint": hint}



def hint_text(hint: str) -> str:
    """A hint of several lines (a config to paste): the lines after the first indented."""
    return hint.replace("\n", "\n    ")



def problem_lines(problems: Sequence[Problem]) -> list[str]:
    out = []
    for p in problems:
        out.append(str(p))
        if p.hint:
            out.append(f"    hint: {hint_text(p.hint)}")
    return out



def log_problems(problems: Sequence[Problem], kind: str | None = None) -> None:
    from pcipassd.log import event  # noqa: PLC0415

    fields = event(kind) if kind else {}
    for p in problems:
        log().error("%s%s", p, f" (hint: {hint_text(p.hint)})" if p.hint else "",
                     extra={"journal": fields})



def table(rows: list[list[str]], header: list[str] | None, fit: int = 0) -> list[str]:
    """Aligned columns; with `fit`, the last column is cut short (…) to keep lines that wide."""
    every = [header, *rows] if header else rows
    widths = [max(len(r[i]) for r in every) for i in range(len(every[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
             for r in every]
    return [line if not fit or len(line) <= fit else line[: fit - 1] + "…" for line in lines]


# -- verbs -------------------------------------------------------------------------------



def groups_text(groups: list[Group]) -> list[str]:
    """Each group's members, one a line, with its name as lspci gives it, within 100 columns."""
    if not groups:
        return []
    rows = [[f"{g.group}:" if i == 0 else "", r.device.bdf, f"[{r.device.id}]",
             "(bridge)" if r.device.is_bridge else r.device.driver_label, r.name]
            for g in groups for i, r in enumerate(g.rows)]
    return ["", "IOMMU groups:", *(f"  {line}" for line in table(rows, None, fit=98))]



def groups_json(groups: list[Group]) -> list[dict[str, Any]]:
    """`groups` in every verb's JSON: each group with its verdict and its devices."""
    return [{"group": g.group, "passable": g.passable, "verdict": g.verdict, "devices": [
        {"device": r.device.bdf, "id": str(r.device.id), "class": f"{r.device.cls:06x}",
         "class_name": r.cls, "name": r.name, "lspci": r.lspci, "driver": r.device.driver,
         "bridge": r.device.is_bridge, "forced": r.forced or None, "notes": list(r.notes)}
        for r in g.rows]}
        for g in groups]



def step_dict(step: Step) -> dict[str, Any]:
    return {"device": step.bdf, "id": step.id, "action": str(step.action),
            "driver": step.driver, "target": step.target, "original": step.original,
            "group": step.group,
            "entry": step.entry, "selects": step.selects, "name": step.name, "via": step.via,
            "note": step.reason, "forced": step.forced or None,
            "reset_method": step.reset_method, "reset_method_now": step.reset_now,
            "reset_method_original": step.reset_original, "on_stop": step.on_stop}


# -- preflight (check, list --verbose, status --json) ------------------------------------------

_CLASS_WORDS = {0x0300: "VGA", 0x0301: "XGA", 0x0302: "3D", 0x0380: "display", 0x0403: "audio"}


def _finding_lines(f: Finding, indent: str) -> list[str]:
    out = [f"{indent}{f.level:<7} {f.topic}: {f.message}"]
    if f.hint:
        out.append(f"{indent}{'':<7} fix: {f.hint}")
    return out


def preflight_text(p: Preflight) -> list[str]:
    """Each display and audio function's findings under its address; empty when there is
    none."""
    if not p.reports:
        return []
    out = ["", "Preflight (display and audio functions):"]
    for f in p.findings:
        out.extend(_finding_lines(f, "  "))
    for r in p.reports:
        d = r.device
        word = _CLASS_WORDS.get(d.cls >> 8, f"class {d.cls >> 8:04x}")
        out.append(f"  {d.bdf} [{d.id}] {word}, on {d.driver_label}, target "
                   f"{r.target or '(not configured)'}")
        for f in r.findings:
            out.extend(_finding_lines(f, "    "))
    return out


def _finding_dict(f: Finding) -> dict[str, str]:
    return {"topic": f.topic, "level": f.level, **message(f.message, f.hint)}


def preflight_json(p: Preflight) -> dict[str, Any]:
    """`preflight` in check's, list's (--verbose) and status's JSON."""
    from pcipassd.resetbugs import SOURCE  # noqa: PLC0415

    return {
        "kernel": p.kernel, "lockdown": p.lockdown, "vendor_reset_loaded": p.vendor_reset,
        "vfio_pci": p.vfio_pci, "initramfs": p.image, "early_hold_in_initramfs": p.early_hold,
        "findings": [_finding_dict(f) for f in p.findings],
        "devices": [{
            "device": r.device.bdf, "id": str(r.device.id), "class": f"{r.device.cls:06x}",
            "target": r.target,
            "reset": {"methods": r.reset.methods, "flr": r.reset.flr,
                      "d3cold_allowed": r.reset.d3cold_allowed, "reset_bug": r.reset.bug,
                      "reset_bug_source": SOURCE if r.reset.bug else None},
            "framebuffer": None if r.claims is None else [
                {"name": c.name, "bar": c.bar, "start": f"{c.start:#x}", "end": f"{c.end:#x}"}
                for c in r.claims],
            "host_drivers": list(r.host_drivers),
            "host_drivers_in_initramfs": None if r.in_image is None else list(r.in_image),
            "findings": [_finding_dict(f) for f in r.findings]}
            for r in p.reports],
    }
