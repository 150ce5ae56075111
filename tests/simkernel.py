"""A simulated Linux PCI core for the test suite.

`SimKernel` keeps a real sysfs-shaped tree under `root` (a tmp dir standing for `/`). pcipassd
reads that tree with ordinary file reads and changes it only through `write()` / `modprobe()`,
which react as Linux does (drivers/pci/pci-driver.c, drivers/base/bus.c): same files, same
relative symlinks, same errno. The tree is the state: who is bound to what and each device's
driver_override are read back from the files, so tests check exactly what pcipassd would see.
Only what cannot be read from sysfs (id tables, probe failures, loadable modules) lives in memory.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pcipassd.errors import KernelError

RELEASE = "6.1.0-sim"
BDF_RE = re.compile(r"[0-9a-f]{4}:[0-9a-f]{2}:[01][0-9a-f]\.[0-7]")
_MODULE_DIR = "kernel/drivers/pci"  # where the sim's .ko files live under lib/modules/<release>

# The typical machine built by `build_typical_machine` (the `sim_host` fixture).
HOST_BRIDGE = "0000:00:00.0"  # 8086:29c0 host bridge, class 0x060000, no driver, group 0
BOOT_VGA = "0000:00:01.0"  # 1234:1111 QEMU VGA, class 0x030000, boot_vga=1, no driver, group 1
NIC_A = "0000:00:02.0"  # 8086:10d3 e1000e, group 2
NIC_B = "0000:00:03.0"  # 8086:10d3 e1000e (identical to NIC_A), group 3
NIC_E1000 = "0000:00:04.0"  # 8086:100e e1000, group 4
ORIGINAL = {NIC_A: "e1000e", NIC_B: "e1000e", NIC_E1000: "e1000"}  # the NICs' own drivers
PCIE_BRIDGE = "0000:00:1c.0"  # 1b36:000c PCIe root port, class 0x060400, pcieport, group 5
DISK = "0000:01:00.0"  # 1af4:1001 virtio-blk behind PCIE_BRIDGE, class 0x010000, virtio-pci, g6
TYPICAL_DEVICES = (HOST_BRIDGE, BOOT_VGA, NIC_A, NIC_B, NIC_E1000, PCIE_BRIDGE, DISK)


def _oserror(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def _hexfile(value: int, width: int = 4) -> str:
    return f"0x{value:0{width}x}\n"


def _config_space(vendor: int, device: int, cls: int, multifunction: bool,
                  flr: bool | None = None) -> bytes:
    """A device's config space: in the first 64 bytes (what a user who is not root can read),
    the IDs, the class and the header type (1 for a PCI-to-PCI bridge; bit 7 =
    multi-function). `flr` None: 256 bytes, no capabilities (the rest reads as zero). Else a
    PCIe device's 4096 bytes: the capability list (status bit 4, pointer at 0x34) holds a power
    management capability (0x01) at 0x40, then the PCIe capability (0x10) at 0x50, whose
    Device Capabilities (0x54) has FLR (bit 28) when `flr`."""
    space = bytearray(256 if flr is None else 4096)
    space[0:4] = vendor.to_bytes(2, "little") + device.to_bytes(2, "little")
    space[9:12] = cls.to_bytes(3, "little")  # prog-if, subclass, base class
    space[0x0E] = (0x01 if cls >> 8 == 0x0604 else 0x00) | (0x80 if multifunction else 0)
    if flr is not None:
        space[0x06] = 0x10  # status: capabilities list
        space[0x34] = 0x40
        space[0x40:0x42] = bytes([0x01, 0x50])  # PM, next 0x50
        space[0x50:0x52] = bytes([0x10, 0x00])  # PCIe, last
        space[0x54:0x58] = ((1 << 28) if flr else 0).to_bytes(4, "little")
    return bytes(space)


CONFIG_AS_USER = 64  # what pci_read_config lets a user without CAP_SYS_ADMIN read


@dataclass
class _Driver:
    name: str
    module: str
    ids: list[tuple[int, int]]
    builtin: bool
    probe_error: int | None
    needs_iommu: bool
    dynamic_ids: list[tuple[int, int]] = field(default_factory=list)
    device_errors: dict[str, int] = field(default_factory=dict)
    # has a sriov_configure callback (igb does; pci-stub never; vfio-pci only with its module
    # parameter enable_sriov=1, see SimKernel.vfio_enable_sriov)
    sriov: bool = False


@dataclass
class _Sriov:
    """A PF's SR-IOV capability (drivers/pci/iov.c): TotalVFs, the VF device ID, First VF
    Offset and VF Stride (routing-ID arithmetic), and where its VFs' IOMMU groups come from:
    None = the PF's group (no ACS), else each VF gets a group of its own from this number up."""
    total: int
    vf_device: int
    offset: int
    stride: int
    own_groups: int | None


@dataclass(frozen=True)
class _Device:
    bdf: str
    vendor: int
    device: int
    path: Path
    iommu_group: int | None


# drivers/pci/pci.c pci_reset_fn_methods[] (Linux 6.7+), in the kernel's default order
RESET_METHODS = ("device_specific", "acpi", "flr", "af_flr", "pm", "bus", "cxl_bus")


