"""The early hold on a real kernel: devices held before any driver probes them.

One disk, three boots, with the kernel logging every probe attempt (dyndbg on drivers/base/dd.c:
`really_probe: probing driver e1000e with device`). Three identical e1000e: 00:03.0 goes to
pci-stub and 00:04.0 to vfio-pci by address, 00:06.0 is their unconfigured twin; the config also
has a refused entry (the root disk's controller).

1. First boot, no hold list yet: pcipassd moves the devices late. This is the negative control:
   the detector sees e1000e probe every twin.
2. The hold list exists, the initramfs is the stock one (it loads e1000e, no pcipassd in it):
   the devices still end on their targets, with the warning and the hint to rebuild. Then
   `update-initramfs -u` in the guest.
3. The guest's own initramfs: e1000e never probes the held devices, and does probe the twin.
   Then stop / udevadm trigger / start, and a remove + rescan while e1000e is loaded. Then a
   plain `systemctl disable pcipassd` (no --now: no pcipassd code runs).

Off means off, over three more boots from the same initramfs (built while pcipassd was on):
4. disabled: the initramfs stage gives the devices back once the real root is mounted; both on
   e1000e, overrides cleared. Then `systemctl enable pcipassd`.
5. enabled again: held from the initramfs on, no probe. Then `systemctl mask pcipassd`.
6. masked: on e1000e again, overrides cleared.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import out_root
from .harness import DEFAULT_TOPOLOGY, DISK_BDF, E1000E_ID, BootResult, _nic, boot
from .image import REPO_ROOT, BaseImage, build_image, enable_unit, install_from_deb
from .probes import PROBE_LOG, REPORT_PROBES, WAIT_FOR, probed

pytestmark = pytest.mark.skipif(
    not (REPO_ROOT / "Makefile").is_file(), reason="the project has no Makefile yet"
)

TOPO = DEFAULT_TOPOLOGY.with_devices(
    _nic(name="e1000e-c", model="e1000e", bdf="0000:00:06.0", vendor_device=E1000E_ID,
         placement="bus=pcie.0,addr=0x6"))
STUB, VFIO, TWIN = TOPO.bdf("e1000e-a"), TOPO.bdf("e1000e-b"), TOPO.bdf("e1000e-c")

CONFIG = f"""\
version: 1
devices:
  - address: "{STUB}"
    name: stub-nic
  - address: "{VFIO}"
    driver: vfio-pci
  - address: "{DISK_BDF}"
    name: root-disk
"""

# Stand-ins for what starts at boot, each saying what it finds (`observe NAME`):
# - plain: any service (default dependencies, nothing about pcipassd): the devices in the hold
#   list are held (their driver_override), no original driver has them;
# - net: the network (like systemd-networkd: no default dependencies, after network-pre.target):
#   the devices are on their targets, even those moved late;
# - vm: a service that starts VMs says After=pcipassd.service: on their targets, pcipassd active.
OBSERVERS = {
    "plain": "",
    "net": "DefaultDependencies=no\nAfter=network-pre.target\n",
    "vm": "After=pcipassd.service\n",
}
# Stand-ins named like the fleet's consumers (the kubelet, k3s/RKE2, Proxmox's pve-guests), with
# no ordering of their own: only pcipassd.service's Before= puts them after it.
CONSUMERS = ("kubelet", "k3s", "k3s-agent", "rke2-server", "rke2-agent", "pve-guests")
OBSERVER = """\
[Unit]
Description=What a service finds at boot ({name})
{order}[Service]
Type=oneshot
ExecStart=/usr/local/sbin/observe {name}
[Install]
WantedBy=multi-user.target
"""
OBSERVE = f"""\
#!/bin/sh
on() {{ d=$(readlink /sys/bus/pci/devices/$1/driver) && basename "$d" || echo none; }}
held() {{ cat /sys/bus/pci/devices/$1/driver_override; }}
echo "$(systemctl is-active pcipassd) $(on {STUB}) $(held {STUB}) $(on {VFIO}) $(held {VFIO})" \\
    >/run/observer.$1.tmp && mv /run/observer.$1.tmp /run/observer.$1
