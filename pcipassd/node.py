"""The node document: one versioned JSON object that says what this node is and needs, for the
agents that drive many hosts (Ansible, a Kubernetes node agent, a script): converged or not,
the last error, the actions the node needs with their commands, `reboot_required`, and each
configured device. `status --json` prints it (inside the JSON envelope); every `apply`,
`reload` and `restore` writes it to /run/pcipass/node.json, world-readable (no secrets in it),
so that an agent reads it without running pcipassd and without root. Its JSON Schema is
node.schema.json; `format` (output.JSON_FORMAT) goes up when a field's meaning does.

With `node_labels: true` in the config, the same run writes a Node Feature Discovery
local-source file (FEATURES) whose labels expire, and `restore` removes it.

The builders are pure (values in, plain dicts out); `write` and `write_labels` are the writers."""

from __future__ import annotations

from pcipassd.value import frozen

TYPE_CHECKING = False  # as typing's, without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

    from pcipassd.host import Host
    from pcipassd.inventory import Details, Device, Inventory
    from pcipassd.model import Record
    from pcipassd.plan import Plan, Step

FILE = "/run/pcipass/node.json"
FEATURES = "/etc/kubernetes/node-feature-discovery/features.d/pcipassd"
LABEL_PREFIX = "pcipassd."  # NFD adds feature.node.kubernetes.io/ to a name without a prefix
LABELS_TTL = 24 * 3600  # seconds: a node whose pcipassd stopped writing loses its labels then
_TEMP_PREFIX = ".node.json."

# What each action is; the order an agent does them in.
REBUILD_INITRAMFS = "rebuild-initramfs"
KERNEL_CMDLINE = "kernel-cmdline"
REBOOT = "reboot"
REBOOT_COMMAND = "systemctl reboot"


@frozen
class NodeAction:
    """Something the node needs that pcipassd cannot do itself: `kind`, why, and the command."""

    kind: str
    message: str
    command: str

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "message": self.message, "command": self.command}


def reboot_required(actions: Sequence[NodeAction]) -> bool:
    """True only when a reboot alone fixes what the node needs: a reboot is asked for and
    nothing must come first (a rebuild, a kernel command line edit). An agent that reboots on
    it therefore never loops: after a rebuild or an edit, `actions` still says so, and this is
    false, until that is done."""
    kinds = {a.kind for a in actions}
    return REBOOT in kinds and kinds <= {REBOOT}


def device_dict(step: Step, record: Record | None, device: Device | None, *,
                details: Details | None, members: Sequence[str],
                warnings: Sequence[str], model: str | None = None) -> dict[str, Any]:
    """One device of the document: the step's keys (output.step_dict), then what the node
    document adds. `original`: the original driver, of a held device or of one to restore;
    `model`: the name database's name (`status` only: the boot path reads no pci.ids)."""
    from pcipassd.output import step_dict  # noqa: PLC0415

    vendor, _, product = step.id.partition(":")
    sub = details.subsystem if details else None
    return {
        **step_dict(step),
        "original": step.original or (record.original_driver if record else None),
        "stage": record.stage if record else None,
        "vendor_id": vendor, "device_id": product,
        "subsystem_vendor_id": f"{sub.vendor:04x}" if sub else None,
        "subsystem_device_id": f"{sub.device:04x}" if sub else None,
        "class": f"{device.cls:06x}" if device else None,
        "model": model,
        "numa_node": details.numa_node if details else None,
        "group_members": list(members),
        "forced": step.forced or (record.forced if record else "") or None,
        "reset_method_original": record.original_reset_method if record else None,
        "device_warnings": list(warnings),
    }


