"""Is the IOMMU on, and can passthrough work on this machine? Read-only.

Each finding is OK, WARN or FAIL with the concrete fix for this machine. Passthrough can work
when no finding FAILs. IOMMU groups existing is what decides whether the IOMMU is on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import StrEnum

from pcipassd.host import Host
from pcipassd.inventory import driver_loaded

GRUB_FIX = ("add {arg} to GRUB_CMDLINE_LINUX in /etc/default/grub, run update-grub "
            "(grub2-mkconfig -o /boot/grub2/grub.cfg on Fedora/RHEL), and reboot")


class Level(StrEnum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Finding:
    level: Level
    what: str
    fix: str = ""


def _read(host: Host, path: str) -> str:
    try:
        return host.path(path).read_text()
    except OSError:
        return ""


def _listdir(host: Host, path: str) -> list[str]:
    try:
        return sorted(os.listdir(host.path(path)))
    except OSError:
        return []


def iommu_groups(host: Host) -> list[str]:
    return _listdir(host, "/sys/kernel/iommu_groups")


def iommu_active(host: Host) -> bool:
    return bool(iommu_groups(host))


def cpu_vendor(host: Host) -> str:
    for line in _read(host, "/proc/cpuinfo").splitlines():
        if line.startswith("vendor_id"):
            vendor = line.split(":", 1)[1].strip()
            return {"GenuineIntel": "intel", "AuthenticAMD": "amd"}.get(vendor, vendor)
    return "unknown"


def module_available(host: Host, driver: str) -> str | None:
    """How `driver` can be had: "loaded", "built in", "module", or None."""
    module = driver.replace("-", "_")
    if driver_loaded(host, driver) or host.path(f"/sys/module/{module}").is_dir():
        return "loaded"
    release = _read(host, "/proc/sys/kernel/osrelease").strip()
    if not release:
        return None
    for name, how in (("modules.builtin", "built in"), ("modules.dep", "module")):
        for line in _read(host, f"/lib/modules/{release}/{name}").splitlines():
            path = line.split(":", 1)[0]
            base = os.path.basename(path).split(".ko", 1)[0].replace("-", "_")
            if base == module:
                return how
    return None


def _cmdline_findings(host: Host, vendor: str, active: bool) -> list[Finding]:
    args = _read(host, "/proc/cmdline").split()
    out = []
    if vendor == "intel":
        on = any(a.startswith("intel_iommu=") and "on" in a[12:].split(",") for a in args)
        if "intel_iommu=off" in args:
            out.append(Finding(Level.FAIL, "kernel command line has intel_iommu=off",
                               "remove intel_iommu=off; " + GRUB_FIX.format(arg="intel_iommu=on")))
        elif on:
            out.append(Finding(Level.OK, "kernel command line has intel_iommu=on"))
        elif not active:
            out.append(Finding(Level.FAIL, "kernel command line lacks intel_iommu=on",
                               GRUB_FIX.format(arg="intel_iommu=on")))
        else:
            out.append(Finding(Level.OK, "Intel IOMMU on by default in this kernel"))
    elif vendor == "amd":
        if "amd_iommu=off" in args:
            out.append(Finding(Level.FAIL, "kernel command line has amd_iommu=off",
                               "remove amd_iommu=off from GRUB_CMDLINE_LINUX in "
                               "/etc/default/grub, run update-grub, and reboot"))
        else:
            out.append(Finding(Level.OK, "AMD IOMMU not disabled on the kernel command line"))
    if "iommu=pt" in args:
        out.append(Finding(Level.OK, "iommu=pt: host devices use pass-through mode"))
    return out


def check(host: Host) -> list[Finding]:
    vendor = cpu_vendor(host)
    groups = iommu_groups(host)
    units = _listdir(host, "/sys/class/iommu")
    table = {"intel": "DMAR", "amd": "IVRS"}.get(vendor)
    firmware = ("enable VT-d (Intel Virtualization Technology for Directed I/O) in the firmware "
                "setup" if vendor == "intel" else "enable AMD-Vi / IOMMU in the firmware setup")
    out: list[Finding] = [Finding(Level.OK, f"CPU vendor: {vendor}")]
    if table:
        if host.path(f"/sys/firmware/acpi/tables/{table}").exists():
            out.append(Finding(Level.OK, f"ACPI {table} table present: the firmware offers "
                                         "an IOMMU"))
        elif not groups:
            out.append(Finding(Level.FAIL, f"no ACPI {table} table: the firmware does not offer "
                                           "an IOMMU", firmware))
    out += _cmdline_findings(host, vendor, bool(groups))
    if units:
        out.append(Finding(Level.OK, f"IOMMU units: {', '.join(units)}"))
    if groups:
        out.append(Finding(Level.OK, f"IOMMU on: {len(groups)} IOMMU groups"))
    else:
        out.append(Finding(Level.FAIL, "IOMMU off: /sys/kernel/iommu_groups is empty",
                           "fix the findings above; vfio-pci cannot work without it"))
    out.append(_interrupt_remapping(host, bool(groups)))
    for driver in ("pci-stub", "vfio-pci"):
        how = module_available(host, driver)
        if how:
            out.append(Finding(Level.OK, f"{driver}: {how}"))
        else:
            out.append(Finding(Level.WARN, f"{driver}: not available in this kernel",
                               f"install the kernel's modules package, or build "
                               f"CONFIG_{'PCI_STUB' if driver == 'pci-stub' else 'VFIO_PCI'}"))
    return out


def _interrupt_remapping(host: Host, active: bool) -> Finding:
    # Remapped interrupts show up as IR-* chips (IR-PCI-MSI, IR-IO-APIC) in /proc/interrupts.
    if " IR-" in _read(host, "/proc/interrupts"):
        return Finding(Level.OK, "interrupt remapping is on")
    unsafe = _read(host, "/sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts")
    if unsafe.strip() == "Y":
        return Finding(Level.WARN, "interrupt remapping is off; vfio allows unsafe interrupts")
    if not active:
        return Finding(Level.OK, "interrupt remapping: unknown while the IOMMU is off")
    return Finding(Level.WARN, "interrupt remapping is not on",
                   "vfio refuses assignment without it; enable x2APIC / interrupt remapping in "
                   "the firmware, or load vfio_iommu_type1 with allow_unsafe_interrupts=1")

def passthrough_possible(findings: list[Finding]) -> bool:
    return not any(f.level is Level.FAIL for f in findings)
