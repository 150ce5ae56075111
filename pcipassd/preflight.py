"""Preflight: what will go wrong with a display, 3D or audio function (PCI class 03xx, 0403)
before its first VM start. Read-only and pure: reads the host through hostfiles (sysfs,
/proc/iomem, the lockdown file) and the initramfs listing, returns frozen values; `check`,
`list --verbose` and `status --json` show them. Never imported by `apply` (it lists the
initramfs, which takes seconds).

For each function:

reset
    The reset methods the kernel offers (its sysfs `reset_method`, Linux 5.15+), FLR from the
    PCIe capability's Device Capabilities (config space: capability 0x10, DevCap bit 28),
    `d3cold_allowed`, and whether the card is on the reset-bug list (resetbugs.py, with its
    source) and vendor-reset is loaded. Config space beyond 64 bytes needs CAP_SYS_ADMIN:
    without it FLR is "unknown (run as root)", never a guess.
framebuffer
    A boot framebuffer (BOOTFB, efifb, simplefb, simpledrm, vesafb in /proc/iomem) inside one of
    its memory BARs (sysfs `resource`): on the console's card the guard's refusal with its
    reason; otherwise the remedy that applies (what claims the memory, the target, the class,
    the kernel version), with its cost. /proc/iomem shows addresses only to root: "unknown (run
    as root)".
initramfs
    Its host drivers (the modules whose alias matches its modalias, and the driver bound now)
    in the image that boots next, and whether the early hold still wins there.

And for the host: whether vfio-pci is built in or a module (and in the image), the lockdown
mode (where a remedy depends on it: vendor-reset is an out-of-tree module).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence

from pcipassd import hostfiles, initramfs, modules, resetbugs
from pcipassd.guard import Reason, cost, describe
from pcipassd.host import Host
from pcipassd.inventory import Device, kernel_release, listed_modules, modalias, module_of
from pcipassd.model import BOOT_VGA, CONSOLE, STUB_DRIVERS, VFIO_PCI
from pcipassd.value import frozen

# Levels of a finding, as `check` prints them (its OK/WARN/FAIL, plus these two)
OK = "OK"
WARN = "WARN"
UNKNOWN = "?"  # cannot be told (not root, no tool): says why, never guesses
REFUSED = "REFUSED"  # the guard refuses it: the console's card

AS_ROOT = "unknown (run as root)"
DISPLAY_CLASS = 0x03  # base class: display controller (VGA 0300, XGA 0301, 3D 0302, other 0380)
VGA_CLASS = 0x0300
AUDIO_CLASS = 0x0403  # multimedia: audio device (a GPU's HDMI/DP audio)
CONFIG_FULL = 256  # config space a user who is not root cannot read past 64 bytes of
PCIE_CAP = 0x10
DEVCAP_FLR = 1 << 28
STATUS_CAP_LIST = 0x10
RESOURCE_MEM = 0x200
BARS = 6  # resource lines 0-5; 6 is the expansion ROM
# What /proc/iomem calls a boot framebuffer's memory: the firmware's (sysfb's BOOTFB) and the
# drivers that claim it
FRAMEBUFFERS = ("BOOTFB", "efifb", "simplefb", "simpledrm", "vesafb")
FIRST_VGA_REMOVAL = (6, 0)  # vfio-pci removes a VGA card's firmware framebuffer since 6.0
_IOMEM_LINE = re.compile(r"^\s*([0-9a-fA-F]+)-([0-9a-fA-F]+) : (.*)$")


def in_scope(device: Device) -> bool:
    """A display, 3D or audio function: what preflight looks at."""
    return device.cls >> 16 == DISPLAY_CLASS or device.cls >> 8 == AUDIO_CLASS


@frozen
class Finding:
    topic: str  # reset, reset bug, framebuffer, initramfs, vfio-pci, lockdown
    level: str  # OK, WARN, ? (UNKNOWN), REFUSED
    message: str
    hint: str = ""


@frozen
class Reset:
    methods: str | None  # sysfs reset_method ("flr bus"; "" all disabled); None: no such file
    flr: bool | None  # PCIe DevCap FLR; None: unknown (config space not readable past 64 bytes)
    d3cold_allowed: bool | None  # None: no such file
    bug: str | None  # the card's family on the reset-bug list ("AMD Navi 10"), or None


@frozen
class Claim:
    """A boot framebuffer's memory inside one of the device's BARs."""

    name: str  # BOOTFB, efifb, simplefb, simpledrm, vesafb
    bar: int
    start: int
    end: int


@frozen
class Report:
    device: Device
    target: str | None  # the stub driver its entry asks for; None: not configured
    reset: Reset
    claims: tuple[Claim, ...] | None  # None: unknown (iomem not readable, or no addresses)
    host_drivers: tuple[str, ...]  # its host drivers' modules
    in_image: tuple[str, ...] | None  # those in the image that boots next; None: unknown
    findings: tuple[Finding, ...]


@frozen
class Preflight:
    kernel: str
    lockdown: str | None  # none, integrity, confidentiality; None: no lockdown LSM
    vendor_reset: bool  # the vendor-reset module is loaded
    vfio_pci: str | None  # modules.availability: loaded, built in, module, None
    image: str | None  # the initramfs that boots next
    early_hold: bool | None  # the image carries pcipassd's early hold; None: unknown
    reports: tuple[Report, ...]
    findings: tuple[Finding, ...]  # the host's (vfio-pci, lockdown)


# -- reading ------------------------------------------------------------------------------------


def _dev(bdf: str, name: str) -> str:
    return f"/sys/bus/pci/devices/{bdf}/{name}"


def flr_capable(config: bytes | None) -> bool | None:
    """FLR in the PCIe capability's Device Capabilities; None when the config space read is
    shorter than 256 bytes (not root) or missing."""
    if config is None or len(config) < CONFIG_FULL:
        return None
    if not int.from_bytes(config[6:8], "little") & STATUS_CAP_LIST:
        return False
    pointer, seen = config[0x34] & 0xFC, set()
    while pointer >= 0x40 and pointer not in seen and pointer + 8 <= len(config):
        seen.add(pointer)
        if config[pointer] == PCIE_CAP:
            return bool(int.from_bytes(config[pointer + 4:pointer + 8], "little") & DEVCAP_FLR)
        pointer = config[pointer + 1] & 0xFC
    return False


def read_reset(host: Host, device: Device) -> Reset:
    methods = hostfiles.read(host, _dev(device.bdf, "reset_method"), optional=True)
    d3cold = hostfiles.value(host, _dev(device.bdf, "d3cold_allowed"), optional=True)
    return Reset(None if methods is None else " ".join(methods.split()),
                 flr_capable(hostfiles.data(host, _dev(device.bdf, "config"))),
                 {"1": True, "0": False}.get(d3cold),
                 resetbugs.family(device.id.vendor, device.id.device))


def memory_bars(host: Host, bdf: str) -> list[tuple[int, int, int]]:
    """(BAR, start, end) of the device's memory BARs (sysfs `resource`, lines 0-5)."""
    out = []
    for n, line in enumerate(hostfiles.lines(host, _dev(bdf, "resource"))[:BARS]):
        fields = [hostfiles.hex_int(f) for f in line.split()]
        if len(fields) == 3 and None not in fields:
            start, end, flags = (f or 0 for f in fields)
            if flags & RESOURCE_MEM and end > start:
                out.append((n, start, end))
    return out


