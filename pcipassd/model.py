"""pcipassd's words: the names several modules share, and nothing else.

A module that needs one of these imports it from here rather than from the module that uses it
most, so that no module imports another only for a constant or a type. This module imports no
other pcipassd module but pcipassd.value (which imports none), so that it stays at the bottom of
the import graph (tests/test_layers.py).

- the kinds of host-critical device the guard knows, which `force:` may name;
- the drivers a device can be held by (``driver:`` and ``target``);
- what `on_stop:` may say;
- a Record, what the state file keeps about each device pcipassd moved;
- an Action, what a plan does to a device.
"""

from __future__ import annotations

from enum import Enum

from pcipassd.value import frozen

# -- the guard's kinds of host-critical device --------------------------------------------
STORAGE = "storage"
NETWORK = "network"
BOOT_VGA = "boot-vga"
CONSOLE = "console"
CHIPSET = "chipset"
KINDS = (STORAGE, NETWORK, BOOT_VGA, CONSOLE, CHIPSET)  # what `force:` may name, in this order
FORCE_TRUE = (STORAGE, NETWORK, BOOT_VGA, CONSOLE)  # what `force: true` overrides: not chipset

# -- the drivers pcipassd holds a device with ---------------------------------------------
VFIO_PCI = "vfio-pci"  # the stub driver through which a VM can have a device open
STUB_DRIVERS = ("pci-stub", VFIO_PCI)  # the targets the schema allows

# -- the kernel's reset methods (a device's sysfs `reset_method`, Linux 5.15+) --------------
# drivers/pci/pci.c pci_reset_fn_methods[], in the kernel's default order; cxl_bus since 6.7.
# What `reset_method:` may name (schema.json lists the same names).
RESET_METHODS = ("device_specific", "acpi", "flr", "af_flr", "pm", "bus", "cxl_bus")

# -- what the unit's stop (`systemctl stop`, reload's give-back, poweroff) does to a device -------
# An entry's `on_stop:`, kept in the device's record: restore (the default) gives it back; keep
# leaves it on its target, with its record, until `pcipassd restore` (by hand, or the package's
# removal) or a reboot. For cards that hang on unbind or die on reset.
RESTORE_ON_STOP = "restore"
KEEP_ON_STOP = "keep"
ON_STOP = (RESTORE_ON_STOP, KEEP_ON_STOP)  # what `on_stop:` may say (schema.json lists the same)


# -- the state file: one record per device pcipassd moved ---------------------------------
@frozen
class Record:
    bdf: str
    id: str  # vendor:device when it was bound, to notice changed hardware
    original_driver: str | None  # None: it was unbound, and stays so on restore
    original_override: str | None
    original_module: str | None  # the module providing original_driver, loaded on restore
    target: str
    entry: str  # FILE:LINE that selected it
    # The stage that held it: initramfs, early (before udev's coldplug), udev (added later) or
    # late (moved by the main service). Held before any driver bound it, original_driver is None
    # and restore gives it to the driver udev would load for it (see apply.py).
    stage: str = "late"
    # What `force:` overrode to bind it ("carries the default route via eth0"), empty when
    # nothing was: kept here because the evidence is gone once the device is held.
    forced: str = ""
    # The device's sysfs `reset_method` before pcipassd first wrote its entry's `reset_method:`
    # ("flr bus"; "" when reset was disabled), written back on give-back; None: pcipassd has
    # not changed it. Saved before the first write (tuned's rule).
    original_reset_method: str | None = None
    # Its entry's `on_stop:` when pcipassd last applied it (ON_STOP): kept here, so that a device
    # whose entry is edited away still stays held until `pcipassd restore` gives it back.
    on_stop: str = RESTORE_ON_STOP

    @property
    def original_unknown(self) -> bool:
        """Held before any driver bound it: its original driver is whatever udev would load for
        it."""
        return self.original_driver is None and self.stage != "late"


# -- the plan: what apply does to each device ---------------------------------------------
class Action(str, Enum):  # enum.StrEnum is 3.11+
    # The one set of action words: plan's ACTION, status's ACTION (what a reload would do), the
    # JSON's `action`, the journal's PCIPASS_ACTION (README: Words).
    BIND = "bind"  # move the device to its target
    UNCHANGED = "unchanged"  # already on its target
    RESTORE = "restore"  # no longer configured: back to its original driver
    KEEP = "keep"  # held by pcipassd, but its entry has a problem: left as it is
    FAIL = "fail"  # cannot be done; says why

    def __str__(self) -> str:
        return str(self.value)
