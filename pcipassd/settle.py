"""Waiting for udev: only when a configured device may still be in its queue.

pcipassd.service starts once udev's coldplug has been triggered (After=systemd-udev-trigger), not
finished: udev may still be loading the driver of a device the config selects. A device that the
early stages held (its driver_override names its target) can be taken by no other driver, and one
already on its target is where it should be: for them there is nothing to wait for. Any other
selected device (no hold list yet, a stale one, an entry added since the last apply, the members
`group: bind` pulls in) may still be probed: then apply waits until udev has handled every event
(`udevadm settle`, as the unit did on every boot before) and only then records the driver it has.
A boot whose devices were all held from the initramfs on waits for nothing.
"""

from __future__ import annotations

TYPE_CHECKING = False  # as typing's, without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from pcipassd.inventory import Device, Inventory
    from pcipassd.selection import Selection


def unsettled(selection: Selection, inventory: Inventory) -> list[str]:
    """The devices apply may move that are neither on their target nor held for it."""

    def waiting(device: Device, target: str) -> bool:
        return target not in (device.driver, device.override) and not device.is_bridge

    out = set()
    for bdf, sel in selection.chosen.items():
        if waiting(sel.device, sel.target):
            out.add(bdf)
        # `group: bind`: the members of its IOMMU group may be moved too
        if sel.entry.group == "bind" and sel.device.group is not None:
            out.update(d.bdf for d in inventory.group_members(sel.device.group)
                       if waiting(d, sel.target))
    return sorted(out)
