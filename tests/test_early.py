"""The early hold on the simulated kernel: the hold list apply generates, pcipassd-early (the
real shell script, run with the simulated root as its prefix) at boot and from udev, the main
service taking the devices over, restore to the driver udev would load, and SIGTERM."""

from __future__ import annotations

import array
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from machine import Machine
from simkernel import (
    NIC_A,
    NIC_B,
    NIC_E1000,
    UNIT_STATES,
    Intercept,
    SimKernel,
    build_typical_machine,
    set_unit_state,
)

from pcipassd.cli import main
from pcipassd.service import notify_status

SCRIPT = Path(__file__).resolve().parent.parent / "early" / "pcipassd-early"
HOLD_LIST = "etc/pcipass.early"


@pytest.fixture
def service_enabled(m: Machine) -> None:
    """pcipassd.service enabled on the typical machine (its WantedBy= link): pcipassd-early acts
    from udev only then."""
    set_unit_state(m.root, "enabled")


# The shells it runs under: dash (Debian's /bin/sh, and klibc's sh is a dash) and busybox's
# ash (the initramfs's /bin/sh when busybox is installed).
SHELLS = ["sh", "busybox sh"]


def early(machine: Machine, *args: str, shell: str = "sh") -> subprocess.CompletedProcess[str]:
    """Run the real pcipassd-early with the simulated root as its prefix."""
    env = {"PATH": os.environ["PATH"], "PCIPASS_ROOT": str(machine.root)}
    return subprocess.run([*shell.split(), str(SCRIPT), *args], env=env, capture_output=True,
                          text=True, check=False, timeout=30)


def hold_list(machine: Machine, text: str) -> None:
    path = machine.root / HOLD_LIST
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def coldplug(machine: Machine) -> None:
    """udev's coldplug: load the module of each present device's original driver (module load
    honours driver_override, as the kernel's driver_attach does)."""
    for module in ("e1000e", "e1000"):
        machine.sim.modprobe(module)


# -- the hold list ----------------------------------------------------------------------------
def test_hold_list_names_each_held_device_with_its_id_and_target(m: Machine) -> None:
    m.config(f"""\
        version: 1
        devices:
          - address: "{NIC_A}"
          - address: "{NIC_E1000}"
            driver: vfio-pci
        """)
    assert m.run("apply").rc == 0
    assert (m.root / HOLD_LIST).read_text().splitlines()[2:] == [
        f"dev {NIC_A} 8086:10d3 pci-stub", f"dev {NIC_E1000} 8086:100e vfio-pci"]


def test_id_entries_also_hold_devices_added_later(m: Machine) -> None:
    m.config('version: 1\ndevices:\n  - id: "8086:10d3"\n    driver: vfio-pci\n')
    m.run("apply")
    assert (m.root / HOLD_LIST).read_text().splitlines()[2:] == [
        f"dev {NIC_A} 8086:10d3 vfio-pci", f"dev {NIC_B} 8086:10d3 vfio-pci",
        "id 8086:10d3 vfio-pci"]


def test_refused_entries_are_never_held_early(m: Machine) -> None:
    m.config(f"""\
        version: 1
        devices:
          - id: "8086:10d3"
            count: 3
          - address: "{NIC_E1000}"
        """)
    assert m.run("apply").rc == 3
    assert (m.root / HOLD_LIST).read_text().splitlines()[2:] == [
        f"dev {NIC_E1000} 8086:100e pci-stub"]


def test_hold_list_is_rewritten_only_when_it_changes_and_removed_when_empty(m: Machine) -> None:
    m.with_guest_nic()
    m.run("apply")
    path = m.root / HOLD_LIST
    os.utime(path, (1, 1))
    m.run("apply")
    assert path.stat().st_mtime == 1, "an unchanged list is not rewritten"
    m.config('version: 1\ndevices:\n  - address: "0000:07:00.0"\n')
    assert m.run("apply").rc == 1, "holds nothing and something is wrong"
    assert not path.exists()


