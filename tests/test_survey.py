"""`pcipassd list` on the simulated kernel: every device by IOMMU group, named from a small
pci.ids, with what pcipassd says of it, filters, JSON, and a verdict per group."""

from __future__ import annotations

import json
import os

import pytest
from hosttree import FakeHost
from machine import Machine
from simkernel import BOOT_VGA, DISK, HOST_BRIDGE, NIC_A, NIC_B, NIC_E1000, PCIE_BRIDGE

PCI_IDS = """\
# a few lines of pci.ids
1af4  Red Hat, Inc.
\t1001  Virtio block device
8086  Intel Corporation
\t100e  82540EM Gigabit Ethernet Controller
\t10d3  82574L Gigabit Network Connection
\t\t8086 a01f  Gigabit CT Desktop Adapter
C 01  Mass storage controller
\t00  SCSI storage controller
C 02  Network controller
\t00  Ethernet controller
C 03  Display controller
\t00  VGA compatible controller
C 06  Bridge
\t00  Host bridge
\t04  PCI bridge
"""


@pytest.fixture(autouse=True)
def named_host_with_root_on_disk(m: Machine) -> None:
    """Every test here starts from the typical machine with a small pci.ids and / on vda1 (DISK)."""
    ids = m.root / "usr/share/misc/pci.ids"
    ids.parent.mkdir(parents=True)
    ids.write_text(PCI_IDS)
    fake = FakeHost(m.root)
    disk = fake.disk("vda", "254:0",
                     "/" + os.path.relpath(m.sim.device_dir(DISK), m.root) + "/virtio2")
    fake.partition(disk, "vda1", "254:1")
    fake.mountinfo("22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw")


def lines_of(out: str, bdf: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(f"  {bdf}"))


def test_list_shows_every_device_by_group_with_names_and_verdicts(m: Machine) -> None:
    r = m.run("list")
    assert r.rc == 0, r.err
    out = r.out
    for bdf in (HOST_BRIDGE, BOOT_VGA, NIC_A, NIC_B, NIC_E1000, PCIE_BRIDGE, DISK):
        assert bdf in out
    assert lines_of(out, NIC_A).split() == [NIC_A, "8086:10d3", "e1000e"]
    assert ("    Ethernet controller [0200]: Intel Corporation 82574L Gigabit Network Connection\n"
            in out)
    assert "IOMMU group 2: can be passed through as a whole (1 endpoint)" in out
    assert f"IOMMU group 6: blocked: {DISK} carries / (vda1)" in out
    assert lines_of(out, DISK).endswith("virtio-pci  host-critical: carries / (vda1)")
    assert lines_of(out, PCIE_BRIDGE).endswith("pcieport    bridge")
    assert "IOMMU group 5: bridges only: nothing to pass through" in out
    assert "    VGA compatible controller [0300]: Vendor 1234 Device 1111\n" in out, "raw IDs"
    assert all(len(line) <= 100 for line in out.splitlines())
    assert "nothing marked configured" in out, "no config yet: a survey still works"


def test_list_marks_configured_and_held_devices(m: Machine) -> None:
    m.config(f'version: 1\ndevices:\n  - address: "{NIC_A}"\n  - address: "{NIC_E1000}"\n')
    m.run("apply")
    m.config(f'version: 1\ndevices:\n  - address: "{NIC_A}"\n  - address: "{NIC_B}"\n')
    out = m.run("list").out
    assert lines_of(out, NIC_A).endswith("pci-stub    held (late)")
    assert lines_of(out, NIC_B).endswith("e1000e      configured")
    assert lines_of(out, NIC_E1000).endswith("pci-stub    held (late)")


@pytest.mark.parametrize(("args", "shown"), [
    (["--class", "0200"], {NIC_A, NIC_B, NIC_E1000}),
    (["--class", "ethernet"], {NIC_A, NIC_B, NIC_E1000}),
    (["--id", "8086:10d3"], {NIC_A, NIC_B}),
    (["--address", "00:04.*"], {NIC_E1000}),
])
def test_list_filters(m: Machine, args: list[str], shown: set[str]) -> None:
    data = json.loads(m.run("list", "--json", *args).out)
    assert {d["device"] for g in data["groups"] for d in g["devices"]} == shown
    assert data["names"] == "/usr/share/misc/pci.ids"


NVME, HDMI_AUDIO, USB, GPU_3D = "0000:02:00.0", "0000:03:00.1", "0000:04:00.0", "0000:03:00.0"


@pytest.mark.parametrize(("word", "shown"), [
    ("gpu", {BOOT_VGA, GPU_3D}),
    ("display", {BOOT_VGA, GPU_3D}),
    ("VGA", {BOOT_VGA}),
    ("network", {NIC_A, NIC_B, NIC_E1000}),
    ("ethernet", {NIC_A, NIC_B, NIC_E1000}),
    ("storage", {DISK, NVME}),
    ("nvme", {NVME}),
    ("audio", {HDMI_AUDIO}),
    ("usb", {USB}),
    ("0108", {NVME}),
])
def test_list_class_takes_the_words_people_use(m: Machine, word: str, shown: set[str]) -> None:
    m.sim.add_device(NVME, 0x144D, 0xA808, cls=0x010802, iommu_group=10)
    m.sim.add_device(GPU_3D, 0x10DE, 0x1DB6, cls=0x030200, iommu_group=11)
    m.sim.add_device(HDMI_AUDIO, 0x10DE, 0x10F0, cls=0x040300, iommu_group=11)
    m.sim.add_device(USB, 0x1B36, 0x000D, cls=0x0C0330, iommu_group=12)
    r = m.run("list", "--json", "--class", word)
    assert r.rc == 0, r.err
    data = json.loads(r.out)
    assert {d["device"] for g in data["groups"] for d in g["devices"]} == shown


@pytest.mark.parametrize("args", [["--id", "zzzz"], ["--id", "8086:10d3:1"], ["--id", ""],
                                  ["--class", "02:00"], ["--class", "-"]])
def test_list_with_a_malformed_id_or_class_is_a_usage_error(m: Machine, args: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        m.run("list", *args)
    assert exc.value.code == 64
    err = m.capsys.readouterr().err
    assert f"pcipassd list: error: argument {args[0]}" in err, err


def test_list_json_has_the_lspci_line_and_the_verdict(m: Machine) -> None:
    data = json.loads(m.run("list", "--json", "--address", DISK).out)
    (group,) = data["groups"]
    assert group["passable"] is False
    assert group["devices"][0]["lspci"] == (
        "SCSI storage controller [0100]: Red Hat, Inc. Virtio block device [1af4:1001]")
    assert group["devices"][0]["notes"] == ["host-critical: carries / (vda1)"]


def test_list_with_a_bad_filter_is_one_line(m: Machine) -> None:
    r = m.run("list", "--address", "02:00")
    assert r.rc == 1
    assert r.err.startswith("pcipassd: error: --address: '02:00' is not a PCI address")
    assert len(r.err.splitlines()) == 1


def test_plan_and_status_name_the_members_of_each_group_in_100_columns(m: Machine) -> None:
    m.config(f'version: 1\ndevices:\n  - address: "{NIC_A}"\n')
    for verb in ("plan", "status"):
        out = m.run(verb).out
        assert (f"  2:  {NIC_A}  [8086:10d3]  e1000e  Intel Corporation 82574L Gigabit Network "
                "Connection") in out, out
        assert all(len(line) <= 100 for line in out.splitlines())
