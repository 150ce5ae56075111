"""Which PCI devices the host cannot lose: unbinding them would lock the admin out.

`critical_devices(host)` reads (never writes) five kinds of evidence, all under `host`'s root,
and names each reason's kind, which is also what an entry's `force:` list names to override it
(`force: true` overrides every kind but `chipset`, see model.FORCE_TRUE):

storage
    Every mounted filesystem in `/proc/self/mountinfo` and every swap partition in `/proc/swaps`,
    followed down to its PCI devices by `pcipassd.storage` (partitions, device-mapper, md, NVMe
    multipath, btrfs and bcachefs members, ZFS pools, loop devices, overlay layers). For the
    root filesystem also the NICs it is reached through (NFS, SMB, iSCSI, NVMe over TCP/RDMA,
    NBD): the interfaces with the longest-prefix route to its server in `/proc/net/route` and
    `/proc/net/ipv6_route`. Where the root cannot be followed, the guard fails closed: every
    storage controller (PCI class 01, and Fibre Channel) is critical when a disk of the root
    could not be found or `/` is not in the mount table at all (unreadable, or hidden by a mount
    namespace), every NIC with a route when the root's server or its route could not
    be, every network controller when no such NIC could be found.
network
    The interfaces carrying a default route (`/proc/net/route`, `/proc/net/ipv6_route`), and the
    interfaces that are administratively UP (`/sys/class/net/IF/flags` & IFF_UP) and have an
    address. Without netlink the kernel publishes no per-interface IPv4 address list in
    /proc or /sys, so an interface having a route in `/proc/net/route` stands in for "has an IPv4
    address": assigning an address with a prefix shorter than /32 creates its connected route.
    IPv6 counts global-scope addresses in `/proc/net/if_inet6`. Virtual interfaces (bridge,
    bond, VLAN, macvlan, team) are followed down through `lower_*`, `brif/` and
    `bonding/slaves` to the physical NICs.
boot-vga
    The boot VGA device (`/sys/bus/pci/devices/*/boot_vga` = 1).
console
    The PCI device behind a framebuffer that carries a virtual console, while fbcon is bound
    (`/sys/class/vtconsole/vtconN`: "(M) frame buffer device", bind 1). Which framebuffers
    carry one is fbcon's con2fb map: asked of the kernel (FBIOGET_CON2FBMAP) on the live host;
    otherwise the kernel's boot map, all consoles on fb0 unless `fbcon=map:NNN` on
    `/proc/cmdline` says otherwise. A secondary GPU's framebuffer (fb1) with no console on it
    is not critical.
chipset
    The chipset's functions the host's own hardware hangs off: functions on a root bus (not
    behind a bridge, so not on an add-in card) of these PCI classes
    (`/sys/bus/pci/devices/*/class`): the LPC/eSPI bridge (0601: the SuperIO with its sensors,
    fans and PS/2, the TPM, on older chipsets the firmware flash) and the SMBus controller
    (0c05: sensors, the memory's SPD); and in the LPC bridge's own slot
    (Intel's 00:1f) the memory controller (0580: there the power management controller, which
    sleeps and resets the machine) and the serial bus controller (0c80: there the SPI
    controller of the firmware flash). Not critical, though also in the chipset: RAM memory
    (0500: Intel's shared SRAM, which no driver uses and which shares a group with the
    USB controller people pass through) and signal processing controllers (1180: the PCH's
    thermal sensor; the hardware's own thermal protection does not depend on its driver).
    `force: true` does not override this kind: it is written for a NIC or a GPU the admin
    means to take, and must not take the chipset along (through a glob, or a group); only a
    `force:` list naming `chipset` does, and `group: bind` never does (see pcipassd.policy).

A sysfs path belongs to the PCI device named by its nearest (deepest) path component that looks
like a BDF: a disk behind a PCIe bridge belongs to its controller, not to the bridge; a USB NIC
belongs to its USB host controller. Every symlink is resolved inside the host root. Missing or
unreadable files mean "no evidence" and are logged at debug level; nothing here raises for them.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import re
import struct
from collections.abc import Callable, Iterator, Mapping

from pcipassd.host import Host
from pcipassd.hostfiles import (
    exists,
    hex_int,
    lines,
    log,
    names,
    natural_order,
    nearest_bdf,
    pci_classes,
    read,
    resolve,
    value,
)
from pcipassd.inventory import read_attr
from pcipassd.model import BOOT_VGA, CHIPSET, CONSOLE, KINDS, NETWORK, STORAGE
from pcipassd.storage import Backing, backing, mounts, swaps
from pcipassd.value import frozen

__all__ = [
    "Con2FbReader",
    "Reason",
    "cost",
    "critical_devices",
    "describe",
    "read_con2fbmap",
]

# What the host loses when a device of each kind is taken from it ("the host loses ...").
COSTS = {STORAGE: "those filesystems", NETWORK: "its network", BOOT_VGA: "its boot display",
         CONSOLE: "its console",
         CHIPSET: "the chipset's SuperIO, TPM, firmware flash and sensors"}

_MAX_SHOWN = 3

RTF_UP = 0x0001  # <linux/route.h>, shared by /proc/net/route and /proc/net/ipv6_route
RTF_REJECT = 0x0200
IFF_UP = 0x1  # <linux/if.h>
IPV6_SCOPE_GLOBAL = 0x00  # if_inet6 scope column; 0x10 host, 0x20 link, 0x40 site
STORAGE_CLASS = 0x01  # PCI base class: mass storage controller
FIBRE_CHANNEL_CLASS = 0x0C04  # serial bus controller: Fibre Channel (an FC HBA)
NETWORK_CLASS = 0x02
# The chipset's functions, by class (base class and subclass): anywhere, and only in the LPC
# bridge's slot (where Intel puts its PCH's functions).
LPC_CLASS = 0x0601
CHIPSET_CLASSES = {
    LPC_CLASS: "is the chipset's LPC/eSPI bridge (SuperIO, TPM, PS/2, firmware flash)",
    0x0C05: "is the chipset's SMBus controller (sensors, memory SPD)",
}
CHIPSET_SLOT_CLASSES = {
    0x0580: "is the chipset's power management controller (sleep states, resets)",
    0x0C80: "is the chipset's serial bus controller (the firmware flash's SPI controller)",
}

FBIOGET_CON2FBMAP = 0x460F  # <linux/fb.h>
MAX_NR_CONSOLES = 63  # <linux/vt.h>
FB_MAX = 32  # <linux/fb.h>

Con2FbReader = Callable[[Host], "Mapping[int, int] | None"]
"""Reads fbcon's map, virtual console number -> framebuffer index; None when it cannot."""