class SimKernel:
    """A model of the PCI core over the directory tree at `root`; implements pcipassd's Kernel."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sys = root / "sys"
        self.pci = self.sys / "bus" / "pci"
        self.modules_dir = root / "lib" / "modules" / RELEASE
        self.writes: list[tuple[str, str]] = []  # every write attempt: (path under root, data)
        self.modprobes: list[str] = []  # every modprobe call, the module as given
        self._drivers: dict[str, _Driver] = {}
        self._registered: list[str] = []  # registration order = the order probing tries drivers
        self._devices: dict[str, _Device] = {}  # insertion order = the bus's device list
        self._reset_supported: dict[str, tuple[str, ...]] = {}  # by BDF, in kernel order
        self.blacklist: set[str] = set()  # modules `modprobe -b` refuses (modprobe.d blacklist)
        # Called after each write that succeeded, with (path under root, data): lets a test
        # change the machine between two of pcipassd's steps (e.g. hot-remove a device).
        self.after_write: Callable[[str, str], None] | None = None
        # udev's queue: devices whose add event udev has not handled yet (coldplug still
        # running); `settle` handles them, loading each one's module as udev would.
        self.udev_queue: list[str] = []
        self.settles = 0  # how many times pcipassd waited for udev
        self._sriov: dict[str, _Sriov] = {}  # PFs with an SR-IOV capability, by BDF
        self.vfio_enable_sriov = False  # vfio-pci's module parameter enable_sriov
        # Who reads: root (True) sees all of `config` and /proc/iomem's addresses; a user
        # (as_user()) the first 64 bytes of `config` and every iomem address as zero.
        self.privileged = True
        self._config: dict[str, bytes] = {}  # each device's whole config space, by BDF
        # /proc/iomem's entries: (start, end, name, depth), in the file's order
        self.iomem: list[tuple[int, int, str, int]] = [(0x1000, 0x9FBFF, "System RAM", 0)]
        for d in ("devices", "drivers"):
            (self.pci / d).mkdir(parents=True, exist_ok=True)
        for d in ("devices", "kernel/iommu_groups", "module", "class/iommu"):
            (self.sys / d).mkdir(parents=True, exist_ok=True)
        (self.pci / "drivers_probe").write_text("")
        (self.pci / "rescan").write_text("")
        self.modules_dir.mkdir(parents=True, exist_ok=True)
        (self.modules_dir / "modules.builtin").write_text("")
        (self.modules_dir / "modules.dep").write_text("")
        (root / "proc/sys/kernel").mkdir(parents=True, exist_ok=True)
        (root / "proc/sys/kernel/osrelease").write_text(RELEASE + "\n")
        (root / "proc/modules").write_text("")  # a kernel with module support (CONFIG_MODULES)
        (self.modules_dir / "modules.alias").write_text("")
        self._write_iomem()
        self._real_root = Path(os.path.realpath(root))

    # ---- building the machine ------------------------------------------------------------

    def add_driver(
        self,
        name: str,
        ids: Iterable[tuple[int, int]] = (),
        *,
        module: str | None = None,
        loaded: bool = True,
        builtin: bool = False,
        probe_error: int | None = None,
        needs_iommu: bool = False,
        sriov: bool = False,
    ) -> None:
        """Declare a PCI driver. Built in or loaded: registered now, which (like
        pci_register_driver) probes every unbound device it matches. Otherwise it is only a
        loadable module listed in modules.dep, with no driver dir until `modprobe`."""
        if name in self._drivers:
            raise ValueError(f"driver {name} already declared")
        mod = (module or name).replace("-", "_")
        drv = _Driver(name, mod, list(ids), builtin, probe_error, needs_iommu, sriov=sriov)
        self._drivers[name] = drv
        for vendor, device in drv.ids:  # as depmod writes it from the MODULE_DEVICE_TABLE
            self._list_module("modules.alias",
                              f"alias pci:v0000{vendor:04X}d0000{device:04X}sv*sd*bc*sc*i* {mod}\n")
        if builtin:
            self._list_module("modules.builtin", f"{_MODULE_DIR}/{mod}.ko\n")
        else:
            self._list_module("modules.dep", f"{_MODULE_DIR}/{mod}.ko:\n")
            ko = self.modules_dir / _MODULE_DIR / f"{mod}.ko"
            ko.parent.mkdir(parents=True, exist_ok=True)
            ko.touch()
        if builtin or loaded:
            self._register(drv)

    def set_probe_error(self, driver: str, bdf: str, error: int | None) -> None:
        """Make `driver`'s probe of `bdf` fail with errno `error` (None: back to the default)."""
        if error is None:
            self._drivers[driver].device_errors.pop(bdf, None)
        else:
            self._drivers[driver].device_errors[bdf] = error

    def add_device(
        self,
        bdf: str,
        vendor: int,
        device: int,
        *,
        cls: int = 0x020000,
        subsystem: tuple[int, int] | None = None,
        driver: str | None = "auto",
        iommu_group: int | None = None,
        parent: str | None = None,
        boot_vga: bool | None = None,
        multifunction: bool = False,
        physfn: str | None = None,
        reset_methods: Iterable[str] | None = None,
        _base: Path | None = None,
        flr: bool | None = None,
        d3cold_allowed: bool | None = None,
        bars: Iterable[tuple[int, int]] = (),
    ) -> Path:
        """Hot-plug a device and return its dir. driver="auto" probes it like hotplug does,
        None leaves it unbound, a name binds it to that (registered) driver whatever its ids.
        `subsystem` defaults to (vendor, device). `multifunction`: the multi-function bit in the
        header type (config byte 0x0e, bit 7), as function 0 of a card has it. `physfn`: the
        device is an SR-IOV VF of that PF (the `physfn` link, and the PF's `virtfnN`).
        `reset_methods`: the reset methods the device supports (what the kernel's probe of each
        finds); they give it a `reset_method` file listing them in the kernel's order, as Linux
        5.15+ does. None, or none supported: no such file (an older kernel, or no reset).
        `flr`: a PCIe device (4096 bytes of config space) whose Device Capabilities has FLR
        or not (None: 256 bytes, no capabilities). `d3cold_allowed`: that file (CONFIG_PM and
        CONFIG_ACPI), None: none. `bars`: its memory BARs, (start, size) each, 64-bit
        prefetchable, in `resource` (lines 0, 2, ...: a 64-bit BAR takes two) and /proc/iomem
        (named by the BDF)."""
        if not BDF_RE.fullmatch(bdf) or bdf in self._devices:
            raise ValueError(f"bad or duplicate BDF {bdf!r}")
        if boot_vga is not None and cls >> 8 != 0x0300:
            raise ValueError("boot_vga exists only for VGA-class (0x0300xx) devices")
        base = self.sys / "devices" / f"pci{bdf[:7]}" if parent is None else self.device_dir(parent)
        base = _base or base  # a VF sits beside its PF
        path = base / bdf
        path.mkdir(parents=True)
        sv, sd = subsystem or (vendor, device)
        files = {
            "vendor": _hexfile(vendor),
            "device": _hexfile(device),
            "subsystem_vendor": _hexfile(sv),
            "subsystem_device": _hexfile(sd),
            "class": _hexfile(cls, 6),
            "driver_override": "(null)\n",
            "modalias": f"pci:v{vendor:08X}d{device:08X}sv{sv:08X}sd{sd:08X}"
            f"bc{cls >> 16:02X}sc{(cls >> 8) & 0xFF:02X}i{cls & 0xFF:02X}\n",
            "numa_node": "-1\n",
            "enable": "0\n",
        }
        if boot_vga is not None:
            files["boot_vga"] = f"{int(boot_vga)}\n"
        if d3cold_allowed is not None:
            files["d3cold_allowed"] = f"{int(d3cold_allowed)}\n"
        resources = [(0, 0, 0)] * 13  # pci-sysfs resource_show: BARs 0-5, ROM, VF BARs 7-12
        for n, (start, size) in enumerate(bars):
            resources[2 * n] = (start, start + size - 1, 0x0014220C)  # MEM|PREFETCH|MEM_64
            self.iomem.append((start, start + size - 1, bdf, 1))
        files["resource"] = "".join(f"0x{a:016x} 0x{b:016x} 0x{c:016x}\n"
                                    for a, b, c in resources)
        for fname, text in files.items():
            (path / fname).write_text(text)
        self._config[bdf] = _config_space(vendor, device, cls, multifunction, flr)
        self._write_config(path, bdf)
        if physfn is not None:
            pf = self.device_dir(physfn)
            self._link(path / "physfn", pf)
            self._link(pf / f"virtfn{len(list(pf.glob('virtfn*')))}", path)
        self._link(path / "subsystem", self.pci)
        self._link(self.pci / "devices" / bdf, path)
        if iommu_group is not None:
            group = self.sys / "kernel" / "iommu_groups" / str(iommu_group)
            (group / "devices").mkdir(parents=True, exist_ok=True)
            self._link(group / "devices" / bdf, path)
            self._link(path / "iommu_group", group)
        supported = tuple(m for m in RESET_METHODS if m in set(reset_methods or ()))
        if supported:  # pci_dev_reset_method_attr_is_visible: only with a method at probe
            (path / "reset_method").write_text(" ".join(supported) + "\n")
            self._reset_supported[bdf] = supported
        self._devices[bdf] = _Device(bdf, vendor, device, path, iommu_group)
        if bars:
            self._write_iomem()
        if driver == "auto":
            self._device_attach(bdf)
        elif driver is not None:
            if driver not in self._registered:
                raise ValueError(f"driver {driver} is not registered")
            self._attach(self._drivers[driver], bdf)
        return path

    def add_sriov(self, pf: str, total: int, vf_device: int, *, offset: int = 0x80,
                  stride: int = 2, own_groups: int | None = None) -> None:
        """Give a present device an SR-IOV capability: the PF files of drivers/pci/iov.c
        (sriov_totalvfs, sriov_numvfs 0, sriov_drivers_autoprobe 1, sriov_offset, sriov_stride,
        sriov_vf_device: hex without 0x). `own_groups`: the VFs get IOMMU groups of their own
        from that number up (ACS on the way); None: they join the PF's group (no ACS)."""
        self._sriov[pf] = _Sriov(total, vf_device, offset, stride, own_groups)
        d = self.device_dir(pf)
        for name, text in (("sriov_totalvfs", f"{total}\n"), ("sriov_numvfs", "0\n"),
                           ("sriov_drivers_autoprobe", "1\n"), ("sriov_offset", f"{offset}\n"),
                           ("sriov_stride", f"{stride}\n"),
                           ("sriov_vf_device", f"{vf_device:x}\n")):
            (d / name).write_text(text)

    def numvfs(self, pf: str) -> int:
        return int((self.device_dir(pf) / "sriov_numvfs").read_text())

    def vfs_of(self, pf: str) -> list[str]:
        """The PF's VFs by index (its virtfnN links)."""
        d = self.device_dir(pf)
        return [Path(os.readlink(d / f"virtfn{i}")).name for i in range(self.numvfs(pf))]

    def autoprobe(self, pf: str) -> str:
        return (self.device_dir(pf) / "sriov_drivers_autoprobe").read_text().strip()

    def vf_bdf(self, pf: str, n: int) -> str:
        """pci_iov_virtfn_bus/_devfn: (bus << 8 | devfn) + offset + n * stride."""
        cap = self._sriov[pf]
        bus, devfn = int(pf[5:7], 16), int(pf[8:10], 16) << 3 | int(pf[11])
        rid = (bus << 8 | devfn) + cap.offset + n * cap.stride
        return f"{pf[:4]}:{rid >> 8:02x}:{(rid & 0xFF) >> 3:02x}.{rid & 7}"

    def add_framebuffer(self, start: int, size: int, *claims: str) -> None:
        """A boot framebuffer in /proc/iomem, nested as Linux nests it under the BAR that holds
        it: sysfb's `BOOTFB` (claims: "BOOTFB", then "simpledrm" or "simplefb" below it), or
        `efifb`/`vesafb` alone."""
        depth = 1 + max((d for s, e, _, d in self.iomem if s <= start and e >= start), default=-1)
        for claim in claims:
            self.iomem.append((start, start + size - 1, claim, depth))
            depth += 1
        self._write_iomem()

    def set_lockdown(self, level: str | None) -> None:
        """/sys/kernel/security/lockdown with `level` active (None: no lockdown LSM)."""
        path = self.sys / "kernel/security/lockdown"
        if level is None:
            path.unlink(missing_ok=True)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(" ".join(f"[{w}]" if w == level else w
                                 for w in ("none", "integrity", "confidentiality")) + "\n")

    def as_user(self) -> None:
        """From now on pcipassd reads as a user without CAP_SYS_ADMIN: 64 bytes of each
        `config`, /proc/iomem with every address zero (since Linux 4.6)."""
        self.privileged = False
        for bdf, dev in self._devices.items():
            self._write_config(dev.path, bdf)
        self._write_iomem()

    def _write_config(self, path: Path, bdf: str) -> None:
        space = self._config[bdf]
        (path / "config").write_bytes(space if self.privileged else space[:CONFIG_AS_USER])

    def _write_iomem(self) -> None:
        lines = []
        for start, end, name, depth in sorted(self.iomem, key=lambda e: (e[0], e[3])):
            a, b = (start, end) if self.privileged else (0, 0)
            lines.append(f"{'  ' * depth}{a:08x}-{b:08x} : {name}\n")
        (self.root / "proc/iomem").write_text("".join(lines))

    def enable_iommu(self, kind: str = "intel") -> None:
        """What an active IOMMU shows besides groups: /sys/class/iommu/<unit> and the ACPI table."""
        unit, table = {"intel": ("dmar0", "DMAR"), "amd": ("ivhd0", "IVRS")}[kind]
        target = self.sys / "devices" / "virtual" / "iommu" / unit
        target.mkdir(parents=True, exist_ok=True)
        self._link(self.sys / "class" / "iommu" / unit, target)
        (self.sys / "firmware/acpi/tables").mkdir(parents=True, exist_ok=True)
        (self.sys / "firmware/acpi/tables" / table).write_bytes(table.encode())

    def unload(self, driver: str) -> None:
        """rmmod: unbind the driver's devices, unregister it (its dynamic ids are freed with it)."""
        drv = self._drivers[driver]
        if drv.builtin or driver not in self._registered:
            raise ValueError(f"driver {driver} is built in or not loaded")
        for bdf in self._devices:
            if self.driver_of(bdf) == driver:
                self._detach(bdf)
        self._registered.remove(driver)
        drv.dynamic_ids.clear()
        shutil.rmtree(self.driver_dir(driver))
        if not any(self._drivers[n].module == drv.module for n in self._registered):
            shutil.rmtree(self.sys / "module" / drv.module)

    def remove_device(self, bdf: str) -> None:
        """Hot-unplug: detach from its driver, then the device and its links disappear."""
        dev = self._devices.pop(bdf)
        if (dev.path / "driver").is_symlink():
            self._devices[bdf] = dev
            self._detach(bdf)
            del self._devices[bdf]
        (self.pci / "devices" / bdf).unlink()
        if dev.iommu_group is not None:
            (self.sys / "kernel/iommu_groups" / str(dev.iommu_group) / "devices" / bdf).unlink()
        shutil.rmtree(dev.path)

    # ---- the Kernel protocol ---------------------------------------------------------------

    def write(self, path: Path, data: str) -> None:
        """One sysfs write, as LiveKernel does it (open O_WRONLY|O_NOFOLLOW, no O_CREAT)."""
        rel = os.path.relpath(os.path.abspath(path), os.path.abspath(self.root))
        self.writes.append((rel, data))
        self._write(Path(path), data)
        if self.after_write is not None:
            self.after_write(rel, data)

    def _write(self, path: Path, data: str) -> None:
        real = Path(os.path.realpath(path))
        if not real.is_relative_to(self._real_root):
            raise RuntimeError(f"SimKernel: write outside the simulated root: {path}")
        if path.is_symlink():
            raise _oserror(errno.ELOOP)  # O_NOFOLLOW on a symlink
        if not real.exists():
            raise _oserror(errno.ENOENT)  # includes attributes of an unregistered driver
        if real.is_dir():
            raise _oserror(errno.EISDIR)
        if real.parent == self._real_root / "sys/bus/pci":
            if real.name == "drivers_probe":
                return self._device_attach(self._bdf_arg(data))
            if real.name == "rescan":
                return None  # no device ever appears on its own in the model
        if real.parent.parent == self._real_root / "sys/bus/pci/drivers":
            handlers: dict[str, Callable[[_Driver, str], None]] = {
                "bind": self._bind,
                "unbind": self._unbind,
                "new_id": self._new_id,
                "remove_id": self._remove_id,
            }
            handler = handlers.get(real.name)
            if handler is not None:
                return handler(self._drivers[real.parent.name], data)
        dev = self._devices.get(real.parent.name)
        if dev and real.name == "driver_override" and self._realdir(dev) == real.parent:
            return self._set_override(dev.bdf, data)
        if dev and real.name == "reset_method" and self._realdir(dev) == real.parent:
            return self._set_reset_method(dev.bdf, real, data)
        if dev and dev.bdf in self._sriov and self._realdir(dev) == real.parent:
            if real.name == "sriov_numvfs":
                return self._set_numvfs(dev.bdf, data)
            if real.name == "sriov_drivers_autoprobe":
                return self._set_autoprobe(real, data)
            if real.name.startswith("sriov_"):  # read-only attributes (0444)
                raise _oserror(errno.EACCES)
        real.write_text(data)  # any other attribute: stored as is
        return None

    def modprobe(self, module: str) -> None:
        """Load a module ('-' and '_' are the same, as for modprobe): register its drivers, which
        probes the unbound devices they match (honouring driver_override). Already loaded or
        built in: nothing to do."""
        self.modprobes.append(module)
        mod = module.replace("-", "_")
        drivers = [d for d in self._drivers.values() if d.module == mod]
        if not drivers:
            raise KernelError(
                f"modprobe {module} failed: Module {module} not found",
                f"check that the module exists for this kernel: modinfo {module}",
            )
        for drv in drivers:
            if drv.name not in self._registered:
                self._register(drv)

    def settle(self) -> None:
        """`udevadm settle`: udev handles its queue (each device's `modprobe -b MODALIAS`)."""
        self.settles += 1
        while self.udev_queue:
            dev = self._devices[self.udev_queue.pop(0)]
            self.load_original(f"pci:v0000{dev.vendor:04X}d0000{dev.device:04X}")

    def load_original(self, modalias: str) -> None:
        """`modprobe -b MODALIAS`: load the (not blacklisted) modules whose drivers' id tables
        match; nothing matching is not an error."""
        self.modprobes.append(modalias)
        m = re.match(r"pci:v0000([0-9A-F]{4})d0000([0-9A-F]{4})", modalias)
        if m is None:
            return
        wanted = (int(m.group(1), 16), int(m.group(2), 16))
        for drv in list(self._drivers.values()):
            if (wanted in drv.ids and drv.name not in self._registered
                    and drv.module not in self.blacklist):
                self._register(drv)

    # ---- inspection (reads the tree, as pcipassd does) --------------------------------------

    def device_dir(self, bdf: str) -> Path:
        return self._devices[bdf].path

    def driver_dir(self, name: str) -> Path:
        return self.pci / "drivers" / name

    def driver_of(self, bdf: str) -> str | None:
        """The driver the `driver` symlink names, or None when unbound."""
        link = self.device_dir(bdf) / "driver"
        return Path(os.readlink(link)).name if link.is_symlink() else None

    def override_of(self, bdf: str) -> str | None:
        text = (self.device_dir(bdf) / "driver_override").read_text().rstrip("\n")
        # "": cleared by a shell script writing the file directly (the kernel shows "(null)")
        return None if text in ("", "(null)") else text

    def dynamic_ids(self, driver: str) -> list[tuple[int, int]]:
        """The ids added by new_id (not visible in sysfs)."""
        return list(self._drivers[driver].dynamic_ids)

    def is_registered(self, driver: str) -> bool:
        return self.driver_dir(driver).is_dir()

    # ---- the PCI core ------------------------------------------------------------------------

    def _matches(self, drv: _Driver, bdf: str) -> bool:
        """pci_match_device: a driver_override names the only driver allowed (ids or not);
        otherwise the dynamic ids, then the static id table."""
        override = self.override_of(bdf)
        if override is not None:
            return override == drv.name
        if not self._can_probe(bdf):
            return False
        dev = self._devices[bdf]
        return (dev.vendor, dev.device) in drv.dynamic_ids + drv.ids

    def _can_probe(self, bdf: str) -> bool:
        """pci_device_can_probe: a VF without driver_override probes only while its PF's
        sriov_drivers_autoprobe is 1 (checked at probe time, by every probe path)."""
        physfn = self.device_dir(bdf) / "physfn"
        if not physfn.is_symlink():
            return True
        pf = Path(os.readlink(physfn)).name
        return pf not in self._sriov or self.autoprobe(pf) == "1"

    def _probe(self, drv: _Driver, bdf: str) -> int | None:
        """The driver's probe(): binds, or returns an errno and leaves the device unbound.
        needs_iommu models vfio-pci refusing a device without an IOMMU group (EINVAL)."""
        err = drv.device_errors.get(bdf, drv.probe_error)
        if err is None and drv.needs_iommu and self._devices[bdf].iommu_group is None:
            err = errno.EINVAL
        if err is None:
            self._attach(drv, bdf)
        return err

    def _device_attach(self, bdf: str) -> None:
        """device_attach (hotplug, drivers_probe): an unbound device gets the first registered
        driver that matches and whose probe succeeds; a failed probe lets the next one try."""
        if self.driver_of(bdf) is not None:
            return
        for name in self._registered:
            drv = self._drivers[name]
            if self._matches(drv, bdf) and self._probe(drv, bdf) is None:
                return

    def _driver_attach(self, drv: _Driver) -> None:
        """driver_attach (driver registration, new_id): probe every unbound device the driver
        matches; probe errors are only logged by the kernel."""
        for bdf in self._devices:
            if self.driver_of(bdf) is None and self._matches(drv, bdf):
                self._probe(drv, bdf)

    def _bind(self, drv: _Driver, data: str) -> None:
        """drivers/X/bind: ENODEV unless X matches (ids or override), EBUSY if already bound
        (checked after the match, as bind_store does), else probe errors pass through."""
        bdf = self._bdf_arg(data)
        if not self._matches(drv, bdf):
            raise _oserror(errno.ENODEV)
        if self.driver_of(bdf) is not None:
            raise _oserror(errno.EBUSY)
        err = self._probe(drv, bdf)
        if err is not None:
            raise _oserror(err)

    def _unbind(self, drv: _Driver, data: str) -> None:
        """drivers/X/unbind: ENODEV if the device is not bound to X."""
        bdf = self._bdf_arg(data)
        if self.driver_of(bdf) != drv.name:
            raise _oserror(errno.ENODEV)
        self._detach(bdf)

    def _new_id(self, drv: _Driver, data: str) -> None:
        """drivers/X/new_id "vvvv dddd [...]": EEXIST if X already matches the id (kernels
        >= 5.12), then driver_attach binds every unbound device X now matches."""
        new = self._id_arg(data)
        if new in drv.dynamic_ids or new in drv.ids:
            raise _oserror(errno.EEXIST)
        drv.dynamic_ids.append(new)
        self._driver_attach(drv)

    def _remove_id(self, drv: _Driver, data: str) -> None:
        """drivers/X/remove_id: ENODEV for an id new_id never added; bound devices stay bound."""
        old = self._id_arg(data)
        if old not in drv.dynamic_ids:
            raise _oserror(errno.ENODEV)
        drv.dynamic_ids.remove(old)

    def _set_reset_method(self, bdf: str, path: Path, data: str) -> None:
        """reset_method_store (drivers/pci/pci.c, 6.x): "" (or "\\n") disables reset;
        "default" restores the kernel's order; else a space-separated list, each name known
        and supported by the device, else EINVAL and the methods stay as they were."""
        supported = self._reset_supported[bdf]
        if data in ("", "\n"):
            path.write_text("")
            return
        if data in ("default", "default\n"):
            path.write_text(" ".join(supported) + "\n")
            return
        chosen: list[str] = []
        for token in data.split(" "):
            if token in ("", "\n"):
                continue
            name = token.strip()
            if name not in RESET_METHODS or name not in supported:
                raise _oserror(errno.EINVAL)  # "Invalid" / "Unsupported reset method"
            if len(chosen) == len(RESET_METHODS):  # n == PCI_NUM_RESET_METHODS - 1 (8 - 1)
                raise _oserror(errno.EINVAL)  # "Too many reset methods"
            chosen.append(name)
        path.write_text(" ".join(chosen) + "\n" if chosen else "")

    def support_reset(self, bdf: str, *methods: str) -> None:
        """Give a present device the reset methods it supports, as if it had been found with
        them (its `reset_method` file lists them in the kernel's order)."""
        supported = tuple(m for m in RESET_METHODS if m in methods)
        self._reset_supported[bdf] = supported
        (self.device_dir(bdf) / "reset_method").write_text(" ".join(supported) + "\n")

    def reset_method_of(self, bdf: str) -> str | None:
        """The device's `reset_method` as read (None: no such file)."""
        path = self.device_dir(bdf) / "reset_method"
        return path.read_text() if path.exists() else None

    def _set_autoprobe(self, path: Path, data: str) -> None:
        """sriov_drivers_autoprobe: kstrtobool (1/0, y/n, on/off), else EINVAL."""
        word = data.strip().lower()
        if word in ("1", "y", "yes", "on", "true"):
            path.write_text("1\n")
        elif word in ("0", "n", "no", "off", "false"):
            path.write_text("0\n")
        else:
            raise _oserror(errno.EINVAL)

    def _set_numvfs(self, pf: str, data: str) -> None:
        """sriov_numvfs_store (drivers/pci/iov.c): a number, else EINVAL; above TotalVFs
        ERANGE; the same value: nothing; PF without a driver, or its driver without
        sriov_configure, ENOENT; non-zero to another non-zero EBUSY; 0 removes the VFs."""
        try:
            want = int(data.strip(), 10)
        except ValueError:
            raise _oserror(errno.EINVAL) from None
        cap = self._sriov[pf]
        if want < 0 or want > cap.total:
            raise _oserror(errno.ERANGE)
        now = self.numvfs(pf)
        if want == now:
            return
        driver = self.driver_of(pf)
        drv = self._drivers.get(driver) if driver else None
        capable = drv is not None and (drv.sriov or (drv.name == "vfio-pci"
                                                     and self.vfio_enable_sriov))
        if not capable:
            raise _oserror(errno.ENOENT)  # "Driver does not support SRIOV configuration"
        if want == 0:
            self._remove_vfs(pf)
            return
        if now:
            raise _oserror(errno.EBUSY)  # "%d VFs already enabled. Disable before enabling"
        self._add_vfs(pf, want)

    def _add_vfs(self, pf: str, n: int) -> None:
        """sriov_enable: per VF, the device is added, linked (virtfnN, physfn) and probed at
        once, in the writer's context (unless autoprobe is 0: then only a driver_override could
        let it probe, and a new device has none); udev hears of it only afterwards."""
        cap, parent = self._sriov[pf], self._devices[pf]
        pf_dir = self.device_dir(pf)
        (pf_dir / "sriov_numvfs").write_text(f"{n}\n")
        for i in range(n):
            bdf = self.vf_bdf(pf, i)
            group = parent.iommu_group if cap.own_groups is None else cap.own_groups + i
            base = Path(os.path.realpath(pf_dir)).parent
            path = base / bdf
            self.add_device(bdf, parent.vendor, cap.vf_device, driver=None, iommu_group=group,
                            parent=None, physfn=pf, _base=path.parent)
            self._device_attach(bdf)
            self.udev_queue.append(bdf)

    def _remove_vfs(self, pf: str) -> None:
        """sriov_disable: every VF is unbound and removed, then NumVFs is 0."""
        for i, vf in enumerate(self.vfs_of(pf)):
            self.remove_device(vf)
            (self.device_dir(pf) / f"virtfn{i}").unlink()
            if vf in self.udev_queue:
                self.udev_queue.remove(vf)
        (self.device_dir(pf) / "sriov_numvfs").write_text("0\n")

    def _set_override(self, bdf: str, data: str) -> None:
        """driver_override: cut at the first newline; empty clears (reads back "(null)"). Only
        recorded: it takes effect at the next probe and unbinds nothing."""
        name = data.split("\n", 1)[0]
        if len(data) >= 4096:
            raise _oserror(errno.EINVAL)
        (self.device_dir(bdf) / "driver_override").write_text(f"{name or '(null)'}\n")

    # ---- tree plumbing -------------------------------------------------------------------------

    def _register(self, drv: _Driver) -> None:
        """pci_register_driver: the driver dir and /sys/module entry appear, then driver_attach."""
        ddir = self.driver_dir(drv.name)
        ddir.mkdir()
        for attr in ("bind", "unbind", "new_id", "remove_id"):
            (ddir / attr).write_text("")
        mdir = self.sys / "module" / drv.module
        mdir.mkdir(exist_ok=True)
        self._link(ddir / "module", mdir)
        self._registered.append(drv.name)
        self._driver_attach(drv)

    def _attach(self, drv: _Driver, bdf: str) -> None:
        dev = self._devices[bdf]
        self._link(dev.path / "driver", self.driver_dir(drv.name))
        self._link(self.driver_dir(drv.name) / bdf, dev.path)
        (dev.path / "enable").write_text("1\n")

    def _detach(self, bdf: str) -> None:
        dev = self._devices[bdf]
        driver = self.driver_of(bdf)
        assert driver is not None
        if bdf in self._sriov and self.numvfs(bdf):  # the PF driver's remove: pci_disable_sriov
            self._remove_vfs(bdf)
        (self.driver_dir(driver) / bdf).unlink()
        (dev.path / "driver").unlink()
        (dev.path / "enable").write_text("0\n")

    def _link(self, link: Path, target: Path) -> None:
        """A relative symlink, as sysfs makes them, so resolving never leaves the root."""
        link.symlink_to(os.path.relpath(target, link.parent))

    def _realdir(self, dev: _Device) -> Path:
        return Path(os.path.realpath(dev.path))

    def _list_module(self, listing: str, line: str) -> None:
        path = self.modules_dir / listing
        if line not in path.read_text().splitlines(keepends=True):
            with path.open("a") as f:
                f.write(line)

    def _bdf_arg(self, data: str) -> str:
        """A BDF written to bind/unbind/drivers_probe (sysfs_streq: one trailing newline is ok);
        no such device: ENODEV."""
        bdf = data[:-1] if data.endswith("\n") else data
        if bdf not in self._devices:
            raise _oserror(errno.ENODEV)
        return bdf

    def _id_arg(self, data: str) -> tuple[int, int]:
        """ "vvvv dddd [more fields]" in hex, as new_id/remove_id sscanf it; else EINVAL."""
        fields = data.split()
        if len(fields) < 2:
            raise _oserror(errno.EINVAL)
        try:
            vendor, device = int(fields[0], 16), int(fields[1], 16)
        except ValueError:
            raise _oserror(errno.EINVAL) from None
        if not (0 <= vendor <= 0xFFFFFFFF and 0 <= device <= 0xFFFFFFFF):
            raise _oserror(errno.EINVAL)
        return vendor, device


