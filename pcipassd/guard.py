"""Which PCI devices the host cannot lose: unbinding them would lock the admin out.

`critical_devices(host)` reads (never writes) three kinds of evidence, all under `host`'s root:

Storage
    Every mounted filesystem in `/proc/self/mountinfo` and every swap partition in `/proc/swaps`.
    A mount's `MAJ:MIN` leads to `/sys/dev/block/MAJ:MIN`; for anonymous device numbers
    (major 0: btrfs, which also spans `/sys/fs/btrfs/<fsid>/devices/*`) the source `/dev/NAME`
    leads to `/sys/class/block/NAME`. From there the walk goes down the block stack: the
    `slaves/` of device-mapper (dm-crypt, LVM, multipath) and md RAID devices, the disk of a
    partition, the controllers of a native NVMe multipath head. Filesystems with no block device
    (proc, sysfs, tmpfs, overlay, NFS, ZFS datasets) are ignored.
Network
    The interfaces carrying a default route (`/proc/net/route`, `/proc/net/ipv6_route`), and the
    interfaces that are administratively UP (`/sys/class/net/IF/flags` & IFF_UP) and have an
    address. Without netlink the kernel publishes no per-interface IPv4 address list in
    /proc or /sys, so an interface having a route in `/proc/net/route` stands in for "has an IPv4
    address": assigning an address with a prefix shorter than /32 creates its connected route.
    IPv6 counts global-scope addresses in `/proc/net/if_inet6`. Virtual interfaces (bridge,
    bond, VLAN, macvlan, team) are followed down through `lower_*`, `brif/` and
    `bonding/slaves` to the physical NICs.
Display
    The boot VGA device (`/sys/bus/pci/devices/*/boot_vga` = 1), and the PCI devices behind the
    framebuffers (`/sys/class/graphics/fbN/device`) while fbcon is bound to a virtual console.

A sysfs path belongs to the PCI device named by its nearest (deepest) path component that looks
like a BDF: a disk behind a PCIe bridge belongs to its controller, not to the bridge; a USB NIC
belongs to its USB host controller. Every symlink is resolved inside the host root. Missing or
unreadable files mean "no evidence" and are logged at debug level; nothing here raises for them.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pcipassd.address import BDF_RE
from pcipassd.host import Host

__all__ = ["Reason", "critical_devices", "describe"]

log = logging.getLogger(__name__)

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")
_MAX_SYMLINK_HOPS = 40
_MAX_SHOWN = 3

RTF_UP = 0x0001  # <linux/route.h>, shared by /proc/net/route and /proc/net/ipv6_route
IFF_UP = 0x1  # <linux/if.h>
IPV6_SCOPE_GLOBAL = 0x00  # if_inet6 scope column; 0x10 host, 0x20 link, 0x40 site


@dataclass(frozen=True)
class Reason:
    """Why one PCI endpoint must stay bound to its host driver."""

    bdf: str
    text: str


def critical_devices(host: Host) -> dict[str, tuple[Reason, ...]]:
    """BDF -> why it must not be unbound, in the order storage, network, display.

    Read-only; never raises for a missing or unreadable file (a missing /proc/net/route just
    means no routes); logs what it skips at debug level.
    """
    found: dict[str, list[Reason]] = {}
    for reason in (*_storage_reasons(host), *_network_reasons(host), *_display_reasons(host)):
        reasons = found.setdefault(reason.bdf, [])
        if reason not in reasons:
            reasons.append(reason)
    return {bdf: tuple(found[bdf]) for bdf in sorted(found)}


def describe(reasons: tuple[Reason, ...]) -> str:
    """One line for the admin: "holds / (vda1); carries the default route via eth0"."""
    return "; ".join(reason.text for reason in reasons)


# --- Reading the host -------------------------------------------------------------------------


def _resolve(host: Host, absolute: str | PurePosixPath) -> PurePosixPath | None:
    """The host path `absolute` with every symlink followed, never leaving the host root.

    Returns a host-absolute path (its last components may not exist), or None on a symlink loop.
    """
    pending = str(absolute).split("/")[::-1]  # a stack; "" and "." parts are skipped below
    done: list[str] = []
    # where each prefix of `done` is under the root, as text: this runs for every device
    # (bench/scale_plan.py), and building Paths costs more than the readlink calls
    where = [str(host.root).rstrip("/")]
    hops = 0
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if done:
                done.pop()
                where.pop()
            continue
        try:
            target = os.readlink(f"{where[-1]}/{part}")
        except OSError:  # not a symlink, or missing: keep the name as it is
            done.append(part)
            where.append(f"{where[-1]}/{part}")
            continue
        hops += 1
        if hops > _MAX_SYMLINK_HOPS:
            log.debug("symlink loop at %s", absolute)
            return None
        if target.startswith("/"):
            done, where = [], where[:1]
        pending += target.split("/")[::-1]
    return PurePosixPath("/", *done)


def _host_path(host: Host, absolute: str | PurePosixPath) -> Path | None:
    resolved = _resolve(host, absolute)
    return None if resolved is None else host.path(str(resolved))


def _read(host: Host, absolute: str | PurePosixPath, *, optional: bool = False) -> str | None:
    """A host file's text, or None. `optional`: a missing file is normal, not worth a log line."""
    path = _host_path(host, absolute)
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        if not optional:
            log.debug("%s does not exist", absolute)
        return None
    except OSError as err:
        log.debug("cannot read %s: %s", absolute, err.strerror or err)
        return None


