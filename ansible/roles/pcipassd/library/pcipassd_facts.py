#!/usr/bin/python3
"""Ansible module: pcipassd's node document (`pcipassd status --json`) as facts. (pcipassd's role)

Runs on the target with its python3 (stdlib only) and changes nothing. Returns the document as
`ansible_facts.pcipassd`, and what the node needs: `actions` (each {kind, message, command}) and
`reboot_required`. It never acts on them: rebooting is the playbook's decision.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

DOCUMENTATION = r"""
module: pcipassd_facts
short_description: pcipassd's node document as facts; changes nothing
options:
  command:
    description: The pcipassd command on the target.
    type: str
    default: pcipassd
"""


def needs(doc: dict[str, Any]) -> dict[str, Any]:
    """What the node needs, from its document: the actions (as pcipassd words them, each with its
    command) and whether a reboot alone would fix something. An older pcipassd, whose document has
    neither key, needs nothing it can say."""
    actions = doc.get("actions")
    return {"actions": actions if isinstance(actions, list) else [],
            "reboot_required": doc.get("reboot_required") is True,
            "converged": doc.get("converged") is True}


def main() -> None:  # pragma: no cover - run by Ansible on the target
    # here, not at the top: the pure functions above are imported by the tests without Ansible
    from ansible.module_utils.basic import AnsibleModule  # noqa: PLC0415

    module = AnsibleModule(argument_spec={"command": {"type": "str", "default": "pcipassd"}},
                           supports_check_mode=True)
    command = module.get_bin_path(module.params["command"], required=True)
    # status exits 1 when the node has not converged: the document is still whole
    r = subprocess.run([command, "status", "--json"], capture_output=True, text=True,
                       check=False)
    try:
        doc = json.loads(r.stdout)
    except ValueError:
        module.fail_json(msg=f"pcipassd status --json printed no document (exit {r.returncode})",
                         stderr=r.stderr)
    if not isinstance(doc, dict):
        module.fail_json(msg="pcipassd status --json printed no object")
    module.exit_json(changed=False, ansible_facts={"pcipassd": doc}, **needs(doc))


if __name__ == "__main__":
    main()