# -- pcipassd-early at boot ---------------------------------------------------------------
@pytest.mark.parametrize("shell", SHELLS)
def test_initramfs_stage_holds_the_device_before_coldplug_and_apply_takes_over(
        cold: Machine, shell: str) -> None:
    hold_list(cold, f"# generated\ndev {NIC_A} 8086:10d3 pci-stub\n")
    stage = early(cold, "boot", "initramfs", shell=shell)
    assert stage.returncode == 0 and stage.stderr == ""
    assert cold.override(NIC_A) == "pci-stub"
    coldplug(cold)
    assert cold.driver(NIC_A) is None, "e1000e never bound the held device"
    assert cold.driver(NIC_B) == "e1000e", "and did bind its identical twin"
    assert not (cold.root / "run/pcipass/armed").exists(), "armed once the real root says on"
    early(cold, "root", str(cold.root), shell=shell)  # init-bottom: pcipassd is enabled
    assert (cold.root / "run/pcipass/armed").exists()
    cold.with_guest_nic()
    r = cold.run("apply")
    assert r.rc == 0, r.err
    assert f"{NIC_A} [8086:10d3] held for pci-stub since the initramfs stage" in r.err
    assert f"{NIC_A} [8086:10d3] (none) -> pci-stub (/etc/pcipass.yaml:3)" in r.err
    assert cold.driver(NIC_A) == "pci-stub"
    assert cold.state[NIC_A]["stage"] == "initramfs"
    assert cold.state[NIC_A]["original_driver"] is None
    assert not (cold.root / "run/pcipass/early.log").exists(), "adopted once"
    assert "warning" not in r.err


@pytest.mark.parametrize("shell", SHELLS)
def test_the_early_stage_makes_its_directory_readable_and_its_files_root_only(
        cold: Machine, shell: str) -> None:
    hold_list(cold, f"# generated\ndev {NIC_A} 8086:10d3 pci-stub\n")
    run = cold.root / "run/pcipass"
    assert not run.exists()
    assert early(cold, "boot", "initramfs", shell=shell).returncode == 0
    early(cold, "root", str(cold.root), shell=shell)
    assert run.stat().st_mode & 0o777 == 0o755, "everyone may read node.json in it"
    assert (run / "early.log").stat().st_mode & 0o777 == 0o600
    assert (run / "armed").stat().st_mode & 0o777 == 0o600


def test_restore_gives_a_never_bound_device_to_the_driver_udev_would_load(
        cold: Machine) -> None:
    hold_list(cold, f"dev {NIC_A} 8086:10d3 pci-stub\n")
    early(cold, "boot", "initramfs")
    coldplug(cold)
    cold.with_guest_nic()
    cold.run("apply")
    cold.sim.unload("e1000e")  # its original driver's module is not loaded any more
    r = cold.run("restore")
    assert r.rc == 0, r.err
    assert cold.driver(NIC_A) == "e1000e"
    assert cold.override(NIC_A) is None
    assert f"{NIC_A} [8086:10d3] pci-stub -> e1000e" in r.err
    assert cold.sim.modprobes[-1].startswith("pci:v00008086d000010D3")
    assert cold.state == {}
    assert not (cold.root / "run/pcipass/armed").exists(), "stop disarms the udev rule"


def test_restore_with_a_blacklisted_original_driver_leaves_it_unbound_without_error(
        cold: Machine) -> None:
    hold_list(cold, f"dev {NIC_E1000} 8086:100e pci-stub\n")
    early(cold, "boot", "early")
    cold.sim.blacklist.add("e1000")
    cold.sim.modprobe("e1000e")
    cold.config(f'version: 1\ndevices:\n  - address: "{NIC_E1000}"\n')
    cold.run("apply")
    r = cold.run("restore")
    assert r.rc == 0, r.err
    assert cold.driver(NIC_E1000) is None
    assert cold.override(NIC_E1000) is None
    assert "no driver took it (its original driver is blacklisted, or it has none)" in r.err
    assert "error" not in r.err
    assert "1 restored, 0 failed" in r.err


