"""Is the IOMMU on, and can passthrough work on this machine? Read-only.

Each finding is OK, WARN or FAIL with the concrete fix for this machine. Passthrough can work
when no finding FAILs. IOMMU groups existing is what decides whether the IOMMU is on.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from enum import Enum

from pcipassd.host import Host
from pcipassd.inventory import iommu_groups, kernel_release
from pcipassd.safefile import read_host
from pcipassd.value import frozen

GRUB_FIX = ("add {arg} to GRUB_CMDLINE_LINUX in /etc/default/grub, run update-grub "
            "(grub2-mkconfig -o /boot/grub2/grub.cfg on Fedora/RHEL), and reboot")


class Level(str, Enum):  # enum.StrEnum is 3.11+
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"

    def __str__(self) -> str:
        return str(self.value)


@frozen
class Finding:
    level: Level
    what: str
    fix: str = ""
    # the kernel command line edit that fixes it, for the node document's actions (node.py):
    # "+ARG" add ARG, "-ARG" remove it; "" when the fix is not a command line edit
    edit: str = ""


def _read(host: Host, path: str) -> str:
    """A host file's text, "" when it is absent: here, no evidence is evidence of nothing."""
    return read_host(host.path(path)) or ""


def _listdir(host: Host, path: str) -> list[str]:
    try:
        return sorted(os.listdir(host.path(path)))
    except OSError:
        return []


def cpu_vendor(host: Host) -> str:
    for line in _read(host, "/proc/cpuinfo").splitlines():
        if line.startswith("vendor_id"):
            vendor = line.split(":", 1)[1].strip()
            return {"GenuineIntel": "intel", "AuthenticAMD": "amd"}.get(vendor, vendor)
    return "unknown"


def module_available(host: Host, driver: str) -> str | None:
    """How `driver` can be had: "loaded", "built in", "module", or None (see modules.py)."""
    from pcipassd import modules  # noqa: PLC0415 - not on apply's path (iommu_active)

    return modules.availability(host, driver)


def _cmdline_findings(host: Host, vendors: tuple[str, ...], active: bool) -> list[Finding]:
    """The kernel command line, for each IOMMU vendor that can be there (in a guest without a
    vIOMMU, both: its vIOMMU can be Intel or AMD whatever the CPU)."""
    args = _read(host, "/proc/cmdline").split()
    out = []
    if "intel" in vendors:
        on = any(a.startswith("intel_iommu=") and "on" in a[12:].split(",") for a in args)
        if "intel_iommu=off" in args:
            out.append(Finding(Level.FAIL, "kernel command line has intel_iommu=off",
                               "remove intel_iommu=off; " + GRUB_FIX.format(arg="intel_iommu=on"),
                               "-intel_iommu=off"))
        elif on:
            out.append(Finding(Level.OK, "kernel command line has intel_iommu=on"))
        elif not active and len(vendors) > 1:  # an AMD vIOMMU would need nothing here
            out.append(Finding(Level.WARN, "kernel command line lacks intel_iommu=on (an Intel "
                                           "virtual IOMMU needs it)",
                               GRUB_FIX.format(arg="intel_iommu=on")))
        elif not active:
            out.append(Finding(Level.FAIL, "kernel command line lacks intel_iommu=on",
                               GRUB_FIX.format(arg="intel_iommu=on"), "+intel_iommu=on"))
        else:
            out.append(Finding(Level.OK, "Intel IOMMU on by default in this kernel"))
    if "amd" in vendors:
        if "amd_iommu=off" in args:
            out.append(Finding(Level.FAIL, "kernel command line has amd_iommu=off",
                               "remove amd_iommu=off from GRUB_CMDLINE_LINUX in "
                               "/etc/default/grub, run update-grub, and reboot",
                               "-amd_iommu=off"))
        else:
            out.append(Finding(Level.OK, "AMD IOMMU not disabled on the kernel command line"))
    if "iommu=pt" in args:
        out.append(Finding(Level.OK, "iommu=pt: host devices use pass-through mode"))
    return out


# systemd-detect-virt's DMI table (src/basic/virt.c): a prefix of product_name, sys_vendor,
# board_vendor, bios_vendor or product_version (read in that order), and the name it prints.
_DMI_FILES = ("product_name", "sys_vendor", "board_vendor", "bios_vendor", "product_version")
_DMI_VENDORS = (("KVM", "kvm"), ("OpenStack", "kvm"), ("KubeVirt", "kvm"),
                ("Amazon EC2", "amazon"), ("QEMU", "qemu"), ("VMware", "vmware"),
                ("VMW", "vmware"), ("innotek GmbH", "oracle"), ("VirtualBox", "oracle"),
                ("Oracle Corporation", "oracle"), ("Xen", "xen"), ("Bochs", "bochs"),
                ("Parallels", "parallels"), ("BHYVE", "bhyve"), ("Hyper-V", "microsoft"),
                ("Apple Virtualization", "apple"), ("Google Compute Engine", "google"))
