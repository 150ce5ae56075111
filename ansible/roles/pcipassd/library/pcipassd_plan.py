#!/usr/bin/python3
"""Ansible module: what would a reload of pcipassd do with this config? (pcipassd's role)

Runs on the target with its python3 (stdlib only). Writes the candidate main file into a fresh
root-only directory, runs `pcipassd plan --json --main CANDIDATE` (the real drop-ins come along),
and reports `changed` only when a device would move (bind or restore): a comment-only edit, a
renamed label or a reordered list is not a change. Changes nothing on the target, in check mode or
not: the file lands by the role's `template` task (with `validate:`), the reload by its handler.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from typing import Any

DOCUMENTATION = r"""
module: pcipassd_plan
short_description: Plan a pcipassd config; changed only when devices would move
options:
  content:
    description: The candidate /etc/pcipass.yaml, as text.
    type: str
    required: true
  command:
    description: The pcipassd command on the target.
    type: str
    default: pcipassd
"""

#: Actions that move a device (README: Words). `unchanged` moves nothing; `keep` and `fail` leave
#: the device where it is (their note says why), so they are reported, never counted as changes.
MOVES = ("bind", "restore")


def _line(step: dict[str, Any], driver: str | None) -> str:
    device = step.get("device") or step.get("bdf") or "?"
    label = f"  # {step['name']}" if step.get("name") else ""
    return f"{device} {step.get('id') or '?'} {driver or '(no driver)'}{label}\n"


def decide(plan: dict[str, Any]) -> dict[str, Any]:
    """The role's whole judgment, from `pcipassd plan --json`: `changed` (would a reload move a
    device?), the Ansible `diff` (one line per device, before and after, drivers only), the moves
    (address -> action), and the steps left as they are with their notes (`keep`, `fail`)."""
    steps = sorted(plan.get("steps") or [], key=lambda s: str(s.get("device") or s.get("bdf")))
    before, after, moves, stuck = [], [], {}, []
    for step in steps:
        action = str(step.get("action"))
        device = str(step.get("device") or step.get("bdf"))
        now = step.get("driver")
        if action == "bind":
            then = step.get("target")
        elif action == "restore":
            then = step.get("original")
        else:
            then = now
        before.append(_line(step, now))
        after.append(_line(step, then))
        if action in MOVES:
            moves[device] = action
        elif action != "unchanged":
            stuck.append(f"{device}: {action}: {step.get('note') or ''}".rstrip(": "))
    return {
        "changed": bool(moves),
        "moves": moves,
        "stuck": stuck,
        "diff": {"before_header": "devices now", "after_header": "devices after reload",
                 "before": "".join(before), "after": "".join(after)},
    }


def problems_of(plan: dict[str, Any]) -> list[str]:
    """The error and the config's problems as pcipassd words them: FILE:LINE:COL: path: message."""
    out = []
    error = plan.get("error")
    if isinstance(error, dict) and error.get("message"):
        out.append(str(error["message"]))
    for p in plan.get("problems") or []:
        if not isinstance(p, dict):
            out.append(str(p))
            continue
        where = ":".join(str(p[k]) for k in ("file", "line", "column") if p.get(k) is not None)
        text = ": ".join(str(x) for x in (where, p.get("path"), p.get("message")) if x)
        out.append(text + (f" ({p['hint']})" if p.get("hint") else ""))
    return out


def run_plan(command: str, content: str) -> tuple[int, dict[str, Any], str]:
    """Plan `content` as the main file, from a directory only root (the become user) can write."""
    tmp = tempfile.mkdtemp(prefix="pcipassd-plan-")
    try:
        path = os.path.join(tmp, "pcipass.yaml")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(content)
        r = subprocess.run([command, "plan", "--json", "--main", path], capture_output=True,
                           text=True, check=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    try:
        data = json.loads(r.stdout)
    except ValueError:
        data = {}
    return r.returncode, data if isinstance(data, dict) else {}, r.stderr


def main() -> None:  # pragma: no cover - run by Ansible on the target
    # here, not at the top: the pure functions above are imported by the tests without Ansible
    from ansible.module_utils.basic import AnsibleModule  # noqa: PLC0415

    module = AnsibleModule(argument_spec={"content": {"type": "str", "required": True},
                                          "command": {"type": "str", "default": "pcipassd"}},
                           supports_check_mode=True)
    command = module.get_bin_path(module.params["command"], required=True)
    rc, plan, err = run_plan(command, module.params["content"])
    if not plan or rc == 2 or plan.get("error"):
        module.fail_json(msg="pcipassd refuses this config: " + "; ".join(
            problems_of(plan) or [err.strip() or f"plan exited {rc}"]), rc=rc, plan=plan)
    result = decide(plan)
    warnings = problems_of(plan) + result["stuck"]
    for w in warnings:
        module.warn(w)
    module.exit_json(changed=result["changed"], diff=result["diff"], moves=result["moves"],
                     rc=rc, plan=plan)


if __name__ == "__main__":
    main()
