"""Preflight (pcipassd/preflight.py): what `check`, `list --verbose` and `status --json` say of
a display or audio function before its first VM start, on the simulated kernel: reset (FLR from
config space, the reset-bug list), a boot framebuffer in a BAR, host drivers in the initramfs."""

from __future__ import annotations

import json
from typing import Any

import pytest
from machine import Machine
from simkernel import BOOT_VGA, RELEASE, SimKernel

GPU = "0000:03:00.0"
AUDIO = "0000:03:00.1"
FB = 0xC000_0000  # the GPU's BAR 0
IMAGE = f"/boot/initrd.img-{RELEASE}"


def card(sim: SimKernel, *, gpu_id: tuple[int, int] = (0x10DE, 0x1C82), cls: int = 0x030000,
         flr: bool | None = True, d3cold: bool = True, bus: bool = True) -> None:
    """A two-function card behind no bridge: a GPU (function 0, with its host driver) and its
    HDMI audio (snd_hda_intel), one IOMMU group; vfio-pci loadable."""
    sim.enable_iommu("intel")
    sim.add_driver("nouveau", [gpu_id])
    sim.add_driver("snd_hda_intel", [(0x10DE, 0x0FB9)])
    sim.add_driver("vfio-pci", loaded=False, needs_iommu=True)
    sim.add_driver("pci-stub", loaded=False)
    methods = [name for name, on in (("flr", flr), ("bus", bus)) if on]
    sim.add_device(GPU, *gpu_id, cls=cls, iommu_group=7, multifunction=True, flr=flr,
                   d3cold_allowed=d3cold, reset_methods=methods or None,
                   bars=[(FB, 0x1000_0000), (0xB000_0000, 0x200_0000)])
    sim.add_device(AUDIO, 0x10DE, 0x0FB9, cls=0x040300, iommu_group=7, flr=flr,
                   d3cold_allowed=d3cold, reset_methods=["flr"] if flr else None)


def config(m: Machine, target: str = "vfio-pci", address: str = "0000:03:00.*") -> None:
    m.config(f'version: 1\ndriver: {target}\ndevices:\n  - address: "{address}"\n')


def preflight_lines(out: str) -> list[str]:
    lines = out.splitlines()
    start = lines.index("Preflight (display and audio functions):")
    return [line for line in lines[start + 1:] if line.startswith("  ")]


def of(out: str, bdf: str) -> str:
    """The preflight lines of one device, joined."""
    found, mine = [], False
    for line in preflight_lines(out):
        if not line.startswith("    "):
            mine = line.startswith(f"  {bdf} ")
        if mine:
            found.append(line)
    return "\n".join(found)


@pytest.fixture
def gpu(sim: SimKernel, capsys: pytest.CaptureFixture[str]) -> Machine:
    card(sim)
    return Machine(sim, capsys)


def test_check_reports_reset_from_config_space(gpu: Machine) -> None:
    config(gpu)
    r = gpu.run("check")
    assert "    OK      reset: reset_method flr bus; FLR yes; d3cold_allowed 1" in of(r.out, GPU)
    assert "    OK      reset: reset_method flr; FLR yes; d3cold_allowed 1" in of(r.out, AUDIO)
    assert "  0000:03:00.0 [10de:1c82] VGA, on nouveau, target vfio-pci" in r.out
    assert "  0000:03:00.1 [10de:0fb9] audio, on snd_hda_intel, target vfio-pci" in r.out