# What systemd-detect-virt reads from CPUID (the hypervisor's signature), which a program can
# only see through the clock source that hypervisor gives the guest.
_CLOCKSOURCES = (("kvm-clock", "kvm"), ("hyperv_clocksource", "microsoft"), ("xen", "xen"))
# The QEMU/libvirt vIOMMU for each IOMMU driver the guest's kernel has.
_VIOMMU = {"intel": ("`-device intel-iommu,intremap=on`", "<iommu model='intel'/>"),
           "amd": ("`-device amd-iommu`", "<iommu model='amd'/>")}
VIOMMU_FIX = ("give the VM a virtual IOMMU: QEMU `-machine q35 -device intel-iommu,intremap=on` "
              "(or `-device amd-iommu`), libvirt `<iommu model='intel'/>` in <devices>")
# What the running kernel must be built with, per IOMMU vendor.
_IOMMU_OPTION = {"intel": "CONFIG_INTEL_IOMMU", "amd": "CONFIG_AMD_IOMMU"}


def _dmi_vendor(host: Host) -> str | None:
    for name in _DMI_FILES:
        text = _read(host, f"/sys/class/dmi/id/{name}").strip()
        for prefix, vm in _DMI_VENDORS:
            if text.startswith(prefix):
                return vm
    if (_read(host, "/sys/class/dmi/id/product_name").strip() == "Virtual Machine"
            and _read(host, "/sys/class/dmi/id/sys_vendor").startswith("Microsoft")):
        return "microsoft"  # Hyper-V, which systemd-detect-virt knows from CPUID
    return None


def virtual_machine(host: Host) -> str | None:
    """The hypervisor this host runs under, named as systemd-detect-virt names it (kvm, qemu,
    vmware, microsoft, oracle, xen, ...; vm-other: a hypervisor it cannot name), or None: bare
    metal. As systemd: the DMI vendor, except that the hypervisor's own signature wins over
    it (QEMU with KVM is kvm), unless DMI says oracle, xen or amazon."""
    dmi = _dmi_vendor(host)
    if dmi in ("oracle", "xen", "amazon"):
        return dmi
    if _read(host, "/sys/hypervisor/type").strip() == "xen":
        return "xen"
    xen = _read(host, "/proc/xen/capabilities")
    if host.path("/proc/xen").is_dir() and "control_d" not in xen:
        return "xen"  # a domU (dom0, control_d, is the host)
    clocks = _read(host, "/sys/devices/system/clocksource/clocksource0/available_clocksource")
    for clock, vm in _CLOCKSOURCES:
        if any(c.startswith(clock) for c in clocks.split()):
            return vm
    if dmi:
        return dmi
    for line in _read(host, "/proc/cpuinfo").splitlines():
        if line.startswith("flags") and "hypervisor" in line.split(":", 1)[1].split():
            return "vm-other"
    return None


def viommu_fix(vm: str, vendors: tuple[str, ...]) -> str:
    """How to give this VM a virtual IOMMU that its kernel has a driver for."""
    if vm == "vmware":
        return ("give the VM a virtual IOMMU: enable \"Expose IOMMU to the guest OS\" in its "
                "CPU settings (VMware's is an Intel IOMMU)")
    if vm == "oracle":
        return "give the VM a virtual IOMMU: VBoxManage modifyvm VM --iommu automatic"
    if vm not in ("kvm", "qemu", "bochs", "vm-other"):
        return (f"give the VM a virtual IOMMU in the hypervisor's ({vm}) settings, or run "
                "pcipassd on the host that has the devices")
    if set(vendors) == set(_VIOMMU) or vendors[0] not in _VIOMMU:
        return VIOMMU_FIX
    qemu, libvirt = _VIOMMU[vendors[0]]
    return (f"give the VM a virtual IOMMU: QEMU `-machine q35` {qemu}, libvirt `{libvirt}` in "
            f"<devices> (this kernel has the {vendors[0]} IOMMU driver only)")


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


def _kernel_findings(config: dict[str, str] | None, vendors: tuple[str, ...]) -> list[Finding]:
    """The IOMMU driver the kernel was built with: for the IOMMU there is, or, in a guest
    without a vIOMMU, either of the two (its vIOMMU can be Intel or AMD)."""
    if config is None:
        return []
    out = []
    options = [_IOMMU_OPTION[v] for v in vendors if v in _IOMMU_OPTION]
    built = [o for o in options if config.get(o) == "y"]
    if options and not built:
        out.append(Finding(Level.FAIL, f"this kernel was built without {' and '.join(options)}",
                           f"boot a kernel built with {'=y or '.join(options)}=y (distribution "
                           "kernels are); no firmware or boot setting can make up for it"))
    out += [Finding(Level.OK, f"kernel built with {o}") for o in built]
    if config.get("CONFIG_IRQ_REMAP") != "y":
        out.append(Finding(Level.WARN, "this kernel was built without CONFIG_IRQ_REMAP",
                           "vfio refuses assignment without interrupt remapping; boot a kernel "
                           "built with CONFIG_IRQ_REMAP=y"))
    return out


