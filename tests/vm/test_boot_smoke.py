"""Prove the VM harness itself: boot, topology, IOMMU, result channel, poweroff.

pcipassd is left out of these images (``install=no_install``) so that a broken
project cannot make the harness look broken.
"""

from __future__ import annotations

from pathlib import Path

from .conftest import BootFn, ImageFactory
from .harness import DEFAULT_TIMEOUT, DEFAULT_TOPOLOGY, DISK_BDF, BootResult
from .image import BaseImage, no_install

INVENTORY = r"""
pci_inventory
capture lspci lspci -Dnnk
capture modinfo modinfo -F filename pci-stub vfio-pci
capture modprobe modprobe -a pci-stub vfio-pci
"""


def _record(vm_out: Path, base: BaseImage, res: BootResult) -> None:
    cold = base.build_seconds
    cold_text = f"{cold:.0f}s" if cold is not None else "unknown"
    line = (
        f"boot-to-poweroff {res.seconds:.1f}s wall, guest uptime at scenario start "
        f"{res.get('uptime.start')}s; base image cold build "
        f"{cold_text}\n"
    )
    (vm_out / "timing.txt").write_text(line)
    print(line, end="")


def test_default_topology(
    vm_base: BaseImage, vm_image: ImageFactory, vm_boot: BootFn, vm_out: Path
) -> None:
    image = vm_image(None, INVENTORY, install=no_install)
    res = vm_boot(image)
    _record(vm_out, vm_base, res)

    where = res.where()
    assert res.shutdown == "poweroff", where
    assert res.seconds < DEFAULT_TIMEOUT, where
    assert res.scenario_rc == 0, where
    assert res["systemd.failed"].strip() == "", where
    assert "intel_iommu=on" in res["kernel.cmdline"]

    # IOMMU on: groups exist, every test device is in one, each alone.
    assert int(res["pci.iommu_groups"]) > 0, where
    groups = {dev.name: res.iommu_group(dev.bdf) for dev in DEFAULT_TOPOLOGY.devices}
    assert "none" not in groups.values(), groups
    assert len(set(groups.values())) == len(groups), groups

    # Every pinned device is where the topology says, with its default driver.
    for dev in DEFAULT_TOPOLOGY.devices:
        assert res[f"pci.{dev.bdf}.id"] == dev.vendor_device, (dev, where)
        assert res.driver(dev.bdf) == dev.driver, (dev, where)
        assert res[f"pci.{dev.bdf}.override"] == "none"
    assert res.driver(DISK_BDF) == "virtio-pci"

    lspci = res["lspci"]
    assert res.rc("lspci") == 0
    assert lspci.count("[8086:10d3]") == 2, lspci
    assert "Kernel driver in use: e1000e" in lspci

    # The modules pcipassd binds to are available (and load).
    assert res.rc("modinfo") == 0, res["modinfo"]
    assert "pci-stub.ko" in res["modinfo"] and "vfio-pci.ko" in res["modinfo"], res["modinfo"]
    assert res.rc("modprobe") == 0, res["modprobe"]


def test_bridge_pair_shares_iommu_group(vm_image: ImageFactory, vm_boot: BootFn) -> None:
    topo = DEFAULT_TOPOLOGY.with_bridge_pair()
    res = vm_boot(vm_image(None, INVENTORY, install=no_install), topology=topo)
    a, b = topo.bdf("br-e1000-a"), topo.bdf("br-e1000-b")
    assert res.driver(a) == "e1000" and res.driver(b) == "e1000", res.where()
    assert res.iommu_group(a) == res.iommu_group(b) != "none", res.where()
    assert res.iommu_group(a) != res.iommu_group(topo.bdf("e1000e-a"))


def test_iommu_off(vm_image: ImageFactory, vm_boot: BootFn) -> None:
    topo = DEFAULT_TOPOLOGY.without_iommu()
    res = vm_boot(vm_image(None, INVENTORY, install=no_install), topology=topo)
    assert "intel_iommu=off" in res["kernel.cmdline"]
    assert res["pci.iommu_groups"] == "0", res.where()
    assert res.iommu_group(topo.bdf("e1000e-a")) == "none"
    assert res.driver(topo.bdf("e1000e-a")) == "e1000e"
    assert res.rc("modinfo") == 0


def test_two_boots_same_disk(vm_image: ImageFactory, vm_boot: BootFn) -> None:
    """The disk persists across boots; the guest can ask for a reboot; args can change."""
    script = r"""
if [ "$PCIPASS_BOOT" = 1 ]; then
    echo first >/var/lib/pcipass-test/marker
    next_action reboot
else
    result marker "$(cat /var/lib/pcipass-test/marker)"
fi
"""
    image = vm_image(None, script, install=no_install)
    first = vm_boot(image)
    assert first.shutdown == "reboot" and first["boot"] == "1", first.where()
    second = vm_boot(image, kernel_args=["pcipass.second"])
    assert second.shutdown == "poweroff", second.where()
    assert second["boot"] == "2"
    assert second["marker"] == "first"
    assert "pcipass.second" in second["kernel.cmdline"]