def build_typical_machine(sim: SimKernel) -> SimKernel:
    """A small q35-like host (the BDF constants above): original drivers e1000e, e1000,
    virtio-pci loaded, pcieport built in, pci-stub and vfio-pci (needs an IOMMU group) loadable.
    Intel IOMMU on, every device in its own group."""
    sim.enable_iommu("intel")
    sim.add_driver("e1000e", [(0x8086, 0x10D3)])
    sim.add_driver("e1000", [(0x8086, 0x100E)])
    sim.add_driver("virtio-pci", [(0x1AF4, 0x1001)])
    sim.add_driver("pcieport", [(0x1B36, 0x000C)], builtin=True)
    sim.add_driver("pci-stub", loaded=False)
    sim.add_driver("vfio-pci", loaded=False, needs_iommu=True)
    sim.add_device(HOST_BRIDGE, 0x8086, 0x29C0, cls=0x060000, driver=None, iommu_group=0)
    sim.add_device(BOOT_VGA, 0x1234, 0x1111, cls=0x030000, iommu_group=1, boot_vga=True)
    sim.add_device(NIC_A, 0x8086, 0x10D3, subsystem=(0x8086, 0xA01F), iommu_group=2)
    sim.add_device(NIC_B, 0x8086, 0x10D3, subsystem=(0x8086, 0xA01F), iommu_group=3)
    sim.add_device(NIC_E1000, 0x8086, 0x100E, iommu_group=4)
    sim.add_device(PCIE_BRIDGE, 0x1B36, 0x000C, cls=0x060400, iommu_group=5)
    sim.add_device(DISK, 0x1AF4, 0x1001, cls=0x010000, iommu_group=6, parent=PCIE_BRIDGE)
    return sim


