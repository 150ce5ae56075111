"""What the engines that run VMs on many nodes need from this node, for the devices it holds on
vfio-pci: KubeVirt's `permittedHostDevices` entries (`status --kubevirt`) and this node's part
of a Proxmox cluster PCI resource mapping (`status --proxmox-mapping`). Printed, never sent:
pcipassd has no cluster client."""

from __future__ import annotations

import os

from pcipassd import vfio
from pcipassd.errors import PcipassError
from pcipassd.model import Action
from pcipassd.printable import printable

TYPE_CHECKING = False  # as typing's, without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from pcipassd.host import Host
    from pcipassd.plan import Plan, Step

# The one prefix of every resource name `status --kubevirt` prints: the same on every node, so
# that a VM asks for `pcipassd.io/10de-1eb8` wherever it runs.
RESOURCE_PREFIX = "pcipassd.io"


def on_vfio(step: Step) -> bool:
    """A configured device on vfio-pci: ready for a VM."""
    return step.action is Action.UNCHANGED and step.target == vfio.DRIVER


def held_on_vfio(plan: Plan, to: str) -> list[Step]:
    """The configured devices on vfio-pci, ready for `to` (QEMU, libvirt, KubeVirt, Proxmox);
    for each other configured device, a `#` line says what to change. None ready: an error
    that says why, rather than printing nothing."""
    ready = []
    for s in plan.steps:
        if s.action not in (Action.UNCHANGED, Action.BIND):
            continue
        label = f"{s.bdf} [{s.id}]{f' {printable(s.name)}' if s.name else ''}"
        if s.target != vfio.DRIVER:
            print(f"# {label} is held on {s.target}, which {to} cannot use (it needs vfio-pci): "
                  f"set `driver: vfio-pci` in its entry ({s.entry}) and run "
                  "`systemctl reload pcipassd`")
        elif on_vfio(s):
            ready.append(s)
        else:
            print(f"# {label} is not on vfio-pci yet: run `systemctl reload pcipassd`")
    if not ready:
        if plan.steps:
            raise PcipassError(f"nothing to give {to}: no configured device is on vfio-pci",
                               "the `#` lines above say what to change")
        raise PcipassError(f"nothing to give {to}: the configuration selects no device "
                           "present on this host",
                           "`pcipassd status` shows why" if plan.problems
                           else "`pcipassd list` shows the devices")
    return ready


def resource_name(pci_id: str) -> str:
    """The Kubernetes extended resource name for a vendor:device (`8086:10d3`), from the IDs
    alone (a name database differs between nodes): `pcipassd.io/8086-10d3`."""
    return f"{RESOURCE_PREFIX}/{pci_id.lower().replace(':', '-')}"


def kubevirt(ready: list[Step]) -> list[str]:
    """The `permittedHostDevices` of KubeVirt's CR, one entry per vendor:device, as YAML lines
    to paste under `spec.configuration`. The selector is lower-case hex, as sysfs writes the
    IDs KubeVirt's device plugin compares it with."""
    by_id: dict[str, list[Step]] = {}
    for s in ready:
        by_id.setdefault(s.id.lower(), []).append(s)
    lines = ["# paste under spec.configuration of the KubeVirt CR (kubectl edit kubevirt -n "
             "kubevirt); a VM asks for a device by its resourceName",
             "permittedHostDevices:", "  pciHostDevices:"]
    for pci_id, steps in sorted(by_id.items()):
        held = ", ".join(f"{s.bdf}{f' {printable(s.name)}' if s.name else ''}" for s in steps)
        lines += [f"    # {held}",
                  f'    - pciVendorSelector: "{pci_id}"',
                  f'      resourceName: "{resource_name(pci_id)}"']
    return lines


def node_name(host: Host) -> str:
    """This node's name as Proxmox knows it: the short host name (the running system's, or
    /etc/hostname under another root)."""
    from pcipassd.safefile import read_host  # noqa: PLC0415

    text = None if host.is_live else read_host(host.path("/etc/hostname"))
    name = (text or "").strip().splitlines()[0:1] or [os.uname().nodename]
    return name[0].strip().partition(".")[0]


def proxmox_mapping(host: Host, ready: list[Step]) -> list[str]:
    """This node's `--map` values of a Proxmox cluster PCI resource mapping, one per device,
    each with the identity Proxmox checks before it starts a VM."""
    from pcipassd.inventory import read_device, subsystem_id  # noqa: PLC0415

    node = node_name(host)
    lines = ["# this node's part of a Proxmox PCI resource mapping: give every node's --map to "
             "`pvesh create /cluster/mapping/pci --id NAME` (or `pvesh set` it)"]
    for s in ready:
        device = read_device(host, s.bdf)
        fields = [f"node={node}", f"path={s.bdf}", f"id={s.id}"]
        if (sub := subsystem_id(host, s.bdf)) is not None:
            fields.append(f"subsystem-id={sub}")
        if device is not None and device.group is not None:
            fields.append(f"iommugroup={device.group}")
        lines += [f"# {s.bdf} [{s.id}]{f' {printable(s.name)}' if s.name else ''}",
                  f"--map {','.join(fields)}"]
    return lines