"""

SCRIPT = rf"""
STUB={STUB}
common() {{
    pci_inventory boot
    result active "$(systemctl is-active pcipassd)"
    result statustext "$(systemctl show -p StatusText --value pcipassd)"
    capture status pcipassd status
    capture journal journalctl -b -u pcipassd -u pcipassd-early -o cat --no-pager
    capture fields journalctl -b -u pcipassd -o json --no-pager
    {REPORT_PROBES}
    for name in plain net vm {' '.join(CONSUMERS)}; do
        for i in $(seq 60); do [ -s /run/observer.$name ] && break; sleep 1; done
        result observer.$name "$(cat /run/observer.$name)"
    done
    for name in {' '.join(CONSUMERS)}; do
        result after.$name "$(systemctl show -p After --value $name.service | tr ' ' '\n' |
                               grep -x pcipassd.service)"
    done
    capture state cat /run/pcipass/state.json
}}
off_boot() {{  # a boot with pcipassd off: which driver has which device, and the kernel log
    pci_inventory boot
    result active "$(systemctl is-active pcipassd)"
    result enabled "$(systemctl is-enabled pcipassd)"
    result early.active "$(systemctl is-active pcipassd-early)"
    result armed "$([ -e /run/pcipass/armed ] && echo yes || echo no)"
    result earlylog "$([ -s /run/pcipass/early.log ] && echo yes || echo no)"
    {REPORT_PROBES}
    journalctl -b -k -o cat --no-pager | grep 'gave back' | blob kmsg  # journald strips the tag
}}
{WAIT_FOR}
case $PCIPASS_BOOT in
1)
    common
    capture holdlist cat /etc/pcipass.early
    next_action reboot
    ;;
2)
    common
    capture update update-initramfs -u
    capture initramfs sh -c 'lsinitramfs /boot/initrd.img-$(uname -r) | grep pcipass'
    capture order sh -c 'd=$(mktemp -d) && unmkinitramfs /boot/initrd.img-$(uname -r) $d &&
        cat $(find $d -path "*scripts/init-top/ORDER") \
            $(find $d -path "*scripts/init-bottom/ORDER")'
    next_action reboot
    ;;
3)
    common
    systemctl stop pcipassd; result stop.rc "$?"
    pci_inventory stopped
    udevadm trigger --action=add --subsystem-match=pci && udevadm settle
    pci_inventory triggered
    systemctl start pcipassd; result start.rc "$?"
    pci_inventory started
    echo 1 >/sys/bus/pci/devices/$STUB/remove && echo 1 >/sys/bus/pci/rescan && udevadm settle
    wait_for $STUB pci-stub; result rescan.wait "$?"
    pci_inventory rescanned
    capture journal.rescan journalctl -b -u pcipassd -o cat --no-pager
    capture status.rescan pcipassd status
    systemctl stop pcipassd; result stop2.rc "$?"
    pci_inventory stopped2
    systemctl disable pcipassd; result disable.rc "$?"
    next_action reboot
    ;;
4)
    off_boot
    systemctl enable pcipassd; result enable.rc "$?"
    next_action reboot
    ;;
6)
    off_boot
    ;;
5)
    common
    systemctl mask pcipassd; result mask.rc "$?"
    next_action reboot
    ;;
