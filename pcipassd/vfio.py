"""Who has a device open through VFIO, and what QEMU and libvirt need to be given it.

Unbinding a device from vfio-pci while a VM has its group open blocks in the kernel until the VM
lets go ("Device is currently in use, task ... blocked"). So before every unbind from vfio-pci
pcipassd looks for a process that has the device's group (/dev/vfio/N) or its cdev
(/dev/vfio/devices/vfioX, kernels >= 6.2) open, and leaves the device where it is if one does.
"""

from __future__ import annotations

import os
from collections.abc import Collection

from pcipassd.errors import PcipassError
from pcipassd.host import Host
from pcipassd.inventory import Device
from pcipassd.model import VFIO_PCI
from pcipassd.safefile import read_host
from pcipassd.value import frozen

DRIVER = VFIO_PCI


@frozen
class User:
    pid: int
    comm: str

    def __str__(self) -> str:
        return f"{self.comm} (pid {self.pid})"


def _paths(host: Host, device: Device) -> set[str]:
    paths = {f"/dev/vfio/{device.group}"} if device.group else set()
    try:
        for name in os.listdir(host.pci_devices / device.bdf / "vfio-dev"):
            paths.add(f"/dev/vfio/devices/{name}")
    except OSError:
        pass
    return paths


def users(host: Host, device: Device) -> list[User]:
    """The processes that have `device` open through VFIO (none when it is not on vfio-pci)."""
    if device.driver != DRIVER:
        return []
    wanted = _paths(host, device)
    proc = host.path("/proc")
    found = []
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return []
    for pid in pids:
        fds = proc / pid / "fd"
        try:
            names = os.listdir(fds)
        except OSError:  # gone, or not ours to read
            continue
        for fd in names:
            try:
                target = os.readlink(fds / fd)
            except OSError:
                continue
            if target in wanted:
                text = read_host(proc / pid / "comm")
                comm = "?" if text is None else text.strip()
                found.append(User(int(pid), comm))
                break
    return sorted(found, key=lambda u: u.pid)


# -- handing the devices to a VM --------------------------------------------------------------
def _slot(bdf: str) -> str:
    return bdf.rsplit(".", 1)[0]


def _by_slot(bdfs: list[str], vfs: Collection[str] = ()) -> list[list[str]]:
    """The functions of each slot together (a card, or a single function), in BDF order; each
    of `vfs` (SR-IOV VFs: they share slots, but are no card) alone."""
    slots: dict[str, list[str]] = {}
    for bdf in sorted(bdfs):
        slots.setdefault(bdf if bdf in vfs else _slot(bdf), []).append(bdf)
    return list(slots.values())


def _guest_functions(functions: list[str]) -> list[int]:
    """The guest function numbers of one slot's functions: their host function numbers. Guests
    look for functions 1-7 only where function 0 is: functions held without their function 0
    are numbered from 0."""
    numbers = [int(b[-1]) for b in functions]
    return numbers if numbers[0] == 0 else list(range(len(functions)))


def qemu_args(bdfs: list[str], vfs: Collection[str] = ()) -> list[str]:
    """One line of QEMU arguments per card: the functions of a multifunction card together."""
    return [" ".join(f"-device vfio-pci,host={b}" for b in functions)
            for functions in _by_slot(bdfs, vfs)]


MAX_CHASSIS = 255  # a pcie-root-port's chassis number is one byte


def qemu_q35_args(bdfs: list[str], base: int, vfs: Collection[str] = ()) -> list[str]:
    """A q35 layout that keeps each card's function layout in the guest: per slot (a card, or a
    single function) one pcie-root-port, numbered from `base` (its id `pcipass-rpN`, chassis N,
    slot N), with function 0 `multifunction=on` and the others at their own function numbers
    (see _guest_functions)."""
    slots = _by_slot(bdfs, vfs)
    last = base + len(slots) - 1
    if last > MAX_CHASSIS:
        raise PcipassError(f"{len(slots)} root ports from {base} go past chassis {MAX_CHASSIS}",
                           f"give a lower BASE: --qemu-q35 {max(1, MAX_CHASSIS + 1 - len(slots))}")
    chassis = f"chassis {base}" if last == base else f"chassis {base}-{last}"
    lines = ["# needs -machine q35 (PCI Express): a pcie-root-port per card, "
             f"{chassis}, its functions at their host function numbers"]
    for n, functions in enumerate(slots, base):
        port = f"pcipass-rp{n}"
        args = [f"-device pcie-root-port,id={port},bus=pcie.0,chassis={n},slot={n}"]
        for bdf, function in zip(functions, _guest_functions(functions)):
            multi = ",multifunction=on" if function == 0 and len(functions) > 1 else ""
            args.append(f"-device vfio-pci,host={bdf},bus={port},addr=00.{function}{multi}")
        lines.append(" ".join(args))
    return lines


# libvirt: the guest slots of bus 0 the cards go to, one slot per card from GUEST_SLOT (0x10:
# above the slots libvirt fills first when it picks addresses itself, from 0x01 up, and below
# the q35 chipset's 0x1b-0x1f); status --libvirt --guest-slot SLOT moves them
GUEST_SLOT = 0x10
MAX_GUEST_SLOT = 0x1F


@frozen
class GuestAddress:
    """Where a function of a card goes in the guest: bus 0, `slot`, `function`."""

    slot: int
    function: int

    @property
    def xml(self) -> str:
        multi = " multifunction='on'" if self.function == 0 else ""
        return (f"<address type='pci' domain='0x0000' bus='0x00' slot='0x{self.slot:02x}' "
                f"function='0x{self.function:x}'{multi}/>")


def libvirt_layout(bdfs: list[str], base: int = GUEST_SLOT, vfs: Collection[str] = ()
                   ) -> dict[str, GuestAddress]:
    """The guest address of each function of a card (a slot with several functions in `bdfs`):
    the cards in BDF order, one guest slot each on bus 0 from `base`, function 0 with
    multifunction='on', the others at their host function numbers (see _guest_functions). A
    single function gets none: libvirt picks its address, as it always has."""
    cards = [functions for functions in _by_slot(bdfs, vfs) if len(functions) > 1]
    if base + len(cards) - 1 > MAX_GUEST_SLOT:
        lower = max(1, MAX_GUEST_SLOT + 1 - len(cards))
        raise PcipassError(f"{len(cards)} cards from guest slot 0x{base:02x} go past slot "
                           f"0x{MAX_GUEST_SLOT:02x}",
                           f"give a lower slot: --guest-slot 0x{lower:02x}")
    return {bdf: GuestAddress(slot, function)
            for slot, functions in enumerate(cards, base)
            for bdf, function in zip(functions, _guest_functions(functions))}


def libvirt_hostdev(bdf: str, guest: GuestAddress | None = None) -> str:
    """The domain XML for one function; managed='no': pcipassd, not libvirt, owns the binding.
    With `guest`, the function's address in the guest (a card's function)."""
    domain, bus, rest = bdf.split(":")
    slot, function = rest.split(".")
    at = f"  {guest.xml}\n" if guest else ""
    return (f"<hostdev mode='subsystem' type='pci' managed='no'>\n"
            f"  <source>\n"
            f"    <address domain='0x{domain}' bus='0x{bus}' slot='0x{slot}' "
            f"function='0x{function}'/>\n"
            f"  </source>\n"
            f"{at}"
            f"</hostdev>")