def test_a_target_driver_the_kernel_lacks_gives_the_early_held_device_back(
        cold: Machine) -> None:
    hold_list(cold, f"dev {NIC_A} 8086:10d3 vfio-pci\n")
    early(cold, "boot", "initramfs")
    coldplug(cold)
    cold.config(f'version: 1\ndevices:\n  - address: "{NIC_A}"\n    driver: vfio-pci\n')
    (cold.sim.modules_dir / "kernel/drivers/pci/vfio_pci.ko").unlink()
    cold.sim._drivers.pop("vfio-pci")  # this kernel has no vfio-pci at all
    r = cold.run("apply")
    assert r.rc == 1
    assert "modprobe vfio_pci failed: Module vfio_pci not found" in r.err
    assert cold.driver(NIC_A) == "e1000e", "not left without a driver"
    assert cold.override(NIC_A) is None
    assert cold.state == {}


def test_early_stage_skips_a_device_whose_id_changed(cold: Machine) -> None:
    hold_list(cold, f"dev {NIC_E1000} 8086:10d3 pci-stub\n")
    r = early(cold, "boot", "early")
    assert r.returncode == 0
    assert cold.override(NIC_E1000) is None
    assert r.stderr == (f"pcipassd-early: {NIC_E1000} is now 8086:100e, not 8086:10d3: "
                        "the hardware changed, not holding it\n")


def test_pcipassd_off_on_the_kernel_command_line_holds_nothing(cold: Machine) -> None:
    hold_list(cold, f"dev {NIC_A} 8086:10d3 pci-stub\n")
    (cold.root / "proc/cmdline").write_text("root=/dev/vda pcipassd=off quiet\n")
    early(cold, "boot", "initramfs")
    assert cold.override(NIC_A) is None
    assert not (cold.root / "run/pcipass").exists()


def test_a_later_stage_does_not_hold_again(cold: Machine) -> None:
    hold_list(cold, f"dev {NIC_A} 8086:10d3 pci-stub\n")
    early(cold, "boot", "initramfs")
    early(cold, "boot", "early")
    log = (cold.root / "run/pcipass/early.log").read_text()
    assert log == f"{NIC_A} initramfs pci-stub none\n"


# -- off means off: a disabled, masked or removed pcipassd.service holds nothing at boot -----
WHY = {"disabled": "disabled", "masked": "masked", "masked-empty": "masked",
       "removed": "not installed"}


def kernel_probes(machine: Machine) -> None:
    """The kernel's answer to the BDF the script wrote to drivers_probe: the shell writes the
    simulated file directly, and the simulated kernel reacts only to write()."""
    path = machine.root / "sys/bus/pci/drivers_probe"
    bdf = path.read_text().strip()
    if bdf:
        path.write_text("")
        machine.sim.write(path, bdf)


def initramfs_boot(machine: Machine, holds: str) -> None:
    """init-top holds, then the initramfs's udev loads e1000e (not e1000: like a GPU driver,
    it is not in the image)."""
    hold_list(machine, holds)
    early(machine, "boot", "initramfs")
    machine.sim.modprobe("e1000e")


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("state", [s for s in UNIT_STATES if s != "enabled"])
def test_off_in_the_real_root_gives_back_what_the_initramfs_held(
        cold: Machine, state: str, shell: str, tmp_path: Path) -> None:
    initramfs_boot(cold, f"dev {NIC_A} 8086:10d3 vfio-pci\n")
    assert (cold.driver(NIC_A), cold.driver(NIC_B)) == (None, "e1000e")
    real = tmp_path / "real-root"  # the real root, mounted at ${rootmnt} by init-bottom
    set_unit_state(real, state)
    r = early(cold, "root", str(real), shell=shell)
    assert r.returncode == 0
    assert r.stderr == (f"pcipassd-early: pcipassd.service is {WHY[state]}: gave back {NIC_A} "
                        "(held at the initramfs stage)\n")
    assert cold.override(NIC_A) is None
    kernel_probes(cold)
    assert cold.driver(NIC_A) == "e1000e", "its original driver, loaded, took it at once"
    assert not (cold.root / "run/pcipass/armed").exists(), "the udev rule holds nothing"
    assert (cold.root / "run/pcipass/early.log").read_text() == "", "nothing to adopt"


