"""A workstation-like host on the simulated kernel: an iGPU with the console, a discrete GPU
with its HDMI audio, three identical Intel I210 NICs (8086:1533) of which the first carries the
default route, the root filesystem on NVMe, and an Intel PCH: its LPC/eSPI bridge, power
management controller, HD audio, SMBus and SPI controllers share IOMMU group 11 at 00:1f, as on
a consumer board; the xHCI controller shares group 7 with the PCH's shared SRAM; the PCH's
thermal sensor and a Serial IO I2C controller have groups of their own."""

from __future__ import annotations

import os

from hosttree import FakeHost
from simkernel import SimKernel

HOST_BRIDGE = "0000:00:00.0"
IGPU = "0000:00:02.0"  # 8086:3e92, i915, boot VGA, fb0 carries the console
GPU_PORT = "0000:00:01.0"  # PCIe root port of the GPU, in its group
GPU = "0000:01:00.0"  # 10de:1e84, nouveau
GPU_AUDIO = "0000:01:00.1"  # 10de:10f9, snd_hda_intel
UPLINK = "0000:02:00.0"  # I210 8086:1533, igb, eth0: the default route
NIC_2 = "0000:03:00.0"  # I210, eth1, down
NIC_3 = "0000:04:00.0"  # I210, eth2, down
NICS = (UPLINK, NIC_2, NIC_3)
NVME = "0000:05:00.0"  # 144d:a808, nvme: carries /
THERMAL = "0000:00:12.0"  # 8086:a379 signal processing controller (1180), intel_pch_thermal
XHCI = "0000:00:14.0"  # 8086:a36d USB controller, xhci_hcd, group 7
SRAM = "0000:00:14.2"  # 8086:a36f RAM memory (0500): the PCH's shared SRAM, no driver, group 7
I2C = "0000:00:15.0"  # 8086:a368 serial bus controller (0c80): Serial IO I2C, not in 00:1f
LPC = "0000:00:1f.0"  # 8086:a305 ISA bridge (0601): the LPC/eSPI bridge, lpc_ich
PMC = "0000:00:1f.2"  # 8086:a321 memory controller (0580): the power management controller
PCH_AUDIO = "0000:00:1f.3"  # 8086:a348 audio (0403), snd_hda_intel
SMBUS = "0000:00:1f.4"  # 8086:a323 SMBus (0c05), i801_smbus
SPI = "0000:00:1f.5"  # 8086:a324 serial bus controller (0c80): the SPI flash controller
PCH = (LPC, PMC, PCH_AUDIO, SMBUS, SPI)  # IOMMU group 11
PCH_GROUP = "11"

ROUTES = ("eth0\t00000000\t0102A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0",
          "eth0\t0002A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0")


def rel(sim: SimKernel, bdf: str) -> str:
    """The device's sysfs directory as the host names it."""
    return "/" + os.path.relpath(sim.device_dir(bdf), sim.root)


def build_workstation(sim: SimKernel) -> SimKernel:
    """The devices and drivers; `evidence` adds the mounts, routes and console."""
    sim.enable_iommu("intel")
    ports = [(0x8086, 0xA340 + n) for n in range(4)]
    for name, ids in (("i915", [(0x8086, 0x3E92)]), ("nouveau", [(0x10DE, 0x1E84)]),
                      ("snd_hda_intel", [(0x10DE, 0x10F9), (0x8086, 0xA348)]),
                      ("igb", [(0x8086, 0x1533)]), ("nvme", [(0x144D, 0xA808)]),
                      ("xhci_hcd", [(0x8086, 0xA36D)]), ("intel_pch_thermal", [(0x8086, 0xA379)]),
                      ("lpc_ich", [(0x8086, 0xA305)]), ("i801_smbus", [(0x8086, 0xA323)])):
        sim.add_driver(name, ids)
    sim.add_driver("intel-spi", [(0x8086, 0xA324)], module="intel_spi_pci")
    sim.add_driver("pcieport", ports, builtin=True)
    sim.add_driver("pci-stub", loaded=False)
    sim.add_driver("vfio-pci", loaded=False, needs_iommu=True)
    sim.add_device(HOST_BRIDGE, 0x8086, 0x3E30, cls=0x060000, driver=None, iommu_group=0)
    sim.add_device(IGPU, 0x8086, 0x3E92, cls=0x030000, iommu_group=1, boot_vga=True)
    sim.add_device(GPU_PORT, *ports[0], cls=0x060400, iommu_group=2)
    sim.add_device(GPU, 0x10DE, 0x1E84, cls=0x030000, iommu_group=2, parent=GPU_PORT,
                   boot_vga=False)
    sim.add_device(GPU_AUDIO, 0x10DE, 0x10F9, cls=0x040300, iommu_group=2, parent=GPU_PORT)
    for n, (nic, port) in enumerate(zip((*NICS, NVME), ("1c.0", "1c.1", "1c.2", "1d.0"))):
        bridge = f"0000:00:{port}"
        sim.add_device(bridge, *ports[min(n, 3)], cls=0x060400, iommu_group=3 + n)
        if nic == NVME:
            sim.add_device(nic, 0x144D, 0xA808, cls=0x010802, iommu_group=3 + n, parent=bridge)
        else:
            sim.add_device(nic, 0x8086, 0x1533, iommu_group=3 + n, parent=bridge)
    sim.add_device(XHCI, 0x8086, 0xA36D, cls=0x0C0330, iommu_group=7)
    sim.add_device(SRAM, 0x8086, 0xA36F, cls=0x050000, iommu_group=7)
    sim.add_device(THERMAL, 0x8086, 0xA379, cls=0x118000, iommu_group=8)
    sim.add_device(I2C, 0x8086, 0xA368, cls=0x0C8000, iommu_group=9)
    for bdf, device, cls in ((LPC, 0xA305, 0x060100), (PMC, 0xA321, 0x058000),
                             (PCH_AUDIO, 0xA348, 0x040300), (SMBUS, 0xA323, 0x0C0500),
                             (SPI, 0xA324, 0x0C8000)):
        sim.add_device(bdf, 0x8086, device, cls=cls, iommu_group=int(PCH_GROUP))
    return sim


def evidence(sim: SimKernel) -> FakeHost:
    """What makes devices host-critical: / on the NVMe drive, eth0 on the first I210 with the
    default route (eth1 and eth2 down), the consoles on the iGPU's fb0."""
    fake = FakeHost(sim.root)
    disk = fake.disk("nvme0n1", "259:0", f"{rel(sim, NVME)}/nvme/nvme0")
    fake.partition(disk, "nvme0n1p2", "259:2")
    fake.mountinfo("22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw")
    for n, nic in enumerate(NICS):
        fake.netdev(f"eth{n}", rel(sim, nic), flags="0x1003" if n == 0 else "0x1002")
    fake.routes(*ROUTES)
    fake.framebuffer("fb0", rel(sim, IGPU))
    fake.fbcon(bound=True)
    fake.cmdline("BOOT_IMAGE=/vmlinuz-6.1.0 root=/dev/nvme0n1p2 ro quiet")
    return fake


def uplink_gone(fake: FakeHost) -> None:
    """What the host shows once the uplink is held: igb let go of it, so eth0 and its routes are
    gone; nothing left says it carried the default route."""
    os.unlink(fake.host.path("/sys/class/net/eth0"))
    fake.routes()
