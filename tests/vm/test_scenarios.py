"""The issue's VM scenarios, asserted from what a real guest saw: boot-time apply, stop, start,
reload after an edit, poweroff and the next boot, refusals, IOMMU off, an invalid config.

Scenarios share boots where that stays honest: each boot's script records the state after every
step, and each test below asserts one scenario from those records.
"""

from __future__ import annotations

import pytest

from .conftest import out_root
from .harness import DEFAULT_TOPOLOGY, DISK_BDF, BootResult, boot
from .image import REPO_ROOT, BaseImage, Image, build_image, install_from_deb

pytestmark = pytest.mark.skipif(
    not (REPO_ROOT / "Makefile").is_file(), reason="the project has no Makefile yet"
)

TOPO = DEFAULT_TOPOLOGY.with_bridge_pair()
TWIN_A, TWIN_B = TOPO.bdf("e1000e-a"), TOPO.bdf("e1000e-b")
E1000 = TOPO.bdf("e1000")
BR_A, BR_B = TOPO.bdf("br-e1000-a"), TOPO.bdf("br-e1000-b")

LIFECYCLE_CONFIG = f"""\
version: 1
devices:
  - id: "8086:10d3"
    count: 2
    driver: vfio-pci
    name: twins
  - address: "{BR_A}"
    group: bind
"""

EDITED_CONFIG = f"""\
version: 1
devices:
  - address: "{BR_A}"
    group: bind
  - address: "{E1000}"
"""

LIFECYCLE = rf"""
if [ "$PCIPASS_BOOT" = 1 ]; then
    mkdir -p /var/log/journal && journalctl --flush  # keep this boot's journal for the next
    pci_inventory boot
    result active.boot "$(systemctl is-active pcipassd)"
    capture vfio ls /dev/vfio
    capture status.boot pcipassd status
    capture journal.boot journalctl -b -u pcipassd -o json --no-pager
    systemctl reload pcipassd; result reload.rc "$?"
    capture summary.reload sh -c \
        'journalctl -b -u pcipassd -o cat --no-pager | grep " bound, " | tail -n 1'
    pci_inventory reload
    systemctl stop pcipassd; result stop.rc "$?"
    pci_inventory stopped
    capture state.stopped cat /run/pcipass/state.json
    systemctl start pcipassd; result start.rc "$?"
    pci_inventory started
    cat >/etc/pcipass.yaml <<'EOF'
{EDITED_CONFIG}EOF
    systemctl reload pcipassd; result edited.rc "$?"
    pci_inventory edited
    result active.edited "$(systemctl is-active pcipassd)"
    next_action reboot
else
    pci_inventory boot2
    result active.boot2 "$(systemctl is-active pcipassd)"
    capture journal.previous journalctl -b -1 -u pcipassd -o cat --no-pager
fi
"""


def _boots(image: Image, name: str, count: int) -> list[BootResult]:
    try:
        return [boot(image, topology=TOPO, log_dir=out_root() / name / f"boot-{n + 1}")
                for n in range(count)]
    finally:
        image.disk.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def lifecycle(vm_base: BaseImage,
              tmp_path_factory: pytest.TempPathFactory) -> list[BootResult]:
    workdir = tmp_path_factory.mktemp("lifecycle")
    image = build_image(LIFECYCLE_CONFIG, LIFECYCLE, base=vm_base, workdir=workdir,
                        install=install_from_deb)
    return _boots(image, "lifecycle", 2)


def test_by_id_with_count_to_vfio_and_group_bind(lifecycle: list[BootResult]) -> None:
    """Scenario 2, and issue 4's `group: bind` on two e1000 behind one bridge."""
    res = lifecycle[0]
    where = f"{res.where()}\n{res.get('status.boot')}"
    assert res["active.boot"] == "active", where
    assert res.driver(TWIN_A, "boot") == res.driver(TWIN_B, "boot") == "vfio-pci", where
    vfio = res["vfio"].split()
    for bdf in (TWIN_A, TWIN_B):
        assert res.iommu_group(bdf, "boot") in vfio, (bdf, vfio)
    assert res.iommu_group(BR_A, "boot") == res.iommu_group(BR_B, "boot")
    assert res.driver(BR_A, "boot") == res.driver(BR_B, "boot") == "pci-stub", where
    assert res.driver(E1000, "boot") == "e1000"
    assert res.driver(DISK_BDF, "boot") == "virtio-pci"


