"""SR-IOV virtual functions: an entry's `vfs:` (README: SR-IOV virtual functions).

An entry that selects one physical function (PF) may say `vfs: {count: N, driver: vfio-pci}`:
apply creates N VFs on it while it is on its driver and holds them before any host VF driver
can probe them (apply.py: `Applier.create_vfs`, the kernel documentation's race-free recipe);
give-back removes the VFs pcipassd created. This module reads the PF's sysfs files, turns the
entry into a selection of VFs, says what is wrong with it (one line each), and keeps the records
of the VFs pcipassd created: /run/pcipass/sriov.json, written before the PF is touched.

- A VF is named by its PF and index: `0000:03:00.0 vf2` is the PF's `virtfn2`; its address
  follows from the PF's (sriov_offset, sriov_stride). `hold: [0, 2]` holds only those; the
  others go to the host's VF driver, as the kernel would have bound them.
- The entry's own `driver:` moves the PF too; without it the PF stays on its driver.
- VFs that exist already with the count asked for are adopted (held, never recreated, never
  removed); another count, by someone else, refuses the entry.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from pcipassd.address import BDF_RE, PciId
from pcipassd.errors import Problem, StateError
from pcipassd.host import Host
from pcipassd.inventory import Device, Inventory, device_attr, device_link
from pcipassd.printable import short
from pcipassd.safefile import write_atomic
from pcipassd.selection import Selected, Selection
from pcipassd.value import frozen, replace

TYPE_CHECKING = False  # as typing's, without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from pcipassd.config import Config, Entry

FILE = "sriov.json"  # in the state directory, next to state.json
FORMAT = 1
LIMIT = 1 << 20  # bytes, as state.json: a record is about 200
# as state.json's (state.py): nothing is touched until the file is moved away
_DAMAGED_HINT = ("pcipassd moves no device while it cannot read this file: move it away; "
                 "`pcipassd list` then shows each PF's VFs (SR-IOV:), to remove by hand with "
                 "echo 0 > /sys/bus/pci/devices/PF/sriov_numvfs")
ENOENT_HINT = ("its driver cannot create VFs (no sriov_configure: pci-stub never can, vfio-pci "
               "only with its module parameter enable_sriov=1): leave the PF on its own driver "
               "(no `driver:` in the entry)")


@frozen
class Pf:
    """A PF's SR-IOV files as sysfs shows them now."""

    bdf: str
    total: int  # sriov_totalvfs
    numvfs: int  # sriov_numvfs
    autoprobe: str  # sriov_drivers_autoprobe: "1" or "0"
    vfs: tuple[str, ...]  # by index: the virtfnN links


@frozen
class Created:
    """What pcipassd changed on a PF: the VFs it created and what the PF had before."""

    pf: str
    id: str
    entry: str  # FILE:LINE of the entry with `vfs:`
    original_numvfs: int
    original_autoprobe: str
    vfs: tuple[str, ...] = ()  # the VFs it created, by index


@frozen
class Due:
    """VFs to create: the PF, its entry, and what to hold."""

    pf: str
    id: str
    driver: str | None  # the PF's driver now
    entry: Entry
    hold: tuple[int, ...]  # the indexes to hold
    autoprobe: str  # sriov_drivers_autoprobe before pcipassd touched it
    refusal: str = ""  # why it may not be done now (the guard: the PF's link would drop)


def read_pf(host: Host, bdf: str) -> Pf | None:
    """The PF's SR-IOV files; None when it has none (no SR-IOV capability)."""
    total = device_attr(host, bdf, "sriov_totalvfs")
    numvfs = device_attr(host, bdf, "sriov_numvfs")
    if total is None or numvfs is None:
        return None
    try:
        n = int(numvfs)
        vfs = tuple(v for i in range(n) if (v := device_link(host, bdf, f"virtfn{i}")))
        if len(vfs) != n:  # a VF went away meanwhile
            return None
        return Pf(bdf, int(total), n, device_attr(host, bdf, "sriov_drivers_autoprobe") or "1",
                  vfs)
    except ValueError:
        return None


