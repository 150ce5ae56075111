"""Run the repository's Ansible role (ansible/) against a host over SSH, and parse the results.

For the VM test: the controller runs here (ansible-core from the test extra), the guest is the
target over a loopback port forward, as a non-root SSH user with become (sudo) and pipelining.

    from vm.ansible_run import scenario
    runs = scenario(port=2222, user="deploy", key=Path(".../id_ed25519"), workdir=tmp_path,
                    devices=[{"address": "0000:00:03.0", "name": "guest-nic"}],
                    edited=[{"address": "0000:00:04.0", "name": "guest-nic"}],
                    package_file=Path("dist/pcipassd_0.1.0-1_all.deb"))
    runs["first"].changed("Plan the devices")   # True: the devices are held
    runs["second"].stats["changed"]             # 0
    runs["check"].task("Plan the devices")["result"]["diff"]  # before/after, per device
    runs["invalid"].failed("Write /etc/pcipass.yaml")          # True ("failed to validate"):
    runs["invalid"].task("Write /etc/pcipass.yaml")["result"]["stdout"]  # pcipassd's FILE:LINE

Nothing here needs a VM: tests/test_ansible_syntax.py runs its parts against a local connection.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent.parent
ANSIBLE_DIR = REPO / "ansible"
PLAYBOOK = ANSIBLE_DIR / "site.yml"
CALLBACKS = Path(__file__).resolve().parent / "ansible_callback"
GROUP = "hypervisors"  # the example playbook's hosts
HOST = "target"  # the inventory name of the one host


@dataclass
class Run:
    """One ansible-playbook run: exit status, each task's result, and the recap of the host."""

    rc: int
    tasks: list[dict[str, Any]]
    stats: dict[str, int]
    stdout: str = field(repr=False)
    stderr: str = field(repr=False)

    def task(self, name: str) -> dict[str, Any]:
        """The last result of the task called `name`, in the play or in a role ("ROLE : name");
        KeyError if it did not run."""
        for t in reversed(self.tasks):
            if t["task"] == name or t["task"].endswith(f" : {name}"):
                found: dict[str, Any] = t
                return found
        raise KeyError(f"no task {name!r} ran; tasks: {[t['task'] for t in self.tasks]}")

    def changed(self, name: str) -> bool:
        return bool(self.task(name)["status"] == "changed")

    def failed(self, name: str) -> bool:
        return bool(self.task(name)["status"] == "failed")

    def facts(self) -> dict[str, Any]:
        """What the role exposes: the node document, the actions, reboot_required."""
        r = self.task("Read the node document")["result"]
        return {"pcipassd": r.get("ansible_facts", {}).get("pcipassd"),
                "actions": r.get("actions"), "reboot_required": r.get("reboot_required")}


def parse(rc: int, stdout: str, stderr: str) -> Run:
    """The callback's JSON object is the last line that parses; anything before it (warnings the
    display printed) is kept in stdout."""
    for line in reversed(stdout.splitlines()):
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict) and "tasks" in data:
            stats = data.get("stats", {})
            host_stats = next(iter(stats.values()), {}) if len(stats) == 1 else stats
            return Run(rc, data["tasks"], host_stats, stdout, stderr)
    raise ValueError(f"ansible-playbook (exit {rc}) printed no result:\n{stdout}\n{stderr}")


def write_inventory(workdir: Path, *, port: int, user: str, key: Path,
                    python: str = "/usr/bin/python3", host: str = "127.0.0.1") -> Path:
    """An inventory of one host: `user` over SSH on `host`:`port` with `key`, become (sudo) to
    root, pipelining. The guest's host key is new at every boot: not checked, not remembered."""
    path = workdir / "inventory.ini"
    ssh_args = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o IdentitiesOnly=yes"
    path.write_text(
        f"[{GROUP}]\n"
        f"{HOST} ansible_host={host} ansible_port={port} ansible_user={user} "
        f"ansible_ssh_private_key_file={key}\n\n"
        f"[{GROUP}:vars]\n"
        "ansible_connection=ssh\n"
        "ansible_become=true\n"
        "ansible_become_method=sudo\n"
        "ansible_ssh_pipelining=true\n"
        f"ansible_python_interpreter={python}\n"
        f"ansible_ssh_common_args='{ssh_args}'\n")
    return path


