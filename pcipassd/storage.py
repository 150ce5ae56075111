"""What a mounted filesystem rests on, down to the PCI devices (read-only; for the guard).

A mount in `/proc/self/mountinfo` (or a swap partition in `/proc/swaps`) is followed to:

- block devices: `MAJ:MIN` -> `/sys/dev/block/MAJ:MIN`; for anonymous device numbers (major 0)
  the source `/dev/NAME` -> `/sys/class/block/NAME`; btrfs also spans
  `/sys/fs/btrfs/<fsid>/devices/*`, bcachefs its source `/dev/a:/dev/b` and
  `/sys/fs/bcachefs/<uuid>/dev-N/block`. Then down the block stack: the `slaves/` of
  device-mapper and md devices, the disk of a partition, the controllers of an NVMe multipath
  head, and the file behind a loop device (`loop/backing_file`, followed to the mount containing
  it);
- ZFS datasets (source `pool/dataset`, no block device): the pool's member disks as udev's
  blkid probe recorded them, `E:ID_FS_TYPE=zfs_member` with `E:ID_FS_LABEL=<pool>` in
  `/run/udev/data/b<MAJ>:<MIN>` (ZFS registers no sysfs holders, and the kernel publishes the
  vdevs nowhere else that a reader without /dev/zfs can see; `/proc/spl/kstat/zfs/<pool>` only
  says the pool is imported);
- overlayfs: the mounts containing its `lowerdir=` and `upperdir=` directories;
- storage reached over the network: NFS, SMB and CephFS by their server address (the `addr=`
  mount option, or the source's host when it is an IP address); iSCSI disks (a `sessionN` in
  the sysfs path) by their connection's `persistent_address`; NVMe over TCP or RDMA by the
  controller's `address` (`traddr=`); NBD and Ceph RBD disks with no address to read.

What cannot be followed (a block device on no PCI device pcipassd can see, a ZFS pool whose
disks udev did not record) is named in `Backing.unseen`, so that the guard can fail closed.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from pathlib import PurePosixPath

from pcipassd.host import Host
from pcipassd.hostfiles import (
    exists,
    lines,
    log,
    names,
    nearest_bdf,
    read,
    resolve,
    unescape,
    value,
)
from pcipassd.value import frozen

__all__ = ["Backing", "Mount", "backing", "mounts", "swaps"]

NO_DEVICE_FS = frozenset({"tmpfs", "ramfs", "rootfs"})  # in memory: nothing to lose
NETWORK_FS = {"nfs": "NFS", "nfs4": "NFS", "cifs": "SMB", "smb3": "SMB", "ceph": "CephFS",
              "glusterfs": "GlusterFS", "fuse.glusterfs": "GlusterFS", "fuse.sshfs": "SSHFS"}
RAM_DISK = re.compile(r"(z?ram|pmem)\d+")
_UDEV_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")


@frozen
class Mount:
    """A mounted file system or an active swap area."""

    place: str  # the mount point, or "swap"
    devno: str  # MAJ:MIN, "" for swap
    fstype: str
    source: str
    options: str = ""  # the superblock options, still comma-separated and escaped


class Backing:
    """What one mount rests on (a plain class: a dataclass costs start-up time, see
    bench/noop_apply.py)."""

    def __init__(self) -> None:
        self.disks: list[tuple[str, str]] = []  # (BDF, block device name)
        self.remote: list[tuple[str | None, str]] = []  # (address, what)
        self.unseen: list[str] = []  # what could not be followed, for a message


def mounts(host: Host) -> list[Mount]:
    """Mounts from /proc/self/mountinfo: "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPT...] -
    FSTYPE SOURCE SUPEROPTS" (proc(5)), in the kernel's order (a mount over another comes
    after it)."""
    found = []
    for line in lines(host, "/proc/self/mountinfo"):
        fields = line.split()
        try:
            separator = fields.index("-", 6)
            found.append(Mount(
                place=unescape(fields[4]),
                devno=fields[2],
                fstype=fields[separator + 1],
                source=unescape(fields[separator + 2]),
                options=fields[separator + 3] if len(fields) > separator + 3 else "",
            ))
        except (ValueError, IndexError):
            log.debug("unparsable mountinfo line: %r", line)
    return found


def swaps(host: Host) -> Iterator[Mount]:
    """Swap partitions from /proc/swaps. Swap files live on a mounted filesystem already."""
    for line in lines(host, "/proc/swaps")[1:]:
        fields = line.split()
        if len(fields) >= 2 and fields[1] == "partition":
            yield Mount(place="swap", devno="", fstype="swap", source=unescape(fields[0]))


def backing(
    host: Host, mount: Mount, every: list[Mount], *, follow: bool = True,
    pools: dict[tuple[str, bool], Backing] | None = None,
) -> Backing:
    """What `mount` rests on; `every` is the mount table, for the files behind loop devices and
    the layers of an overlay. `follow`: also follow those into the mounts containing them (else
    they count as nothing: those mounts are in the table themselves, and a host with 100
    containers has 100 overlays of 40 layers each). `pools` caches each ZFS pool's members
    across calls (a Proxmox host mounts a dataset per container)."""
    out = Backing()
    _Walk(host, every, out, follow, {} if pools is None else pools).mount(mount, ())
    return out


def mount_containing(every: list[Mount], path: str) -> Mount | None:
    """The mount a path lies on: the deepest mount point above it, the last mounted there."""
    best: Mount | None = None
    for mount in every:
        if mount.place == "swap":
            continue
        prefix = mount.place.rstrip("/") + "/"
        if (path == mount.place or path.startswith(prefix)) and (
            best is None or len(mount.place) >= len(best.place)
        ):
            best = mount
    return best


def _option(options: str, key: str) -> str | None:
    """One `key=value` of a mount's superblock options, unescaped."""
    for option in options.split(","):
        name, _, text = option.partition("=")
        if name == key:
            return unescape(text)
    return None


