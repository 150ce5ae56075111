"""The cards known not to reset cleanly between two VM runs (the "AMD reset bug"), shipped as
data: a Python table, so that it is installed wherever the package is (no package data to
declare). Read by preflight.py only, never on the boot path.

SOURCE names where the table comes from; update both together.
"""

from __future__ import annotations

#: Where the table comes from: the devices gnif/vendor-reset supports (its src/device-db.h, the
#: same IDs as its udev/99-vendor-reset.rules), read for issue 17.
SOURCE = "gnif/vendor-reset src/device-db.h"
#: The module that fixes their reset, as /sys/module names it once loaded.
MODULE = "vendor_reset"

_AMD = 0x1002
# family -> device IDs (vendor 0x1002), in device-db.h's order
_FAMILIES: dict[str, tuple[int, ...]] = {
    "AMD Polaris 10": (0x67C0, 0x67C1, 0x67C2, 0x67C4, 0x67C7, 0x67D0, 0x67DF, 0x67C8, 0x67C9,
                       0x67CA, 0x67CC, 0x67CF, 0x6FDF),
    "AMD Polaris 11": (0x67E0, 0x67E3, 0x67E8, 0x67EB, 0x67EF, 0x67FF, 0x67E1, 0x67E7, 0x67E9),
    "AMD Polaris 12": (0x6980, 0x6981, 0x6985, 0x6986, 0x6987, 0x6995, 0x6997, 0x699F),
    "AMD Vega 10": (0x6860, 0x6861, 0x6862, 0x6863, 0x6864, 0x6867, 0x6868, 0x6869, 0x686A,
                    0x686B, 0x686C, 0x686D, 0x686E, 0x686F, 0x687F),
    "AMD Vega 20": (0x66A0, 0x66A1, 0x66A2, 0x66A3, 0x66A4, 0x66A7, 0x66AF),
    "AMD Arcturus": (0x738C,),
    "AMD Navi 10": (0x7310, 0x7312, 0x7318, 0x7319, 0x731A, 0x731B, 0x731E, 0x731F, 0x1681),
    "AMD Navi 14": (0x7340, 0x7341, 0x7347, 0x734F),
    "AMD Navi 12": (0x7360, 0x7362),
}
#: (vendor, device) -> family
KNOWN: dict[tuple[int, int], str] = {
    (_AMD, device): family for family, devices in _FAMILIES.items() for device in devices}


def family(vendor: int, device: int) -> str | None:
    """The family of a card on the list ("AMD Navi 10"), None when it is not on it."""
    return KNOWN.get((vendor, device))