esac
"""


def _install(root: Path) -> None:
    install_from_deb(root)
    for name, order in OBSERVERS.items():
        unit = f"observer-{name}.service"
        (root / "etc/systemd/system" / unit).write_text(OBSERVER.format(name=name, order=order))
        enable_unit(root, unit)
    for name in CONSUMERS:
        unit = f"{name}.service"
        (root / "etc/systemd/system" / unit).write_text(OBSERVER.format(name=name, order=""))
        enable_unit(root, unit)
    observe = root / "usr/local/sbin/observe"
    observe.write_text(OBSERVE)
    observe.chmod(0o755)


@pytest.fixture(scope="module")
def early_boots(vm_base: BaseImage, tmp_path_factory: pytest.TempPathFactory) -> list[BootResult]:
    image = build_image(CONFIG, SCRIPT, base=vm_base, workdir=tmp_path_factory.mktemp("early"),
                        install=_install)
    logs = out_root() / "early"
    try:
        first = boot(image, topology=TOPO, kernel_args=PROBE_LOG, log_dir=logs / "boot-1")
        second = boot(image, topology=TOPO, kernel_args=PROBE_LOG, log_dir=logs / "boot-2",
                      timeout=600)
        own = image.with_guest_initrd()
        rest = [boot(own, topology=TOPO, kernel_args=PROBE_LOG, log_dir=logs / f"boot-{n}",
                     timeout=420) for n in range(3, 7)]
    finally:
        image.disk.unlink(missing_ok=True)
    return [first, second, *rest]


def test_negative_control_sees_every_probe(early_boots: list[BootResult]) -> None:
    """Without a hold list (first boot), e1000e probes all three: the detector works."""
    res = early_boots[0]
    assert probed(res, STUB) and probed(res, VFIO) and probed(res, TWIN), res["probes"]
    assert res.driver(STUB, "boot") == "pci-stub", res.where()
    assert res.driver(VFIO, "boot") == "vfio-pci"
    assert f"dev {STUB} 8086:10d3 pci-stub" in res["holdlist"]
    assert f"dev {VFIO} 8086:10d3 vfio-pci" in res["holdlist"]
    assert DISK_BDF not in res["holdlist"], "a refused device is never held early"


def test_the_guest_sees_the_pinned_topology(early_boots: list[BootResult]) -> None:
    """The harness's own promise, on the first boot: every pinned device where the topology
    puts it, each NIC alone in its IOMMU group, the IOMMU on, the disk on virtio, no failed
    unit, and the guest rebooted when the scenario asked."""
    res = early_boots[0]
    assert res.shutdown == "reboot" and res.scenario_rc == 0, res.where()
    assert "intel_iommu=on" in res["kernel.cmdline"]
    assert res["systemd.failed"].strip() == "", res.where()
    assert int(res["boot.iommu_groups"]) > 0
    for dev in TOPO.devices:
        assert res[f"boot.{dev.bdf}.id"] == dev.vendor_device, dev
    groups = [res.iommu_group(dev.bdf, "boot") for dev in TOPO.devices]
    assert "none" not in groups and len(set(groups)) == len(groups), groups
    assert res.driver(DISK_BDF, "boot") == "virtio-pci"
    assert early_boots[1]["boot"] == "2", "the disk persists across boots"


def test_a_device_moved_late_asks_for_a_reboot(early_boots: list[BootResult]) -> None:
    """Boot 1 moved both NICs from e1000e: apply (the journal) and status say once to rebuild
    the initramfs and reboot; boot 3, held from the initramfs, says nothing of it."""
    res = early_boots[0]
    advice = "run `update-initramfs -u`, then reboot to have them held from the first instant"
    assert res["journal"].count(advice) == 1, res["journal"]
    assert advice in res["status"], res["status"]
    assert f"{STUB} (from e1000e)" in res["status"] and f"{VFIO} (from e1000e)" in res["status"]
    assert "reboot" not in early_boots[2]["status"], early_boots[2]["status"]


def test_stale_initramfs_still_ends_on_target_and_says_how_to_fix_it(
        early_boots: list[BootResult]) -> None:
    """Scenario 2: the stock initramfs loads e1000e first; pcipassd moves the devices and says
    to rebuild, in the journal and in `pcipassd status`."""
    res = early_boots[1]
    assert probed(res, STUB), "the stock initramfs really did load e1000e first"
    assert res.driver(STUB, "boot") == "pci-stub", res.where()
    assert res.driver(VFIO, "boot") == "vfio-pci"
    hint = ("the initramfs loaded e1000e, which bound it before pcipassd could hold it: the "
            "initramfs predates the hold list; run `update-initramfs -u`")
    assert f"{STUB} [8086:10d3]: {hint}" in res["journal"], res["journal"]
    assert f"warning: {STUB}: {hint}" in res["status"], res["status"]
    assert "is older than /etc/pcipass.early" in res["status"]
    assert res.rc("update") == 0, res["update"]
    assert "usr/lib/pcipassd/pcipassd-early" in res["initramfs"], res["initramfs"]
    assert "etc/pcipass.early" in res["initramfs"]
    for stage in ("init-top", "init-bottom"):
        order = [line.split("/")[-1].split()[0] for line in res["order"].splitlines()
                 if f"{stage}/" in line]
        assert order.index("pcipassd") < order.index("udev"), (stage, res["order"])


def test_rebuilt_initramfs_holds_before_any_probe(early_boots: list[BootResult]) -> None:
    """Scenario 1: no e1000e probe for either held device, one for their twin; on target."""
    res = early_boots[2]
    assert probed(res, TWIN), ("the race was live: e1000e probed the twin", res["probes"])
    assert not probed(res, STUB), res["probes"]
    assert not probed(res, VFIO), res["probes"]
    assert res.driver(STUB, "boot") == "pci-stub", res.where()
    assert res.driver(VFIO, "boot") == "vfio-pci"
    assert res.driver(TWIN, "boot") == "e1000e"
    assert "warning" not in res["status"], res["status"]
    assert '"stage": "initramfs"' in res["state"], res["state"]
    assert '"PCIPASS_STAGE":"initramfs"' in res["fields"].replace(" ", "")


def test_unit_is_active_with_a_refused_entry_and_says_so(early_boots: list[BootResult]) -> None:
    """Scenario 5 (every boot pcipassd is on): the unit is active and says why an entry was
    refused."""
    for res in (*early_boots[:3], early_boots[4]):
        assert res["active"] == "active", res.where()
        assert res["statustext"] == ("holding 2 devices, 1 entry refused "
                                     "(/etc/pcipass.yaml:7: `pcipassd status` says why)")
        assert f"refusing {DISK_BDF}: {DISK_BDF} carries /" in res["journal"]
        assert res.rc("status") == 1
        assert res.driver(DISK_BDF, "boot") == "virtio-pci"


def test_what_starts_at_boot_finds_the_devices_held(early_boots: list[BootResult]) -> None:
    """Every boot pcipassd is on: the network (after network-pre.target) and a VM service
    (After=pcipassd.service) find the devices on their targets, also at the first boot, when
    they are moved late. With the hold list in the image (boots 3 and 5), any service finds them
    held by their driver_override, on no driver or their target, never on e1000e."""
    for res in (*early_boots[:3], early_boots[4]):
        assert res["observer.net"].split()[1:] == ["pci-stub", "pci-stub", "vfio-pci",
                                                   "vfio-pci"], res.where()
        assert res["observer.vm"] == "active pci-stub pci-stub vfio-pci vfio-pci", res.where()
    for res in (early_boots[2], early_boots[4]):
        _, stub, stub_held, vfio, vfio_held = res["observer.plain"].split()
        assert (stub_held, vfio_held) == ("pci-stub", "vfio-pci"), res.where()
        assert stub in ("none", "pci-stub") and vfio in ("none", "vfio-pci"), res.where()


def test_the_fleets_consumers_start_after_the_devices_are_on_their_targets(
        early_boots: list[BootResult]) -> None:
    """Units named like the kubelet (KubeVirt's device plugin counts vfio-pci devices once, when
    it starts), k3s/RKE2 and Proxmox's pve-guests, with no ordering of their own: systemd puts
    them after pcipassd.service, and each finds it active and the devices on their targets, in
    every boot pcipassd is on, the first boot's late move included."""
    for res in (*early_boots[:3], early_boots[4]):
        for name in CONSUMERS:
            assert res[f"after.{name}"] == "pcipassd.service", (name, res.where())
            assert res[f"observer.{name}"] == "active pci-stub pci-stub vfio-pci vfio-pci", (
                name, res.where())