def _value(host: Host, absolute: str, *, optional: bool = False) -> str:
    """A sysfs attribute's value without its newline; "" when it cannot be read."""
    return (_read(host, absolute, optional=optional) or "").strip()


def _lines(host: Host, absolute: str) -> list[str]:
    text = _read(host, absolute)
    return [] if text is None else text.splitlines()


def _names(host: Host, absolute: str | PurePosixPath) -> list[str]:
    """Sorted entry names of a host directory; empty when it is missing or unreadable."""
    path = _host_path(host, absolute)
    if path is None:
        return []
    try:
        return sorted(entry.name for entry in path.iterdir())
    except OSError:
        return []


def _exists(host: Host, absolute: str | PurePosixPath) -> bool:
    path = _host_path(host, absolute)
    return path is not None and path.exists()


def _nearest_bdf(path: PurePosixPath) -> str | None:
    """The deepest component of a resolved sysfs path that names a PCI function."""
    for part in reversed(path.parts):
        if BDF_RE.match(part):
            return part
    return None


def _unescape(text: str) -> str:
    r"""Undo the kernel's octal escapes in /proc paths ("\040" is a space)."""
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), text)


def _hex(text: str) -> int | None:
    try:
        return int(text, 16)
    except ValueError:
        return None


# --- Storage ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Mount:
    place: str  # the mount point, or "swap"
    devno: str  # MAJ:MIN, "" for swap
    fstype: str
    source: str


@dataclass
class _Holding:
    places: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)

    def add(self, place: str, device: str) -> None:
        if place not in self.places:
            self.places.append(place)
        if device not in self.devices:
            self.devices.append(device)

    def text(self) -> str:
        places = _compact(sorted(self.places, key=_place_order))
        return f"holds {places} ({_compact(sorted(self.devices, key=_natural_order))})"


def _compact(items: list[str]) -> str:
    """The first few items and a count of the rest: "a, b, c and 2 more"."""
    shown = ", ".join(items[:_MAX_SHOWN])
    if len(items) > _MAX_SHOWN:
        shown += f" and {len(items) - _MAX_SHOWN} more"
    return shown


def _natural_order(name: str) -> list[int | str]:
    """Sort key putting sda2 before sda10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _place_order(place: str) -> tuple[int, int, str]:
    """Sort key for mount points: the root first, then shallower ones, swap last."""
    if place == "swap":
        return (1, 0, place)
    return (0, 0 if place == "/" else place.count("/"), place)


def _mounts(host: Host) -> Iterator[_Mount]:
    """Mounts from /proc/self/mountinfo: "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPT...] -
    FSTYPE SOURCE SUPEROPTS" (proc(5))."""
    for line in _lines(host, "/proc/self/mountinfo"):
        fields = line.split()
        try:
            separator = fields.index("-", 6)
            yield _Mount(
                place=_unescape(fields[4]),
                devno=fields[2],
                fstype=fields[separator + 1],
                source=_unescape(fields[separator + 2]),
            )
        except (ValueError, IndexError):
            log.debug("unparsable mountinfo line: %r", line)


def _swaps(host: Host) -> Iterator[_Mount]:
    """Swap partitions from /proc/swaps. Swap files live on a mounted filesystem already."""
    for line in _lines(host, "/proc/swaps")[1:]:
        fields = line.split()
        if len(fields) >= 2 and fields[1] == "partition":
            yield _Mount(place="swap", devno="", fstype="swap", source=_unescape(fields[0]))