@frozen
class Reason:
    """Why one PCI endpoint must stay with the host; `kind` is one of KINDS."""

    bdf: str
    text: str
    kind: str


def critical_devices(
    host: Host, con2fb: Con2FbReader | None = None
) -> dict[str, tuple[Reason, ...]]:
    """BDF -> why it must not be unbound, in the order storage, network, display, chipset.

    `con2fb` reads fbcon's console map (default: `read_con2fbmap`, which asks the kernel on the
    live host only). Read-only; never raises for a missing or unreadable file (a missing
    /proc/net/route just means no routes); logs what it skips at debug level.
    """
    found: dict[str, list[Reason]] = {}
    every = [*_storage_reasons(host), *_network_reasons(host),
             *_display_reasons(host, con2fb or read_con2fbmap), *_chipset_reasons(host)]
    for reason in every:
        reasons = found.setdefault(reason.bdf, [])
        if reason not in reasons:
            reasons.append(reason)
    return {bdf: tuple(found[bdf]) for bdf in sorted(found)}


def describe(reasons: tuple[Reason, ...] | list[Reason]) -> str:
    """One line for the admin: "carries / (vda1); carries the default route via eth0"."""
    return "; ".join(reason.text for reason in reasons)


def cost(kinds: set[str] | frozenset[str]) -> str:
    """What taking devices with reasons of these kinds costs: "the host loses its network"."""
    return "the host loses " + " and ".join(COSTS[kind] for kind in KINDS if kind in kinds)


def _compact(items: list[str]) -> str:
    """The first few items and a count of the rest: "a, b, c and 2 more"."""
    shown = ", ".join(items[:_MAX_SHOWN])
    if len(items) > _MAX_SHOWN:
        shown += f" and {len(items) - _MAX_SHOWN} more"
    return shown