def test_stop_gives_back_a_device_no_driver_ever_had(early_boots: list[BootResult]) -> None:
    """Scenario 3: stop -> e1000e (resolved from the modalias), overrides cleared; a later
    coldplug does not grab them again; start holds them again."""
    res = early_boots[2]
    assert res["stop.rc"] == "0", res.where()
    for bdf in (STUB, VFIO):
        assert res.driver(bdf, "stopped") == "e1000e"
        assert res[f"stopped.{bdf}.override"] == "none"
        assert res.driver(bdf, "triggered") == "e1000e"
        assert res[f"triggered.{bdf}.override"] == "none"
    assert res["start.rc"] == "0"
    assert res.driver(STUB, "started") == "pci-stub"
    assert res.driver(VFIO, "started") == "vfio-pci"


def test_hot_added_device_is_moved_with_a_warning(early_boots: list[BootResult]) -> None:
    """Scenario 4: remove + rescan while e1000e is loaded: e1000e binds it in the kernel
    before udev; the rule holds it, pcipassd moves it and names the driver; stop restores."""
    res = early_boots[2]
    assert res["rescan.wait"] == "0", res.where()
    assert res.driver(STUB, "rescanned") == "pci-stub"
    assert (f"{STUB} [8086:10d3]: e1000e was loaded and bound it when it was added"
            in res["journal.rescan"]), res["journal.rescan"]
    assert res["stop2.rc"] == "0"
    assert res.driver(STUB, "stopped2") == "e1000e"
    assert res.driver(VFIO, "stopped2") == "e1000e"


@pytest.mark.parametrize(("n", "how"), [(4, "disabled"), (6, "masked")])
def test_off_means_off_at_the_next_boot(early_boots: list[BootResult], n: int, how: str) -> None:
    """`systemctl disable` (without --now) or `mask`, then a reboot from the initramfs built while
    pcipassd was on: its stage finds pcipassd off in the real root and gives the devices back;
    each is on e1000e, its driver_override cleared, the udev rule disarmed."""
    assert early_boots[2]["disable.rc"] == "0"
    res = early_boots[n - 1]
    assert res["active"] == "inactive", res.where()
    assert res["enabled"] == how
    for bdf in (STUB, VFIO, TWIN):
        assert res.driver(bdf, "boot") == "e1000e", res.where()
        assert res[f"boot.{bdf}.override"] == "none"
    assert (res["armed"], res["earlylog"]) == ("no", "no")
    for bdf in (STUB, VFIO):
        line = f"pcipassd.service is {how}: gave back {bdf} (held at the initramfs stage)"
        assert line in res["kmsg"], res["kmsg"]
    assert res.driver(DISK_BDF, "boot") == "virtio-pci"


def test_enabled_again_holds_from_the_initramfs_on(early_boots: list[BootResult]) -> None:
    assert early_boots[3]["enable.rc"] == "0"
    res = early_boots[4]
    assert not probed(res, STUB) and not probed(res, VFIO), res["probes"]
    assert probed(res, TWIN)
    assert res.driver(STUB, "boot") == "pci-stub", res.where()
    assert res.driver(VFIO, "boot") == "vfio-pci"
    assert '"stage": "initramfs"' in res["state"], res["state"]
    assert res["mask.rc"] == "0"
