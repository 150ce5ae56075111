"""Issue 19 on a real kernel: the repository's Ansible role drives a guest as a fleet does.

One boot of a guest without pcipassd. The controller (ansible-core, here on the CI machine) reaches
the guest over SSH on a loopback port forward, as a non-root user with become (sudo), with
pipelining, and runs ``ansible/site.yml`` four times (tests/vm/ansible_run.py; without
gathering facts, which the role does not need):

1. first: installs the .deb, writes the config (one e1000e on vfio-pci), holds it: changed;
2. second: the same devices, another comment in the file: nothing changed;
3. check: ``--check --diff`` with a second device: the diff names it, the node does not move;
4. invalid: a slot that does not exist: the template's validation refuses it with pcipassd's
   FILE:LINE, the file and the node keep their devices.

Then the guest reports what an agent sees: the node document read by a user that is not root,
the KubeVirt and Proxmox snippets the README quotes, and the node labels: refreshed by
pcipassd-publish.timer's service while pcipassd holds, gone with the timer when it stops.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path

import pytest
from pkgbuild import build_deb

from .ansible_run import Run, scenario
from .conftest import out_root
from .harness import DEFAULT_TOPOLOGY, BootResult
from .image import BaseImage, build_image
from .remote import GUEST_SSH, USER, add_user, boot_with_controller, keypair

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
E1000E_A = DEFAULT_TOPOLOGY.bdf("e1000e-a")
E1000E_B = DEFAULT_TOPOLOGY.bdf("e1000e-b")
DEVICES = [{"address": E1000E_B, "name": "guest-nic", "driver": "vfio-pci"}]
EDITED = [*DEVICES, {"address": E1000E_A, "name": "second-nic", "driver": "vfio-pci"}]

SCRIPT = GUEST_SSH + rf"""
pci_inventory after
capture config cat /etc/pcipass.yaml
capture node runuser -u {USER} -- cat /run/pcipass/node.json
capture kubevirt runuser -u {USER} -- pcipassd status --kubevirt
capture proxmox runuser -u {USER} -- pcipassd status --proxmox-mapping
result active "$(systemctl is-active pcipassd.service)"
labels=/etc/kubernetes/node-feature-discovery/features.d/pcipassd
result timer "$(systemctl is-active pcipassd-publish.timer)"
capture labels cat "$labels"
sed -i '1s/.*/# +expiry-time=2000-01-01T00:00:00Z/' "$labels"  # as if a day had passed
systemctl start pcipassd-publish.service
result publish "$(systemctl show -p Result --value pcipassd-publish.service)"
capture labels.refreshed cat "$labels"
systemctl stop pcipassd.service
result stopped.timer "$(systemctl is-active pcipassd-publish.timer)"
result stopped.labels "$([ -e "$labels" ] && echo present || echo absent)"
pci_inventory stopped
"""


@pytest.fixture(scope="module")
def fleet(vm_base: BaseImage,
          tmp_path_factory: pytest.TempPathFactory) -> tuple[BootResult, dict[str, Run]]:
    work = tmp_path_factory.mktemp("fleet")
    key, public = keypair(work)
    image = build_image(None, SCRIPT, base=vm_base, install=lambda root: add_user(root, public),
                        workdir=work)
    deb = build_deb()
    try:
        booted, runs = boot_with_controller(
            image, topology=DEFAULT_TOPOLOGY, key=key, log_dir=out_root() / "fleet",
            controller=lambda port: scenario(port=port, user=USER, key=key,
                                             workdir=work / "controller", devices=DEVICES,
                                             edited=EDITED, package_file=deb,
                                             variables={"pcipassd_node_labels": True}))
        for name, run in runs.items():  # what each run printed, for a reader of the CI log
            (out_root() / "fleet" / f"ansible-{name}.out").write_text(run.stdout + run.stderr)
        return booted, runs
    finally:
        image.disk.unlink(missing_ok=True)


def explain(run: Run) -> str:
    return f"rc={run.rc} stats={run.stats}\n{run.stdout[-3000:]}\n{run.stderr[-2000:]}"


def test_the_first_run_installs_and_holds_the_device(
        fleet: tuple[BootResult, dict[str, Run]]) -> None:
    res, runs = fleet
    first = runs["first"]
    assert first.rc == 0, explain(first)
    assert first.changed("Install the .deb"), explain(first)
    assert first.changed("Plan the devices"), explain(first)
    assert res.driver(E1000E_B, "after") == "vfio-pci", res.where()
    assert res.driver(E1000E_A, "after") == "e1000e", res.where()
    assert res["active"] == "active", res.where()
    facts = first.facts()
    assert facts["pcipassd"]["converged"] is True, facts
    assert [d["device"] for d in facts["pcipassd"]["devices"]] == [E1000E_B], facts


def test_the_same_devices_again_change_nothing(
        fleet: tuple[BootResult, dict[str, Run]]) -> None:
    second = fleet[1]["second"]
    assert second.rc == 0, explain(second)
    assert second.stats["changed"] == 0, explain(second)


def test_check_mode_shows_the_edit_and_moves_nothing(
        fleet: tuple[BootResult, dict[str, Run]]) -> None:
    res, runs = fleet
    check = runs["check"]
    assert check.rc == 0, explain(check)
    plan = check.task("Plan the devices")
    assert plan["status"] == "changed", explain(check)
    diff = json.dumps(plan["result"]["diff"])
    assert E1000E_A in diff and "vfio-pci" in diff, diff
    # Nothing moved: the edited device is still on its own driver after every run.
    assert res.driver(E1000E_A, "after") == "e1000e", res.where()


def test_an_invalid_config_is_refused_with_file_and_line_and_the_node_keeps_its_devices(
        fleet: tuple[BootResult, dict[str, Run]]) -> None:
    res, runs = fleet
    invalid = runs["invalid"]
    assert invalid.rc != 0, explain(invalid)
    assert invalid.failed("Write /etc/pcipass.yaml"), explain(invalid)
    said = invalid.task("Write /etc/pcipass.yaml")["result"].get("stdout", "")
    # pcipassd's own line: the candidate file, the entry's line and column, the device
    assert re.search(r"^/\S+\.yaml:5:17: devices\[0\]\.address: 0000:00:20\.0: ", said,
                     re.MULTILINE), said
    assert E1000E_B in res["config"] and "0000:00:20.0" not in res["config"], res["config"]
    assert res.driver(E1000E_B, "after") == "vfio-pci", res.where()


def test_an_agent_reads_the_node_and_the_engine_snippets_without_root(
        fleet: tuple[BootResult, dict[str, Run]]) -> None:
    res, _ = fleet
    node = json.loads(res["node"])
    assert node["converged"] is True, node
    assert [d["device"] for d in node["devices"]] == [E1000E_B], node
    assert 'pciVendorSelector: "8086:10d3"' in res["kubevirt"], res["kubevirt"]
    assert 'resourceName: "pcipassd.io/8086-10d3"' in res["kubevirt"], res["kubevirt"]
    assert f"path={E1000E_B}" in res["proxmox"], res["proxmox"]
    for name in ("kubevirt", "proxmox", "node"):
        Path(out_root() / "fleet" / f"{name}.out").write_text(res[name] + "\n")
    for option, name in (("--kubevirt", "kubevirt"), ("--proxmox-mapping", "proxmox")):
        assert f"$ pcipassd status {option}\n{res[name]}\n```" in README, (option, res[name])


def test_the_readme_shows_the_check_diff_and_the_refusal_the_role_printed(
        fleet: tuple[BootResult, dict[str, Run]]) -> None:
    _, runs = fleet
    diff = runs["check"].task("Plan the devices")["result"]["diff"]
    shown = "".join(difflib.unified_diff(
        diff["before"].splitlines(keepends=True), diff["after"].splitlines(keepends=True),
        f"before: {diff['before_header']}", f"after: {diff['after_header']}"))
    assert f"--check --diff  # after adding {E1000E_A}\n{shown}```" in README, shown
    said = runs["invalid"].task("Write /etc/pcipass.yaml")["result"]["stdout"]
    refusal = said[said.index(".source.yaml:"):said.index("\n1 problem found")]
    assert refusal in README, refusal


def test_the_labels_stay_fresh_while_pcipassd_holds_and_go_with_it(
        fleet: tuple[BootResult, dict[str, Run]]) -> None:
    res, _ = fleet
    labels = res["labels"].splitlines()
    assert labels[1] == "pcipassd.ready=true", res["labels"]
    assert labels[3:] == ["pcipassd.vfio-pci.8086-10d3=1"], res["labels"]
    assert res["timer"] == "active", res.where()
    assert res["publish"] == "success", res.where()
    refreshed = res["labels.refreshed"].splitlines()
    assert refreshed[0] > "# +expiry-time=2026" and refreshed[1:] == labels[1:], refreshed
    assert res["stopped.timer"] == "inactive", res.where()
    assert res["stopped.labels"] == "absent", res.where()
    assert res.driver(E1000E_B, "stopped") == "e1000e", res.where()