def test_journal_has_the_structured_fields(lifecycle: list[BootResult]) -> None:
    journal = lifecycle[0]["journal.boot"]
    assert f'"PCIPASS_DEVICE":"{TWIN_A}"' in journal.replace(" ", ""), journal
    for field in ('"PCIPASS_ACTION":"bind"', '"PCIPASS_DRIVER_FROM":"e1000e"',
                  '"PCIPASS_DRIVER_TO":"vfio-pci"', '"PCIPASS_ID":"8086:10d3"',
                  '"PCIPASS_ENTRY":"/etc/pcipass.yaml:3"', '"PCIPASS_NAME":"twins"'):
        assert field in journal.replace(" ", ""), field


def test_reload_without_change_changes_nothing(lifecycle: list[BootResult]) -> None:
    res = lifecycle[0]
    assert res["reload.rc"] == "0", res.where()
    assert res["summary.reload"].strip() == "0 bound, 4 unchanged, 0 restored, 0 failed"
    for bdf in (TWIN_A, TWIN_B, BR_A, BR_B):
        assert res.driver(bdf, "reload") == res.driver(bdf, "boot")


def test_stop_restores_everything_and_start_binds_again(lifecycle: list[BootResult]) -> None:
    """Scenario 3."""
    res = lifecycle[0]
    assert res["stop.rc"] == "0", res.where()
    assert (res.driver(TWIN_A, "stopped"), res.driver(TWIN_B, "stopped")) == ("e1000e", "e1000e")
    assert (res.driver(BR_A, "stopped"), res.driver(BR_B, "stopped")) == ("e1000", "e1000")
    for bdf in (TWIN_A, TWIN_B, BR_A, BR_B):
        assert res[f"stopped.{bdf}.override"] == "none"
    assert '"devices": []' in res["state.stopped"], res["state.stopped"]
    assert res["start.rc"] == "0"
    assert res.driver(TWIN_A, "started") == "vfio-pci"
    assert res.driver(BR_B, "started") == "pci-stub"


def test_reload_after_an_edit_restores_removed_and_binds_added(
        lifecycle: list[BootResult]) -> None:
    """Scenario 4."""
    res = lifecycle[0]
    assert res["edited.rc"] == "0", res.where()
    assert (res.driver(TWIN_A, "edited"), res.driver(TWIN_B, "edited")) == ("e1000e", "e1000e")
    assert res.driver(E1000, "edited") == "pci-stub"
    assert res.driver(BR_A, "edited") == "pci-stub"
    assert res["active.edited"] == "active"


def test_poweroff_with_the_unit_active_and_the_next_boot(lifecycle: list[BootResult]) -> None:
    """Scenario 7: the shutdown (restore included) completes, and the next boot binds again."""
    first, second = lifecycle
    assert first.shutdown == "reboot", first.where()
    assert second.shutdown == "poweroff", second.where()
    assert "restored" in second["journal.previous"], second["journal.previous"]
    assert second["active.boot2"] == "active", second.where()
    assert second.driver(E1000, "boot2") == "pci-stub"
    assert second.driver(TWIN_A, "boot2") == "e1000e"


# --- refusals ------------------------------------------------------------------------------

REFUSING_CONFIG = f"""\
version: 1
devices:
  - address: "{DISK_BDF}"
    name: root-disk
  - address: "{BR_A}"
  - address: "{E1000}"
"""

REFUSALS = r"""
pci_inventory boot
result active "$(systemctl is-active pcipassd)"
capture journal journalctl -b -u pcipassd -o cat --no-pager
result alive "$(cat /proc/uptime)"
"""


@pytest.fixture(scope="module")
def refusals(vm_base: BaseImage, tmp_path_factory: pytest.TempPathFactory) -> BootResult:
    image = build_image(REFUSING_CONFIG, REFUSALS, base=vm_base,
                        workdir=tmp_path_factory.mktemp("refusals"), install=install_from_deb)
    return _boots(image, "refusals", 1)[0]


