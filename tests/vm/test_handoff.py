"""From survey to a running VM on a real kernel, with a NIC and a two-function GPU card.

The guest has QEMU's boot VGA (00:01.0, 1234:1111, the console's card) and, behind its own
pcie-root-port, a test card with the same IDs: a bochs-display at 01:00.0 (multifunction=on)
and an ich9-intel-hda at 01:00.1, one IOMMU group. bochs (bochs-drm) and snd_hda_intel are in
the initramfs. A third device, an e1000e behind a root port of its own (02:00.0), is held with
`reset_method: bus`: the emulated display offers the kernel no reset method to choose.

1. First boot, no hold list yet: `pcipassd list`, `status --qemu` accepted by a QEMU inside the
   guest (paused, -S: it realizes the vfio-pci device, which is what matters), and
   `systemctl stop` while that QEMU has the device open: prompt, the device left on vfio-pci,
   QEMU named; after QEMU exits, `pcipassd restore` gives the devices back, the original reset
   methods too. Then `update-initramfs -u` (the hold list goes into the initramfs).
2. From the guest's own initramfs, with the kernel logging every probe (dyndbg on dd.c): both
   card functions held before bochs-drm or snd_hda_intel could probe them, the boot VGA probed
   by bochs-drm and still the console; a selection of part of the card refused; the q35 lines of
   `status --qemu-q35` accepted by a nested QEMU with both functions at their function numbers;
   `systemctl stop` leaves the card (`on_stop: keep`) held and says so, `pcipassd restore` gives
   it back, in reverse, function 0 last.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import out_root
from .harness import DEFAULT_TOPOLOGY, DISK_BDF, E1000E_ID, BootResult, PciDevice, _nic, boot
from .image import REPO_ROOT, BaseImage, build_image, install_from_deb
from .probes import NESTED_QEMU, PROBE_LOG, REPORT_PROBES, probes

pytestmark = pytest.mark.skipif(
    not (REPO_ROOT / "Makefile").is_file(), reason="the project has no Makefile yet"
)

GUEST_NIC = DEFAULT_TOPOLOGY.bdf("e1000e-b")
BOOT_VGA, DISPLAY, AUDIO, RESET_NIC = ("0000:00:01.0", "0000:01:00.0", "0000:01:00.1",
                                       "0000:02:00.0")
BOCHS_ID = "1234:1111"  # QEMU's std VGA and bochs-display: one driver, bochs-drm, for both
HDA_ID = "8086:293e"
TOPO = DEFAULT_TOPOLOGY.with_devices(
    PciDevice(name="boot-vga", bdf=BOOT_VGA, vendor_device=BOCHS_ID, driver="bochs-drm",
              qemu_args=("-device", "VGA,bus=pcie.0,addr=0x1")),
    PciDevice(name="card-display", bdf=DISPLAY, vendor_device=BOCHS_ID, driver="bochs-drm",
              qemu_args=("-device", "bochs-display,bus=rp-card,addr=00.0,multifunction=on")),
    PciDevice(name="card-audio", bdf=AUDIO, vendor_device=HDA_ID, driver="snd_hda_intel",
              qemu_args=("-device", "ich9-intel-hda,bus=rp-card,addr=00.1")),
    _nic(name="reset-nic", model="e1000e", bdf=RESET_NIC, vendor_device=E1000E_ID,
         placement="bus=rp-nic,addr=00.0"),
    infrastructure=(
        *("-device", "pcie-root-port,id=rp-card,bus=pcie.0,addr=0x7,chassis=2,slot=2"),
        *("-device", "pcie-root-port,id=rp-nic,bus=pcie.0,addr=0x8,chassis=3,slot=3"),
    ),
)

CONFIG = f"""\
version: 1
devices:
  - address: "{GUEST_NIC}"
    driver: vfio-pci
    name: guest-nic
  - address: "0000:01:00.*"
    driver: vfio-pci
    name: card
    on_stop: keep
  - address: "{RESET_NIC}"
    driver: vfio-pci
    name: reset-nic
    reset_method: bus