def test_no_flr_in_the_pcie_capability_is_said(sim: SimKernel,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    card(sim, flr=False, d3cold=False)
    m = Machine(sim, capsys)
    config(m)
    out = m.run("check").out
    assert "    OK      reset: reset_method bus; FLR no; d3cold_allowed 0" in of(out, GPU)
    audio = of(out, AUDIO)
    assert ("    OK      reset: reset_method (no reset_method); FLR no; d3cold_allowed 0; reset "
            f"with its card: the whole card is held, and QEMU resets {GPU} (every function "
            "behind the bridge) when one VM has them all") in audio


def test_a_function_no_reset_reaches_is_warned_about(
        sim: SimKernel, capsys: pytest.CaptureFixture[str]) -> None:
    card(sim, flr=False, d3cold=False, bus=False)
    m = Machine(sim, capsys)
    config(m)
    audio = of(m.run("check").out, AUDIO)
    assert "    WARN    reset: reset_method (no reset_method); FLR no; d3cold_allowed 0" in audio
    assert "fix: the kernel has no way to reset it between two VM runs" in audio


def test_not_root_flr_and_framebuffer_are_unknown_never_guessed(gpu: Machine) -> None:
    gpu.sim.add_framebuffer(FB, 0x30_0000, "BOOTFB", "simpledrm")
    gpu.sim.as_user()
    config(gpu)
    r = gpu.run("check", "--json")
    out = of(gpu.run("check").out, GPU)
    assert "FLR unknown (run as root)" in out
    assert "    ?       framebuffer: boot framebuffer: unknown (run as root)" in out
    device = json.loads(r.out)["preflight"]["devices"][0]
    assert (device["reset"]["flr"], device["framebuffer"]) == (None, None)
    assert "FLR yes" not in out and "FLR no" not in out


def test_a_card_on_the_reset_bug_list_is_named_with_the_source(
        sim: SimKernel, capsys: pytest.CaptureFixture[str]) -> None:
    card(sim, gpu_id=(0x1002, 0x731F))  # Navi 10: RX 5700 XT
    sim.set_lockdown("integrity")
    m = Machine(sim, capsys)
    config(m)
    out = of(m.run("check").out, GPU)
    assert ("    WARN    reset bug: AMD Navi 10 card: on the reset-bug list (gnif/vendor-reset "
            "src/device-db.h); vendor-reset not loaded") in out
    assert "add `reset_method: device_specific` to its entry" in out
    assert "lockdown is integrity (Secure Boot): vendor-reset, an out-of-tree module, loads " \
           "only signed" in out
    (sim.sys / "module/vendor_reset").mkdir()
    sim.set_lockdown(None)
    out = of(m.run("check").out, GPU)
    assert "vendor-reset loaded" in out and "lockdown" not in out
    doc = json.loads(m.run("status", "--json").out)["preflight"]
    assert doc["devices"][0]["reset"]["reset_bug"] == "AMD Navi 10"
    assert doc["devices"][0]["reset"]["reset_bug_source"] == "gnif/vendor-reset src/device-db.h"
    assert "reset bug" not in of(m.run("check").out, AUDIO)


def test_framebuffer_on_vfio_pci_vga_and_linux_6_needs_nothing(gpu: Machine) -> None:
    gpu.sim.add_framebuffer(FB, 0x30_0000, "BOOTFB", "simpledrm")
    config(gpu)
    out = of(gpu.run("check").out, GPU)
    assert ("    OK      framebuffer: BOOTFB, simpledrm in BAR 0: nothing to do: "
            "vfio-pci removes a firmware framebuffer from a VGA-class card when it binds it "
            "(Linux 6.0+)") in out
    assert "initcall_blacklist" not in out


def test_simpledrm_is_not_stopped_by_video_efifb_off(gpu: Machine) -> None:
    gpu.sim.add_framebuffer(FB, 0x30_0000, "BOOTFB", "simpledrm")
    config(gpu, target="pci-stub")
    out = of(gpu.run("check").out, GPU)
    assert ("    WARN    framebuffer: BOOTFB, simpledrm in BAR 0: the firmware's "
            "memory stays claimed (pci-stub does not remove it)") in out
    assert "fix: `initcall_blacklist=sysfb_init` on the kernel command line stops simpledrm; " \
           "video=efifb:off does not (cost: every early console" in out
    assert "`video=efifb:off` on the kernel command line" not in out


def test_efifb_on_an_old_kernel_gets_video_efifb_off(gpu: Machine) -> None:
    (gpu.root / "proc/sys/kernel/osrelease").write_text("5.15.0-91-generic\n")
    gpu.sim.add_framebuffer(FB, 0x30_0000, "efifb")
    config(gpu)
    out = of(gpu.run("check").out, GPU)
    assert ("efifb in BAR 0: the firmware's memory stays claimed (vfio-pci removes it only "
            "since Linux 6.0 (this is 5.15.0-91-generic))") in out
    assert "fix: `video=efifb:off` on the kernel command line stops efifb (cost:" in out
    assert "initcall_blacklist" not in out


def test_a_3d_controller_is_not_helped_by_vfio_pci(sim: SimKernel,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    card(sim, cls=0x030200)
    sim.add_framebuffer(FB, 0x30_0000, "efifb")
    m = Machine(sim, capsys)
    config(m)
    out = of(m.run("check").out, GPU)
    assert "(vfio-pci removes it only from a VGA-class card)" in out


def test_no_framebuffer_in_a_bar(gpu: Machine) -> None:
    gpu.sim.add_framebuffer(0xE000_0000, 0x30_0000, "BOOTFB", "simpledrm")  # another card's
    config(gpu)
    assert "    OK      framebuffer: no boot framebuffer in its BARs" in of(gpu.run("check").out,
                                                                           GPU)


def test_the_console_s_card_is_refused_with_the_reason(sim_host: SimKernel,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    m = Machine(sim_host, capsys)
    config(m, address=BOOT_VGA)
    out = of(m.run("check").out, BOOT_VGA)
    assert ("    REFUSED framebuffer: the console's card: it is the boot VGA device, so pcipassd "
            "refuses it") in out
    assert "fix: pass through a card the host does not boot on; `force: [boot-vga]` takes it " \
           "anyway: the host loses its boot display" in out


def lister(m: Machine, listing: list[str]) -> None:
    """initramfs-tools on the simulated host, its image listing `listing`."""
    for tool, text in (("usr/sbin/update-initramfs", "#!/bin/sh\n"),
                       ("usr/bin/lsinitramfs",
                        "#!/bin/sh\n[ -f \"$1\" ] || exit 1\ncat <<'EOF'\n"
                        + "\n".join(listing) + "\nEOF\n")):
        path = m.root / tool
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o755)
    (m.root / IMAGE.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
    (m.root / IMAGE.lstrip("/")).write_bytes(b"image")


DRIVERS = ["usr/lib/modules/6.1.0-sim/kernel/drivers/gpu/nouveau.ko.xz"]
HOLD = ["usr/lib/pcipassd/pcipassd-early", "etc/pcipass.early"]


@pytest.mark.parametrize(("listing", "expected"), [
    ([], "    OK      initramfs: no host driver of it in " + IMAGE),
    (DRIVERS + HOLD, f"    OK      initramfs: nouveau in {IMAGE}: the early hold still wins "
                     "(pcipassd's stage in it sets driver_override first)"),
    (DRIVERS, f"    WARN    initramfs: nouveau in {IMAGE} without pcipassd's early hold: "
              "nouveau can bind it before pcipassd holds it"),
])
def test_a_host_driver_in_the_initramfs_and_whether_the_early_hold_wins(
        gpu: Machine, listing: list[str], expected: str) -> None:
    lister(gpu, listing)
    config(gpu)
    assert expected in of(gpu.run("check").out, GPU)


def test_vfio_pci_module_or_built_in(gpu: Machine) -> None:
    lister(gpu, HOLD)
    config(gpu)
    out = gpu.run("check").out
    assert ("  OK      vfio-pci: a module; not in the initramfs: a held device waits "
            "unbound") in out
    lister(gpu, [*HOLD, "usr/lib/modules/6.1.0-sim/kernel/drivers/vfio/pci/vfio-pci.ko"])
    assert "  OK      vfio-pci: a module; in the initramfs" in gpu.run("check").out


def test_list_verbose_and_status_json(gpu: Machine) -> None:
    config(gpu)
    plain = gpu.run("list").out
    assert "Preflight" not in plain
    verbose = gpu.run("list", "--verbose").out
    assert preflight_lines(verbose)[1] == "  0000:03:00.0 [10de:1c82] VGA, on nouveau, target " \
                                          "vfio-pci"
    listed: dict[str, Any] = json.loads(gpu.run("list", "--json").out)
    assert listed["preflight"] is None
    doc = json.loads(gpu.run("status", "--json").out)["preflight"]
    assert [d["device"] for d in doc["devices"]] == [GPU, AUDIO]
    assert set(doc["devices"][0]) == {
        "device", "id", "class", "target", "reset", "framebuffer", "host_drivers",
        "host_drivers_in_initramfs", "findings"}
    assert doc["devices"][0]["reset"] == {
        "methods": "flr bus", "flr": True, "d3cold_allowed": True, "reset_bug": None,
        "reset_bug_source": None}
    assert doc["devices"][0]["host_drivers"] == ["nouveau"]


def test_only_display_and_audio_functions(m: Machine) -> None:
    """A NIC has no preflight: check prints no section for it."""
    m.with_guest_nic()
    r = m.run("check", "--json")
    assert json.loads(r.out)["preflight"]["devices"] == []
    assert "Preflight" not in m.run("check").out