UNIT_STATES = ("enabled", "disabled", "masked", "masked-empty", "removed")


def set_unit_state(root: Path, state: str) -> None:
    """pcipassd.service in the root file system at `root` as `systemctl` or the package manager
    leaves it: installed in /usr/lib and enabled (the WantedBy= link), installed but disabled,
    masked (a link to /dev/null, or an empty file in /etc), or removed (no unit file at all)."""
    unit = root / "usr/lib/systemd/system/pcipassd.service"
    wants = root / "etc/systemd/system/sysinit.target.wants/pcipassd.service"
    mask = root / "etc/systemd/system/pcipassd.service"
    for path in (wants, mask):
        if path.is_symlink() or path.exists():
            path.unlink()
    unit.parent.mkdir(parents=True, exist_ok=True)
    wants.parent.mkdir(parents=True, exist_ok=True)
    if state == "removed":
        unit.unlink(missing_ok=True)
        return
    unit.write_text("[Unit]\nDescription=pcipassd\n")
    if state == "enabled":
        wants.symlink_to("/usr/lib/systemd/system/pcipassd.service")
    elif state == "masked":
        mask.symlink_to("/dev/null")
    elif state == "masked-empty":
        mask.write_text("")


class Intercept:
    """A Kernel that passes everything to `sim`: a test subclasses it and overrides `write` to
    act between two of pcipassd's writes (crash, SIGTERM, check the state file)."""

    def __init__(self, sim: SimKernel) -> None:
        self.sim = sim

    def write(self, path: Path, data: str) -> None:
        self.sim.write(path, data)

    def modprobe(self, module: str) -> None:
        self.sim.modprobe(module)

    def load_original(self, modalias: str) -> None:
        self.sim.load_original(modalias)

    def settle(self) -> None:
        self.sim.settle()