def _cpu_flags(host: Host) -> set[str]:
    for line in _read(host, "/proc/cpuinfo").splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _virtualization_findings(host: Host, config: dict[str, str] | None) -> list[Finding]:
    """What virt-host-validate checks besides the IOMMU: VT-x/AMD-V, /dev/kvm, /dev/vfio/vfio.
    No fix that an earlier finding rules out: no modprobe where no module can be loaded, and
    no "KVM cannot run" where /dev/kvm shows it does."""
    from pcipassd import modules  # noqa: PLC0415 - not on apply's path (iommu_active)

    ext = sorted(_cpu_flags(host) & {"vmx", "svm"})
    kvm = host.path("/dev/kvm").exists()
    vendor = {"vmx": "intel", "svm": "amd"}.get(ext[0], "") if ext else cpu_vendor(host)
    kvm_module = {"intel": "kvm_intel", "amd": "kvm_amd"}.get(vendor, "")
    out = []
    if ext:
        out.append(Finding(Level.OK, f"CPU virtualization: {ext[0]}"))
    elif kvm:
        out.append(Finding(Level.OK, "CPU virtualization: in use by KVM (/dev/kvm), though "
                                     "/proc/cpuinfo shows no vmx/svm flag"))
    else:
        out.append(Finding(Level.WARN, "the CPU shows no vmx/svm: KVM cannot run VMs here",
                           "enable VT-x / AMD-V (SVM) in the firmware setup (in a VM: nested "
                           "virtualization)"))
    if kvm:
        out.append(Finding(Level.OK, "/dev/kvm: KVM is available"))
    else:
        blocked = modules.no_loading(host, kvm_module)
        if not ext:  # modprobe cannot help before the CPU offers VT-x / AMD-V
            fix = "enable VT-x / AMD-V first (see above)"
        elif blocked:
            fix = f"{blocked.message}: {blocked.hint}"
        else:
            fix = f"modprobe {kvm_module or 'kvm_intel (or kvm_amd)'}"
        out.append(Finding(Level.WARN, "no /dev/kvm: KVM is not loaded", fix))
    if host.path("/dev/vfio/vfio").exists():
        out.append(Finding(Level.OK, "/dev/vfio/vfio: VFIO is available"))
    else:
        missing = modules.missing(host, "vfio-pci", config)
        out.append(Finding(Level.WARN, "no /dev/vfio/vfio: VFIO is not loaded",
                           missing.hint if missing else "modprobe vfio-pci"))
    return out


def driver_findings(host: Host, config: dict[str, str] | None,
                    wanted: Collection[str]) -> list[Finding]:
    """pci-stub and vfio-pci: how this kernel has each. One the configuration binds devices to
    and this kernel cannot have FAILs, in the words `plan` uses (modules.missing)."""
    from pcipassd import modules  # noqa: PLC0415 - not on apply's path (iommu_active)

    out = []
    for driver in modules.OPTIONS:
        how = modules.availability(host, driver)
        missing = None if how else modules.missing(host, driver, config)
        if missing is None:
            out.append(Finding(Level.OK, f"{driver}: {how}"))
        elif driver in wanted:
            out.append(Finding(Level.FAIL, f"{missing.message}, and the configuration binds "
                                           "devices to it", missing.hint))
        else:
            out.append(Finding(Level.WARN, missing.message, missing.hint))
    return out


def check(host: Host, wanted: Collection[str] = ()) -> list[Finding]:
    """Every finding, in order; `wanted`: the target drivers the configuration names."""
    vendor, source = iommu_vendor(host)
    groups = iommu_groups(host)
    units = _listdir(host, "/sys/class/iommu")
    vm = virtual_machine(host)
    config = kernel_config(host)
    no_viommu = bool(vm) and not groups and not units
    # A guest without a vIOMMU can be given an Intel or an AMD one, whatever its CPU.
    vendors = ("intel", "amd") if no_viommu and source.startswith("the CPU") else (vendor,)
    out: list[Finding] = []
    if vm and no_viommu:
        usable = tuple(v for v in vendors if config is None
                       or config.get(_IOMMU_OPTION.get(v, "")) == "y") or vendors
        out.append(Finding(Level.FAIL, f"this host is a virtual machine ({vm}) without a "
                                       "virtual IOMMU", viommu_fix(vm, usable)))
    elif vm:
        out.append(Finding(Level.OK, f"this host is a virtual machine ({vm}) with a virtual "
                                     "IOMMU"))
    if len(vendors) == 1 and vendor in ("intel", "amd"):
        out.append(Finding(Level.OK, f"IOMMU vendor: {vendor} ({source})"))
    out += _kernel_findings(config, vendors)
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
    out += _cmdline_findings(host, vendors, bool(groups) or default_on)
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
    out += driver_findings(host, config, wanted)
    return out + _virtualization_findings(host, config)


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