def test_root_disk_controller_is_refused_and_the_guest_keeps_running(
        refusals: BootResult) -> None:
    res = refusals
    journal = res["journal"]
    assert res.driver(DISK_BDF, "boot") == "virtio-pci", res.where()
    assert f"refusing {DISK_BDF}: {DISK_BDF} carries /" in journal, journal
    assert "force: [storage]" in journal
    assert res["active"] == "active", "it holds a device: stop and poweroff must give it back"
    assert res.shutdown == "poweroff" and res.get("alive")
    assert res.driver(E1000, "boot") == "pci-stub", "the rest of the config still applies"


def test_isolated_refuses_half_of_a_shared_group(refusals: BootResult) -> None:
    journal = refusals["journal"]
    group = refusals.iommu_group(BR_A, "boot")
    assert f"IOMMU group {group} of {BR_A} also contains {BR_B} [8086:100e] on e1000" in journal
    assert refusals.driver(BR_A, "boot") == refusals.driver(BR_B, "boot") == "e1000"


# --- an invalid config at boot, then the IOMMU off --------------------------------------------

INVALID_CONFIG = """\
version: 1
devices:
  - adress: "0000:00:03.0"
  - address: "0000:00:03"
"""

VALID_CONFIG = f"""\
version: 1
iommu: required
devices:
  - address: "{TWIN_A}"
"""

NO_IOMMU = rf"""
pci_inventory boot
result active.boot "$(systemctl is-active pcipassd)"
capture journal.boot journalctl -b -u pcipassd -o cat --no-pager
cat >/etc/pcipass.yaml <<'EOF'
{VALID_CONFIG}EOF
systemctl restart pcipassd; result restart.rc "$?"
pci_inventory restarted
capture journal.restart journalctl -b -u pcipassd -o cat --no-pager -n 20
capture check pcipassd check
"""


@pytest.fixture(scope="module")
def no_iommu(vm_base: BaseImage, tmp_path_factory: pytest.TempPathFactory) -> BootResult:
    image = build_image(INVALID_CONFIG, NO_IOMMU, base=vm_base,
                        workdir=tmp_path_factory.mktemp("no-iommu"), install=install_from_deb)
    try:
        return boot(image, topology=DEFAULT_TOPOLOGY.without_iommu(),
                    log_dir=out_root() / "no_iommu" / "boot-1")
    finally:
        image.disk.unlink(missing_ok=True)


def test_invalid_config_fails_the_unit_at_boot_and_unbinds_nothing(no_iommu: BootResult) -> None:
    """Scenario 6."""
    res = no_iommu
    journal = res["journal.boot"]
    assert res["active.boot"] == "failed", res.where()
    assert "/etc/pcipass.yaml:3:5: devices[0].adress: unknown key 'adress'" in journal, journal
    assert "/etc/pcipass.yaml:4:14: devices[1].address: '0000:00:03' is not a PCI address" \
        in journal
    assert "invalid configuration: nothing was changed" in journal
    for dev in DEFAULT_TOPOLOGY.devices:
        assert res.driver(dev.bdf, "boot") == dev.driver


def test_iommu_off_with_iommu_required(no_iommu: BootResult) -> None:
    """Scenario 5: the unit fails, nothing is unbound, the journal and check say how to fix it."""
    res = no_iommu
    journal = res["journal.restart"]
    assert res["restart.rc"] != "0", res.where()
    assert "the IOMMU is off: nothing was bound (iommu: required)" in journal, journal
    assert "add intel_iommu=on to GRUB_CMDLINE_LINUX in /etc/default/grub" in journal
    assert res.driver(TWIN_A, "restarted") == "e1000e"
    assert res.rc("check") == 1
    assert "FAIL  IOMMU off: /sys/kernel/iommu_groups is empty" in res["check"], res["check"]
    assert "intel_iommu=on to GRUB_CMDLINE_LINUX" in res["check"]
    assert "passthrough cannot work until the FAILs are fixed" in res["check"]
