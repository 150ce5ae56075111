"""The early hold under dracut, on a real kernel: a Debian guest whose initramfs Debian's `dracut`
package builds (the dracut variant of the base image), with e1000e in the image and loaded there
by systemd-modules-load, before udev's coldplug. One disk, three boots, the kernel logging every
probe attempt (tests/vm/probes.py). The config holds e1000e-b (00:04.0) on vfio-pci; e1000e-a
(00:03.0) is its unconfigured twin.

The image is built as on a host: the hold list `pcipassd apply` writes for this config is in
place when the package is installed, and the package's initramfs trigger, which dracut answers,
rebuilds the image with pcipassd's module (in a chroot of the guest's root, for the guest's
kernel). Boot 1 checks that apply writes that very list.

1. Held from the initramfs (the systemd initrd's pcipassd-initrd.service, ordered before
   systemd-modules-load and systemd-udevd): e1000e never probes the held device and does probe
   its twin in the initramfs; pcipassd adopts the hold, stage initramfs. Stop gives it back
   (and a coldplug does not take it again), start holds it again, and so does the udev rule
   after a remove + rescan, as under initramfs-tools. Then the config gains
   the e1000 NIC (00:05.0): the hold list changes, and `pcipassd check` names the stale image
   and `dracut -f`.
2. `rd.pcipassd=off`: the initramfs holds nothing (e1000e probes the device there), the real
   root's stages still hold: pcipassd moves the device late, and holds the e1000 NIC, which
   the initramfs has no driver for, before udev (stage early, never probed). Then `systemctl
   disable pcipassd` (no --now, no rebuild).
3. Off means off: the initramfs, built while pcipassd was on, holds the device, and its
   pre-pivot hook, finding pcipassd disabled in the real root, gives it back: e1000e has it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from pcipassd.early import HEADER

from .conftest import out_root
from .harness import DEFAULT_TOPOLOGY, E1000E_ID, BootResult, boot
from .image import BaseImage, build_image, ensure_dracut_base, install_from_deb
from .probes import PROBE_LOG, REPORT_PROBES, WAIT_FOR, probed, probes

TOPO = DEFAULT_TOPOLOGY
HELD, TWIN, NIC = TOPO.bdf("e1000e-b"), TOPO.bdf("e1000e-a"), TOPO.bdf("e1000")
OUT = out_root() / "dracut"

CONFIG = f"""\
version: 1
devices:
  - address: "{HELD}"
    driver: vfio-pci
"""
ADDED = f"""\
  - address: "{NIC}"
    name: e1000-nic
"""
#: what `pcipassd apply` writes for CONFIG (boot 1 checks it is unchanged)
HOLD_LIST = f"{HEADER}dev {HELD} {E1000E_ID} vfio-pci\n"

# journal lines that order the initramfs's units and the first probes (pid 1 names each unit)
TIMELINE = ("Switching root|pcipassd-initrd|systemd-modules-load.service|systemd-udevd.service|"
            "dracut-pre-pivot.service|really_probe: probing driver e1000e")

SCRIPT = rf"""
kver=$(uname -r)
report() {{
    pci_inventory boot
    result active "$(systemctl is-active pcipassd)"
    result enabled "$(systemctl is-enabled pcipassd)"
    {REPORT_PROBES}
    capture status pcipassd status
    capture state cat /run/pcipass/state.json
    capture node cat /run/pcipass/node.json
    capture journal journalctl -b -u pcipassd -u pcipassd-early -o cat --no-pager
    journalctl -b -o short-monotonic --no-pager | grep -E '{TIMELINE}' | blob timeline
    journalctl -b -k -o cat --no-pager | grep 'gave back' | blob kmsg  # journald strips the tag
}}
{WAIT_FOR}
case $PCIPASS_BOOT in
1)
    report
    capture lsinitrd lsinitrd /boot/initrd.img-$kver
    capture holdlist cat /etc/pcipass.early
    systemctl stop pcipassd; result stop.rc "$?"
    pci_inventory stopped
    udevadm trigger --action=add --subsystem-match=pci && udevadm settle
    pci_inventory triggered
    systemctl start pcipassd; result start.rc "$?"
    pci_inventory started
    echo 1 >/sys/bus/pci/devices/{HELD}/remove && echo 1 >/sys/bus/pci/rescan && udevadm settle
    wait_for {HELD} vfio-pci; result rescan.wait "$?"
    pci_inventory rescanned
    cat >>/etc/pcipass.yaml <<'YAML'
{ADDED}YAML
    capture reload systemctl reload pcipassd
    capture holdlist.edited cat /etc/pcipass.early
    capture check.stale pcipassd check
    next_action reboot
    ;;
2)
    report
    systemctl disable pcipassd; result disable.rc "$?"
    next_action reboot
    ;;
3)
    report
    ;;