def test_enabled_in_the_real_root_keeps_the_initramfs_hold(cold: Machine, tmp_path: Path) -> None:
    initramfs_boot(cold, f"dev {NIC_A} 8086:10d3 vfio-pci\n")
    real = tmp_path / "real-root"
    set_unit_state(real, "enabled")
    r = early(cold, "root", str(real))
    assert (r.returncode, r.stderr) == (0, "")
    assert cold.override(NIC_A) == "vfio-pci"
    assert (cold.root / "sys/bus/pci/drivers_probe").read_text() == ""
    assert (cold.root / "run/pcipass/armed").exists()
    assert (cold.root / "run/pcipass/early.log").read_text() == f"{NIC_A} initramfs vfio-pci none\n"


def test_a_device_whose_driver_is_not_in_the_initramfs_gets_it_at_coldplug(
        cold: Machine, tmp_path: Path) -> None:
    initramfs_boot(cold, f"dev {NIC_E1000} 8086:100e pci-stub\n")
    real = tmp_path / "real-root"
    set_unit_state(real, "disabled")
    early(cold, "root", str(real))
    kernel_probes(cold)
    assert cold.driver(NIC_E1000) is None, "e1000 is not loaded yet"
    assert cold.override(NIC_E1000) is None
    cold.sim.modprobe("e1000")  # the real root's coldplug
    assert cold.driver(NIC_E1000) == "e1000"


@pytest.mark.parametrize("state", ["masked", "disabled"])
def test_the_real_root_stage_holds_nothing_and_gives_back_when_pcipassd_is_off(
        cold: Machine, state: str) -> None:
    """`systemctl mask pcipassd` leaves pcipassd-early.service enabled (`Also=` is only for
    enable/disable), and an initramfs built by an older pcipassd has no init-bottom script:
    the real-root stage gives back what the initramfs held, and holds nothing itself."""
    initramfs_boot(cold, f"dev {NIC_A} 8086:10d3 vfio-pci\ndev {NIC_B} 8086:10d3 pci-stub\n")
    set_unit_state(cold.root, state)
    r = early(cold, "boot", "early")
    assert r.returncode == 0
    assert f"pcipassd.service is {state}: gave back {NIC_A}" in r.stderr
    assert f"pcipassd.service is {state}: gave back {NIC_B}" in r.stderr
    assert cold.override(NIC_A) is None and cold.override(NIC_B) is None
    assert not (cold.root / "run/pcipass/armed").exists()
    assert (cold.root / "run/pcipass/early.log").read_text() == ""


def test_the_real_root_stage_alone_holds_nothing_when_pcipassd_is_removed(cold: Machine) -> None:
    hold_list(cold, f"dev {NIC_A} 8086:10d3 vfio-pci\n")
    set_unit_state(cold.root, "removed")
    r = early(cold, "boot", "early")
    assert (r.returncode, r.stderr) == (0, "")
    assert cold.override(NIC_A) is None
    assert not (cold.root / "run/pcipass").exists()


def test_the_udev_rule_gives_back_instead_of_holding_when_pcipassd_is_off(m: Machine) -> None:
    hold_list(m, "id 8086:10d3 vfio-pci\n")
    m.sim.remove_device(NIC_B)
    m.sim.add_device(NIC_B, 0x8086, 0x10D3, driver=None, iommu_group=3)
    (m.root / "run/pcipass").mkdir(parents=True, exist_ok=True)
    (m.root / "run/pcipass/armed").touch()
    set_unit_state(m.root, "disabled")
    r = early(m, "udev", NIC_B)
    assert (r.returncode, r.stdout) == (0, ""), "not held: no reload of pcipassd"
    assert m.override(NIC_B) is None
    assert not (m.root / "run/pcipass/armed").exists()