def framebuffer_regions(host: Host) -> list[tuple[str, int, int]] | None:
    """(name, start, end) of the boot framebuffers in /proc/iomem; None when it cannot be read
    or shows every address as zero (not root)."""
    text = hostfiles.read(host, "/proc/iomem")
    if text is None:
        return None
    regions = [(m.group(3).strip(), int(m.group(1), 16), int(m.group(2), 16))
               for m in map(_IOMEM_LINE.match, text.splitlines()) if m]
    if not any(end for _, _, end in regions):
        return None
    return [r for r in regions if r[0] in FRAMEBUFFERS]


def lockdown_mode(host: Host) -> str | None:
    """The active lockdown level ("none [integrity] confidentiality" -> integrity)."""
    text = hostfiles.value(host, "/sys/kernel/security/lockdown", optional=True)
    found = re.search(r"\[(\w+)\]", text)
    return found.group(1) if found else None


def version(release: str) -> tuple[int, int] | None:
    found = re.match(r"(\d+)\.(\d+)", release)
    return (int(found.group(1)), int(found.group(2))) if found else None


# -- judging ------------------------------------------------------------------------------------


def _yes(flag: bool | None, unknown: str = "-") -> str:
    return unknown if flag is None else "yes" if flag else "no"


def _reset_findings(reset: Reset, device: Device, vendor_reset: bool,
                    lockdown: str | None, with_card: str | None) -> list[Finding]:
    """`with_card`: the function of its card, all held on the same target, that the kernel can
    reset (a bus reset resets every function of the card), else None."""
    methods = "(none: disabled)" if reset.methods == "" else reset.methods or "(no reset_method)"
    d3cold = "-" if reset.d3cold_allowed is None else str(int(reset.d3cold_allowed))
    text = (f"reset_method {methods}; FLR {_yes(reset.flr, AS_ROOT)}; "
            f"d3cold_allowed {d3cold}")
    resettable = bool(reset.methods) or reset.flr is True
    level, hint = OK, ""
    if not resettable and with_card:
        text += (f"; reset with its card: the whole card is held, and QEMU resets "
                 f"{with_card} (every function behind the bridge) when one VM has them all")
    elif not resettable:
        level = UNKNOWN if reset.flr is None and reset.methods is None else WARN
        hint = ("" if level == UNKNOWN else
                "the kernel has no way to reset it between two VM runs: a guest may find it as "
                "the last one left it; pass the whole card (a bus reset needs every function)")
    found = [Finding("reset", level, text, hint)]
    if reset.bug is not None:
        listed = (f"{reset.bug} card: on the reset-bug list ({resetbugs.SOURCE}); "
                  f"vendor-reset {'loaded' if vendor_reset else 'not loaded'}")
        first = (reset.methods or "").split()[:1] == ["device_specific"]
        if vendor_reset and first:
            found.append(Finding("reset bug", OK, listed))
        elif vendor_reset:
            found.append(Finding("reset bug", WARN, listed,
                                 "add `reset_method: device_specific` to its entry, so that "
                                 "the kernel resets it through vendor-reset"))
        else:
            hint = ("load vendor-reset at boot (a line `vendor-reset` in "
                    "/etc/modules-load.d/vendor-reset.conf) and add `reset_method: "
                    "device_specific` to its entry: without it the card may not come back "
                    "after its first VM stops")
            if lockdown in ("integrity", "confidentiality"):
                hint += (f"; lockdown is {lockdown} (Secure Boot): vendor-reset, an out-of-tree "
                         "module, loads only signed with a key the kernel trusts (enrol yours "
                         "with mokutil)")
            found.append(Finding("reset bug", WARN, listed, hint))
    return found


