"""A builder of fake host trees for the guard: sysfs with relative symlinks as the kernel makes
them, /proc files in the kernel's exact text formats."""

from __future__ import annotations

import os
from pathlib import Path

from pcipassd.host import Host

PCI_ROOT = "/sys/devices/pci0000:00"
SWAP_TYPE = {"partition": "partition", "file": "file\t"}  # swap_show pads "file" with a tab


class FakeHost:
    """Builds a host tree under a temporary root. Paths are given as the host names them."""

    def __init__(self, root: Path) -> None:
        self.host = Host(root)
        self.netdevs: dict[str, str] = {}

    def write(self, absolute: str, text: str) -> None:
        path = self.host.path(absolute)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def mkdir(self, absolute: str) -> str:
        self.host.path(absolute).mkdir(parents=True, exist_ok=True)
        return absolute

    def link(self, at: str, target: str) -> None:
        """A relative symlink `at` -> `target`, as sysfs makes them."""
        path = self.host.path(at)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(os.path.relpath(target, os.path.dirname(at)))

    # PCI

    def pci(self, *chain: str, cls: int = 0x020000) -> str:
        """A PCI device behind the bridges listed before it: pci("0000:00:1d.0", "0000:3d:00.0");
        the bridges have class 0x060400, the device `cls`."""
        path = PCI_ROOT
        for index, bdf in enumerate(chain):
            path = self.mkdir(f"{path}/{bdf}")
            self.write(f"{path}/vendor", "0x8086\n")
            self.write(f"{path}/class", f"0x{cls if index == len(chain) - 1 else 0x060400:06x}\n")
            self.link(f"/sys/bus/pci/devices/{bdf}", path)
        return path

    # Block devices

    def disk(self, name: str, devno: str, parent: str) -> str:
        path = self.mkdir(f"{parent}/block/{name}")
        self.write(f"{path}/dev", f"{devno}\n")
        self.link(f"/sys/class/block/{name}", path)
        self.link(f"/sys/block/{name}", path)
        self.link(f"/sys/dev/block/{devno}", path)
        return path

    def partition(self, disk: str, name: str, devno: str) -> str:
        path = self.mkdir(f"{disk}/{name}")
        self.write(f"{path}/dev", f"{devno}\n")
        self.write(f"{path}/partition", f"{name[-1]}\n")
        self.link(f"/sys/class/block/{name}", path)
        self.link(f"/sys/dev/block/{devno}", path)
        return path

    def holder(self, name: str, devno: str, slaves: list[str], dm_name: str = "") -> str:
        """A device-mapper or md device stacked on `slaves` (sysfs directories)."""
        path = self.disk(name, devno, "/sys/devices/virtual")
        for slave in slaves:
            self.link(f"{path}/slaves/{os.path.basename(slave)}", slave)
            self.link(f"{slave}/holders/{name}", path)
        if dm_name:
            self.write(f"{path}/dm/name", f"{dm_name}\n")
        return path

    def loop(self, name: str, devno: str, backing_file: str) -> str:
        """A loop device bound to a file, as losetup leaves it."""
        path = self.disk(name, devno, "/sys/devices/virtual")
        self.write(f"{path}/loop/backing_file", f"{backing_file}\n")
        return path

    def udev(self, devno: str, **props: str) -> None:
        """udev's database entry of block device MAJ:MIN: E: lines, as udevd writes them."""
        lines = [f"E:{key}={value}" for key, value in props.items()]
        self.write(f"/run/udev/data/b{devno}", "S:disk/by-uuid/x\nI:1234\n" + "\n".join(lines)
                   + "\nG:systemd\n")

    # Display

    def framebuffer(self, fb: str, device: str) -> None:
        """A framebuffer registered by the driver of `device` (a sysfs directory)."""
        self.link(f"/sys/class/graphics/{fb}", self.mkdir(f"{device}/graphics/{fb}"))
        self.link(f"{device}/graphics/{fb}/device", device)

    def fbcon(self, bound: bool) -> None:
        """fbcon, and the virtual console drivers: vtcon0 the dummy, vtcon1 fbcon."""
        self.link("/sys/class/graphics/fbcon", self.mkdir("/sys/devices/virtual/graphics/fbcon"))
        for index, (name, bind) in enumerate(
            [("(S) dummy device", "0"), ("(M) frame buffer device", "1" if bound else "0")]
        ):
            vtcon = self.mkdir(f"/sys/devices/virtual/vtconsole/vtcon{index}")
            self.write(f"{vtcon}/name", f"{name}\n")
            self.write(f"{vtcon}/bind", f"{bind}\n")
            self.link(f"/sys/class/vtconsole/vtcon{index}", vtcon)

    def cmdline(self, text: str) -> None:
        self.write("/proc/cmdline", text + "\n")

    # Network interfaces

    def netdev(self, name: str, device: str | None, flags: str = "0x1003") -> str:
        """An interface on PCI device `device`, or a virtual one; flags 0x1003 is UP."""
        if device is None:
            path = self.mkdir(f"/sys/devices/virtual/net/{name}")
        else:
            path = self.mkdir(f"{device}/net/{name}")
            self.link(f"{path}/device", device)
        self.write(f"{path}/flags", f"{flags}\n")
        self.link(f"/sys/class/net/{name}", path)
        self.netdevs[name] = path
        return path

    def stack(self, upper: str, lower: str) -> None:
        """`upper` (bridge, bond, VLAN) runs on `lower`, as netdev_upper_dev_link records it."""
        self.link(f"{self.netdevs[upper]}/lower_{lower}", self.netdevs[lower])
        self.link(f"{self.netdevs[lower]}/upper_{upper}", self.netdevs[upper])

    def bridge(self, name: str, ports: list[str]) -> None:
        self.netdev(name, None)
        self.mkdir(f"{self.netdevs[name]}/bridge")
        for port in ports:
            self.stack(name, port)
            self.mkdir(f"{self.netdevs[port]}/brport")
            self.link(f"{self.netdevs[name]}/brif/{port}", f"{self.netdevs[port]}/brport")

    def bond(self, name: str, slaves: list[str]) -> None:
        self.netdev(name, None)
        self.write(f"{self.netdevs[name]}/bonding/slaves", " ".join(slaves) + "\n")
        for slave in slaves:
            self.stack(name, slave)

    # /proc

    def mountinfo(self, *lines: str) -> None:
        self.write("/proc/self/mountinfo", "".join(line + "\n" for line in lines))

    def routes(self, *rows: str) -> None:
        """/proc/net/route as fib_route_seq_show prints it: every line padded to 127 columns."""
        header = (
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT"
        )
        self.write("/proc/net/route", "".join(f"{line:<127}\n" for line in (header, *rows)))

    def ipv6_routes(self, *lines: str) -> None:
        self.write("/proc/net/ipv6_route", "".join(line + "\n" for line in lines))

    def if_inet6(self, *lines: str) -> None:
        self.write("/proc/net/if_inet6", "".join(line + "\n" for line in lines))

    def swaps(self, *entries: tuple[str, str]) -> None:
        """/proc/swaps as swap_show prints it from (path, "partition" or "file") pairs."""
        header = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
        rows = [
            f"{path}{' ' * max(40 - len(path), 1)}{SWAP_TYPE[kind]}\t1048572\t\t0\t\t-2\n"
            for path, kind in entries
        ]
        self.write("/proc/swaps", header + "".join(rows))