def test_enabled_again_holds_again_from_the_next_boot(cold: Machine, tmp_path: Path) -> None:
    real = tmp_path / "real-root"
    set_unit_state(real, "disabled")
    initramfs_boot(cold, f"dev {NIC_A} 8086:10d3 vfio-pci\n")
    early(cold, "root", str(real))
    assert cold.override(NIC_A) is None
    set_unit_state(real, "enabled")  # `systemctl enable pcipassd`, then the next boot:
    cold.sim.remove_device(NIC_A)
    cold.sim.add_device(NIC_A, 0x8086, 0x10D3, driver=None, iommu_group=2)
    early(cold, "boot", "initramfs")
    early(cold, "root", str(real))
    assert cold.override(NIC_A) == "vfio-pci"
    assert (cold.root / "run/pcipass/armed").exists()


@pytest.mark.parametrize(("builtin", "why"), [
    (False, "the initramfs loaded e1000e, which bound it before pcipassd could hold it: the "
            "initramfs predates the hold list; run `update-initramfs -u`"),
    (True, "e1000e is built into the kernel and bound it at boot; pcipassd moved it"),
])
@pytest.mark.parametrize("shell", SHELLS)
def test_an_original_driver_that_bound_first_is_named_with_the_reason(
        cold: Machine, builtin: bool, why: str, shell: str) -> None:
    (cold.root / "usr/sbin").mkdir(parents=True)
    (cold.root / "usr/sbin/update-initramfs").touch()
    if builtin:
        listing = cold.sim.modules_dir / "modules.builtin"
        listing.write_text(listing.read_text() + "kernel/drivers/net/e1000e.ko\n")
    coldplug(cold)  # a stale initramfs (or the built-in driver) bound both NICs
    hold_list(cold, f"dev {NIC_A} 8086:10d3 pci-stub\n")
    early(cold, "boot", "early", shell=shell)
    assert (cold.root / "run/pcipass/early.log").read_text() == f"{NIC_A} early pci-stub e1000e\n"
    assert cold.driver(NIC_A) == "e1000e", "writing the override unbinds nothing"
    cold.with_guest_nic()
    r = cold.run("apply")
    assert r.rc == 0, r.err
    assert f"warning: {NIC_A} [8086:10d3]: {why}" in r.err
    assert cold.driver(NIC_A) == "pci-stub"
    assert f"warning: {NIC_A}: {why}" in cold.run("status").out
    cold.run("restore")
    assert cold.driver(NIC_A) == "e1000e"


def test_invalid_config_gives_back_what_the_early_stages_held(cold: Machine) -> None:
    hold_list(cold, f"dev {NIC_A} 8086:10d3 pci-stub\n")
    early(cold, "boot", "initramfs")
    coldplug(cold)
    cold.config(f'version: 1\ndevices:\n  - adress: "{NIC_A}"\n')
    r = cold.run("apply")
    assert r.rc == 2
    assert cold.driver(NIC_A) == "e1000e"
    assert cold.override(NIC_A) is None
    assert cold.state == {}
    assert not (cold.root / "run/pcipass/armed").exists()


def test_a_stale_initramfs_is_reported_by_status_and_check(m: Machine) -> None:
    release = (m.root / "proc/sys/kernel/osrelease").read_text().strip()
    image = m.root / f"boot/initrd.img-{release}"
    image.parent.mkdir()
    image.write_bytes(b"initramfs")
    os.utime(image, (1, 1))
    (m.root / "usr/sbin").mkdir(parents=True)
    (m.root / "usr/sbin/update-initramfs").touch()
    m.with_guest_nic()
    r = m.run("apply")
    stale = ("/boot/initrd.img-6.1.0-sim is older than /etc/pcipass.early: until "
             "`update-initramfs -u` is run, a driver in the initramfs can bind a "
             "configured device before pcipassd holds it")
    assert f"warning: {stale}" in r.err
    assert f"warning: {stale}" in m.run("status").out
    check = m.run("check").out
    assert f"WARN  {stale}\n      fix: update-initramfs -u" in check
    os.utime(image)  # rebuilt
    assert "older than" not in m.run("status").out


