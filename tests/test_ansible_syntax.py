"""The Ansible role with ansible-core (the test extra): the example playbook's syntax, and the
role's modules run by ansible-playbook itself (AnsiballZ, check mode, --diff, facts) over a local
connection, with pcipassd on the simulated host behind them. No become, nothing outside tmp_path.

The VM test runs the whole role over SSH with tests/vm/ansible_run.py; its parts are tested here.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

from machine import Machine
from simkernel import NIC_A, NIC_B
from vm.ansible_run import (
    ANSIBLE_DIR,
    GROUP,
    HOST,
    ansible_playbook,
    environment,
    parse,
    run_playbook,
    write_inventory,
)

ROLE = ANSIBLE_DIR / "roles/pcipassd"
TEMPLATE = ROLE / "templates/pcipass.yaml.j2"


def test_ansible_core_is_installed() -> None:
    # not a skip: without ansible-core the role is untested (by name: the repository's ansible/
    # directory would be a namespace package to a static checker)
    release = importlib.import_module("ansible.release")
    assert release.__file__ and "site-packages" in release.__file__, release.__file__
    assert release.__version__


def test_example_playbook_passes_the_syntax_check(tmp_path: Path) -> None:
    r = subprocess.run([ansible_playbook(), "--syntax-check", "-i", "inventory.example.ini",
                        "site.yml"], cwd=ANSIBLE_DIR, env=environment(tmp_path),
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_inventory_is_a_non_root_user_with_become_and_pipelining(tmp_path: Path) -> None:
    path = write_inventory(tmp_path, port=2222, user="deploy", key=Path("/k/id"))
    text = path.read_text()
    assert f"[{GROUP}]\n{HOST} ansible_host=127.0.0.1 ansible_port=2222 ansible_user=deploy " \
           "ansible_ssh_private_key_file=/k/id\n" in text
    for line in ("ansible_become=true", "ansible_ssh_pipelining=true",
                 "ansible_become_method=sudo"):
        assert line in text.splitlines()
    assert "ansible_become_user" not in text  # become root; the SSH user is the non-root one


def test_parse_takes_the_callbacks_object() -> None:
    out = "[WARNING]: something\n" + json.dumps({
        "tasks": [{"task": "t", "host": HOST, "status": "changed", "result": {"changed": True}}],
        "stats": {HOST: {"ok": 1, "changed": 1, "failures": 0}}})
    run = parse(0, out, "")
    assert run.changed("t") and not run.failed("t")
    assert run.stats == {"ok": 1, "changed": 1, "failures": 0}


def _fake_pcipassd(tmp_path: Path, root: Path) -> Path:
    """pcipassd on the simulated host, with `plan --main FILE` as the real one has it: FILE
    stands for /etc/pcipass.yaml (the simulated host has no drop-ins)."""
    fake = tmp_path / "pcipassd"
    fake.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import shutil, subprocess, sys
        args = sys.argv[1:]
        if "--main" in args:
            i = args.index("--main")
            shutil.copyfile(args[i + 1], "{root}/etc/pcipass.yaml")
            del args[i:i + 2]
        sys.exit(subprocess.run([sys.executable, "-m", "pcipassd", "--root", "{root}", *args])
                 .returncode)
        """))
    fake.chmod(0o755)
    return fake


def test_the_modules_under_ansible_playbook(m: Machine, tmp_path: Path) -> None:
    work = tmp_path / "controller"
    work.mkdir()
    (m.root / "etc").mkdir(exist_ok=True)
    fake = _fake_pcipassd(tmp_path, m.root)
    inventory = work / "inventory.ini"
    inventory.write_text(f"[{GROUP}]\n{HOST} ansible_connection=local "
                         f"ansible_python_interpreter={sys.executable}\n")
    playbook = work / "play.yml"
    playbook.write_text(textwrap.dedent(f"""\
        - hosts: {GROUP}
          gather_facts: false
          vars:
            pcipassd_comment: "{{{{ comment | default('Managed by Ansible') }}}}"
            pcipassd_driver: ""
            pcipassd_iommu: ""
            pcipassd_group: ""
            pcipassd_node_labels: false
          tasks:
            - name: Plan the devices
              pcipassd_plan:
                content: "{{{{ lookup('ansible.builtin.template', '{TEMPLATE}') }}}}"
                command: {fake}
            - name: Read the node document
              pcipassd_facts:
                command: {fake}
        """))
    env = {"ANSIBLE_LIBRARY": str(ROLE / "library")}

    def run(devices: list[dict[str, str]], **kw: object) -> dict[str, object]:
        r = run_playbook(work, inventory, {"pcipassd_devices": devices, **kw},
                         playbook=playbook, env=env, diff=True)
        assert r.rc == 0, r.stdout + r.stderr
        result: dict[str, object] = r.task("Plan the devices")["result"]
        result["status"] = r.task("Plan the devices")["status"]
        result["facts"] = r.facts()
        return result

    a = [{"address": NIC_A, "name": "guest-nic"}]
    first = run(a)
    assert first["status"] == "changed"
    assert first["moves"] == {NIC_A: "bind"}
    assert first["diff"] == {"before_header": "devices now", "after_header": "devices after reload",
                             "before": f"{NIC_A} 8086:10d3 e1000e  # guest-nic\n",
                             "after": f"{NIC_A} 8086:10d3 pci-stub  # guest-nic\n"}
    facts = first["facts"]
    assert isinstance(facts, dict)
    assert facts["pcipassd"]["converged"] is False
    assert facts["reboot_required"] is False

    assert m.run("apply").rc == 0  # what the role's reload does on a real node
    assert run(a)["status"] == "ok"
    assert run(a, comment="another comment")["status"] == "ok"
    moved = run([{"address": NIC_B, "name": "guest-nic"}])
    assert moved["status"] == "changed"
    assert moved["moves"] == {NIC_A: "restore", NIC_B: "bind"}
    assert m.driver(NIC_A) == "pci-stub"  # planning moved nothing


def test_an_invalid_config_fails_the_plan_with_file_and_line(m: Machine, tmp_path: Path) -> None:
    work = tmp_path / "controller"
    work.mkdir()
    (m.root / "etc").mkdir(exist_ok=True)
    fake = _fake_pcipassd(tmp_path, m.root)
    inventory = work / "inventory.ini"
    inventory.write_text(f"[{GROUP}]\n{HOST} ansible_connection=local "
                         f"ansible_python_interpreter={sys.executable}\n")
    playbook = work / "play.yml"
    playbook.write_text(textwrap.dedent(f"""\
        - hosts: {GROUP}
          gather_facts: false
          tasks:
            - name: Plan the devices
              pcipassd_plan:
                content: "version: 1\\ndevices:\\n  - address: '0000:00:20.0'\\n"
                command: {fake}
        """))
    r = run_playbook(work, inventory, {}, playbook=playbook, check=True,
                     env={"ANSIBLE_LIBRARY": str(ROLE / "library")})
    assert r.rc == 2
    assert r.failed("Plan the devices")
    msg = r.task("Plan the devices")["result"]["msg"]
    line = "/etc/pcipass.yaml:3:14: devices[0].address: 0000:00:20.0: slot 20 is out of range"
    assert line in msg, msg