# --- Storage ----------------------------------------------------------------------------------


class _Carried:
    """The mount points (and swap) one PCI device carries, and through which of its disks
    (a plain class: a dataclass costs start-up time, see bench/noop_apply.py)."""

    def __init__(self) -> None:
        self.places: list[str] = []
        self.devices: list[str] = []

    def add(self, place: str, device: str) -> None:
        if place not in self.places:
            self.places.append(place)
        if device not in self.devices:
            self.devices.append(device)

    def text(self) -> str:
        places = _compact(sorted(self.places, key=_place_order))
        return f"carries {places} ({_compact(sorted(self.devices, key=natural_order))})"


def _place_order(place: str) -> tuple[int, int, str]:
    """Sort key for mount points: the root first, then shallower ones, swap last."""
    if place == "swap":
        return (1, 0, place)
    return (0, 0 if place == "/" else place.count("/"), place)


def _storage_reasons(host: Host) -> list[Reason]:
    table = mounts(host)
    root = next((m for m in reversed(table) if m.place == "/"), None)  # the one on top
    carried: dict[str, _Carried] = {}
    pools: dict[tuple[str, bool], Backing] = {}
    failing_closed: list[Reason] = []
    for mount in (*table, *swaps(host)):
        behind = backing(host, mount, table, follow=mount is root, pools=pools)
        for bdf, device in behind.disks:
            carried.setdefault(bdf, _Carried()).add(mount.place, device)
        if mount is root:
            failing_closed = _root_reasons(host, behind)
    reasons = [Reason(bdf, what.text(), STORAGE) for bdf, what in carried.items()]
    if root is None:
        failing_closed = _no_root_reasons(host)
    return reasons + failing_closed


def _no_root_reasons(host: Host) -> list[Reason]:
    """The mount table has no `/` (unreadable, or a mount namespace that hides it): like a root
    that cannot be followed, every storage controller is critical."""
    if read(host, "/proc/self/mountinfo") is None:
        why = "the mount table (/proc/self/mountinfo) cannot be read"
    else:
        why = "/ is not in the mount table (/proc/self/mountinfo)"
    log.debug("%s: failing closed", why)
    return [Reason(bdf, f"is a storage controller, and {why}: cannot tell which controller "
                        "carries /", STORAGE)
            for bdf, code in pci_classes(host).items()
            if code >> 16 == STORAGE_CLASS or code >> 8 == FIBRE_CHANNEL_CLASS]


def _root_reasons(host: Host, behind: Backing) -> list[Reason]:
    """The NICs a network root is reached through, and the fail-closed refusals for what of the
    root could not be followed."""
    reasons: list[Reason] = []
    classes: dict[str, int] | None = None
    lost = list(dict.fromkeys(behind.unseen))
    if lost:
        log.debug("/ rests on %s: failing closed", "; ".join(lost))
        classes = pci_classes(host)
        for bdf, code in classes.items():
            if code >> 16 == STORAGE_CLASS or code >> 8 == FIBRE_CHANNEL_CLASS:
                reasons.append(Reason(
                    bdf, f"is a storage controller, and / is on {'; '.join(lost)}", STORAGE))
    for address, what in dict.fromkeys(behind.remote):
        found = _route_nics(host, address, f"carries / ({what}) via {{path}}")
        if found:
            reasons += found
            continue
        unknown = "whose server address" if address is None else f"whose route to {address}"
        log.debug("/ is on %s, %s is unknown: failing closed", what, unknown)
        fallback = [reason for iface in _routed_interfaces(host)
                    for reason in _interface_reasons(
                        host, iface, f"may carry / ({what}, {unknown} could not be found) "
                        "via {path}", STORAGE)]
        if not fallback:
            classes = classes if classes is not None else pci_classes(host)
            fallback = [Reason(bdf, f"is a network controller, and / is on {what}, {unknown} "
                                    "could not be found", STORAGE)
                        for bdf, code in classes.items() if code >> 16 == NETWORK_CLASS]
        reasons += fallback
    return reasons


def _route_nics(host: Host, address: str | None, template: str) -> list[Reason]:
    """The NICs under the interfaces routing to `address` (longest prefix wins)."""
    if address is None:
        return []
    return [reason for iface in _route_to(host, address)
            for reason in _interface_reasons(host, iface, template, STORAGE)]