def _storage_reasons(host: Host) -> list[Reason]:
    holdings: dict[str, _Holding] = {}
    for mount in (*_mounts(host), *_swaps(host)):
        for top in _mount_block_devices(host, mount):
            for bdf, device in _pci_endpoints(host, top, top.name, set()):
                holdings.setdefault(bdf, _Holding()).add(mount.place, device)
    return [Reason(bdf, holding.text()) for bdf, holding in holdings.items()]


def _mount_block_devices(host: Host, mount: _Mount) -> list[PurePosixPath]:
    """The resolved sysfs directories of the block device(s) a mount sits on directly."""
    major, _, _minor = mount.devno.partition(":")
    if major not in ("", "0"):
        device = _resolve(host, f"/sys/dev/block/{mount.devno}")
        if device is not None and _exists(host, device):
            return [device]
    if not mount.source.startswith("/dev/"):
        return []  # proc, sysfs, tmpfs, overlay, NFS, ZFS datasets ...
    name = _block_name(host, mount.source)
    if name is None:
        log.debug("no block device for %s on %s", mount.source, mount.place)
        return []
    names = _btrfs_members(host, name) if mount.fstype == "btrfs" else [name]
    devices = [_resolve(host, f"/sys/class/block/{member}") for member in names]
    return [device for device in devices if device is not None]


def _block_name(host: Host, source: str) -> str | None:
    """The kernel name (vda2, dm-0) of a /dev path, as /sys/class/block knows it."""
    resolved = _resolve(host, source)  # /dev/mapper/x and /dev/disk/... are symlinks
    if resolved is not None and _exists(host, f"/sys/class/block/{resolved.name}"):
        return resolved.name
    if source.startswith("/dev/mapper/"):
        wanted = source.removeprefix("/dev/mapper/")
        for name in _names(host, "/sys/class/block"):
            if _dm_name(host, name) == wanted:
                return name
    return None


def _dm_name(host: Host, name: str) -> str:
    """The /dev/mapper name of block device `name` ("" when it is not device-mapper)."""
    return _value(host, f"/sys/class/block/{name}/dm/name", optional=True)


def _btrfs_members(host: Host, name: str) -> list[str]:
    """All devices of the btrfs filesystem that has `name` among its devices."""
    for fsid in _names(host, "/sys/fs/btrfs"):
        members = _names(host, f"/sys/fs/btrfs/{fsid}/devices")
        if name in members:
            return members
    return [name]


def _pci_endpoints(
    host: Host, device: PurePosixPath, label: str, seen: set[PurePosixPath]
) -> list[tuple[str, str]]:
    """(BDF, block device name) for each PCI device that the block device `device` rests on."""
    if device in seen:
        return []
    seen.add(device)
    bdf = _nearest_bdf(device)
    if bdf is not None:
        return [(bdf, label)]
    found: list[tuple[str, str]] = []
    for lower, lower_label in _lower_devices(host, device, label):
        found.extend(_pci_endpoints(host, lower, lower_label, seen))
    if not found:
        log.debug("block device %s rests on no PCI device", device)
    return found


def _lower_devices(
    host: Host, device: PurePosixPath, label: str
) -> Iterator[tuple[PurePosixPath, str]]:
    """What a virtual block device is built from: its (or, for a partition, its disk's)
    `slaves/`, and the controllers of an NVMe multipath head (nvme-subsysN/nvmeX)."""
    disks = [device]
    if _exists(host, device / "partition"):
        disks.append(device.parent)
    for disk in disks:
        for name in _names(host, disk / "slaves"):
            lower = _resolve(host, disk / "slaves" / name)
            if lower is not None:
                yield lower, lower.name
        if disk.parent.name.startswith("nvme-subsys"):
            for name in _names(host, disk.parent):
                if re.fullmatch(r"nvme\d+", name):
                    controller = _resolve(host, disk.parent / name)
                    if controller is not None:
                        yield controller, label


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


def _interface_reasons(host: Host, iface: str, template: str) -> list[Reason]:
    reasons = []
    for bdf, nic in _physical_nics(host, iface, set()):
        path = iface if nic == iface else f"{iface} on {nic}"
        reasons.append(Reason(bdf, template.format(path=path)))
    if not reasons:
        log.debug("interface %s rests on no PCI device", iface)
    return reasons