def ansible_playbook() -> str:
    """ansible-playbook next to this Python (the test venv), else on PATH."""
    here = Path(sys.executable).parent / "ansible-playbook"
    found = str(here) if here.exists() else shutil.which("ansible-playbook")
    assert found, "ansible-playbook missing: pip install -e '.[test]' (ansible-core)"
    return found


def environment(workdir: Path) -> dict[str, str]:
    """The controller's settings: the repository's ansible.cfg and roles, the JSON callback, and
    every Ansible file under `workdir` (nothing in ~/.ansible)."""
    env = dict(os.environ)
    env.update({
        "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(ANSIBLE_DIR / "roles"),
        "ANSIBLE_CALLBACK_PLUGINS": str(CALLBACKS),
        "ANSIBLE_STDOUT_CALLBACK": "pcipassd_json",
        "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
        "ANSIBLE_HOME": str(workdir / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(workdir / "ansible-tmp"),
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
    })
    return env


def run_playbook(workdir: Path, inventory: Path, variables: Mapping[str, Any], *,
                 playbook: Path = PLAYBOOK, check: bool = False, diff: bool = False,
                 extra: Sequence[str] = (), env: Mapping[str, str] | None = None,
                 timeout: float = 900) -> Run:
    """Run `playbook` with `variables` (as -e @file: JSON, types kept) and parse the result."""
    workdir.mkdir(parents=True, exist_ok=True)
    varfile = workdir / f"vars-{len(list(workdir.glob('vars-*.json')))}.json"
    varfile.write_text(json.dumps(dict(variables)))
    argv = [ansible_playbook(), "-i", str(inventory), str(playbook), "-e", f"@{varfile}",
            *(["--check"] if check else []), *(["--diff"] if diff else []), *extra]
    r = subprocess.run(argv, capture_output=True, text=True,
                       env={**environment(workdir), **(env or {})},
                       cwd=workdir, timeout=timeout, check=False)
    return parse(r.returncode, r.stdout, r.stderr)


#: The role needs no facts but its own: without the setup module each run in a TCG guest is
#: about 10 s shorter (site.yml gathers them, as playbooks do by default).
NO_FACTS = {"ANSIBLE_GATHERING": "explicit"}

#: An entry pcipassd refuses with FILE:LINE (slot 0x20 does not exist).
INVALID_DEVICES = ({"address": "0000:00:20.0", "name": "no-such-slot"},)


def scenario(*, port: int, user: str, key: Path, workdir: Path,
             devices: Sequence[Mapping[str, Any]], edited: Sequence[Mapping[str, Any]],
             package_file: Path | None = None,
             variables: Mapping[str, Any] | None = None) -> dict[str, Run]:
    """Issue 19's four runs, in order, on one booted target:

    - "first": installs (from `package_file` if given), writes `devices`, holds them: changed;
    - "second": the same devices, another comment in the file: nothing changed (the file
      differs, no device moves);
    - "check": `--check --diff` with `edited`: the plan's diff, and nothing changed on the node;
    - "invalid": an entry pcipassd refuses: the template's validation fails (its msg is
      Ansible's "failed to validate", its stdout pcipassd's FILE:LINE:COL lines), the file and
      the node keep their devices (the VM test reads them on the guest).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    inventory = write_inventory(workdir, port=port, user=user, key=key)
    base: dict[str, Any] = dict(variables or {})
    if package_file is not None:
        base["pcipassd_package_file"] = str(Path(package_file).resolve())
    else:
        base.setdefault("pcipassd_install", False)

    def play(variables: Mapping[str, Any], **options: Any) -> Run:
        return run_playbook(workdir, inventory, variables, env=NO_FACTS, **options)

    runs = {"first": play({**base, "pcipassd_devices": devices})}
    base["pcipassd_install"] = False  # installed: the later runs change devices only
    runs["second"] = play({
        **base, "pcipassd_devices": devices, "pcipassd_comment": "Another comment, same devices"})
    runs["check"] = play({**base, "pcipassd_devices": edited}, check=True, diff=True)
    runs["invalid"] = play({**base, "pcipassd_devices": list(INVALID_DEVICES)})
    return runs
