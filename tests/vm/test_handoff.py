"""From survey to a running VM on a real kernel: `pcipassd list`, `status --qemu` accepted by a
QEMU inside the guest (paused, -S: it realizes the vfio-pci device, which is what matters), and
`systemctl stop` while that QEMU has the device open: prompt, the device left on vfio-pci, QEMU
named; after QEMU exits, `pcipassd restore` gives the device back."""

from __future__ import annotations

import pytest

from .conftest import out_root
from .harness import DEFAULT_TOPOLOGY, DISK_BDF, BootResult, boot
from .image import REPO_ROOT, BaseImage, build_image, install_from_deb

pytestmark = pytest.mark.skipif(
    not (REPO_ROOT / "Makefile").is_file(), reason="the project has no Makefile yet"
)

GUEST_NIC = DEFAULT_TOPOLOGY.bdf("e1000e-b")

CONFIG = f"""\
version: 1
devices:
  - address: "{GUEST_NIC}"
    driver: vfio-pci
    name: guest-nic
"""

SCRIPT = r"""
capture list pcipassd list
capture list.json pcipassd list --json
capture qemuargs pcipassd status --qemu
capture libvirt pcipassd status --libvirt
args=$(pcipassd status --qemu | grep -v '^#')
qemu-system-x86_64 -machine q35 -accel tcg,tb-size=64 -m 64 -nodefaults \
    -display none -S -monitor none -serial none $args </dev/null >/tmp/qemu.out 2>&1 &
qemu=$!
for i in $(seq 90); do
    ls -l /proc/$qemu/fd 2>/dev/null | grep -q ' /dev/vfio/[0-9]' && break
    kill -0 $qemu 2>/dev/null || break
    sleep 1
done
result qemu.running "$(kill -0 $qemu 2>/dev/null && echo yes || echo no)"
result qemu.vfio "$(ls -l /proc/$qemu/fd 2>/dev/null | grep -c ' /dev/vfio/[0-9]')"
start=$(date +%s)
timeout 60 systemctl stop pcipassd; result stop.rc "$?"
result stop.seconds "$(( $(date +%s) - start ))"
pci_inventory during
capture journal.stop journalctl -b -u pcipassd -o cat --no-pager
kill $qemu
for i in $(seq 30); do kill -0 $qemu 2>/dev/null || break; sleep 1; done
kill -9 $qemu 2>/dev/null
capture qemu.out cat /tmp/qemu.out
pcipassd restore; result restore.rc "$?"
pci_inventory after
"""


@pytest.fixture(scope="module")
def handoff(vm_base: BaseImage, tmp_path_factory: pytest.TempPathFactory) -> BootResult:
    image = build_image(CONFIG, SCRIPT, base=vm_base, workdir=tmp_path_factory.mktemp("handoff"),
                        install=install_from_deb)
    try:
        return boot(image, log_dir=out_root() / "handoff" / "boot-1", timeout=420)
    finally:
        image.disk.unlink(missing_ok=True)


def test_list_names_every_device_and_marks_the_root_disk(handoff: BootResult) -> None:
    out = handoff["list"]
    assert handoff.rc("list") == 0, out
    assert "82574L Gigabit Network Connection" in out, out
    assert f"  {DISK_BDF}  1af4:1001  virtio-pci  host-critical: carries / (vda)\n" in out
    assert "    SCSI storage controller [0100]: Red Hat, Inc. Virtio block device\n" in out
    assert f"IOMMU group 1: blocked: {DISK_BDF} carries / (vda)" in out
    assert "held (late)" in out
    group = handoff.iommu_group(GUEST_NIC, "during")
    assert f"IOMMU group {group}: can be passed through as a whole (1 endpoint)" in out


def test_qemu_accepts_the_printed_arguments(handoff: BootResult) -> None:
    assert handoff["qemuargs"].strip() == f"-device vfio-pci,host={GUEST_NIC}", handoff.where()
    assert handoff["qemu.running"] == "yes", handoff["qemu.out"]
    assert handoff["qemu.vfio"] == "1", handoff["qemu.out"]
    assert "<address domain='0x0000' bus='0x00' slot='0x04' function='0x0'/>" in (
        handoff["libvirt"])


def test_stop_never_pulls_the_device_from_a_running_vm(handoff: BootResult) -> None:
    res = handoff
    assert int(res["stop.seconds"]) < 30, res.where()
    assert res["stop.rc"] != "124", "systemctl stop timed out: blocked in the kernel?"
    assert res.driver(GUEST_NIC, "during") == "vfio-pci"
    journal = res["journal.stop"]
    assert f"has {GUEST_NIC} open: stop the VM first" in journal, journal
    assert "qemu-system-x86 (pid" in journal
    assert res["restore.rc"] == "0"
    assert res.driver(GUEST_NIC, "after") == "e1000e"