"""
PARTIAL = {  # a selection of part of the card: refused, and the rest named
    "display": f'version: 1\ndevices:\n  - address: "{DISPLAY}"\n    driver: vfio-pci\n',
    "audio": f'version: 1\ndevices:\n  - id: "{HDA_ID}"\n    driver: vfio-pci\n',
}

SCRIPT = NESTED_QEMU + rf"""
{REPORT_PROBES}
pci_inventory boot
case $PCIPASS_BOOT in
1)
    capture list pcipassd list
    capture list.json pcipassd list --json
    capture qemuargs pcipassd status --qemu
    capture libvirt pcipassd status --libvirt
    result reset_method.held "$(cat /sys/bus/pci/devices/{RESET_NIC}/reset_method)"
    qemu_start qemu $(pcipassd status --qemu | grep -v '^#' | grep {GUEST_NIC})
    start=$(date +%s)
    timeout 60 systemctl stop pcipassd; result stop.rc "$?"
    result stop.seconds "$(( $(date +%s) - start ))"
    pci_inventory during
    capture journal.stop journalctl -b -u pcipassd -o cat --no-pager
    qemu_end qemu
    pcipassd restore; result restore.rc "$?"
    pci_inventory after
    result reset_method.after "$(cat /sys/bus/pci/devices/{RESET_NIC}/reset_method)"
    capture update update-initramfs -u
    next_action reboot
    ;;
2)
    result boot_vga "$(cat /sys/bus/pci/devices/{BOOT_VGA}/boot_vga)"
    result fb0 "$(basename "$(readlink -f /sys/class/graphics/fb0/device)")"
    capture status pcipassd status
    capture check pcipassd check
    capture preflight pcipassd list --verbose
    capture journal.boot journalctl -b -u pcipassd -o cat --no-pager
    for part in display audio; do
        case $part in
        display) echo '{PARTIAL["display"]}' ;;
        audio) echo '{PARTIAL["audio"]}' ;;
        esac >/tmp/partial-$part.yaml
        capture partial.$part pcipassd plan --config /tmp/partial-$part.yaml
    done
    capture q35 pcipassd status --qemu-q35 10
    qemu_start card $(pcipassd status --qemu-q35 10 | grep -v '^#' | grep 01:00)
    capture card.qtree monitor card 'info qtree'
    qemu_end card
    systemctl stop pcipassd; result stop.rc "$?"
    pci_inventory stopped
    capture journal.stop journalctl -b -u pcipassd -o cat --no-pager
    cursor=$(journalctl -n 0 --show-cursor -o cat | sed -n 's/^-- cursor: //p')
    capture restore pcipassd restore
    pci_inventory after
    capture journal.restore journalctl -b -o cat --no-pager --after-cursor="$cursor"
    ;;
