"""Is the IOMMU on, and can passthrough work on this machine? Read-only.

Each finding is OK, WARN or FAIL with the concrete fix for this machine. Passthrough can work
when no finding FAILs. IOMMU groups existing is what decides whether the IOMMU is on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum

from pcipassd.host import Host
from pcipassd.inventory import driver_loaded, kernel_release, listed_modules

GRUB_FIX = ("add {arg} to GRUB_CMDLINE_LINUX in /etc/default/grub, run update-grub "
            "(grub2-mkconfig -o /boot/grub2/grub.cfg on Fedora/RHEL), and reboot")


class Level(str, Enum):  # enum.StrEnum is 3.11+
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"

    def __str__(self) -> str:
        return str(self.value)


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
    for listing, how in (("modules.builtin", "built in"), ("modules.dep", "module")):
        if module in listed_modules(host, listing):
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


# systemd-detect-virt's DMI vendors, as they appear in /sys/class/dmi/id/{sys,board}_vendor and
# product_name: what the host runs on when it is itself a virtual machine.
_VM_VENDORS = (("QEMU", "QEMU"), ("KVM", "KVM"), ("VMware", "VMware"),
               ("innotek GmbH", "VirtualBox"), ("Xen", "Xen"), ("Virtual Machine", "Hyper-V"),
               ("Amazon EC2", "Amazon EC2"), ("Google Compute Engine", "Google Compute Engine"),
               ("Parallels", "Parallels"), ("Bochs", "Bochs"))
VIOMMU_FIX = ("give the VM a virtual IOMMU: QEMU `-machine q35 -device intel-iommu,intremap=on` "
              "(or `-device amd-iommu`), libvirt `<iommu model='intel'/>` in <devices>")
# What the running kernel must be built with, per IOMMU vendor.
_IOMMU_OPTION = {"intel": "CONFIG_INTEL_IOMMU", "amd": "CONFIG_AMD_IOMMU"}


def virtual_machine(host: Host) -> str | None:
    """The hypervisor this host runs under, from its DMI strings (None: bare metal)."""
    dmi = " ".join(_read(host, f"/sys/class/dmi/id/{f}").strip()
                   for f in ("sys_vendor", "board_vendor", "product_name"))
    for marker, name in _VM_VENDORS:
        if marker in dmi:
            return name
    for line in _read(host, "/proc/cpuinfo").splitlines():
        if line.startswith("flags") and "hypervisor" in line.split(":", 1)[1].split():
            return "a hypervisor"
    return None


def iommu_vendor(host: Host) -> tuple[str, str]:
    """(intel|amd|CPU vendor, where that came from): from the IOMMU itself (its units, then the
    ACPI table that describes it), and only without one from the CPU."""
    for unit in _listdir(host, "/sys/class/iommu"):
        if unit.startswith("dmar"):
            return "intel", f"from IOMMU unit {unit}"
        if unit.startswith("ivhd"):
            return "amd", f"from IOMMU unit {unit}"
    for table, vendor in (("DMAR", "intel"), ("IVRS", "amd")):
        if host.path(f"/sys/firmware/acpi/tables/{table}").exists():
            return vendor, f"from the ACPI {table} table"
    return cpu_vendor(host), "the CPU's: no IOMMU found"


def kernel_config(host: Host) -> dict[str, str] | None:
    """The running kernel's build options (/proc/config.gz, /boot/config-RELEASE), or None."""
    text = ""
    try:
        import gzip  # noqa: PLC0415 - only for `check`

        text = gzip.decompress(host.path("/proc/config.gz").read_bytes()).decode(errors="replace")
    except (OSError, EOFError, gzip.BadGzipFile):
        release = kernel_release(host)
        text = _read(host, f"/boot/config-{release}") if release else ""
    if not text:
        return None
    options = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.startswith("CONFIG_"):
            options[name] = value
    return options


def _kernel_findings(config: dict[str, str] | None, vendor: str) -> list[Finding]:
    if config is None:
        return []
    out = []
    option = _IOMMU_OPTION.get(vendor)
    if option and config.get(option) != "y":
        out.append(Finding(Level.FAIL, f"this kernel was built without {option}",
                           f"boot a kernel built with {option}=y (distribution kernels are); "
                           "no firmware or boot setting can make up for it"))
    elif option:
        out.append(Finding(Level.OK, f"kernel built with {option}"))
    if config.get("CONFIG_IRQ_REMAP") != "y":
        out.append(Finding(Level.WARN, "this kernel was built without CONFIG_IRQ_REMAP",
                           "vfio refuses assignment without interrupt remapping; boot a kernel "
                           "built with CONFIG_IRQ_REMAP=y"))
    return out


