"""Can this kernel have a driver: loaded, built in, a module it can load, or not at all? Read-only.

One answer for every verb: `check` reports it (a FAIL for a configured target), and `plan` and
`status` predict from it that a bind will fail, in the same words. A module that this kernel
cannot load (no module support, `nomodule`, `module_blacklist=`, `modules_disabled`) counts as
missing, and no fix then says `modprobe`.
"""

from __future__ import annotations

from pcipassd.host import Host
from pcipassd.inventory import driver_loaded, kernel_release, listed_modules
from pcipassd.safefile import read_host
from pcipassd.value import frozen

# The build option of each target driver, for the fix that names it.
OPTIONS = {"pci-stub": "CONFIG_PCI_STUB", "vfio-pci": "CONFIG_VFIO_PCI"}
GRUB = ("GRUB_CMDLINE_LINUX in /etc/default/grub, run update-grub (grub2-mkconfig -o "
        "/boot/grub2/grub.cfg on Fedora/RHEL), and reboot")


@frozen
class Missing:
    """Why this kernel cannot have a driver, and the fix."""

    message: str  # "this kernel has no vfio-pci driver (built without CONFIG_VFIO_PCI)"
    hint: str


def no_loading(host: Host, module: str = "") -> Missing | None:
    """Why this kernel loads no module (or not `module`), None when modprobe can work."""
    args = (read_host(host.path("/proc/cmdline")) or "").split()
    if not host.path("/proc/modules").exists():
        return Missing("this kernel was built without module support (no /proc/modules)",
                       "boot a kernel built with CONFIG_MODULES=y, or with the driver built in")
    if "nomodule" in args:
        return Missing("the kernel command line has nomodule",
                       f"remove nomodule from {GRUB}")
    blacklisted = {m.replace("-", "_") for a in args if a.startswith("module_blacklist=")
                   for m in a.partition("=")[2].split(",")}
    if module and module.replace("-", "_") in blacklisted:
        return Missing(f"the kernel command line has module_blacklist={module}",
                       f"remove {module} from module_blacklist= in {GRUB}")
    if (read_host(host.path("/proc/sys/kernel/modules_disabled")) or "").strip() == "1":
        return Missing("module loading is disabled (kernel.modules_disabled=1)",
                       "reboot without setting kernel.modules_disabled (it cannot be unset)")
    return None


def availability(host: Host, driver: str) -> str | None:
    """How `driver` can be had: "loaded", "built in", "module" (one this kernel can load), or
    None."""
    module = driver.replace("-", "_")
    if driver_loaded(host, driver) or host.path(f"/sys/module/{module}").is_dir():
        return "loaded"
    if module in listed_modules(host, "modules.builtin"):
        return "built in"
    if module in listed_modules(host, "modules.dep") and no_loading(host, module) is None:
        return "module"
    return None


def missing(host: Host, driver: str, kconfig: dict[str, str] | None) -> Missing | None:
    """Why this kernel cannot have `driver` (None: it can), with the fix. `kconfig`: the
    running kernel's build options, when known (iommu.kernel_config)."""
    if availability(host, driver) is not None:
        return None
    module = driver.replace("-", "_")
    option = OPTIONS.get(driver, "")
    if kconfig is not None and option and kconfig.get(option) not in ("y", "m"):
        return Missing(f"this kernel has no {driver} driver (built without {option})",
                       f"boot a kernel built with {option}=m")
    blocked = no_loading(host, module)
    if blocked and module in listed_modules(host, "modules.dep"):
        return Missing(f"this kernel has no {driver} driver it can load: it is a module, and "
                       f"{blocked.message}", blocked.hint)
    return Missing(f"this kernel has no {driver} driver (neither built in nor installed as "
                   "a module)", "install the kernel's modules package")


def aliased(host: Host, modalias: str) -> tuple[str, ...]:
    """The modules (dashes as underscores) whose `alias` in the running kernel's
    modules.alias matches a device's `modalias`, as udev loads them: the host drivers of a
    device that is held. Read only by preflight, never on the boot path."""
    from fnmatch import fnmatchcase  # noqa: PLC0415

    release = kernel_release(host)
    text = read_host(host.path(f"/lib/modules/{release}/modules.alias")) if release else None
    found: dict[str, None] = {}
    for line in (text or "").splitlines():
        fields = line.split()
        if (len(fields) == 3 and fields[0] == "alias" and fields[1].startswith("pci:")
                and fnmatchcase(modalias, fields[1])):
            found[fields[2].replace("-", "_")] = None
    return tuple(found)
