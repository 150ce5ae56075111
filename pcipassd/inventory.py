"""A snapshot of the host's PCI devices, read once from sysfs."""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path

from pcipassd.address import BDF_RE, Address, PciId
from pcipassd.host import Host
from pcipassd.safefile import read_host
from pcipassd.value import frozen

CLASS_BRIDGE_HOST = 0x0600
CLASS_BRIDGE_PCI = 0x0604
VGA_CLASSES = (0x0300, 0x0001)  # VGA controller; a pre-PCI-2.0 VGA device


@frozen
class Device:
    """One PCI function as sysfs shows it."""

    bdf: str
    id: PciId
    cls: int  # 24-bit class code, e.g. 0x020000
    driver: str | None
    override: str | None
    group: str | None  # IOMMU group number, None without an IOMMU
    boot_vga: bool = False
    # Read only for a slot with several functions present (see card.py): the multi-function
    # bit of function 0's header type, and a VF's PF (its `physfn` link)
    multifunction: bool = False
    physfn: str | None = None

    @property
    def is_bridge(self) -> bool:
        """Host and PCI-to-PCI bridges are never bound, whatever the config says."""
        return self.cls >> 16 == 0x06 and (self.cls >> 8) in (CLASS_BRIDGE_HOST, CLASS_BRIDGE_PCI)

    @property
    def driver_label(self) -> str:
        return self.driver or "(none)"


def read_attr(path: str) -> str | None:
    """A sysfs attribute's text, stripped; None when it cannot be read. One open and one read:
    a scan reads five of these per device (see bench/scale_plan.py)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 65536).decode("utf-8", "replace").strip()
    except OSError:
        return None
    finally:
        os.close(fd)


def _link_name(path: str | Path) -> str | None:
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return None


def device_attr(host: Host, bdf: str, name: str) -> str | None:
    """The device's sysfs attribute `name` (`sriov_numvfs`), stripped; None when unreadable."""
    return read_attr(os.path.join(host.pci_devices, bdf, name))


def device_link(host: Host, bdf: str, name: str) -> str | None:
    """Where the device's sysfs link `name` points (`physfn`, `virtfn0`: a BDF; `driver`: a
    driver's name); None when there is no such link."""
    return _link_name(os.path.join(host.pci_devices, bdf, name))


HEADER_TYPE = 0x0E  # the header type byte in config space
MULTI_FUNCTION = 0x80  # its multi-function bit


def _multifunction(path: str) -> bool:
    """The multi-function bit of the header type in the device's `config` (within the first 64
    bytes, which any user may read); False when it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        byte = os.pread(fd, 1, HEADER_TYPE)
        return bool(byte) and bool(byte[0] & MULTI_FUNCTION)
    except OSError:
        return False
    finally:
        os.close(fd)


def read_device(host: Host, bdf: str) -> Device | None:
    """The device's current state, or None when it is not present."""
    return _read_device(os.fspath(host.pci_devices), bdf, shared_slot=True)


def _read_device(devices: str, bdf: str, *, shared_slot: bool = False) -> Device | None:
    """`shared_slot`: other functions of its slot may be present, so read what makes a card
    (function 0's multi-function bit, a VF's PF): two more reads only for such slots."""
    d = f"{devices}/{bdf}/"
    vendor, device, cls = read_attr(d + "vendor"), read_attr(d + "device"), read_attr(d + "class")
    if vendor is None or device is None:
        return None
    override = read_attr(d + "driver_override")
    code = int(cls, 16) if cls else 0
    return Device(
        bdf=bdf,
        id=PciId(int(vendor, 16), int(device, 16)),
        cls=code,
        driver=_link_name(d + "driver"),
        override=None if override in (None, "", "(null)") else override,
        group=_link_name(d + "iommu_group"),
        # the kernel has boot_vga only for VGA devices (pci_is_vga): spare the others a read
        boot_vga=code >> 8 in VGA_CLASSES and read_attr(d + "boot_vga") == "1",
        multifunction=shared_slot and bdf.endswith(".0") and _multifunction(d + "config"),
        physfn=_link_name(d + "physfn") if shared_slot and not bdf.endswith(".0") else None,
    )


def read_reset_method(host: Host, bdf: str) -> str | None:
    """The device's sysfs `reset_method`: the reset methods the kernel will try, in order
    ("flr bus"; "" when reset was disabled). None when there is no such file: a kernel before
    5.15, or a device the kernel has no reset method for. Read only for the devices whose entry
    sets `reset_method:`."""
    text = read_attr(os.path.join(host.pci_devices, bdf, "reset_method"))
    return None if text is None else " ".join(text.split())


def subsystem_id(host: Host, bdf: str) -> PciId | None:
    """The device's subsystem vendor:device (the card's maker and model), None when sysfs does
    not say. Read only on demand: a scan does not need it."""
    d = os.path.join(host.pci_devices, bdf, "")
    vendor, device = read_attr(d + "subsystem_vendor"), read_attr(d + "subsystem_device")
    try:
        return PciId(int(vendor, 16), int(device, 16)) if vendor and device else None
    except ValueError:
        return None


Slot = tuple[int, int, int]  # domain, bus, slot