def _virtualization_findings(host: Host) -> list[Finding]:
    """What virt-host-validate checks besides the IOMMU: VT-x/AMD-V, /dev/kvm, /dev/vfio/vfio."""
    flags = set()
    for line in _read(host, "/proc/cpuinfo").splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    out = []
    ext = sorted(flags & {"vmx", "svm"})
    if ext:
        out.append(Finding(Level.OK, f"CPU virtualization: {ext[0]}"))
    else:
        out.append(Finding(Level.WARN, "the CPU shows no vmx/svm: KVM cannot run VMs here",
                           "enable VT-x / AMD-V (SVM) in the firmware setup (in a VM: nested "
                           "virtualization)"))
    for dev, what, fix in (("/dev/kvm", "KVM", "modprobe kvm_intel (or kvm_amd)"),
                           ("/dev/vfio/vfio", "VFIO", "modprobe vfio-pci")):
        if host.path(dev).exists():
            out.append(Finding(Level.OK, f"{dev}: {what} is available"))
        else:
            out.append(Finding(Level.WARN, f"no {dev}: {what} is not loaded", fix))
    return out


def check(host: Host) -> list[Finding]:
    vendor, source = iommu_vendor(host)
    groups = iommu_groups(host)
    units = _listdir(host, "/sys/class/iommu")
    vm = virtual_machine(host)
    config = kernel_config(host)
    out: list[Finding] = []
    if vm and not groups and not units:
        out.append(Finding(Level.FAIL, f"this host is a virtual machine ({vm}) without a "
                                       "virtual IOMMU", VIOMMU_FIX))
    elif vm:
        out.append(Finding(Level.OK, f"this host is a virtual machine ({vm}) with a virtual "
                                     "IOMMU"))
    if vendor in ("intel", "amd"):
        out.append(Finding(Level.OK, f"IOMMU vendor: {vendor} ({source})"))
    out += _kernel_findings(config, vendor)
    table = {"intel": "DMAR", "amd": "IVRS"}.get(vendor)
    if table and not vm:
        firmware = ("enable VT-d (Intel Virtualization Technology for Directed I/O) in the "
                    "firmware setup" if vendor == "intel"
                    else "enable AMD-Vi / IOMMU in the firmware setup")
        if host.path(f"/sys/firmware/acpi/tables/{table}").exists():
            out.append(Finding(Level.OK, f"ACPI {table} table present: the firmware offers "
                                         "an IOMMU"))
        elif not groups:
            out.append(Finding(Level.FAIL, f"no ACPI {table} table: the firmware does not offer "
                                           "an IOMMU", firmware))
    default_on = (config or {}).get("CONFIG_INTEL_IOMMU_DEFAULT_ON") == "y"
    out += _cmdline_findings(host, vendor, bool(groups) or default_on)
    if units:
        out.append(Finding(Level.OK, f"IOMMU units: {', '.join(units)}"))
    if groups:
        out.append(Finding(Level.OK, f"IOMMU on: {len(groups)} IOMMU groups"))
        out.append(_interrupt_remapping(host))
    else:  # the fix is the first failed finding's, never "fix the findings above" alone
        fixes = [f.fix for f in out if f.level is Level.FAIL and f.fix]
        fallback = VIOMMU_FIX if vm else ("enable VT-d / AMD-Vi in the firmware setup, and "
                                          "check the kernel command line")
        out.append(Finding(Level.FAIL, "IOMMU off: /sys/kernel/iommu_groups is empty",
                           fixes[0] if fixes else fallback))
    for driver, option in (("pci-stub", "CONFIG_PCI_STUB"), ("vfio-pci", "CONFIG_VFIO_PCI")):
        how = module_available(host, driver)
        if how:
            out.append(Finding(Level.OK, f"{driver}: {how}"))
        elif config is not None and config.get(option) not in ("y", "m"):
            out.append(Finding(Level.WARN, f"{driver}: this kernel was built without {option}",
                               f"boot a kernel built with {option}=m"))
        else:
            out.append(Finding(Level.WARN, f"{driver}: not available in this kernel",
                               "install the kernel's modules package"))
    return out + _virtualization_findings(host)


def _interrupt_remapping(host: Host) -> Finding:
    # Remapped interrupts show up as IR-* chips (IR-PCI-MSI, IR-IO-APIC) in /proc/interrupts.
    if " IR-" in _read(host, "/proc/interrupts"):
        return Finding(Level.OK, "interrupt remapping is on")
    unsafe = _read(host, "/sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts")
    if unsafe.strip() == "Y":
        return Finding(Level.WARN, "interrupt remapping is off; vfio allows unsafe interrupts")
    return Finding(Level.WARN, "interrupt remapping is not on",
                   "vfio refuses assignment without it; enable x2APIC / interrupt remapping in "
                   "the firmware, or load vfio_iommu_type1 with allow_unsafe_interrupts=1")

def passthrough_possible(findings: list[Finding]) -> bool:
    return not any(f.level is Level.FAIL for f in findings)