def _ipv4_routes(host: Host) -> Iterator[tuple[str, int, int, int]]:
    """(interface, destination, mask, flags) of each /proc/net/route line:
    "Iface Destination Gateway Flags RefCnt Use Metric Mask MTU Window IRTT", hex fields."""
    for line in _lines(host, "/proc/net/route")[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        dest, flags, mask = _hex(fields[1]), _hex(fields[3]), _hex(fields[7])
        if dest is not None and flags is not None and mask is not None:
            yield fields[0], dest, mask, flags


def _ipv6_routes(host: Host) -> Iterator[tuple[str, int, int, int]]:
    """(interface, destination, prefix length, flags) of each /proc/net/ipv6_route line:
    "DEST PLEN SRC SPLEN NEXTHOP METRIC REFCNT USE FLAGS DEV", hex fields."""
    for line in _lines(host, "/proc/net/ipv6_route"):
        fields = line.split()
        if len(fields) < 10:
            continue
        dest, plen, flags = _hex(fields[0]), _hex(fields[1]), _hex(fields[8])
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


def _addressed_interfaces(host: Host) -> set[str]:
    """Interfaces with an IPv4 address (proxy: a route through them) or a global IPv6 address.

    /proc/net/if_inet6: "ADDRESS IFINDEX PREFIXLEN SCOPE FLAGS NAME", hex fields.
    """
    found = {iface for iface, _, _, flags in _ipv4_routes(host) if flags & RTF_UP}
    for line in _lines(host, "/proc/net/if_inet6"):
        fields = line.split()
        if len(fields) >= 6 and _hex(fields[3]) == IPV6_SCOPE_GLOBAL:
            found.add(fields[5])
    return {iface for iface in found if _real_interface(iface)}


def _is_up(host: Host, iface: str) -> bool:
    flags = _hex(_value(host, f"/sys/class/net/{iface}/flags"))
    return flags is not None and bool(flags & IFF_UP)


def _physical_nics(host: Host, iface: str, seen: set[str]) -> list[tuple[str, str]]:
    """(BDF, NIC name) of the PCI devices under an interface, through bridges, bonds, VLANs."""
    if iface in seen:
        return []
    seen.add(iface)
    device = _resolve(host, f"/sys/class/net/{iface}/device")
    if device is not None and _exists(host, device):
        bdf = _nearest_bdf(device)
        return [] if bdf is None else [(bdf, iface)]
    found: list[tuple[str, str]] = []
    for lower in _lower_interfaces(host, iface):
        found.extend(_physical_nics(host, lower, seen))
    return found


def _lower_interfaces(host: Host, iface: str) -> list[str]:
    """The interfaces a virtual one is stacked on: lower_* links, else bridge ports, else bond
    slaves."""
    names = _names(host, f"/sys/class/net/{iface}")
    lower = [name.removeprefix("lower_") for name in names if name.startswith("lower_")]
    if not lower:
        lower = _names(host, f"/sys/class/net/{iface}/brif")
    if not lower:
        lower = _value(host, f"/sys/class/net/{iface}/bonding/slaves", optional=True).split()
    return lower


# --- Display ----------------------------------------------------------------------------------


def _display_reasons(host: Host) -> list[Reason]:
    return [*_boot_vga_reasons(host), *_fbcon_reasons(host)]


def _boot_vga_reasons(host: Host) -> Iterator[Reason]:
    for name in _names(host, "/sys/bus/pci/devices"):
        if _value(host, f"/sys/bus/pci/devices/{name}/boot_vga", optional=True) == "1":
            yield Reason(name, "is the boot VGA device")


def _fbcon_bound(host: Host) -> bool:
    """Whether fbcon is bound to the virtual consoles (vtconN/name "(M) frame buffer device")."""
    for vtcon in _names(host, "/sys/class/vtconsole"):
        name = _value(host, f"/sys/class/vtconsole/{vtcon}/name")
        bound = _value(host, f"/sys/class/vtconsole/{vtcon}/bind") == "1"
        if "frame buffer" in name and bound:
            return True
    return False


def _fbcon_reasons(host: Host) -> list[Reason]:
    if not _fbcon_bound(host):
        return []
    reasons: list[Reason] = []
    for fb in _names(host, "/sys/class/graphics"):
        if not re.fullmatch(r"fb\d+", fb):
            continue
        device = _resolve(host, f"/sys/class/graphics/{fb}/device")
        bdf = None if device is None or not _exists(host, device) else _nearest_bdf(device)
        if bdf is None:
            log.debug("framebuffer %s is not on a PCI device", fb)
            continue
        reasons.append(Reason(bdf, f"drives the framebuffer console ({fb})"))
    return reasons