def _card_reset(host: Host, bdf: str, target: str | None,
                targets: Mapping[str, str | None]) -> str | None:
    """The function of `bdf`'s card that offers a bus reset, when every function of the card
    (the functions of its slot) is held on `target`; else None."""
    slot = bdf.rsplit(".", 1)[0] + "."
    functions = [b for b in hostfiles.names(host, "/sys/bus/pci/devices") if b.startswith(slot)]
    if target is None or len(functions) < 2 or any(targets.get(b) != target for b in functions):
        return None
    for function in sorted(functions):
        methods = hostfiles.read(host, _dev(function, "reset_method"), optional=True) or ""
        if "bus" in methods.split():
            return function
    return None


def _console(reasons: Sequence[Reason]) -> list[Reason]:
    return [r for r in reasons if r.kind in (BOOT_VGA, CONSOLE)]


def _framebuffer_finding(device: Device, target: str | None, claims: tuple[Claim, ...] | None,
                         console: list[Reason], kernel: str) -> Finding:
    bars: dict[int, list[str]] = {}
    for c in claims or ():
        bars.setdefault(c.bar, []).append(c.name)
    where = "; ".join(f"{', '.join(names)} in BAR {bar}" for bar, names in bars.items())
    if console:
        kinds = {r.kind for r in console}
        force = ", ".join(k for k in (BOOT_VGA, CONSOLE) if k in kinds)
        return Finding("framebuffer", REFUSED,
                       f"{where + ': ' if where else ''}the console's card: it "
                       f"{describe(console)}, so pcipassd refuses it",
                       f"pass through a card the host does not boot on; `force: [{force}]` "
                       f"takes it anyway: {cost(kinds)}")
    if claims is None:
        return Finding("framebuffer", UNKNOWN, f"boot framebuffer: {AS_ROOT}",
                       "run it as root: /proc/iomem shows addresses only to root")
    if not claims:
        return Finding("framebuffer", OK, "no boot framebuffer in its BARs")
    names = {c.name for c in claims}
    vga = device.cls >> 8 == VGA_CLASS
    release = version(kernel)
    new_enough = release is not None and release >= FIRST_VGA_REMOVAL
    if target == VFIO_PCI and vga and new_enough:
        return Finding("framebuffer", OK, f"{where}: nothing to do: vfio-pci removes a "
                       "firmware framebuffer from a VGA-class card when it binds it (Linux 6.0+)")
    if target == VFIO_PCI:
        why = ("vfio-pci removes it only from a VGA-class card" if not vga else
               f"vfio-pci removes it only since Linux 6.0 (this is {kernel or 'unknown'})")
    elif target is None:
        why = "not configured" + (
            "; held on vfio-pci there would be nothing to do" if vga and new_enough else "")
    else:
        why = f"{target} does not remove it"
    fixes = []
    for fb in ("efifb", "vesafb"):
        if fb in names:
            fixes.append(f"`video={fb}:off` on the kernel command line stops {fb} (cost: no "
                         "firmware framebuffer console from boot until a GPU driver loads)")
    if names & {"simpledrm", "simplefb"} or names == {"BOOTFB"}:
        which = "/".join(sorted(names & {"simpledrm", "simplefb"})) or "the simple framebuffer"
        fixes.append(f"`initcall_blacklist=sysfb_init` on the kernel command line stops {which}; "
                     "video=efifb:off does not (cost: every early console: nothing on any "
                     "screen until a GPU driver loads, a disk unlock prompt included)")
    return Finding("framebuffer", WARN, f"{where}: the firmware's memory stays claimed ({why}): "
                   "the guest's driver cannot have the BAR",
                   "; ".join(fixes) + f"; add it to {modules.GRUB}")


