"""When a reboot is needed: a device `apply` moved late, from the original driver that had it, is
in the hold list now, so from the next boot the early stages hold it from the first instant,
before any driver can initialise it (a GPU initialised by its original driver may not reset
cleanly). Said once per `apply` that moves one, and by `status` while it is so: the records
are in /run, so the reboot itself ends it.

Where pcipassd has no initramfs stage (neither its initramfs-tools hook nor its dracut module
for the host's builder), the real-root stage holds it from the next boot, but a driver inside
the initramfs still probes first; the advice then says how to keep that driver out of the
initramfs.
"""

from __future__ import annotations

from collections.abc import Mapping

from pcipassd.early import builtin
from pcipassd.host import Host
from pcipassd.initramfs import HOLD_LIST, has_stage, rebuild_command, stale
from pcipassd.model import STUB_DRIVERS, Record
from pcipassd.safefile import read_host

GPU_NOTE = "a GPU initialised by its original driver may not reset cleanly"


def held_from_boot(host: Host) -> frozenset[str]:
    """The devices the hold list names (`dev BDF ID TARGET`): held early from the next boot."""
    text = read_host(host.path(HOLD_LIST)) or ""
    return frozenset(f[1] for line in text.splitlines()
                     if len(f := line.split()) == 4 and f[0] == "dev")


def moved_late(host: Host, records: Mapping[str, Record]) -> list[Record]:
    """The devices pcipassd moved late from their original driver, which the next boot holds early
    (not those whose driver is built into the kernel: it binds before any stage can run)."""
    listed = held_from_boot(host)
    return [r for bdf, r in sorted(records.items())
            if r.stage == "late" and r.original_driver not in (None, *STUB_DRIVERS)
            and bdf in listed and not builtin(host, r.original_module)]


def advice(host: Host, records: Mapping[str, Record]) -> str | None:
    """One line naming the devices, and what to do; None when no reboot is needed."""
    moved = moved_late(host, records)
    if not moved:
        return None
    them = "it" if len(moved) == 1 else "them"
    devices = ", ".join(f"{r.bdf} (from {r.original_driver})" for r in moved)
    why = (f"pcipassd moved {devices} late, from the original driver that had initialised {them} "
           f"({GPU_NOTE})")
    if has_stage(host):
        first = "reboot" if stale(host) is None else (
            f"run `{rebuild_command(host)}`, then reboot")
        return f"{first} to have {them} held from the first instant: {why}"
    modules = " ".join(sorted({r.original_module or str(r.original_driver) for r in moved}))
    blacklist = ",".join(modules.split())
    return (f"reboot to have {them} held from the next boot: {why}. This host has no initramfs "
            f"stage of pcipassd (dracut?): pcipassd-early.service holds {them} before udev's "
            "coldplug, but a driver inside the initramfs still probes first; leave it out of "
            f'the initramfs (`omit_drivers+=" {modules} "` in /etc/dracut.conf.d/pcipassd.conf, '
            f"then `dracut -f`) or add `rd.driver.blacklist={blacklist}` to the kernel command "
            "line")
