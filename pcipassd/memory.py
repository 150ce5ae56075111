"""What the guard judged while the network was up, remembered for the boot.

pcipassd.service runs at boot before the network is configured (before network-pre.target), so
the guard then sees no default route and no address: it cannot tell the uplink NIC from its
identical twin. A run whose guard finds a PCI NIC carrying the default route, or up with an
address, is a *live* run; any other is a *boot* run (or a host without a network).

Every live `apply` replaces /var/lib/pcipassd/guard.json with what it judged: each host-critical
device (all kinds) by address and vendor:device with its reasons, each device the guard refused
(itself critical, or in an IOMMU group with one) with why, and each NIC it saw (a NIC listed
there was judged live, critical or not). Every run reads it; only a live `apply` writes it.

A boot run refuses what was remembered, saying when it was judged, until a live run decides
otherwise; `force:` of the reason's kind overrides it as usual. A remembered device whose ID at
that address changed is forgotten. A NIC never judged live (none remembered, a new or changed
card, a damaged file) is judged from the network configuration that will bring it up
(pcipassd.netconfig). A file that cannot be used is one warning line, never a crash.
"""

from __future__ import annotations

import json
import os
import re
import stat
import time
from collections.abc import Mapping

from pcipassd.address import BDF_RE
from pcipassd.guard import Reason, critical_devices
from pcipassd.host import Host
from pcipassd.hostfiles import Snapshot
from pcipassd.inventory import Device, Inventory
from pcipassd.log import get_logger
from pcipassd.model import KINDS, NETWORK
from pcipassd.netconfig import interfaces, uplinks
from pcipassd.policy import blocking
from pcipassd.safefile import remove_temps, write_atomic
from pcipassd.selection import Selection
from pcipassd.state import ID_RE, Unusable, read_document
from pcipassd.value import frozen

TYPE_CHECKING = False  # as typing's, without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any

__all__ = ["FILE", "Judgment", "Known", "Memory", "judge", "load", "remember", "save"]

log = get_logger()

FILE = "/var/lib/pcipassd/guard.json"
FORMAT = 1
LIMIT = 1 << 20
NETWORK_CLASS = 0x02
_TEMP_PREFIX = ".guard.json."
_WHEN_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\Z")
_UNTIL = "refused until a live run decides otherwise"


@frozen
class Known:
    """One device as a live run judged it: (kind, text) pairs."""

    bdf: str
    id: str
    reasons: tuple[tuple[str, str], ...] = ()  # why it is host-critical
    refused: tuple[tuple[str, str], ...] = ()  # why the guard refused to bind it


@frozen
class Memory:
    """What the last live run judged, and when."""

    judged: str  # when, UTC: 2025-01-02T13:45:07Z
    devices: Mapping[str, Known]

    @property
    def when(self) -> str:
        """The time of the live run, for the admin: 2025-01-02 13:45 UTC."""
        return f"{self.judged[:10]} {self.judged[11:16]} UTC"


@frozen
class Judgment:
    """The guard's verdict for this run: what is critical (with what memory and the network
    configuration add at boot), whether the run is live, and what the admin should know."""

    critical: Mapping[str, tuple[Reason, ...]]
    seen: Mapping[str, tuple[Reason, ...]]  # what the guard itself saw in this run
    live: bool
    warnings: tuple[str, ...] = ()


def judge(host: Host, inventory: Inventory) -> Judgment:
    """The host-critical devices for this run. Read-only."""
    with Snapshot():
        return _judge(host, inventory)


def _judge(host: Host, inventory: Inventory) -> Judgment:
    seen = critical_devices(host)
    live = any(r.kind == NETWORK for reasons in seen.values() for r in reasons)
    memory, warning = load(host)
    warnings = [warning] if warning else []
    if live:
        return Judgment(seen, seen, True, tuple(warnings))
    critical = {bdf: list(reasons) for bdf, reasons in seen.items()}
    judged: set[tuple[str, str]] = set()
    if memory is not None:
        judged = {(k.bdf, k.id) for k in memory.devices.values()}
        _recall(memory, inventory, seen, critical)
    _configured(host, inventory, judged, critical, warnings)
    return Judgment({bdf: tuple(critical[bdf]) for bdf in sorted(critical)}, seen, False,
                    tuple(warnings))