@frozen
class Inventory:
    """The devices by BDF, and indexes built once on first use, so that selecting N devices
    by N entries, and looking up their IOMMU groups, costs N lookups, not N scans."""

    devices: Mapping[str, Device]  # by BDF, sorted

    @cached_property
    def _by_slot(self) -> dict[Slot, dict[int, Device]]:
        out: dict[Slot, dict[int, Device]] = {}
        for d in self.devices.values():
            a = Address.parse(d.bdf)
            out.setdefault((a.domain, a.bus, a.slot), {})[a.function or 0] = d
        return out

    @cached_property
    def _by_id(self) -> dict[PciId, list[Device]]:
        out: dict[PciId, list[Device]] = {}
        for d in self.devices.values():
            out.setdefault(d.id, []).append(d)
        return out

    @cached_property
    def _by_group(self) -> dict[str, list[Device]]:
        out: dict[str, list[Device]] = {}
        for d in self.devices.values():
            if d.group is not None:
                out.setdefault(d.group, []).append(d)
        return out

    def at(self, address: Address) -> list[Device]:
        """The devices at `address` (every function of the slot for `.*`), in BDF order."""
        functions = self._by_slot.get((address.domain, address.bus, address.slot), {})
        if address.function is not None:
            found = functions.get(address.function)
            return [found] if found is not None else []
        return [functions[f] for f in sorted(functions)]

    def with_id(self, pci_id: PciId) -> list[Device]:
        """The devices with this vendor:device, in BDF order."""
        return list(self._by_id.get(pci_id, ()))

    def group_members(self, group: str | None) -> list[Device]:
        if group is None:
            return []
        return list(self._by_group.get(group, ()))


def driver_of(host: Host, bdf: str) -> str | None:
    """The driver the device is bound to now (None: unbound, or not present)."""
    return device_link(host, bdf, "driver")


def scan(host: Host) -> Inventory:
    try:
        names = sorted(n for n in os.listdir(host.pci_devices) if BDF_RE.match(n))
    except FileNotFoundError:
        names = []
    devices = {}
    where = os.fspath(host.pci_devices)
    slots: dict[str, int] = {}
    for bdf in names:
        slots[bdf[:-2]] = slots.get(bdf[:-2], 0) + 1
    for bdf in names:
        dev = _read_device(where, bdf, shared_slot=slots[bdf[:-2]] > 1)
        if dev is not None:
            devices[bdf] = dev
    return Inventory(devices)


def kernel_release(host: Host) -> str:
    """The running kernel's release ("6.1.0-18-amd64"), "" when it cannot be read."""
    return (read_host(host.path("/proc/sys/kernel/osrelease")) or "").strip()


def iommu_groups(host: Host) -> list[str]:
    """The IOMMU groups' numbers (here, not in iommu.py: apply needs only this; see
    bench/noop_apply.py)."""
    try:
        return sorted(os.listdir(host.path("/sys/kernel/iommu_groups")))
    except OSError:
        return []


def iommu_active(host: Host) -> bool:
    return bool(iommu_groups(host))


def listed_modules(host: Host, listing: str) -> frozenset[str]:
    """The module names (dashes as underscores) in /lib/modules/RELEASE/`listing`
    (modules.builtin: built into the kernel; modules.dep: installed as modules). Read once per
    version of the file: a run asks for every device it moves."""
    release = kernel_release(host)
    if not release:
        return frozenset()
    path = str(host.path(f"/lib/modules/{release}/{listing}"))
    try:
        st = os.stat(path)
    except OSError:
        return frozenset()
    key = (st.st_ino, st.st_mtime_ns, st.st_size)
    known = _LISTED.get(path)
    if known is None or known[0] != key:
        text = read_host(Path(path)) or ""
        known = _LISTED[path] = (key, frozenset(
            os.path.basename(line.split(":", 1)[0]).split(".ko", 1)[0].replace("-", "_")
            for line in text.splitlines() if line.strip()))
    return known[1]


# each listing read so far: (inode, mtime, size) when read, its modules
_LISTED: dict[str, tuple[tuple[int, int, int], frozenset[str]]] = {}


def group_key(group: str | None) -> tuple[int, str]:
    """IOMMU groups in numeric order; no group (the IOMMU is off) last."""
    if group is None:
        return (1 << 31, "")
    return (int(group), "") if group.isdigit() else (1 << 30, group)


def driver_loaded(host: Host, driver: str) -> bool:
    return (host.pci_drivers / driver).is_dir()


def module_of(host: Host, driver: str) -> str:
    """The module that provides `driver` (e.g. xhci_hcd comes from xhci_pci)."""
    try:
        return os.path.basename(os.readlink(host.pci_drivers / driver / "module"))
    except OSError:
        return driver.replace("-", "_")


def modalias(host: Host, bdf: str) -> str | None:
    """What udev loads a driver for: `pci:v00008086d000010D3sv...`."""
    return read_attr(os.path.join(host.pci_devices, bdf, "modalias"))


@frozen
class Details:
    """What the node document shows of a device beyond what a scan reads (read only for the
    devices it describes: the scan, on the boot path, reads five attributes per device)."""

    subsystem: PciId | None  # subsystem vendor:device
    numa_node: int | None  # None: no NUMA information (sysfs says -1)


def read_details(host: Host, bdf: str) -> Details:
    d = f"{os.fspath(host.pci_devices)}/{bdf}/"
    sv, sd = read_attr(d + "subsystem_vendor"), read_attr(d + "subsystem_device")
    numa = read_attr(d + "numa_node")
    try:
        subsystem = PciId(int(sv, 16), int(sd, 16)) if sv and sd else None
    except ValueError:
        subsystem = None
    try:
        node = int(numa) if numa is not None else -1
    except ValueError:
        node = -1
    return Details(subsystem, node if node >= 0 else None)