# --- Network ----------------------------------------------------------------------------------


def _network_reasons(host: Host) -> list[Reason]:
    reasons: list[Reason] = []
    default = _default_route_interfaces(host)
    for iface in default:
        reasons.extend(_interface_reasons(host, iface, "carries the default route via {path}"))
    for iface in sorted(_addressed_interfaces(host) - set(default)):
        if _is_up(host, iface):
            reasons.extend(_interface_reasons(host, iface, "has {path} up with an address"))
        else:
            log.debug("%s has an address but is down", iface)
    return reasons


def _interface_reasons(
    host: Host, iface: str, template: str, kind: str = NETWORK
) -> list[Reason]:
    reasons = []
    for bdf, nic in _physical_nics(host, iface, set()):
        path = iface if nic == iface else f"{iface} on {nic}"
        reasons.append(Reason(bdf, template.format(path=path), kind))
    if not reasons:
        log.debug("interface %s rests on no PCI device", iface)
    return reasons


def _network_order(raw: int) -> int:
    """A /proc/net/route address (the __be32 printed as a host-order number) as a number in
    network order, the way ipaddress reads it."""
    return int.from_bytes(struct.pack("=I", raw), "big")


def _ipv4_routes(host: Host) -> Iterator[tuple[str, int, int, int]]:
    """(interface, destination, mask, flags) of each /proc/net/route line:
    "Iface Destination Gateway Flags RefCnt Use Metric Mask MTU Window IRTT", hex fields;
    destination and mask in network order."""
    for line in lines(host, "/proc/net/route")[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        dest, flags, mask = hex_int(fields[1]), hex_int(fields[3]), hex_int(fields[7])
        if dest is not None and flags is not None and mask is not None:
            yield fields[0], _network_order(dest), _network_order(mask), flags


def _ipv6_routes(host: Host) -> Iterator[tuple[str, int, int, int]]:
    """(interface, destination, prefix length, flags) of each /proc/net/ipv6_route line:
    "DEST PLEN SRC SPLEN NEXTHOP METRIC REFCNT USE FLAGS DEV", hex fields."""
    for line in lines(host, "/proc/net/ipv6_route"):
        fields = line.split()
        if len(fields) < 10:
            continue
        dest, plen, flags = hex_int(fields[0]), hex_int(fields[1]), hex_int(fields[8])
        if dest is not None and plen is not None and flags is not None:
            yield fields[9], dest, plen, flags


def _real_interface(iface: str) -> bool:
    return iface not in ("lo", "*")  # "*": a route with no device (blackhole, unreachable)


def _default_route_interfaces(host: Host) -> list[str]:
    routes = [*_ipv4_routes(host), *_ipv6_routes(host)]
    found: list[str] = []
    for iface, dest, mask_or_plen, flags in routes:
        default = dest == 0 and mask_or_plen == 0 and flags & RTF_UP
        if default and _real_interface(iface) and iface not in found:
            found.append(iface)
    return found


def _route_to(host: Host, address: str) -> list[str]:
    """The interfaces of the most specific usable route to `address` (all of them, for an
    equal-cost multipath route); empty when no route matches."""
    target = ipaddress.ip_address(address)
    candidates: list[tuple[int, str]] = []  # (prefix length, interface)
    if target.version == 4:
        for iface, dest, mask, flags in _ipv4_routes(host):
            if int(target) & mask == dest and flags & RTF_UP and not flags & RTF_REJECT:
                candidates.append((bin(mask).count("1"), iface))
    else:
        for iface, dest, plen, flags in _ipv6_routes(host):
            shift = 128 - min(plen, 128)
            if (int(target) >> shift == dest >> shift and flags & RTF_UP
                    and not flags & RTF_REJECT):
                candidates.append((plen, iface))
    candidates = [(plen, iface) for plen, iface in candidates if _real_interface(iface)]
    if not candidates:
        return []
    best = max(plen for plen, _ in candidates)
    return list(dict.fromkeys(iface for plen, iface in candidates if plen == best))


def _routed_interfaces(host: Host) -> list[str]:
    """Every interface with a usable route (IPv6: not only link-local or multicast ones)."""
    found = [iface for iface, _, _, flags in _ipv4_routes(host) if flags & RTF_UP]
    for iface, dest, plen, flags in _ipv6_routes(host):
        local = plen >= 10 and dest >> 118 == 0xFE80 >> 6  # fe80::/10
        multicast = plen >= 8 and dest >> 120 == 0xFF  # ff00::/8
        if flags & RTF_UP and not flags & RTF_REJECT and not local and not multicast:
            found.append(iface)
    return [iface for iface in dict.fromkeys(found) if _real_interface(iface)]


def _addressed_interfaces(host: Host) -> set[str]:
    """Interfaces with an IPv4 address (proxy: a route through them) or a global IPv6 address.

    /proc/net/if_inet6: "ADDRESS IFINDEX PREFIXLEN SCOPE FLAGS NAME", hex fields.
    """
    found = {iface for iface, _, _, flags in _ipv4_routes(host) if flags & RTF_UP}
    for line in lines(host, "/proc/net/if_inet6"):
        fields = line.split()
        if len(fields) >= 6 and hex_int(fields[3]) == IPV6_SCOPE_GLOBAL:
            found.add(fields[5])
    return {iface for iface in found if _real_interface(iface)}


def _is_up(host: Host, iface: str) -> bool:
    flags = hex_int(value(host, f"/sys/class/net/{iface}/flags"))
    return flags is not None and bool(flags & IFF_UP)


def _physical_nics(host: Host, iface: str, seen: set[str]) -> list[tuple[str, str]]:
    """(BDF, NIC name) of the PCI devices under an interface, through bridges, bonds, VLANs."""
    if iface in seen:
        return []
    seen.add(iface)
    device = resolve(host, f"/sys/class/net/{iface}/device")
    if device is not None and exists(host, device):
        bdf = nearest_bdf(device)
        return [] if bdf is None else [(bdf, iface)]
    found: list[tuple[str, str]] = []
    for lower in _lower_interfaces(host, iface):
        found.extend(_physical_nics(host, lower, seen))
    return found


def _lower_interfaces(host: Host, iface: str) -> list[str]:
    """The interfaces a virtual one is stacked on: lower_* links, else bridge ports, else bond
    slaves."""
    entries = names(host, f"/sys/class/net/{iface}")
    lower = [name.removeprefix("lower_") for name in entries if name.startswith("lower_")]
    if not lower:
        lower = names(host, f"/sys/class/net/{iface}/brif")
    if not lower:
        lower = value(host, f"/sys/class/net/{iface}/bonding/slaves", optional=True).split()
    return lower


# --- Display ----------------------------------------------------------------------------------


def _display_reasons(host: Host, con2fb: Con2FbReader) -> list[Reason]:
    return [*_boot_vga_reasons(host), *_fbcon_reasons(host, con2fb)]


def _boot_vga_reasons(host: Host) -> Iterator[Reason]:
    # sysfs links are relative, so the device directories need no resolving here: a read per
    # device through hostfiles.resolve was most of `plan`'s time at 4096 devices
    devices = os.fspath(host.pci_devices)
    for name in names(host, "/sys/bus/pci/devices"):
        if read_attr(f"{devices}/{name}/boot_vga") == "1":
            yield Reason(name, "is the boot VGA device", BOOT_VGA)


def _fbcon_bound(host: Host) -> bool:
    """Whether fbcon is bound to the virtual consoles (vtconN/name "(M) frame buffer device")."""
    for vtcon in names(host, "/sys/class/vtconsole"):
        name = value(host, f"/sys/class/vtconsole/{vtcon}/name")
        bound = value(host, f"/sys/class/vtconsole/{vtcon}/bind") == "1"
        if "frame buffer" in name and bound:
            return True
    return False


def read_con2fbmap(host: Host) -> Mapping[int, int] | None:
    """fbcon's console -> framebuffer map, from the kernel (FBIOGET_CON2FBMAP on a /dev/fbN).

    Only on the live host (an ioctl cannot reach into a tree under --root); None when there is
    no framebuffer device to ask or the kernel refuses."""
    if not host.is_live:
        return None
    for fb in names(host, "/dev"):
        if not re.fullmatch(r"fb\d+", fb):
            continue
        try:
            fd = os.open(host.path(f"/dev/{fb}"), os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            log.debug("cannot open /dev/%s: %s", fb, err.strerror or err)
            continue
        try:
            found = {}
            for console in range(1, MAX_NR_CONSOLES + 1):
                answer = fcntl.ioctl(fd, FBIOGET_CON2FBMAP, struct.pack("=II", console, 0))
                found[console] = struct.unpack("=II", answer)[1]
            return found
        except OSError as err:
            log.debug("FBIOGET_CON2FBMAP on /dev/%s: %s", fb, err.strerror or err)
        finally:
            os.close(fd)
    return None


def _boot_map(host: Host) -> dict[int, int]:
    """The kernel's boot-time map: every console on fb0, unless the command line says
    `fbcon=map:NNN` (console i on digit i mod len, as fbcon's fb_console_setup reads it; the
    last fbcon= wins; options are comma-separated)."""
    digits = ""
    for arg in value(host, "/proc/cmdline").split():
        if arg.startswith("fbcon="):
            for option in arg.removeprefix("fbcon=").split(","):
                if option.startswith("map:") and len(option) > 4:
                    digits = option[4:]
    if not digits:
        return dict.fromkeys(range(1, MAX_NR_CONSOLES + 1), 0)
    return {console: (ord(digits[(console - 1) % len(digits)]) - ord("0")) % FB_MAX
            for console in range(1, MAX_NR_CONSOLES + 1)}


def _console_framebuffers(host: Host, con2fb: Con2FbReader) -> set[int]:
    mapping = con2fb(host)
    if mapping is None:
        mapping = _boot_map(host)
        log.debug("fbcon's map read from the boot map: consoles on fb%s",
                  ", fb".join(str(n) for n in sorted(set(mapping.values()))))
    return {fb for fb in mapping.values() if 0 <= fb < FB_MAX}


def _fbcon_reasons(host: Host, con2fb: Con2FbReader) -> list[Reason]:
    if not _fbcon_bound(host):
        return []
    consoles = _console_framebuffers(host, con2fb)
    reasons: list[Reason] = []
    for fb in names(host, "/sys/class/graphics"):
        if not re.fullmatch(r"fb\d+", fb):
            continue
        if int(fb[2:]) not in consoles:
            log.debug("framebuffer %s carries no console", fb)
            continue
        device = resolve(host, f"/sys/class/graphics/{fb}/device")
        bdf = None if device is None or not exists(host, device) else nearest_bdf(device)
        if bdf is None:
            log.debug("framebuffer %s is not on a PCI device", fb)
            continue
        reasons.append(Reason(bdf, f"drives the framebuffer console ({fb})", CONSOLE))
    return reasons


# --- Chipset ----------------------------------------------------------------------------------


def _integrated(devices: str, bdf: str) -> bool:
    """On a root bus, not behind a bridge: a function of the chipset or the CPU, not of an
    add-in card (`/sys/bus/pci/devices/BDF` -> `../../../devices/pci0000:00/BDF`)."""
    try:
        link = os.readlink(f"{devices}/{bdf}")
    except OSError:
        return False
    return os.path.basename(os.path.dirname(link)).startswith("pci")


def _chipset_reasons(host: Host) -> list[Reason]:
    # read straight from each device directory, as the boot VGA flag (see there); an LPC/ISA
    # bridge or SMBus controller on an add-in card (behind a bridge) is an ordinary device
    devices = os.fspath(host.pci_devices)
    classes: dict[str, int] = {}
    for name in names(host, "/sys/bus/pci/devices"):
        code = hex_int(read_attr(f"{devices}/{name}/class") or "")
        if code is not None and code >> 8 in (*CHIPSET_CLASSES, *CHIPSET_SLOT_CLASSES) and (
                _integrated(devices, name)):
            classes[name] = code >> 8
    lpc_slots = {bdf[:-2] for bdf, code in classes.items() if code == LPC_CLASS}
    reasons = []
    for bdf, code in classes.items():
        text = CHIPSET_CLASSES.get(code)
        if text is None and bdf[:-2] in lpc_slots:
            text = CHIPSET_SLOT_CLASSES.get(code)
        if text is not None:
            reasons.append(Reason(bdf, text, CHIPSET))
    return reasons
