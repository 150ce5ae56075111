"""The Ansible role's judgment (ansible/roles/pcipassd/library), on the simulated kernel: its
`changed` and diff come from the real `plan --json` of pcipassd, run on the simulated host.

The module files run on the target under Ansible; their pure functions are imported here from the
file, without Ansible (the syntax check of the role, which needs ansible-core, is in
tests/test_ansible_syntax.py)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

from machine import Machine
from simkernel import NIC_A, NIC_B

LIBRARY = Path(__file__).resolve().parent.parent / "ansible/roles/pcipassd/library"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, LIBRARY / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


plan_module = _load("pcipassd_plan")
facts_module = _load("pcipassd_facts")


def _config(m: Machine, *entries: str, comment: str = "Managed by Ansible") -> None:
    # what the role's template writes: a comment, version, and one JSON flow mapping per entry
    lines = [f"# {comment}", "version: 1", "devices:", *(f"  - {e}" for e in entries)]
    m.config("\n".join(lines) + "\n")


def _decide(m: Machine) -> dict[str, Any]:
    r = m.run("plan", "--json")
    assert r.rc == 0, r.out + r.err
    result: dict[str, Any] = plan_module.decide(json.loads(r.out))
    return result


A = f'{{"address": "{NIC_A}", "name": "guest-nic"}}'
B = f'{{"address": "{NIC_B}", "name": "guest-nic"}}'


def test_first_run_binds_so_it_changes(m: Machine) -> None:
    _config(m, A)
    d = _decide(m)
    assert d["changed"] is True
    assert d["moves"] == {NIC_A: "bind"}
    assert d["diff"]["before"] == f"{NIC_A} 8086:10d3 e1000e  # guest-nic\n"
    assert d["diff"]["after"] == f"{NIC_A} 8086:10d3 pci-stub  # guest-nic\n"


def test_converged_host_changes_nothing(m: Machine) -> None:
    _config(m, A)
    assert m.run("apply").rc == 0
    d = _decide(m)
    assert d["changed"] is False
    assert d["moves"] == {}
    assert d["diff"]["before"] == d["diff"]["after"] == f"{NIC_A} 8086:10d3 pci-stub  # guest-nic\n"


def test_comment_only_edit_changes_nothing(m: Machine) -> None:
    _config(m, A)
    assert m.run("apply").rc == 0
    _config(m, A, comment="Managed by Ansible: now with another comment")
    d = _decide(m)
    assert d["changed"] is False
    assert d["diff"]["before"] == d["diff"]["after"]


def test_an_edit_moving_a_device_shows_in_the_diff(m: Machine) -> None:
    _config(m, A)
    assert m.run("apply").rc == 0
    _config(m, B)  # the entry now names the other NIC: NIC_A goes back, NIC_B is held
    d = _decide(m)
    assert d["changed"] is True
    assert d["moves"] == {NIC_A: "restore", NIC_B: "bind"}
    assert d["diff"]["before"].splitlines() == [f"{NIC_A} 8086:10d3 pci-stub",
                                                f"{NIC_B} 8086:10d3 e1000e  # guest-nic"]
    assert d["diff"]["after"].splitlines() == [f"{NIC_A} 8086:10d3 e1000e",
                                               f"{NIC_B} 8086:10d3 pci-stub  # guest-nic"]


def test_a_refused_entry_is_no_change_but_is_said(m: Machine) -> None:
    _config(m, f'{{"address": "{NIC_A}", "expect": "1234:5678"}}')
    r = m.run("plan", "--json")
    plan = json.loads(r.out)
    d = plan_module.decide(plan)
    assert d["changed"] is False
    assert any("1234:5678" in p for p in plan_module.problems_of(plan)), plan["problems"]


def test_problems_carry_file_and_line(m: Machine) -> None:
    _config(m, '{"address": "0000:00:20.0"}')
    r = m.run("plan", "--json")
    assert r.rc == 2
    problems = plan_module.problems_of(json.loads(r.out))
    assert problems == [
        "invalid configuration: nothing was changed",
        "/etc/pcipass.yaml:4:17: devices[0].address: 0000:00:20.0: slot 20 is out of range (00-1f)"
        ' (write it like "0000:02:00.0", quoted)']


def test_facts_say_what_the_node_needs(m: Machine) -> None:
    _config(m, A)
    doc = json.loads(m.run("status", "--json").out)
    needs = facts_module.needs(doc)
    assert needs["converged"] is False
    assert needs["reboot_required"] is False
    assert isinstance(needs["actions"], list)
    needs = facts_module.needs({"converged": True, "reboot_required": True,
                                "actions": [{"kind": "reboot", "message": "m", "command": "c"}]})
    assert needs == {"converged": True, "reboot_required": True,
                     "actions": [{"kind": "reboot", "message": "m", "command": "c"}]}


def test_the_role_validates_before_the_file_lands_and_reloads_never_restarts() -> None:
    import yaml  # noqa: PLC0415

    role = LIBRARY.parent
    tasks = {t["name"]: t for t in yaml.safe_load((role / "tasks/main.yml").read_text())}
    write = tasks["Write /etc/pcipass.yaml"]["ansible.builtin.template"]
    assert write["validate"] == "pcipassd validate --main %s"
    assert (write["dest"], write["owner"], write["mode"]) == ("/etc/pcipass.yaml", "root", "0644")
    assert tasks["Write /etc/pcipass.yaml"]["changed_when"] is False  # the plan says
    assert tasks["Plan the devices"]["notify"] == "Reload pcipassd"
    handlers = yaml.safe_load((role / "handlers/main.yml").read_text())
    assert [h["ansible.builtin.systemd_service"]["state"] for h in handlers] == ["reloaded"]
    # it never reboots: no reboot module, no command at all (only modules that say what they do)
    text = (role / "tasks/main.yml").read_text()
    assert not re.search(r"^\s*(ansible\.builtin\.)?(reboot|command|shell|raw):", text, re.M)