esac
"""


def _install(root: Path) -> None:
    install_from_deb(root)
    with (root / "etc/initramfs-tools/modules").open("a") as modules:
        modules.write("bochs\nsnd_hda_intel\n")  # the host drivers, in the initramfs


@pytest.fixture(scope="module")
def handoff(vm_base: BaseImage, tmp_path_factory: pytest.TempPathFactory) -> list[BootResult]:
    image = build_image(CONFIG, SCRIPT, base=vm_base, workdir=tmp_path_factory.mktemp("handoff"),
                        install=_install)
    logs = out_root() / "handoff"
    try:
        first = boot(image, topology=TOPO, kernel_args=PROBE_LOG, log_dir=logs / "boot-1",
                     timeout=480)
        second = boot(image.with_guest_initrd(), topology=TOPO, kernel_args=PROBE_LOG,
                      log_dir=logs / "boot-2", timeout=420)
    finally:
        image.disk.unlink(missing_ok=True)
    return [first, second]


def test_list_names_every_device_and_marks_the_root_disk(handoff: list[BootResult]) -> None:
    res = handoff[0]
    out = res["list"]
    assert res.rc("list") == 0, out
    assert "82574L Gigabit Network Connection" in out, out
    assert f"  {DISK_BDF}  1af4:1001  virtio-pci  host-critical: carries / (vda)\n" in out
    assert "    SCSI storage controller [0100]: Red Hat, Inc. Virtio block device\n" in out
    disk = res.iommu_group(DISK_BDF, "boot")
    assert f"IOMMU group {disk}: blocked: {DISK_BDF} carries / (vda)" in out
    vga = res.iommu_group(BOOT_VGA, "boot")
    assert (f"IOMMU group {vga}: blocked: {BOOT_VGA} is the boot VGA device; drives the "
            "framebuffer console (fb0)") in out, out
    assert "held (late)" in out
    group = res.iommu_group(GUEST_NIC, "during")
    assert f"IOMMU group {group}: can be passed through as a whole (1 endpoint)" in out


def test_qemu_accepts_the_printed_arguments(handoff: list[BootResult]) -> None:
    res = handoff[0]
    assert f"-device vfio-pci,host={GUEST_NIC}\n" in res["qemuargs"] + "\n", res.where()
    assert res["qemu.running"] == "yes", res["qemu.out"]
    assert res["qemu.vfio"] == "1", res["qemu.out"]
    assert "<address domain='0x0000' bus='0x00' slot='0x04' function='0x0'/>" in res["libvirt"]


def test_stop_never_pulls_the_device_from_a_running_vm(handoff: list[BootResult]) -> None:
    res = handoff[0]
    assert int(res["stop.seconds"]) < 30, res.where()
    assert res["stop.rc"] != "124", "systemctl stop timed out: blocked in the kernel?"
    assert res.driver(GUEST_NIC, "during") == "vfio-pci"
    journal = res["journal.stop"]
    assert f"has {GUEST_NIC} open: stop the VM first" in journal, journal
    assert "qemu-system-x86 (pid" in journal
    assert res["restore.rc"] == "0"
    assert res.driver(GUEST_NIC, "after") == "e1000e"


def test_reset_method_is_written_while_held_and_restored(handoff: list[BootResult]) -> None:
    """The kernel's own list (read back after the restore) offers more than `bus`; held, the
    device has only the configured one."""
    res = handoff[0]
    assert res["reset_method.held"] == "bus", res.where()
    original = res["reset_method.after"].split()
    assert "bus" in original and len(original) > 1, original
    assert res.driver(RESET_NIC, "after") == "e1000e"


def test_the_card_is_one_iommu_group_beside_the_boot_vga(handoff: list[BootResult]) -> None:
    res = handoff[1]
    assert res.iommu_group(DISPLAY, "boot") == res.iommu_group(AUDIO, "boot"), res.where()
    assert res.iommu_group(BOOT_VGA, "boot") != res.iommu_group(DISPLAY, "boot")
    assert res[f"boot.{DISPLAY}.id"] == res[f"boot.{BOOT_VGA}.id"] == BOCHS_ID


def test_the_card_is_held_from_the_initramfs_and_no_host_driver_probes_it(
        handoff: list[BootResult]) -> None:
    res = handoff[1]
    assert res.driver(DISPLAY, "boot") == res.driver(AUDIO, "boot") == "vfio-pci", res.where()
    assert probes(res, DISPLAY, "bochs-drm") == 0, res["probes"]
    assert probes(res, AUDIO, "snd_hda_intel") == 0, res["probes"]
    status = res["status"]
    assert re.search(rf"{DISPLAY} .*vfio-pci.*initramfs", status), status
    assert re.search(rf"{AUDIO} .*vfio-pci.*initramfs", status), status


def test_the_boot_vga_stays_the_hosts_console(handoff: list[BootResult]) -> None:
    res = handoff[1]
    assert probes(res, BOOT_VGA, "bochs-drm") == 1, res["probes"]  # same IDs: the race was live
    assert res.driver(BOOT_VGA, "boot") == "bochs-drm"
    assert res["boot_vga"] == "1"
    assert res["fb0"] == BOOT_VGA


@pytest.mark.parametrize(("part", "left"), [("display", AUDIO), ("audio", DISPLAY)])
def test_part_of_a_card_is_refused_and_the_rest_named(handoff: list[BootResult], part: str,
                                                     left: str) -> None:
    res = handoff[1]
    out = res[f"partial.{part}"]
    assert res.rc(f"partial.{part}") != 0, out
    assert "a card is held as one unit" in out, out
    assert f"leaves behind {left}" in out, out
    assert 'hint: take the whole card: address: "0000:01:00.*"' in out, out


def _qtree_vfio(qtree: str) -> dict[str, tuple[str, str, str]]:
    """From `info qtree`: each vfio-pci device's host address -> (its bus, its addr, whether
    multifunction)."""
    found: dict[str, tuple[str, str, str]] = {}
    bus = ""
    block: dict[str, str] | None = None
    for line in qtree.splitlines():
        text = line.strip()
        if text.startswith("bus: "):
            bus = text[5:]
        if text.startswith("dev: "):
            block = {"bus": bus} if text.startswith("dev: vfio-pci") else None
        elif block is not None and " = " in text:
            key, _, value = text.partition(" = ")
            block[key] = value.strip('"')
            if {"host", "addr", "multifunction"} <= block.keys():
                found[block["host"]] = (block["bus"], block["addr"].split()[0],
                                        block["multifunction"])
    return found


def test_a_nested_qemu_takes_the_card_with_its_function_layout(
        handoff: list[BootResult]) -> None:
    res = handoff[1]
    assert "# needs -machine q35" in res["q35"], res["q35"]
    assert res["card.running"] == "yes", res["card.out"]
    assert res["card.vfio"] == "1", res["card.out"]  # one IOMMU group: one vfio group open
    devices = _qtree_vfio(res["card.qtree"])
    port = devices[DISPLAY][0]
    assert port.startswith("pcipass-rp"), devices
    assert devices[DISPLAY] == (port, "00.0", "true"), devices
    assert devices[AUDIO] == (port, "00.1", "false"), devices


def test_stop_leaves_a_kept_card_held_and_says_so(handoff: list[BootResult]) -> None:
    res = handoff[1]
    assert res["stop.rc"] == "0", res.where()
    assert res.driver(DISPLAY, "stopped") == res.driver(AUDIO, "stopped") == "vfio-pci"
    assert res.driver(GUEST_NIC, "stopped") == res.driver(RESET_NIC, "stopped") == "e1000e"
    journal = res["journal.stop"]
    for bdf in (DISPLAY, AUDIO):
        assert f"on_stop: keep: left on vfio-pci; `pcipassd restore {bdf}` gives it back" in (
            journal), journal
    assert "2 restored, 2 kept, 0 failed" in journal, journal


def test_the_card_is_given_back_in_reverse_function_0_last(handoff: list[BootResult]) -> None:
    res = handoff[1]
    assert res.rc("restore") == 0, res["restore"]
    assert res.driver(DISPLAY, "after") == "bochs-drm"
    assert res.driver(AUDIO, "after") == "snd_hda_intel"
    journal = res["journal.restore"]
    audio = journal.rfind(f"{AUDIO}")
    display = journal.rfind(f"{DISPLAY}")
    assert -1 < audio < display, journal


def test_preflight_says_what_the_real_kernel_offers_the_card(handoff: list[BootResult]) -> None:
    """`check` on the real kernel: the card's host drivers are in the initramfs and the early
    hold still wins; the audio function has no reset of its own, but its card is reset as one;
    `list --verbose` refuses the console's card with its reason."""
    res = handoff[1]
    check = res["check"]
    assert res.rc("check") == 0, check
    assert f"  {DISPLAY} [{BOCHS_ID}] display, on vfio-pci, target vfio-pci" in check, check
    assert f"  {AUDIO} [{HDA_ID}] audio, on vfio-pci, target vfio-pci" in check, check
    for driver in ("bochs", "snd_hda_intel"):
        assert re.search(rf"OK +initramfs: {driver} in /boot/initrd.img-\S+: the early hold "
                         "still wins", check), check
    assert f"reset with its card: the whole card is held, and QEMU resets {DISPLAY}" in check
    listed = res["preflight"]
    assert f"  {BOOT_VGA} [{BOCHS_ID}] VGA, on bochs-drm, target (not configured)" in listed
    assert ("REFUSED framebuffer: the console's card: it is the boot VGA device; drives the "
            "framebuffer console (fb0)") in listed, listed


def _readme_block(after: str) -> list[str]:
    """The lines of the README's "GPUs" console block that starts with `after`, unindented."""
    text = (REPO_ROOT / "README.md").read_text()
    section = text[text.index("\n## GPUs\n"):text.index("\n## Many hosts\n")]
    block = section[section.index(after) + len(after):]
    return [line.strip() for line in block[:block.index("```")].splitlines() if line.strip()]


def test_the_readme_shows_what_the_card_gave(handoff: list[BootResult]) -> None:
    res = handoff[1]
    check = [line.strip() for line in res["check"].splitlines()]
    shown = [line for line in _readme_block("# pcipassd check\n") if line != "..."]
    assert shown and all(line in check for line in shown), (shown, check)
    q35 = [line.strip() for line in res["q35"].splitlines() if line.strip()]
    assert _readme_block("# pcipassd status --qemu-q35 10\n") == q35, q35