def vf_name(entry: Entry, pf: str, index: int) -> str:
    """How status names a VF: `guest-vfs vf2`, `0000:03:00.0 vf2`."""
    return f"{entry.name or pf} vf{index}"


def held_indexes(entry: Entry) -> tuple[int, ...]:
    assert entry.vfs is not None
    return entry.vfs.hold if entry.vfs.hold is not None else tuple(range(entry.vfs.count))


# -- the selection ---------------------------------------------------------------------------
def expand(host: Host, config: Config, selection: Selection, inventory: Inventory,
           created: Mapping[str, Created]) -> tuple[Selection, list[Due]]:
    """Each `vfs:` entry's VFs into the selection, its PF out of it unless the entry moves it
    too; its problems (the entry then selects nothing, its devices are kept); and the PFs
    whose VFs apply is to create."""
    chosen = dict(selection.chosen)
    problems = list(selection.problems)
    kept = set(selection.kept)
    due: list[Due] = []
    for entry in config.entries:
        if entry.vfs is None:
            continue
        mine = [s for s in selection.chosen.values() if s.entry == entry]
        if not mine:
            continue  # refused already, or nothing there: said by select()
        pf_sel = mine[0]
        pf = pf_sel.device
        problem, info = _check(host, entry, mine, created)
        if problem is not None or info is None:
            problems.append(problem or entry.problem("no SR-IOV"))
            for s in mine:
                chosen.pop(s.device.bdf, None)
                kept.add(s.device.bdf)
            if info is not None:
                kept.update(info.vfs)
            continue
        if clash := _clash(host, config, entry, pf=pf, info=info, inventory=inventory):
            problems.append(clash[0])
            for bdf, sel in selection.chosen.items():
                if sel.entry in (entry, clash[1]):
                    chosen.pop(bdf, None)
                    kept.add(bdf)
            kept.update(info.vfs)
            continue
        if not entry.vfs.move_pf:
            chosen.pop(pf.bdf, None)
        if info.numvfs == 0:
            due.append(Due(pf.bdf, str(pf.id), pf.driver, entry, held_indexes(entry),
                           info.autoprobe))
            continue
        for index in held_indexes(entry):
            vf = inventory.devices.get(info.vfs[index])
            if vf is None:
                continue
            chosen[vf.bdf] = Selected(vf, replace(entry, driver=entry.vfs.driver,
                                                  name=vf_name(entry, pf.bdf, index)))
    return Selection(dict(sorted(chosen.items())), tuple(problems), frozenset(kept)), due


def _clash(host: Host, config: Config, entry: Entry, *, pf: Device, info: Pf,
           inventory: Inventory) -> tuple[Problem, Entry] | None:
    """A VF the entry holds that another entry selects too (its `id:`, its `address:`), and
    that entry: both are refused, as two entries with different drivers are. VFs still to be
    created are judged by the addresses and ID they will have (sriov_offset, sriov_stride,
    sriov_vf_device), before any is created."""
    vfs: dict[int, tuple[str, PciId | None]] = {}
    for index in held_indexes(entry):
        if index < len(info.vfs):
            vf = inventory.devices.get(info.vfs[index])
            vfs[index] = (info.vfs[index], vf.id if vf else None)
        elif info.numvfs == 0 and (future := _future_vf(host, pf, index)) is not None:
            vfs[index] = future
    for other in config.entries:
        if other == entry:
            continue
        for index, (bdf, pci_id) in vfs.items():
            if (other.address.matches(bdf) if other.address is not None
                    else other.id is not None and other.id == pci_id):
                return entry.problem(
                    f"{bdf} ({pf.bdf} vf{index}) is also selected by {other.source} "
                    f"({other.selects}); a VF that `vfs:` holds is its entry's alone: both "
                    f"entries refused, left as they are",
                    f"remove the other entry, or leave vf{index} out of `hold:`"), other
    return None