esac
"""
SECONDS: dict[str, float] = {}


def _install(root: Path) -> None:
    """The hold list, then the package: its trigger rebuilds the image with dracut."""
    (root / "etc/pcipass.early").write_text(HOLD_LIST)
    start = time.monotonic()
    install_from_deb(root)
    SECONDS["dpkg -i pcipassd, dracut rebuild included"] = time.monotonic() - start


@pytest.fixture(scope="module")
def boots(vm_base: BaseImage, tmp_path_factory: pytest.TempPathFactory) -> list[BootResult]:
    start = time.monotonic()
    base = ensure_dracut_base(vm_base)
    image = build_image(CONFIG, SCRIPT, base=base, workdir=tmp_path_factory.mktemp("dracut"),
                        install=_install).with_guest_initrd()
    SECONDS["image"] = time.monotonic() - start
    try:
        results = [boot(image, topology=TOPO, kernel_args=args, log_dir=OUT / f"boot-{n}",
                        timeout=300)
                   for n, args in enumerate((PROBE_LOG, (*PROBE_LOG, "rd.pcipassd=off"),
                                             PROBE_LOG), start=1)]
    finally:
        image.disk.unlink(missing_ok=True)
    SECONDS.update({f"boot {n}": r.seconds for n, r in enumerate(results, start=1)})
    counts = {f"boot {n}": {name: probes(r, TOPO.bdf(name), TOPO.device(name).driver or "")
                            for name in ("e1000e-a", "e1000e-b", "e1000")}
              for n, r in enumerate(results, start=1)}
    (OUT / "measured.json").write_text(json.dumps({"seconds": SECONDS, "probes": counts},
                                                  indent=2) + "\n")
    return results


def initramfs_timeline(res: BootResult) -> list[str]:
    """The journal's lines up to the switch to the real root."""
    lines = res["timeline"].splitlines()
    ends = [i for i, line in enumerate(lines) if "Switching root" in line]
    assert ends, res["timeline"]
    return lines[:ends[0]]


def in_initramfs(res: BootResult, *words: str) -> bool:
    """Whether the journal has a line with all of `words` before the switch to the real root."""
    return any(all(w in line for w in words) for line in initramfs_timeline(res))


def first(lines: list[str], *words: str) -> int:
    """The index of the first line with all of `words`."""
    found = [i for i, line in enumerate(lines) if all(w in line for w in words)]
    assert found, (words, lines)
    return found[0]


def node_stage(res: BootResult, bdf: str) -> str | None:
    for device in json.loads(res["node"])["devices"]:
        if device["device"] == bdf:
            return str(device["stage"])
    return None


def test_the_module_is_in_the_image_dracut_built(boots: list[BootResult]) -> None:
    res = boots[0]
    assert res.rc("lsinitrd") == 0, res["lsinitrd"]
    for path in ("etc/pcipass.early", "usr/lib/pcipassd/pcipassd-early",
                 "usr/lib/systemd/system/pcipassd-initrd.service",
                 "sysinit.target.wants/pcipassd-initrd.service",
                 "hooks/pre-pivot/10-pcipassd-release.sh", "e1000e/e1000e.ko",
                 "etc/modules-load.d/pcipass-vm.conf"):
        assert path in res["lsinitrd"], (path, res["lsinitrd"])
    listing = res["lsinitrd"].splitlines()
    modules = listing[listing.index("dracut modules:") + 1:]
    assert "pcipassd" in modules and "systemd-initrd" in modules, res["lsinitrd"]
    # apply wrote the very list the image carries (capture drops the last newline): unchanged,
    # it is not rewritten, and the image stays newer than it (status: no warning)
    assert res["holdlist"] == HOLD_LIST.rstrip("\n"), res["holdlist"]


def test_held_in_the_initramfs_before_e1000e_probes(boots: list[BootResult]) -> None:
    """0 probes of the held device; its twin probed, in the initramfs: the race was live."""
    res = boots[0]
    assert res.scenario_rc == 0 and res["systemd.failed"].strip() == "", res.where()
    assert probes(res, HELD) == 0, res["probes"]
    assert probes(res, TWIN) >= 1, res["probes"]
    assert in_initramfs(res, "probing driver e1000e with device", TWIN), res["timeline"]
    assert res.driver(HELD, "boot") == "vfio-pci", res.where()
    assert res.driver(TWIN, "boot") == "e1000e"
    assert res["active"] == "active"
    assert '"stage": "initramfs"' in res["state"], res["state"]
    assert node_stage(res, HELD) == "initramfs", res["node"]
    assert "warning" not in res["status"], res["status"]


def test_the_initrd_unit_holds_before_modules_load_and_udevd(boots: list[BootResult]) -> None:
    """In the systemd initrd, pcipassd-initrd.service finishes before systemd-modules-load
    (which loads e1000e there) and systemd-udevd start, and before e1000e's first probe."""
    lines = initramfs_timeline(boots[0])
    held = first(lines, "Finished pcipassd-initrd.service")
    assert held < first(lines, "Starting systemd-modules-load.service"), lines
    assert held < first(lines, "Starting systemd-udevd.service"), lines
    assert held < first(lines, "really_probe: probing driver e1000e"), lines


