"""The VM harness without booting: the guest's result channel, how a boot ended, and the QEMU
command a topology makes. What only a boot can show (the guest sees the topology the harness
pins, with the IOMMU groups it expects) is checked on a scenario's first boot
(tests/vm/test_early.py::test_the_guest_sees_the_pinned_topology)."""

from __future__ import annotations

import base64
from pathlib import Path

from .harness import (
    DEFAULT_TOPOLOGY,
    DISK_BDF,
    Topology,
    _classify,
    parse_results,
    qemu_command,
)
from .image import BaseImage, Image


def _channel(*lines: str) -> str:
    return "".join(f"{line}\r\n" for line in lines)  # a serial port ends lines with CRLF


def test_results_blobs_and_the_done_line_are_parsed() -> None:
    text = "a journal line\nwith two lines\n"
    encoded = base64.encodebytes(text.encode()).decode().splitlines()
    channel = _channel("@@PCIPASS-BEGIN boot=1", "@@PCIPASS-RESULT boot=1",
                       "@@PCIPASS-RESULT pci.0000:00:03.0.driver=e1000e",
                       "kernel noise on the wrong port", "@@PCIPASS-BLOB-BEGIN journal",
                       *encoded, "@@PCIPASS-BLOB-END journal", "@@PCIPASS-RESULT boot=2",
                       "@@PCIPASS-DONE action=reboot")
    results, action = parse_results(channel)
    assert results["pci.0000:00:03.0.driver"] == "e1000e"
    assert results["journal"] == text
    assert results["boot"] == "2", "a key reported again overwrites"
    assert action == "reboot"
    assert parse_results(_channel("@@PCIPASS-RESULT x=1"))[1] is None, "no DONE: not finished"


def test_an_empty_blob_is_an_empty_string() -> None:
    results, _ = parse_results(_channel("@@PCIPASS-BLOB-BEGIN probes", "@@PCIPASS-BLOB-END probes"))
    assert results["probes"] == ""


def test_how_a_boot_ended_is_read_from_the_console() -> None:
    assert _classify("...\nreboot: Power down\n", timed_out=False) == "poweroff"
    assert _classify("reboot: Restarting system\n", timed_out=False) == "reboot"
    assert _classify("Kernel panic - not syncing: VFS\nreboot: Restarting system",
                     timed_out=False) == "panic"
    assert _classify("reboot: Power down", timed_out=True) == "timeout"
    assert _classify("", timed_out=False) == "unknown"


def _image(tmp_path: Path) -> Image:
    base = BaseImage(tmp_path / "base", "key")
    return Image(base=base, workdir=tmp_path, disk=tmp_path / "disk.img")


def _cmd(tmp_path: Path, topology: Topology = DEFAULT_TOPOLOGY) -> list[str]:
    return qemu_command(_image(tmp_path), topology=topology,
                        console_path=tmp_path / "console.log",
                        results_path=tmp_path / "results.log")


def test_the_default_topology_pins_every_device_behind_the_iommu(tmp_path: Path) -> None:
    cmd = _cmd(tmp_path)
    assert "-no-reboot" in cmd, "a reboot ends QEMU: the next boot is the test's to start"
    append = cmd[cmd.index("-append") + 1]
    assert "intel_iommu=on" in append and "console=ttyS0,115200" in append
    devices = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "-device"]
    assert devices[0] == "intel-iommu,intremap=on", "the IOMMU comes before what it translates"
    for dev in DEFAULT_TOPOLOGY.devices:
        slot = int(dev.bdf.split(":")[2].split(".")[0], 16)
        assert any(d.startswith(dev.driver or "") and f"addr={slot:#x}" in d for d in devices), dev
    assert f"addr={int(DISK_BDF[8:10], 16):#x}" in devices[-1] and "virtio-blk-pci" in devices[-1]
    serials = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "-serial"]
    assert serials == [f"file:{tmp_path / 'console.log'}", f"file:{tmp_path / 'results.log'}"]


def test_the_iommu_off_and_the_bridge_pair(tmp_path: Path) -> None:
    off = _cmd(tmp_path, DEFAULT_TOPOLOGY.without_iommu())
    assert "intel-iommu,intremap=on" not in off
    assert "intel_iommu=off" in off[off.index("-append") + 1]
    pair = DEFAULT_TOPOLOGY.with_bridge_pair()
    cmd = _cmd(tmp_path, pair)
    devices = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "-device"]
    bridge = devices.index("pcie-pci-bridge,id=pci-br0,bus=rp-br0,addr=0x0")
    behind = [i for i, d in enumerate(devices) if "bus=pci-br0" in d]
    assert len(behind) == 2 and min(behind) > bridge, "both e1000 behind the one bridge"