def _future_vf(host: Host, pf: Device, index: int) -> tuple[str, PciId | None] | None:
    """The address and ID VF `index` of `pf` will have (the kernel's pci_iov_virtfn_bus and
    _devfn: the PF's routing ID + sriov_offset + index * sriov_stride; vendor: the PF's;
    device: sriov_vf_device); None when the PF's files do not say."""
    def attr(name: str) -> str:
        return device_attr(host, pf.bdf, name) or ""

    try:
        offset, stride = int(attr("sriov_offset")), int(attr("sriov_stride"))
        domain, bus, devfn = pf.bdf[:4], int(pf.bdf[5:7], 16), (
            int(pf.bdf[8:10], 16) << 3 | int(pf.bdf[11]))
    except ValueError:
        return None
    rid = (bus << 8 | devfn) + offset + index * stride
    if rid > 0xFFFF:
        return None
    try:
        pci_id: PciId | None = PciId(pf.id.vendor, int(attr("sriov_vf_device"), 16))
    except ValueError:
        pci_id = None
    return f"{domain}:{rid >> 8:02x}:{(rid & 0xFF) >> 3:02x}.{rid & 7}", pci_id


def _check(host: Host, entry: Entry, mine: list[Selected], created: Mapping[str, Created]
           ) -> tuple[Problem | None, Pf | None]:
    """One line for what is wrong with the entry's `vfs:` on this host, and the PF's files."""
    assert entry.vfs is not None
    count = entry.vfs.count
    if len(mine) != 1:
        shown = ", ".join(s.device.bdf for s in mine[:4])
        return entry.problem(f"vfs: needs an entry that selects one PF; this one selects "
                             f"{len(mine)}: {shown}", "give the PF's address"), None
    pf = mine[0].device
    info = read_pf(host, pf.bdf)
    if info is None:
        return entry.problem(f"{pf.bdf} [{pf.id}] has no SR-IOV (no sriov_totalvfs): it cannot "
                             f"have VFs; left as it is", "remove `vfs:`, or give the PF's "
                             "address (`lspci -Dnn`; `lspci -vs ADDRESS` shows SR-IOV)"), None
    if count > info.total:
        return entry.problem(f"{pf.bdf} [{pf.id}] offers at most {info.total} VFs "
                             f"(sriov_totalvfs), not {count}; left as it is",
                             f"count: {info.total} or fewer"), info
    if info.numvfs not in (0, count):
        ours = pf.bdf in created
        who = "pcipassd created them for an earlier config" if ours else "created by someone else"
        hint = (f"`pcipassd restore {pf.bdf} && systemctl reload pcipassd` removes them (the "
                f"VFs pcipassd holds given back first; stop the VMs using them) and creates "
                f"{count}" if ours
                else f"set count: {info.numvfs}, or remove them first (echo 0 > "
                f"/sys/bus/pci/devices/{pf.bdf}/sriov_numvfs)")
        return entry.problem(f"{pf.bdf} [{pf.id}] has {info.numvfs} VFs already ({who}), not "
                             f"{count}; left as it is", hint), info
    return None, info


def is_vf(host: Host, bdf: str) -> bool:
    """A VF (its `physfn` link): the early stages cannot hold it, since it does not exist
    before its PF's driver creates it."""
    return device_link(host, bdf, "physfn") is not None


# -- the records of the VFs pcipassd created --------------------------------------------------
def load(host: Host) -> dict[str, Created]:
    """The PFs pcipassd created VFs on, by BDF; none when there is no file. A file that cannot
    be read, or is damaged, is a StateError (one line naming it, the hint to move it away), as
    state.json is: read as "none", the VFs it created would be left with nothing to remove
    them, and a later apply would take them for someone else's."""
    from pcipassd.state import Unusable, read_document  # noqa: PLC0415

    path = host.state_dir / FILE
    name = host.display(path)
    try:
        data = read_document(path, LIMIT, FORMAT, "pfs")
    except Unusable as e:
        raise StateError(e.line(name), _DAMAGED_HINT) from None
    if data is None:
        return {}
    out = {}
    for n, raw in enumerate(data["pfs"]):
        try:
            rec = _created(raw)
        except (ValueError, KeyError, TypeError) as e:
            raise StateError(f"{name} is damaged: pfs[{n}]: {e}", _DAMAGED_HINT) from None
        if rec.pf in out:
            raise StateError(f"{name} is damaged: pfs[{n}]: {rec.pf} is listed twice",
                             _DAMAGED_HINT)
        out[rec.pf] = rec
    return out