def _ip(text: str | None) -> str | None:
    if not text:
        return None
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        return None


def _server(mount: Mount) -> str | None:
    """The address of a network filesystem's server: `addr=`, else an IP address as source."""
    address = _ip(_option(mount.options, "addr"))
    if address:
        return address
    host = mount.source.rsplit(":", 1)[0] if mount.source.count(":") else ""
    return _ip(host) or _ip(mount.source.lstrip("/").split("/", 1)[0])


class _Walk:
    def __init__(
        self, host: Host, every: list[Mount], out: Backing, follow: bool,
        pools: dict[tuple[str, bool], Backing],
    ) -> None:
        self.host = host
        self.follow = follow
        self.pools = pools
        self.every = every
        self.out = out
        self.seen: set[PurePosixPath] = set()

    def mount(self, mount: Mount, stack: tuple[Mount, ...]) -> None:
        if mount in stack:
            self.out.unseen.append(f"{mount.source}, which rests on itself")
            return
        stack = (*stack, mount)
        if mount.fstype in NO_DEVICE_FS:
            return
        if mount.fstype in NETWORK_FS:
            self.out.remote.append((_server(mount), f"{NETWORK_FS[mount.fstype]} {mount.source}"))
            return
        if mount.fstype == "zfs":
            self.zfs(mount.source.split("/", 1)[0].split("@", 1)[0], stack)
            return
        if mount.fstype == "overlay":
            if self.follow:
                self.overlay(mount, stack)
            return
        devices = self.block_devices(mount)
        if not devices:
            self.out.unseen.append(f"{mount.source} ({mount.fstype}), whose device could not be "
                                   "found")
        for device in devices:
            self.block(device, device.name, stack)

    def overlay(self, mount: Mount, stack: tuple[Mount, ...]) -> None:
        layers = re.split(r"(?<!\\):+", _option(mount.options, "lowerdir") or "")
        layers.append(_option(mount.options, "upperdir") or "")
        unders: list[Mount] = []  # a container's 50 layers are usually all on one mount
        for layer in [layer.replace("\\:", ":") for layer in layers if layer]:
            under = mount_containing(self.every, layer)
            if under is None:
                self.out.unseen.append(f"the overlay layer {layer}, on no mount")
            elif under not in unders:
                unders.append(under)
        for under in unders:
            self.mount(under, stack)

    def zfs(self, pool: str, stack: tuple[Mount, ...]) -> None:
        """The pool's member disks, walked once per pool (a Proxmox host mounts a dataset per
        container)."""
        key = (pool, self.follow)
        if key not in self.pools:
            if not exists(self.host, f"/proc/spl/kstat/zfs/{pool}"):
                log.debug("ZFS pool %s is not in /proc/spl/kstat/zfs", pool)
            walk = _Walk(self.host, self.every, Backing(), self.follow, self.pools)
            for devno in _zfs_members(self.host, pool):
                device = resolve(self.host, f"/sys/dev/block/{devno}")
                if device is not None and exists(self.host, device):
                    walk.block(device, f"{device.name} of ZFS pool {pool}", stack)
            if not walk.seen:
                walk.out.unseen.append(f"ZFS pool {pool}, whose disks could not be found")
            self.pools[key] = walk.out
        found = self.pools[key]
        self.out.disks += found.disks
        self.out.remote += found.remote
        self.out.unseen += found.unseen

    def block_devices(self, mount: Mount) -> list[PurePosixPath]:
        """The resolved sysfs directories of the block device(s) a mount sits on directly."""
        found: list[PurePosixPath] = []
        major, _, _minor = mount.devno.partition(":")
        if major not in ("", "0"):
            device = resolve(self.host, f"/sys/dev/block/{mount.devno}")
            if device is not None and exists(self.host, device):
                found.append(device)
        sources = mount.source.split(":") if mount.fstype == "bcachefs" else [mount.source]
        members: list[str] = []
        for source in sources:
            if not source.startswith("/dev/"):
                continue  # proc, sysfs, a network or ZFS source ...
            name = _block_name(self.host, source)
            if name is None:
                log.debug("no block device for %s on %s", source, mount.place)
            else:
                members.append(name)
        if mount.fstype == "btrfs" and members:
            members = _btrfs_members(self.host, members[0])
        if mount.fstype == "bcachefs":
            members += _bcachefs_members(self.host, [*members, *(d.name for d in found)])
        for member in members:
            device = resolve(self.host, f"/sys/class/block/{member}")
            if device is not None and device not in found and exists(self.host, device):
                found.append(device)
        return found

    def block(self, device: PurePosixPath, label: str, stack: tuple[Mount, ...]) -> None:
        """Follow one block device (or NVMe controller) down to what it rests on."""
        if device in self.seen:
            return
        self.seen.add(device)
        bdf = nearest_bdf(device)
        if bdf is not None:
            self.out.disks.append((bdf, label))
            return
        disk = device.parent if exists(self.host, device / "partition") else device
        if self.remote(device, disk, label):
            return
        backing_file = value(self.host, disk / "loop" / "backing_file", optional=True)
        if backing_file and not self.follow:
            return
        if backing_file:
            path = backing_file.removesuffix(" (deleted)")
            under = mount_containing(self.every, path)
            if under is None:
                self.out.unseen.append(f"{disk.name}, backed by {path}, on no mount")
            else:
                self.mount(under, stack)
            return
        lower = list(self.lower(device, disk, label))
        for lower_device, lower_label in lower:
            self.block(lower_device, lower_label, stack)
        if not lower and not RAM_DISK.fullmatch(disk.name):
            log.debug("block device %s rests on no PCI device", device)
            self.out.unseen.append(f"{label}, whose controller could not be found")

    def remote(self, device: PurePosixPath, disk: PurePosixPath, label: str) -> bool:
        """Whether `device` is reached over the network; if so, record its address."""
        session = next((p for p in device.parts if re.fullmatch(r"session\d+", p)), None)
        if session is not None:  # iSCSI: .../hostN/sessionM/targetN:0:0/N:0:0:L/block/sdX
            number = session.removeprefix("session")
            address = None
            for connection in names(self.host, "/sys/class/iscsi_connection"):
                if connection.startswith(f"connection{number}:"):
                    base = f"/sys/class/iscsi_connection/{connection}"
                    address = address or _ip(
                        value(self.host, f"{base}/persistent_address", optional=True)
                        or value(self.host, f"{base}/address", optional=True))
            self.out.remote.append((address, f"iSCSI disk {label}"))
            return True
        for controller in (device, *device.parents):
            if not re.fullmatch(r"nvme\d+", controller.name):
                continue
            transport = value(self.host, controller / "transport", optional=True)
            if transport in ("tcp", "rdma"):
                address = value(self.host, controller / "address", optional=True)
                traddr = re.search(r"(?:^|,)traddr=([^,]+)", address)
                self.out.remote.append((_ip(traddr.group(1)) if traddr else None,
                                        f"NVMe-oF disk {label}"))
                return True
            break
        if re.fullmatch(r"nbd\d+", disk.name):
            self.out.remote.append((None, f"network block device {label}"))
            return True
        if re.fullmatch(r"rbd\d+", disk.name):
            self.out.remote.append((None, f"Ceph RBD disk {label}"))
            return True
        return False

    def lower(
        self, device: PurePosixPath, disk: PurePosixPath, label: str
    ) -> Iterator[tuple[PurePosixPath, str]]:
        """What a virtual block device is built from: its (or, for a partition, its disk's)
        `slaves/`, and the controllers of an NVMe multipath head (nvme-subsysN/nvmeX)."""
        for one in dict.fromkeys((device, disk)):
            for name in names(self.host, one / "slaves"):
                lower = resolve(self.host, one / "slaves" / name)
                if lower is not None:
                    yield lower, lower.name
            if one.parent.name.startswith("nvme-subsys"):
                for name in names(self.host, one.parent):
                    if re.fullmatch(r"nvme\d+", name):
                        controller = resolve(self.host, one.parent / name)
                        if controller is not None:
                            yield controller, label