def document(*, converged: bool, error: tuple[str, str] | None,
             actions: Sequence[NodeAction], devices: Sequence[dict[str, Any]],
             sriov: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """The node document's own keys (the JSON envelope carries `format`, `verb` and the rest)."""
    return {
        "converged": converged,
        "last_error": {"message": error[0], "hint": error[1]} if error else None,
        "actions": [a.as_dict() for a in actions],
        "reboot_required": reboot_required(actions),
        "devices": list(devices),
        "sriov": list(sriov),  # each PF with VFs (sriov.pfs)
    }


def settled(plan: Plan, inventory: Inventory, records: Mapping[str, Record],
            resets: Mapping[str, str | None] | None = None) -> Plan:
    """The plan as the devices are after apply ran it (`inventory`: scanned since; `resets`:
    the sysfs reset_method of the devices whose entry sets one, read since): a device on its
    target is unchanged; a device given back and no longer held leaves the document."""
    from pcipassd.model import Action  # noqa: PLC0415
    from pcipassd.plan import Plan  # noqa: PLC0415
    from pcipassd.value import replace  # noqa: PLC0415

    steps = []
    for step in plan.steps:
        device = inventory.devices.get(step.bdf)
        driver = device.driver if device else None
        if step.action is Action.RESTORE and step.bdf not in records:
            continue
        record = records.get(step.bdf)
        s = replace(step, reset_now=(resets or {}).get(step.bdf, step.reset_now),
                    reset_original=record.original_reset_method if record else None)
        if s.action in (Action.BIND, Action.UNCHANGED) and s.target and driver == s.target:
            steps.append(replace(s, action=Action.UNCHANGED, driver=driver, reason=""))
        else:
            steps.append(replace(s, driver=driver))
    return Plan(tuple(steps), plan.problems)


def kept(inventory: Inventory, records: Mapping[str, Record], why: str) -> Plan:
    """The devices pcipassd still holds when a run could not apply the config: each kept as it
    is (`keep`), for the node document."""
    from pcipassd.model import Action  # noqa: PLC0415
    from pcipassd.plan import Plan, Step  # noqa: PLC0415

    steps = []
    for bdf, r in sorted(records.items()):
        device = inventory.devices.get(bdf)
        steps.append(Step(bdf, r.id, Action.KEEP, device.driver if device else None, r.target,
                          device.group if device else None, r.entry, reason=why,
                          forced=r.forced, original=r.original_driver))
    return Plan(tuple(steps), ())


# -- reading the host ------------------------------------------------------------------------
def needed_actions(host: Host, records: Mapping[str, Record]) -> list[NodeAction]:
    """The actions the node needs, in the order to do them: rebuild the initramfs (it predates
    the hold list), put the IOMMU on the kernel command line, reboot."""
    from pcipassd import initramfs  # noqa: PLC0415
    from pcipassd.inventory import iommu_active  # noqa: PLC0415

    out = []
    if (stale := initramfs.stale(host)) and (command := initramfs.rebuild_command(host)):
        out.append(NodeAction(REBUILD_INITRAMFS, stale, command))
    edits = [] if iommu_active(host) else cmdline_actions(host)  # iommu.check: not at boot
    out.extend(edits)
    # only records moved late can need a reboot (reboot.moved_late): a boot imports nothing
    advice = (_reboot_advice(host, records) if any(r.stage == "late" for r in records.values())
              else None)
    if advice or edits:
        out.append(NodeAction(REBOOT, advice or "reboot for the kernel command line to take "
                              "effect", REBOOT_COMMAND))
    return out


def _reboot_advice(host: Host, records: Mapping[str, Record]) -> str | None:
    from pcipassd import reboot  # noqa: PLC0415

    return reboot.advice(host, records)


def cmdline_actions(host: Host) -> list[NodeAction]:
    """The kernel command line edits the IOMMU check asks for, in the boot loader's own way."""
    from pcipassd import iommu  # noqa: PLC0415

    return [NodeAction(KERNEL_CMDLINE, f"{f.what}: {f.fix}",
                       cmdline_command(host, f.edit[1:], remove=f.edit[0] == "-"))
            for f in iommu.check(host) if f.level is iommu.Level.FAIL and f.edit]


def cmdline_command(host: Host, arg: str, *, remove: bool = False) -> str:
    """How this host's boot loader changes its kernel command line: grubby (Fedora, RHEL),
    kernelstub (Pop!_OS), else GRUB's /etc/default/grub and update-grub (Debian, Ubuntu)."""
    for d in ("/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        if host.path(f"{d}/grubby").exists():
            return f"grubby --update-kernel=ALL --{'remove-args' if remove else 'args'}={arg}"
        if host.path(f"{d}/kernelstub").exists():
            return f"kernelstub --{'delete-options' if remove else 'add-options'}={arg}"
    if remove:
        return (f"sed -i -E '/^GRUB_CMDLINE_LINUX/s/ ?{arg}//' /etc/default/grub "
                "&& update-grub")
    return (f"sed -i -E 's/^GRUB_CMDLINE_LINUX=\"/&{arg} /' /etc/default/grub && update-grub")


def describe(host: Host, steps: Sequence[Step], records: Mapping[str, Record],
             devices: Mapping[str, Device], models: Mapping[str, str] | None = None
             ) -> list[dict[str, Any]]:
    """Each step's device, with what sysfs says of it beyond the scan (inventory.read_details)
    and the warnings that concern it (early.first_probe: a driver that probed it first)."""
    from pcipassd import early  # noqa: PLC0415
    from pcipassd.inventory import read_details  # noqa: PLC0415

    by_group: dict[str, list[str]] = {}
    for d in devices.values():
        if d.group is not None:
            by_group.setdefault(d.group, []).append(d.bdf)
    out = []
    for s in steps:
        record = records.get(s.bdf)
        device = devices.get(s.bdf)
        warnings = [w for w in (s.forced_note, s.warning,
                                early.first_probe(host, record) if record else None) if w]
        out.append(device_dict(s, record, device,
                               details=read_details(host, s.bdf) if device else None,
                               members=by_group.get(s.group, []) if s.group else [],
                               warnings=warnings, model=(models or {}).get(s.bdf)))
    return out


def last_error(host: Host) -> tuple[str, str] | None:
    """The error of the last apply/reload/restore, from the document it wrote."""
    import json  # noqa: PLC0415

    from pcipassd.safefile import read_host  # noqa: PLC0415

    text = read_host(host.path(FILE))
    try:
        error = json.loads(text)["last_error"] if text else None
    except (ValueError, KeyError, TypeError):
        return None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"], str(error.get("hint") or "")
    return None


# -- writing ---------------------------------------------------------------------------------
def write(host: Host, doc: dict[str, Any]) -> str | None:
    """Write the document to FILE, world-readable, atomically; only when its bytes differ
    (a converged boot rewrites nothing). A warning when it cannot be written, else None."""
    import json  # noqa: PLC0415

    from pcipassd.safefile import read_host, write_atomic  # noqa: PLC0415

    path = host.path(FILE)
    body = json.dumps(doc, separators=(",", ":")) + "\n"  # compact: 4,096 devices, 2.2 MB
    if read_host(path) == body:
        return None
    try:
        write_atomic(path, body.encode(), _TEMP_PREFIX, durable=False, mode=0o644)
        path.chmod(0o644)  # whatever the umask
    except OSError as e:
        return f"cannot write {host.display(path)}: {e.strerror}"
    return None


def label_text(doc: dict[str, Any], now: float, ttl: int = LABELS_TTL) -> str:
    """The NFD local-source file: its expiry line, then `name=value` lines (names of at most
    63 characters, no `:`; IDs as vvvv-dddd)."""
    import time  # noqa: PLC0415

    from pcipassd.model import VFIO_PCI  # noqa: PLC0415

    expiry = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + ttl))
    held: dict[str, int] = {}
    for d in doc["devices"]:
        if d["driver"] == VFIO_PCI and d["stage"] is not None:
            key = f"{d['vendor_id']}-{d['device_id']}"
            held[key] = held.get(key, 0) + 1
    lines = [f"# +expiry-time={expiry}",
             f"{LABEL_PREFIX}ready={str(doc['converged']).lower()}",
             f"{LABEL_PREFIX}reboot-required={str(doc['reboot_required']).lower()}"]
    lines += [f"{LABEL_PREFIX}{VFIO_PCI}.{key}={n}" for key, n in sorted(held.items())]
    return "\n".join(lines) + "\n"


def write_labels(host: Host, doc: dict[str, Any], now: float) -> str | None:
    """Write FEATURES (atomic and durable); a warning when it cannot be written."""
    from pcipassd.safefile import write_atomic  # noqa: PLC0415

    path = host.path(FEATURES)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, label_text(doc, now).encode(), ".pcipassd.", durable=True,
                     mode=0o644)
        path.chmod(0o644)
    except OSError as e:
        return f"cannot write {host.display(path)}: {e.strerror}"
    return None


def remove_labels(host: Host) -> str | None:
    """Remove FEATURES: a node without pcipassd's devices keeps no stale `ready`."""
    import os  # noqa: PLC0415

    path = host.path(FEATURES)
    try:
        os.unlink(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"cannot remove {host.display(path)}: {e.strerror}"
    return None
