"""PCI addresses (BDF) and vendor:device IDs: parsing, with an exact reason when malformed."""

from __future__ import annotations

import re

from pcipassd.value import frozen

_HEX = re.compile(r"[0-9a-fA-F]+")
BDF_RE = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[01][0-9a-f]\.[0-7]$")


class AddressError(ValueError):
    """The text is not a PCI address or ID; str() says exactly what is wrong."""


def _hex_field(text: str, what: str, digits: int, limit: int | None = None) -> int:
    if len(text) != digits or not _HEX.fullmatch(text):
        raise AddressError(f"{what} {text!r} must be {digits} hex digits")
    value = int(text, 16)
    if limit is not None and value > limit:
        raise AddressError(f"{what} {text} is out of range (00-{limit:02x})")
    return value


@frozen(order=True)
class Address:
    """A PCI address; `function` None means every function of the slot (`0000:41:00.*`)."""

    domain: int
    bus: int
    slot: int
    function: int | None

    @classmethod
    def parse(cls, text: str) -> Address:
        parts = text.strip().split(":")
        if len(parts) == 2:
            parts.insert(0, "0000")
        if len(parts) != 3 or "." not in parts[2]:
            raise AddressError(
                f"{text!r} is not a PCI address: expected [DDDD:]BB:SS.F, e.g. 0000:02:00.0"
            )
        slot_text, _, func_text = parts[2].partition(".")
        try:  # the address in the message: the line names the device as written
            domain = _hex_field(parts[0], "domain", 4)
            bus = _hex_field(parts[1], "bus", 2)
            slot = _hex_field(slot_text, "slot", 2, 0x1F)
            if func_text == "*":
                return cls(domain, bus, slot, None)
            if len(func_text) != 1 or func_text not in "01234567":
                raise AddressError(f"function {func_text!r} must be 0-7 or *")
        except AddressError as e:
            raise AddressError(f"{text.strip()}: {e}") from None
        return cls(domain, bus, slot, int(func_text))

    def matches(self, bdf: str) -> bool:
        other = Address.parse(bdf)
        return (self.domain, self.bus, self.slot) == (other.domain, other.bus, other.slot) and (
            self.function is None or self.function == other.function
        )

    def __str__(self) -> str:
        func = "*" if self.function is None else str(self.function)
        return f"{self.domain:04x}:{self.bus:02x}:{self.slot:02x}.{func}"


@frozen(order=True)
class PciId:
    """A PCI vendor:device ID (8086:10d3)."""

    vendor: int
    device: int

    @classmethod
    def parse(cls, text: str) -> PciId:
        vendor, sep, device = text.strip().partition(":")
        if not sep:
            raise AddressError(f"{text!r} is not a vendor:device ID, e.g. 8086:10d3")
        return cls(_hex_field(vendor, "vendor", 4), _hex_field(device, "device", 4))

    def __str__(self) -> str:
        return f"{self.vendor:04x}:{self.device:04x}"