def _block_name(host: Host, source: str) -> str | None:
    """The kernel name (vda2, dm-0) of a /dev path, as /sys/class/block knows it."""
    resolved = resolve(host, source)  # /dev/mapper/x and /dev/disk/... are symlinks
    if resolved is not None and exists(host, f"/sys/class/block/{resolved.name}"):
        return resolved.name
    if source.startswith("/dev/mapper/"):
        wanted = source.removeprefix("/dev/mapper/")
        for name in names(host, "/sys/class/block"):
            if value(host, f"/sys/class/block/{name}/dm/name", optional=True) == wanted:
                return name
    return None


def _btrfs_members(host: Host, name: str) -> list[str]:
    """All devices of the btrfs filesystem that has `name` among its devices."""
    for fsid in names(host, "/sys/fs/btrfs"):
        members = names(host, f"/sys/fs/btrfs/{fsid}/devices")
        if name in members:
            return members
    return [name]


def _bcachefs_members(host: Host, known: list[str]) -> list[str]:
    """All devices of the bcachefs filesystem that has one of `known` among its devices."""
    for uuid in names(host, "/sys/fs/bcachefs"):
        members = []
        for dev in names(host, f"/sys/fs/bcachefs/{uuid}"):
            block = resolve(host, f"/sys/fs/bcachefs/{uuid}/{dev}/block")
            if dev.startswith("dev-") and block is not None and exists(host, block):
                members.append(block.name)
        if set(members) & set(known):
            return members
    return []


def _zfs_members(host: Host, pool: str) -> Iterator[str]:
    """MAJ:MIN of the block devices udev's blkid probe found to carry a vdev label of `pool`."""
    for entry in names(host, "/run/udev/data"):
        if not re.fullmatch(r"b\d+:\d+", entry):
            continue
        text = read(host, f"/run/udev/data/{entry}", optional=True) or ""
        props = dict(line[2:].partition("=")[::2] for line in text.splitlines()
                     if line.startswith("E:"))
        if props.get("ID_FS_TYPE") != "zfs_member":
            continue
        label = props.get("ID_FS_LABEL_ENC")
        label = (_UDEV_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), label) if label is not None
                 else props.get("ID_FS_LABEL"))
        if label == pool:
            yield entry[1:]