def _host_drivers(host: Host, device: Device) -> tuple[str, ...]:
    found = dict.fromkeys(modules.aliased(host, modalias(host, device.bdf) or ""))
    if device.driver is not None and device.driver not in STUB_DRIVERS:
        found[module_of(host, device.driver)] = None
    return tuple(m for m in found if m not in ("vfio_pci", "pci_stub"))


def _initramfs_finding(host: Host, drivers: tuple[str, ...], image: initramfs.Contents | None
                       ) -> tuple[tuple[str, ...] | None, Finding]:
    if image is None:
        return None, Finding("initramfs", UNKNOWN, "cannot list the initramfs that boots next "
                             "(no builder, no image, or no lsinitramfs/lsinitrd)")
    inside = tuple(m for m in drivers if m in image.modules)
    name = image.builder.image
    if not inside:
        return inside, Finding("initramfs", OK, f"no host driver of it in {name}")
    mods = ", ".join(inside)
    if image.early_hold:
        return inside, Finding("initramfs", OK, f"{mods} in {name}: the early hold still wins "
                               "(pcipassd's stage in it sets driver_override first)")
    fix = (f"run `{image.builder.command}`" if initramfs.has_stage(host) else
           "install pcipassd's initramfs stage (the package does), then "
           f"`{image.builder.command}`")
    return inside, Finding("initramfs", WARN, f"{mods} in {name} without pcipassd's early hold: "
                           f"{mods} can bind it before pcipassd holds it", fix)


def _vfio_finding(availability: str | None, image: initramfs.Contents | None) -> Finding:
    if availability is None:
        return Finding("vfio-pci", WARN, "this kernel has no vfio-pci driver (see above)")
    if availability == "built in":
        return Finding("vfio-pci", OK, "built in: it binds a held device as soon as the early "
                       "hold sets its driver_override")
    where = ("" if image is None else
             "; in the initramfs" if "vfio_pci" in image.modules else
             "; not in the initramfs: a held device waits unbound (its driver_override keeps "
             "host drivers off) until vfio-pci loads, so the early hold still wins")
    return Finding("vfio-pci", OK, f"a module{', loaded' if availability == 'loaded' else ''}"
                   f"{where}")


def preflight(host: Host, wanted: Sequence[tuple[Device, str | None]],
              critical: Mapping[str, Collection[Reason]], *, look_inside: bool = True
              ) -> Preflight:
    """The preflight of `wanted` (device, target: None when not configured): only those
    in_scope(). `critical`: the guard's reasons (the console's card is refused)."""
    kernel = kernel_release(host)
    lockdown = lockdown_mode(host)
    vendor_reset = hostfiles.exists(host, f"/sys/module/{resetbugs.MODULE}")
    regions = framebuffer_regions(host)
    image = initramfs.contents(host) if look_inside else None
    reports = []
    targets = {device.bdf: target for device, target in wanted}
    for device, target in wanted:
        if not in_scope(device):
            continue
        reset = read_reset(host, device)
        claims = None if regions is None else tuple(
            Claim(name, bar, s, e) for bar, start, end in memory_bars(host, device.bdf)
            for name, s, e in regions if s <= end and e >= start)
        drivers = _host_drivers(host, device)
        inside, in_initramfs = _initramfs_finding(host, drivers, image)
        findings = [*_reset_findings(reset, device, vendor_reset, lockdown,
                                     _card_reset(host, device.bdf, target, targets)),
                    _framebuffer_finding(device, target, claims,
                                         _console(list(critical.get(device.bdf, ()))), kernel),
                    in_initramfs]
        reports.append(Report(device, target, reset, claims, drivers, inside, tuple(findings)))
    host_findings = []
    vfio = ("built in" if "vfio_pci" in listed_modules(host, "modules.builtin")
            else modules.availability(host, VFIO_PCI))
    if any(r.target == VFIO_PCI for r in reports):
        host_findings.append(_vfio_finding(vfio, image))
    return Preflight(kernel, lockdown, vendor_reset, vfio,
                     image.builder.image if image else None,
                     image.early_hold if image else None, tuple(reports), tuple(host_findings))