def _created(raw: object) -> Created:
    """One record of sriov.json, every field checked (the PF's and VFs' BDFs name sysfs paths
    pcipassd writes to)."""
    if not isinstance(raw, dict):
        raise TypeError("not an object")
    bdfs = [raw["pf"], *(raw["vfs"] if isinstance(raw["vfs"], list) else [None])]
    for bdf in bdfs:
        if not isinstance(bdf, str) or not BDF_RE.fullmatch(bdf):
            raise ValueError(f"{short(str(bdf))} is not a PCI address")
    numvfs, autoprobe = raw["original_numvfs"], raw["original_autoprobe"]
    if type(numvfs) is not int or numvfs < 0 or autoprobe not in ("0", "1"):
        raise ValueError("original_numvfs or original_autoprobe is not what pcipassd writes")
    if not isinstance(raw["id"], str) or not isinstance(raw["entry"], str):
        raise TypeError("id or entry is not a string")
    return Created(raw["pf"], raw["id"], raw["entry"], numvfs, autoprobe, tuple(raw["vfs"]))


def save(host: Host, records: Mapping[str, Created]) -> None:
    """Write the records atomically (StateError when it cannot be done); none: remove it."""
    path = host.state_dir / FILE
    try:
        if not records:
            path.unlink(missing_ok=True)
            return
        host.state_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        body = {"format": FORMAT, "pfs": [
            {"pf": r.pf, "id": r.id, "entry": r.entry, "original_numvfs": r.original_numvfs,
             "original_autoprobe": r.original_autoprobe, "vfs": list(r.vfs)}
            for _, r in sorted(records.items())]}
        write_atomic(path, (json.dumps(body, indent=1) + "\n").encode(), ".sriov-",
                     durable=False, mode=0o644)
    except OSError as e:
        raise StateError(f"cannot write {host.display(path)}: {e.strerror}",
                         "check that /run is writable") from None


# -- what status, list and the node document show ----------------------------------------------
def pfs(host: Host, inventory: Inventory) -> list[dict[str, object]]:
    """Every PF that has VFs or is asked for some, with its VFs by index."""
    created = load(host)
    out: list[dict[str, object]] = []
    for bdf, dev in sorted(inventory.devices.items()):
        info = read_pf(host, bdf)
        if info is None or (not info.numvfs and bdf not in created):
            continue
        vfs = [{"index": i, "device": vf,
                "driver": (d.driver if (d := inventory.devices.get(vf)) else None)}
               for i, vf in enumerate(info.vfs)]
        out.append({"device": bdf, "id": str(dev.id), "driver": dev.driver,
                    "totalvfs": info.total, "numvfs": info.numvfs,
                    "created_by_pcipassd": bdf in created, "vfs": vfs})
    return out


def lines(host: Host, inventory: Inventory) -> list[str]:
    """`SR-IOV:` and a line per PF, then one per VF: for status and list."""
    out = []
    for pf in pfs(host, inventory):
        made = "created by pcipassd" if pf["created_by_pcipassd"] else "not created by pcipassd"
        out.append(f"  {pf['device']} [{pf['id']}] {pf['driver'] or '(none)'}: "
                   f"{pf['numvfs']} of {pf['totalvfs']} VFs, {made}")
        vfs = pf["vfs"]
        assert isinstance(vfs, list)
        out += [f"    vf{v['index']} {v['device']} {v['driver'] or '(none)'}" for v in vfs]
    return ["", "SR-IOV:", *out] if out else []