def _same(dev: Device | None, known: Known) -> bool:
    return dev is not None and str(dev.id) == known.id


def _recall(memory: Memory, inventory: Inventory, seen: Mapping[str, tuple[Reason, ...]],
            critical: dict[str, list[Reason]]) -> None:
    """Add the remembered reasons (of a kind this run does not see for the device) and the
    remembered refusals (that this run's reasons would not repeat)."""
    for known in memory.devices.values():
        if not _same(inventory.devices.get(known.bdf), known):
            continue  # gone, or another card at that address: void
        kinds = {r.kind for r in seen.get(known.bdf, ())}
        for kind, text in known.reasons:
            if kind not in kinds:
                critical.setdefault(known.bdf, []).append(Reason(
                    known.bdf, f"{text} as last seen live ({memory.when}); {_UNTIL}", kind))
    for known in memory.devices.values():
        dev = inventory.devices.get(known.bdf)
        if dev is None or not _same(dev, known):
            continue
        mates = [dev, *(d for d in inventory.group_members(dev.group) if d.bdf != dev.bdf
                        and not d.is_bridge)] if dev.group is not None else [dev]
        for kind, text in known.refused:
            if any(r.kind == kind for d in mates for r in critical.get(d.bdf, ())):
                continue
            critical.setdefault(known.bdf, []).append(Reason(
                known.bdf, f"was refused as last seen live ({memory.when}): {text}; {_UNTIL}",
                kind))


def _configured(host: Host, inventory: Inventory, judged: set[tuple[str, str]],
                critical: dict[str, list[Reason]], warnings: list[str]) -> None:
    """The NICs never judged live that the network configuration brings up at boot."""
    fresh = {bdf for bdf, dev in inventory.devices.items() if (bdf, str(dev.id)) not in judged}
    nics = interfaces(host)
    if not any(nic.bdf in fresh for nic in nics):
        return
    found = uplinks(host, nics)
    warnings += found.warnings
    for uplink in found.found:
        bdf = uplink.iface.bdf
        if bdf not in fresh or any(r.kind == NETWORK for r in critical.get(bdf, ())):
            continue
        path = uplink.iface.name if uplink.iface.direct else f"{uplink.iface.name} on it"
        critical.setdefault(bdf, []).append(Reason(
            bdf, f"has {path}, which {uplink.text}, and was never judged with the network up; "
                 f"{_UNTIL}", NETWORK))


# --- what a live run remembers ---------------------------------------------------------------


def remember(judgment: Judgment, inventory: Inventory, selected: Selection,
             host: Host, now: float | None = None) -> Memory:
    """What a live run judged: the critical devices, the guard's refusals, the NICs."""
    reasons: dict[str, list[tuple[str, str]]] = {
        bdf: [(r.kind, r.text) for r in found] for bdf, found in judgment.seen.items()}
    refused: dict[str, list[tuple[str, str]]] = {}
    for sel in selected.chosen.values():
        found = blocking(sel.device, sel.entry, inventory, judgment.seen)
        if found is None:
            continue
        other, why = found
        shared = ("" if other.bdf == sel.device.bdf
                  else f", and shares IOMMU group {sel.device.group} with {sel.device.bdf}")
        pairs = refused.setdefault(sel.device.bdf, [])
        for r in why:
            pair = (r.kind, f"{other.bdf} {r.text}{shared}")
            if pair not in pairs:
                pairs.append(pair)
    nics = {nic.bdf for nic in interfaces(host)}
    nics.update(bdf for bdf, dev in inventory.devices.items() if dev.cls >> 16 == NETWORK_CLASS)
    devices = {}
    for bdf in sorted({*reasons, *refused, *nics}):
        dev = inventory.devices.get(bdf)
        if dev is not None:
            devices[bdf] = Known(bdf, str(dev.id), tuple(reasons.get(bdf, ())),
                                 tuple(refused.get(bdf, ())))
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if now is None else now))
    return Memory(stamp, devices)