def test_a_stale_image_names_itself_and_dracut_f(boots: list[BootResult]) -> None:
    """Boot 1, the image fresh: `status` warns of nothing (test above). The config gains a
    device, `systemctl reload pcipassd` rewrites the hold list: the image is stale, and `check`
    names it and the command that rebuilds it."""
    res = boots[0]
    assert res.rc("reload") == 0, res["reload"]
    assert f"dev {NIC} 8086:100e pci-stub" in res["holdlist.edited"], res["holdlist.edited"]
    image = f"/boot/initrd.img-{res['kernel.release']}"
    assert (f"{image} is older than /etc/pcipass.early: until `dracut -f` is run"
            in res["check.stale"]), res["check.stale"]
    assert "fix: dracut -f\n" in res["check.stale"], res["check.stale"]
    assert res.rc("check.stale") == 0, "a warning: passthrough can still work"


def test_rd_pcipassd_off_leaves_the_hold_to_the_real_root(boots: list[BootResult]) -> None:
    """The initramfs holds nothing: e1000e probes the device there; the real root's early stage
    holds both devices, pcipassd moves the device late, and the NIC is never probed."""
    res = boots[1]
    assert "rd.pcipassd=off" in res["kernel.cmdline"]
    lines = initramfs_timeline(res)
    first(lines, "pcipassd-initrd.service", "was skipped because of an unmet condition check "
          "(ConditionKernelCommandLine=!rd.pcipassd=off)")
    assert not any("Finished pcipassd-initrd.service" in line for line in lines), lines
    assert in_initramfs(res, "probing driver e1000e with device", HELD), res["timeline"]
    assert probed(res, HELD), res["probes"]
    assert probed(res, TWIN), res["probes"]
    assert not probed(res, NIC, "e1000"), res["probes"]
    assert res.driver(HELD, "boot") == "vfio-pci", res.where()
    assert res.driver(NIC, "boot") == "pci-stub"
    assert res["active"] == "active"
    assert node_stage(res, HELD) == "early", res["node"]
    assert node_stage(res, NIC) == "early", res["node"]
    why = ("the initramfs loaded e1000e, which bound it: the kernel command line has "
           "rd.pcipassd=off, so the initramfs held nothing; pcipassd moved it")
    assert f"warning: {HELD}: {why}" in res["status"], res["status"]
    assert f"{HELD} [8086:10d3]: {why}" in res["journal"], res["journal"]
    assert res["disable.rc"] == "0"


def test_disabled_the_pre_pivot_hook_gives_the_device_back(boots: list[BootResult]) -> None:
    """`systemctl disable pcipassd`, no rebuild: the initramfs still holds the device, and
    gives it back once the real root is mounted; e1000e has it."""
    res = boots[2]
    assert "rd.pcipassd=off" not in res["kernel.cmdline"]
    assert (res["active"], res["enabled"]) == ("inactive", "disabled"), res.where()
    lines = initramfs_timeline(res)
    # held, then given back by the pre-pivot hook: e1000e probes it, still in the initramfs
    held = first(lines, "Finished pcipassd-initrd.service")
    assert held < first(lines, "probing driver e1000e with device", TWIN), lines
    assert (first(lines, "Starting dracut-pre-pivot.service")
            < first(lines, "probing driver e1000e with device", HELD)), lines
    assert probes(res, HELD) == 1, res["probes"]
    assert ("pcipassd.service is disabled: gave back "
            f"{HELD} (held at the initramfs stage)") in res["kmsg"], res["kmsg"]
    for bdf, driver in ((HELD, "e1000e"), (TWIN, "e1000e"), (NIC, "e1000")):
        assert res.driver(bdf, "boot") == driver, (bdf, res.where())
        assert res[f"boot.{bdf}.override"] == "none"


def test_stop_trigger_start_and_rescan_as_under_initramfs_tools(
        boots: list[BootResult]) -> None:
    """After a hold from the dracut image: stop -> e1000e, overrides cleared; a coldplug does
    not take it again; start holds it again; remove + rescan: the udev rule and pcipassd hold
    it again."""
    res = boots[0]
    assert res["stop.rc"] == "0", res.where()
    for stage in ("stopped", "triggered"):
        assert res.driver(HELD, stage) == "e1000e", (stage, res.where())
        assert res[f"{stage}.{HELD}.override"] == "none", res.where()
    assert res["start.rc"] == "0"
    assert res.driver(HELD, "started") == "vfio-pci", res.where()
    assert res["rescan.wait"] == "0", res.where()
    assert res.driver(HELD, "rescanned") == "vfio-pci", res.where()