# -- udev: devices added later ------------------------------------------------------------
@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.usefixtures("service_enabled")
def test_udev_holds_a_hot_added_device_only_while_armed(m: Machine, shell: str) -> None:
    hold_list(m, "id 8086:10d3 vfio-pci\n")
    m.sim.remove_device(NIC_B)
    m.sim.add_device(NIC_B, 0x8086, 0x10D3, driver=None, iommu_group=3)
    r = early(m, "udev", NIC_B, shell=shell)
    assert (r.stdout, m.override(NIC_B)) == ("", None), "not armed: pcipassd is stopped"
    (m.root / "run/pcipass").mkdir(parents=True, exist_ok=True)
    (m.root / "run/pcipass/armed").touch()
    r = early(m, "udev", NIC_B, shell=shell)
    assert r.stdout == "PCIPASS_RELOAD=1\n"
    assert m.override(NIC_B) == "vfio-pci"
    assert (m.root / "run/pcipass/early.log").read_text() == f"{NIC_B} udev vfio-pci none\n"
    assert early(m, "udev", NIC_E1000).stdout == "", "another ID: not held"


@pytest.mark.usefixtures("service_enabled")
def test_a_device_rebound_by_its_loaded_original_driver_on_hot_add_is_moved(m: Machine) -> None:
    m.with_guest_nic()
    m.run("apply")
    m.sim.remove_device(NIC_A)
    m.sim.add_device(NIC_A, 0x8086, 0x10D3, iommu_group=2)  # e1000e is loaded: it binds at once
    assert m.driver(NIC_A) == "e1000e"
    assert early(m, "udev", NIC_A).stdout == "PCIPASS_RELOAD=1\n"
    r = m.run("apply")  # what the rule's `systemctl reload` runs
    assert r.rc == 0, r.err
    assert (f"warning: {NIC_A} [8086:10d3]: e1000e was loaded and bound it when it was added, "
            "before udev ran; pcipassd moved it") in r.err
    assert m.driver(NIC_A) == "pci-stub"
    m.run("restore")
    assert m.driver(NIC_A) == "e1000e"


@pytest.mark.usefixtures("service_enabled")
def test_a_hot_added_device_its_refused_entry_cannot_take_goes_back(m: Machine) -> None:
    m.config('version: 1\ndevices:\n  - id: "8086:10d3"\n    count: 2\n')
    m.run("apply")
    (m.root / "run/pcipass/armed").touch()
    m.sim.unload("e1000e")
    third = "0000:00:05.0"
    m.sim.add_device(third, 0x8086, 0x10D3, driver=None, iommu_group=7)
    assert early(m, "udev", third).stdout == "PCIPASS_RELOAD=1\n"
    r = m.run("apply")
    assert r.rc == 3
    assert "count: 2, but 3 present" in r.err
    assert m.driver(third) == "e1000e", "not left without a driver"
    assert m.override(third) is None
    assert (m.driver(NIC_A), m.driver(NIC_B)) == ("pci-stub", "pci-stub"), "the others stay"


# -- the unit: exit status, status text, SIGTERM ----------------------------------------------
@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """A stand-in for systemd's notification socket: collects what is sent, answers barriers
    by closing the fd it was passed."""
    path = str(tmp_path / "notify")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(0.2)
    got: list[str] = []
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                data, ancdata, _, _ = server.recvmsg(4096, socket.CMSG_SPACE(16))
            except socket.timeout:  # TimeoutError from Python 3.10 on, not yet in 3.9
                continue
            got.append(data.decode())
            for _level, _type, fds in ancdata:
                for fd in array.array("i", fds[: len(fds) - len(fds) % 4]):
                    os.close(fd)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    yield got
    done.set()
    thread.join()
    server.close()


def test_status_text_counts_held_devices_and_refused_entries(
        m: Machine, notify_socket: list[str]) -> None:
    m.config(f"""\
        version: 1
        devices:
          - address: "{NIC_A}"
          - id: "8086:100e"
            count: 2
        """)
    assert m.run("apply").rc == 3
    assert notify_socket == [
        "STATUS=holding 1 device, 1 entry refused (/etc/pcipass.yaml:4: `pcipassd status` "
        "says why)", "BARRIER=1"]


