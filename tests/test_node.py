"""The node document (pcipassd/node.py): what `status --json` prints and what every apply,
reload and restore writes to /run/pcipass/node.json for agents, checked against the schema
that ships with the package; its `reboot_required` rule; the Node Feature Discovery labels."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from machine import Machine
from simkernel import NIC_A, NIC_B, SimKernel

from pcipassd import node

SCHEMA = json.loads((Path(node.__file__).with_name("node.schema.json")).read_text())
NODE = "run/pcipass/node.json"
FEATURES = "etc/kubernetes/node-feature-discovery/features.d/pcipassd"


def status(m: Machine) -> tuple[int, dict[str, Any]]:
    r = m.run("status", "--json")
    data: dict[str, Any] = json.loads(r.out)
    jsonschema.validate(data, SCHEMA)
    return r.rc, data


def written(m: Machine) -> dict[str, Any]:
    path = m.root / NODE
    assert path.stat().st_mode & 0o777 == 0o644
    data: dict[str, Any] = json.loads(path.read_text())
    jsonschema.validate(data, SCHEMA)
    return data


def kinds(data: dict[str, Any]) -> list[str]:
    return [a["kind"] for a in data["actions"]]


def test_a_converged_node(cold: Machine) -> None:
    cold.with_guest_nic()
    assert cold.run("apply").rc == 0  # held from no driver: nothing to reboot for
    rc, data = status(cold)
    assert rc == 0
    assert (data["format"], data["converged"], data["last_error"]) == (4, True, None)
    assert (data["actions"], data["reboot_required"]) == ([], False)
    [dev] = data["devices"]
    assert dev["device"] == NIC_A and dev["driver"] == "pci-stub" == dev["target"]
    assert (dev["vendor_id"], dev["device_id"]) == ("8086", "10d3")
    assert (dev["subsystem_vendor_id"], dev["subsystem_device_id"]) == ("8086", "10d3")
    assert dev["class"] == "020000" and dev["numa_node"] is None
    assert dev["group"] == "2" and dev["group_members"] == [NIC_A]
    assert (dev["stage"], dev["forced"], dev["name"]) == ("late", None, "guest-nic")
    assert dev["model"], "status names it from the name database"
    assert dev["in_use_by"] == []
    doc = written(cold)
    assert (doc["verb"], doc["converged"], doc["reboot_required"]) == ("apply", True, False)
    assert doc["devices"][0]["model"] is None, "the boot path reads no name database"
    assert {k: v for k, v in dev.items() if k not in ("model", "in_use_by")} == \
        {k: v for k, v in doc["devices"][0].items() if k != "model"}


def test_a_numa_node_is_shown(cold: Machine) -> None:
    (cold.sim.device_dir(NIC_A) / "numa_node").write_text("1\n")
    cold.with_guest_nic()
    _, data = status(cold)
    assert data["devices"][0]["numa_node"] == 1


def test_a_node_that_has_not_converged(m: Machine) -> None:
    m.with_guest_nic()
    rc, data = status(m)
    assert rc == 1
    assert data["converged"] is False
    [dev] = data["devices"]
    assert (dev["action"], dev["driver"], dev["original"], dev["stage"]) == (
        "bind", "e1000e", None, None)
    assert not (m.root / NODE).exists(), "status writes nothing"


def test_a_node_whose_apply_failed_says_why_to_whoever_reads_it(m: Machine) -> None:
    m.config("version: 1\ndevices:\n  - adress: x\n")
    assert m.run("apply").rc == 2
    doc = written(m)
    assert doc["converged"] is False
    assert "devices[0].adress: unknown key 'adress'" in doc["last_error"]["message"]
    rc, data = status(m)
    assert rc == 2 and data["error"]["message"] == "invalid configuration: nothing was changed"
    m.with_guest_nic()
    _, data = status(m)
    assert data["last_error"] == doc["last_error"], "status shows the service's last error"


def test_after_a_failed_reload_the_devices_still_held_are_listed_as_kept(m: Machine) -> None:
    m.with_guest_nic()
    assert m.run("apply").rc == 0
    m.config("version: 1\ndevices:\n  - adress: x\n")
    assert m.run("apply").rc == 2
    doc = written(m)
    assert doc["converged"] is False and doc["last_error"] is not None
    [dev] = doc["devices"]
    assert (dev["device"], dev["action"], dev["driver"], dev["original"], dev["stage"]) == (
        NIC_A, "keep", "pci-stub", "e1000e", "late")
    assert m.driver(NIC_A) == "pci-stub"


def test_reboot_required_after_a_late_move(m: Machine) -> None:
    m.with_guest_nic()
    m.run("apply")
    doc = written(m)
    assert kinds(doc) == ["reboot"] and doc["reboot_required"] is True
    assert doc["actions"][0]["command"] == "systemctl reboot"
    assert "moved 0000:00:02.0 (from e1000e) late" in doc["actions"][0]["message"]
    rc, data = status(m)
    assert rc == 0 and data["converged"] is True and data["reboot_required"] is True
    assert data["devices"][0]["original"] == "e1000e", "a held device's original driver"


def initramfs_tools(m: Machine) -> Path:
    release = (m.root / "proc/sys/kernel/osrelease").read_text().strip()
    image = m.root / f"boot/initrd.img-{release}"
    image.parent.mkdir(exist_ok=True)
    image.write_bytes(b"initramfs")
    os.utime(image, (1, 1))
    for tool in ("usr/sbin/update-initramfs", "usr/share/initramfs-tools/hooks/pcipassd"):
        (m.root / tool).parent.mkdir(parents=True, exist_ok=True)
        (m.root / tool).touch()
    return image


def test_a_stale_initramfs_needs_a_rebuild_before_the_reboot_and_no_agent_loops(
        m: Machine) -> None:
    image = initramfs_tools(m)
    m.with_guest_nic()
    m.run("apply")
    doc = written(m)
    assert kinds(doc) == ["rebuild-initramfs", "reboot"]
    assert doc["actions"][0]["command"] == "update-initramfs -u"
    assert doc["reboot_required"] is False, "a reboot alone would not hold it from the initramfs"
    _, data = status(m)
    assert (kinds(data), data["reboot_required"]) == (kinds(doc), False)
    os.utime(image)  # the agent ran update-initramfs -u
    _, data = status(m)
    assert kinds(data) == ["reboot"] and data["reboot_required"] is True


def test_a_stale_initramfs_alone_needs_a_rebuild_and_no_reboot(cold: Machine) -> None:
    initramfs_tools(cold)
    cold.with_guest_nic()
    assert cold.run("apply").rc == 0  # held from no driver: the running boot is fine
    doc = written(cold)
    assert (kinds(doc), doc["reboot_required"]) == (["rebuild-initramfs"], False)


def iommu_off(sim: SimKernel, capsys: pytest.CaptureFixture[str]) -> Machine:
    sim.add_driver("pci-stub", loaded=False)
    sim.add_driver("e1000e", [(0x8086, 0x10D3)])
    sim.add_device(NIC_A, 0x8086, 0x10D3, cls=0x020000, iommu_group=None)
    (sim.root / "proc/cpuinfo").write_text("processor\t: 0\nvendor_id\t: GenuineIntel\n")
    (sim.root / "proc/cmdline").write_text("BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro quiet\n")
    (sim.root / "sys/firmware/acpi/tables").mkdir(parents=True)
    (sim.root / "sys/firmware/acpi/tables/DMAR").write_bytes(b"DMAR")
    m = Machine(sim, capsys)
    m.with_guest_nic()
    return m


def test_an_iommu_missing_from_the_command_line_needs_an_edit_first(
        sim: SimKernel, capsys: pytest.CaptureFixture[str]) -> None:
    m = iommu_off(sim, capsys)
    assert m.run("apply").rc == 1
    doc = written(m)
    assert doc["last_error"]["message"] == "the IOMMU is off: nothing was bound (iommu: required)"
    assert kinds(doc) == ["kernel-cmdline", "reboot"]
    assert doc["actions"][0]["command"] == (
        "sed -i -E 's/^GRUB_CMDLINE_LINUX=\"/&intel_iommu=on /' /etc/default/grub && update-grub")
    assert doc["reboot_required"] is False
    (m.root / "usr/sbin").mkdir(parents=True)
    (m.root / "usr/sbin/grubby").touch()  # Fedora, RHEL: the boot loader's own tool
    _, data = status(m)
    assert data["actions"][0]["command"] == "grubby --update-kernel=ALL --args=intel_iommu=on"
    assert data["reboot_required"] is False


def test_an_iommu_turned_off_on_the_command_line_is_taken_off_it(
        sim: SimKernel, capsys: pytest.CaptureFixture[str]) -> None:
    m = iommu_off(sim, capsys)
    (m.root / "proc/cmdline").write_text("BOOT_IMAGE=/vmlinuz ro intel_iommu=off quiet\n")
    _, data = status(m)
    assert [(a["kind"], a["command"]) for a in data["actions"]] == [
        ("kernel-cmdline", "sed -i -E '/^GRUB_CMDLINE_LINUX/s/ ?intel_iommu=off//' "
                           "/etc/default/grub && update-grub"),
        ("reboot", "systemctl reboot")]
    assert data["reboot_required"] is False


@pytest.mark.parametrize(("kinds_", "required"), [
    ([], False), (["reboot"], True), (["rebuild-initramfs", "reboot"], False),
    (["kernel-cmdline", "reboot"], False), (["rebuild-initramfs"], False)])
def test_reboot_required_only_when_a_reboot_alone_fixes_it(kinds_: list[str],
                                                            required: bool) -> None:
    actions = [node.NodeAction(k, "", "x") for k in kinds_]
    assert node.reboot_required(actions) is required


def test_a_converged_reapply_does_not_rewrite_the_document(cold: Machine) -> None:
    cold.with_guest_nic()
    cold.run("apply")
    before = (cold.root / NODE).stat()
    assert cold.run("apply").rc == 0
    after = (cold.root / NODE).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_restore_writes_what_is_left(cold: Machine) -> None:
    cold.with_guest_nic()
    cold.run("apply")
    assert cold.run("restore").rc == 0
    doc = written(cold)
    assert (doc["verb"], doc["converged"], doc["devices"]) == ("restore", False, [])


LABELS = """\
    version: 1
    node_labels: true
    devices:
      - id: "8086:10d3"
        count: 2
        driver: vfio-pci
    """


def test_node_labels_for_node_feature_discovery(m: Machine) -> None:
    m.config(LABELS)
    assert m.run("apply").rc == 0
    path = m.root / FEATURES
    assert path.stat().st_mode & 0o777 == 0o644
    first, *labels = path.read_text().splitlines()
    assert re.fullmatch(r"# \+expiry-time=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", first)
    assert labels == ["pcipassd.ready=true", "pcipassd.reboot-required=true",
                      "pcipassd.vfio-pci.8086-10d3=2"]
    for label in labels:
        name = label.split("=")[0]
        assert len(name) <= 63 and ":" not in name
        assert re.fullmatch(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?", name)
    assert m.driver(NIC_A) == m.driver(NIC_B) == "vfio-pci"
    assert m.run("restore").rc == 0
    assert not path.exists(), "a node never keeps a stale ready"


def test_without_the_key_no_labels_are_written(m: Machine) -> None:
    m.with_guest_nic()
    m.run("apply")
    assert not (m.root / FEATURES).exists()


def test_a_broken_config_turns_existing_labels_not_ready(m: Machine) -> None:
    m.config(LABELS)
    m.run("apply")
    m.config("version: 1\nnode_labels: yes please\ndevices: []\n")
    assert m.run("apply").rc == 2
    assert "pcipassd.ready=false" in (m.root / FEATURES).read_text().splitlines()


def test_node_labels_only_in_the_main_file(m: Machine) -> None:
    m.with_guest_nic()
    m.dropin("x.yaml", "version: 1\nnode_labels: true\n")
    r = m.run("validate")
    assert r.rc == 2
    assert "/etc/pcipass.d/x.yaml:2:1: node_labels: only the main file may set node_labels" \
        in r.out


def _expiry(m: Machine) -> str:
    return (m.root / FEATURES).read_text().splitlines()[0]


def test_publish_refreshes_the_labels_while_pcipassd_holds(m: Machine) -> None:
    """pcipassd-publish.timer's job: the same labels, a later expiry, nothing moved."""
    m.config(LABELS)
    assert m.run("apply").rc == 0
    path = m.root / FEATURES
    labels = path.read_text().splitlines()[1:]
    path.write_text("# +expiry-time=2000-01-01T00:00:00Z\n" + "\n".join(labels) + "\n")
    writes = len(m.sim.writes)
    r = m.run("publish")
    assert r.rc == 0, r.err
    assert _expiry(m) > "# +expiry-time=2026"
    assert path.read_text().splitlines()[1:] == labels
    assert [w for w in m.sim.writes[writes:] if "/sys/" in w[0]] == [], "moves no device"
    assert written(m)["verb"] == "publish"


def test_publish_says_not_ready_when_the_node_drifts(m: Machine) -> None:
    m.config(LABELS)
    assert m.run("apply").rc == 0
    m.sim.write(m.sim.driver_dir("vfio-pci") / "unbind", NIC_B)  # someone took it away
    r = m.run("publish")
    assert r.rc == 1
    assert "pcipassd.ready=false" in (m.root / FEATURES).read_text().splitlines()
    assert written(m)["converged"] is False


def test_publish_never_brings_back_labels_that_restore_removed(m: Machine) -> None:
    m.config(LABELS)
    m.run("apply")
    m.run("restore")
    m.run("publish")
    assert not (m.root / FEATURES).exists()


def test_publish_with_an_invalid_edit_writes_nothing(m: Machine) -> None:
    m.config(LABELS)
    m.run("apply")
    before = (m.root / FEATURES).read_text()
    m.config("version: 1\nnode_labels: yes please\ndevices: []\n")
    r = m.run("publish")
    assert r.rc == 2 and "/etc/pcipass.yaml:2" in r.err, r.err
    assert (m.root / FEATURES).read_text() == before