# --- the file --------------------------------------------------------------------------------


def _pairs(raw: Any, name: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, list):
        raise ValueError(f"{name} is not a list")
    out = []
    for item in raw:
        if not (isinstance(item, dict) and set(item) == {"kind", "text"}
                and item["kind"] in KINDS and isinstance(item["text"], str)
                and 0 < len(item["text"]) <= 1024
                and not any(ord(c) < 0x20 or ord(c) == 0x7F for c in item["text"])):
            raise ValueError(f"{name}: not a {{kind, text}} pair of a known kind")
        out.append((item["kind"], item["text"]))
    return tuple(out)


def _known(raw: Any) -> Known:
    if not isinstance(raw, dict) or set(raw) != {"bdf", "id", "reasons", "refused"}:
        raise ValueError("a device is not {bdf, id, reasons, refused}")
    bdf, pci_id = raw["bdf"], raw["id"]
    if not isinstance(bdf, str) or not BDF_RE.fullmatch(bdf):
        raise ValueError("a device has no PCI address like 0000:02:00.0")
    if not isinstance(pci_id, str) or not ID_RE.match(pci_id):
        raise ValueError(f"device {bdf} has no vendor:device ID")
    return Known(bdf, pci_id, _pairs(raw["reasons"], f"device {bdf}: reasons"),
                 _pairs(raw["refused"], f"device {bdf}: refused"))


def load(host: Host) -> tuple[Memory | None, str]:
    """The memory, or None and one line saying why it cannot be used ("" when there is none)."""
    path = host.path(FILE)
    shown = host.display(path)
    lost = ("; judging as if nothing was remembered, until `pcipassd apply` runs with the "
            "network up")
    try:
        data = read_document(path, LIMIT, FORMAT, "devices")
    except Unusable as e:
        return None, e.line(shown) + lost
    except OSError as e:  # not root
        return None, f"cannot read {shown}: {e.strerror}{lost}"
    if data is None:
        return None, ""
    try:
        judged = data.get("judged")
        if not isinstance(judged, str) or not _WHEN_RE.match(judged):
            raise ValueError("judged is not a time like 2025-01-02T13:45:07Z")
        devices = {}
        for raw in data["devices"]:
            known = _known(raw)
            if known.bdf in devices:
                raise ValueError(f"device {known.bdf} is there twice")
            devices[known.bdf] = known
    except ValueError as e:
        return None, f"{shown} is damaged: {e}{lost}"
    return Memory(judged, devices), ""


def save(host: Host, memory: Memory) -> str:
    """Write the memory atomically; one line saying why not when it cannot be written."""
    path = host.path(FILE)
    data = {"format": FORMAT, "judged": memory.judged, "devices": [
        {"bdf": k.bdf, "id": k.id,
         "reasons": [{"kind": kind, "text": text} for kind, text in k.reasons],
         "refused": [{"kind": kind, "text": text} for kind, text in k.refused]}
        for k in memory.devices.values()]}
    body = (json.dumps(data, indent=2) + "\n").encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        if not stat.S_ISDIR(os.lstat(path.parent).st_mode):
            return f"{host.display(path.parent)} is not a directory (a symlink?)"
        remove_temps(path.parent, _TEMP_PREFIX)  # left by a save that was killed (apply's lock)
        write_atomic(path, body, _TEMP_PREFIX, durable=True)
    except OSError as e:
        return (f"cannot save {host.display(path)}: {e.strerror or e}; the next boot judges "
                "the network devices without it")
    return ""