def test_notify_returns_at_once_without_systemd() -> None:
    start = time.monotonic()
    assert notify_status("x", {}) is False
    assert notify_status("x", {"NOTIFY_SOCKET": "/nonexistent/socket"}) is False
    assert time.monotonic() - start < 5


class TermAt(Intercept):
    """The simulated kernel, with SIGTERM arriving right after the `at`-th write."""

    def __init__(self, sim: SimKernel, at: int) -> None:
        super().__init__(sim)
        self.at, self.count = at, 0

    def write(self, path: Path, data: str) -> None:
        self.sim.write(path, data)
        self.count += 1
        if self.count == self.at:
            os.kill(os.getpid(), signal.SIGTERM)


THREE_DEVICES = f"""\
    version: 1
    devices:
      - id: "8086:10d3"
        driver: vfio-pci
      - address: "{NIC_E1000}"
    """


def test_sigterm_at_every_step_of_apply_gives_everything_back(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`systemctl stop` while the unit is starting: whichever write SIGTERM follows, the device
    in hand is finished or rolled back and every device is back on its own driver."""
    writes = 0
    at = 1
    while True:
        sim = build_typical_machine(SimKernel(tmp_path / f"root-{at}"))
        machine = Machine(sim, capsys)
        machine.config(THREE_DEVICES)
        kernel = TermAt(sim, at)
        rc = main(["--root", str(sim.root), "apply"], kernel=kernel)
        if kernel.count < at:  # apply finished before the at-th write: every step was covered
            assert rc == 0
            writes = kernel.count
            break
        assert rc == 143, at
        for bdf, driver in ((NIC_A, "e1000e"), (NIC_B, "e1000e"), (NIC_E1000, "e1000")):
            assert (sim.driver_of(bdf), sim.override_of(bdf)) == (driver, None), (at, bdf)
        assert machine.state == {}, at
        assert not (sim.root / "run/pcipass/armed").exists()
        at += 1
    assert writes >= 9, "three devices, three writes each: every one was interrupted once"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


# -- waiting for udev (pcipassd/settle.py) ----------------------------------------------------
def booting(machine: Machine) -> None:
    """udev's coldplug triggered but not finished: no NIC's module is loaded yet."""
    machine.sim.udev_queue[:] = [NIC_A, NIC_B, NIC_E1000]


def test_a_boot_whose_devices_the_early_stage_held_does_not_wait_for_udev(
        cold: Machine) -> None:
    hold_list(cold, f"dev {NIC_A} 8086:10d3 pci-stub\n")
    early(cold, "boot", "early")
    booting(cold)
    cold.with_guest_nic()
    r = cold.run("apply")
    assert r.rc == 0, r.err
    assert cold.driver(NIC_A) == "pci-stub"
    assert cold.sim.settles == 0
    assert cold.driver(NIC_B) is None, "udev is still at work on the rest; apply went on"


def test_without_a_hold_list_apply_waits_for_udev_and_records_the_driver_it_loaded(
        cold: Machine) -> None:
    booting(cold)  # the first boot after install: nothing held the NIC before coldplug
    cold.with_guest_nic()
    r = cold.run("apply")
    assert r.rc == 0, r.err
    assert cold.sim.settles == 1
    assert f"{NIC_A} [8086:10d3] e1000e -> pci-stub" in r.err
    assert cold.run("restore").rc == 0
    assert cold.driver(NIC_A) == "e1000e", "given back to the driver udev loaded for it"


def test_an_entry_added_since_the_last_apply_makes_apply_wait_for_udev(
        cold: Machine) -> None:
    hold_list(cold, f"dev {NIC_A} 8086:10d3 pci-stub\n")
    early(cold, "boot", "early")
    booting(cold)
    cold.config(f'version: 1\ndevices:\n  - address: "{NIC_A}"\n  - address: "{NIC_E1000}"\n')
    r = cold.run("apply")
    assert r.rc == 0, r.err
    assert cold.sim.settles == 1
    assert f"{NIC_E1000} [8086:100e] e1000 -> pci-stub" in r.err
    assert cold.run("restore").rc == 0
    assert (cold.driver(NIC_A), cold.driver(NIC_E1000)) == ("e1000e", "e1000")
