"""pcipassd's dracut module (early/dracut/90pcipassd) on the simulated kernel: its hooks are
sourced by a shell as dracut's init sources them, with the simulated root as the prefix; its
module-setup.sh install() runs with dracut's helpers stubbed, which record what lands in the
image. The real boot (dracut's init, a systemd initrd, a real kernel) is the VM test's."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from machine import Machine
from simkernel import NIC_A, NIC_B, set_unit_state
from test_early import SCRIPT, SHELLS, WHY, early, hold_list, kernel_probes

# the dracut module's shell code: the same on every Python and library version
pytestmark = pytest.mark.same_everywhere

MODULE = Path(__file__).resolve().parent.parent / "early" / "dracut" / "90pcipassd"
HOLD = MODULE / "pcipassd-hold.sh"
RELEASE = MODULE / "pcipassd-release.sh"


def installed(machine: Machine) -> None:
    """What the image carries: pcipassd-early where the hooks look for it."""
    target = machine.root / "usr/lib/pcipassd/pcipassd-early"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(SCRIPT, target)


def source(machine: Machine, hook: Path, shell: str = "sh",
           newroot: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Source `hook` as dracut's init does (`. hook`, then on with the next): prints `sourced`
    after it unless the hook ended the shell."""
    env = {"PATH": os.environ["PATH"], "PCIPASS_ROOT": str(machine.root)}
    if newroot is not None:
        env["NEWROOT"] = str(newroot)
    return subprocess.run([*shell.split(), "-c", '. "$0"; echo sourced', str(hook)], env=env,
                          capture_output=True, text=True, check=False, timeout=30)


def cmdline(machine: Machine, text: str) -> None:
    (machine.root / "proc/cmdline").write_text(text + "\n")


# -- the cmdline hook (shell init) -------------------------------------------------------------
@pytest.mark.parametrize("shell", SHELLS)
def test_cmdline_hook_holds_the_device_before_rd_driver_pre_loads_its_driver(
        cold: Machine, shell: str) -> None:
    installed(cold)
    hold_list(cold, f"dev {NIC_A} 8086:10d3 vfio-pci\n")
    r = source(cold, HOLD, shell)
    assert (r.returncode, r.stdout, r.stderr) == (0, "sourced\n", "")
    cold.sim.modprobe("e1000e")  # parse-kernel.sh, hook 01: rd.driver.pre=e1000e
    assert cold.driver(NIC_A) is None, "e1000e never bound the held device"
    assert cold.driver(NIC_B) == "e1000e", "and did bind its identical twin"
    assert (cold.root / "run/pcipass/early.log").read_text() == f"{NIC_A} initramfs vfio-pci none\n"
    assert not (cold.root / "run/pcipass/armed").exists(), "armed by pre-pivot, if on"


@pytest.mark.parametrize("off", ["pcipassd=off", "rd.pcipassd=off"])
def test_cmdline_hook_holds_nothing_when_switched_off(cold: Machine, off: str) -> None:
    installed(cold)
    hold_list(cold, f"dev {NIC_A} 8086:10d3 vfio-pci\n")
    cmdline(cold, f"root=/dev/vda ro {off} quiet")
    r = source(cold, HOLD)
    assert (r.returncode, r.stdout, r.stderr) == (0, "sourced\n", "")
    cold.sim.modprobe("e1000e")
    assert cold.driver(NIC_A) == "e1000e"
    assert not (cold.root / "run/pcipass").exists()


def test_rd_pcipassd_off_leaves_the_real_root_stage_on(cold: Machine) -> None:
    """`rd.` is dracut's prefix for the initramfs only: pcipassd-early.service still holds."""
    hold_list(cold, f"dev {NIC_A} 8086:10d3 vfio-pci\n")
    cmdline(cold, "root=/dev/vda ro rd.pcipassd=off")
    assert early(cold, "boot", "initramfs").returncode == 0
    assert cold.override(NIC_A) is None
    assert early(cold, "boot", "early").returncode == 0
    assert cold.override(NIC_A) == "vfio-pci"


def test_cmdline_hook_without_pcipassd_early_in_the_image_does_nothing(cold: Machine) -> None:
    hold_list(cold, f"dev {NIC_A} 8086:10d3 vfio-pci\n")
    r = source(cold, HOLD)
    assert (r.returncode, r.stdout, r.stderr) == (0, "sourced\n", "")
    assert cold.override(NIC_A) is None


def test_hook_00_runs_before_dracut_s_own_cmdline_hooks_load_any_module(
        cold: Machine, tmp_path: Path) -> None:
    """dracut's shell init sources the cmdline hooks in glob order (dracut-lib.sh source_hook):
    ours, 00-pcipassd-hold.sh, before 00-watchdog.sh and 01-parse-kernel.sh, which modprobe.
    Each stand-in records the held device's driver_override when its turn comes."""
    installed(cold)
    hold_list(cold, f"dev {NIC_A} 8086:10d3 vfio-pci\n")
    hooks = tmp_path / "hooks/cmdline"
    hooks.mkdir(parents=True)
    shutil.copy(HOLD, hooks / "00-pcipassd-hold.sh")  # as inst_hook cmdline 00 names it
    override = cold.root / f"sys/bus/pci/devices/{NIC_A}/driver_override"
    order = tmp_path / "order"
    for name in ("00-watchdog.sh", "01-parse-kernel.sh"):
        (hooks / name).write_text(
            f'read -r o <"{override}"; echo "{name} ${{o:-none}}" >>"{order}"\n')
    env = {"PATH": os.environ["PATH"], "PCIPASS_ROOT": str(cold.root)}
    r = subprocess.run(["sh", "-c", 'for f in "$0"/*.sh; do . "$f"; done', str(hooks)], env=env,
                       capture_output=True, text=True, check=False, timeout=30)
    assert (r.returncode, r.stderr) == (0, "")
    assert order.read_text().splitlines() == ["00-watchdog.sh vfio-pci",
                                              "01-parse-kernel.sh vfio-pci"]


# -- the pre-pivot hook: off means off ---------------------------------------------------------
def initramfs_boot(machine: Machine) -> None:
    """The cmdline hook holds, then the initramfs's udev loads e1000e."""
    installed(machine)
    hold_list(machine, f"dev {NIC_A} 8086:10d3 vfio-pci\n")
    source(machine, HOLD)
    machine.sim.modprobe("e1000e")


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("state", [s for s in WHY if s != "enabled"])
def test_pre_pivot_gives_back_when_pcipassd_is_off_in_the_real_root(
        cold: Machine, state: str, shell: str, tmp_path: Path) -> None:
    initramfs_boot(cold)
    real = tmp_path / "sysroot"  # $NEWROOT
    set_unit_state(real, state)
    kmsg = cold.root / "dev/kmsg"
    kmsg.parent.mkdir(parents=True, exist_ok=True)
    kmsg.write_text("")
    r = source(cold, RELEASE, shell, newroot=real)
    assert (r.returncode, r.stdout, r.stderr) == (0, "sourced\n", "")
    assert kmsg.read_text() == (f"pcipassd-early: pcipassd.service is {WHY[state]}: gave back "
                                f"{NIC_A} (held at the initramfs stage)\n"), "in the kernel log"
    kernel_probes(cold)
    assert cold.driver(NIC_A) == "e1000e", "its original driver, loaded, took it at once"
    assert not (cold.root / "run/pcipass/armed").exists(), "the udev rule holds nothing"


def test_pre_pivot_keeps_the_hold_and_arms_when_pcipassd_is_enabled(
        cold: Machine, tmp_path: Path) -> None:
    initramfs_boot(cold)
    real = tmp_path / "sysroot"
    set_unit_state(real, "enabled")
    r = source(cold, RELEASE, newroot=real)
    assert (r.returncode, r.stdout, r.stderr) == (0, "sourced\n", "")
    assert cold.override(NIC_A) == "vfio-pci"
    assert cold.driver(NIC_A) is None
    assert (cold.root / "run/pcipass/armed").exists()


# -- the systemd initrd unit -------------------------------------------------------------------
def unit_settings(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out.setdefault(key, []).extend(value.split())
    return out


def test_initrd_unit_holds_before_any_module_load_and_udevd() -> None:
    unit = unit_settings(MODULE / "pcipassd-initrd.service")
    assert {"systemd-modules-load.service", "dracut-pre-udev.service",
            "systemd-udevd.service"} <= set(unit["Before"])
    assert unit["DefaultDependencies"] == ["no"]
    assert unit["ExecStart"] == ["/usr/lib/pcipassd/pcipassd-early", "boot", "initramfs"]
    assert set(unit["ConditionKernelCommandLine"]) == {"!pcipassd=off", "!rd.pcipassd=off"}


# -- module-setup.sh: what lands in the image --------------------------------------------------
STUBS = """
inst_simple() { echo "inst_simple $*"; }
inst_multiple() { echo "inst_multiple $*"; }
inst_hook() { echo "inst_hook $1 $2 ${3#"$moddir"/}"; }
dracut_module_included() { [ "$1" = "$INCLUDED" ]; }
systemctl_stub() { echo "systemctl $*"; }
"""


def module_setup(tmp_path: Path, *, systemd: bool, hold: bool = True) -> list[str]:
    """Run module-setup.sh's check and install with dracut's helpers stubbed; the calls they
    got, one per line (the sysroot is `tmp_path/sysroot`, as `dracut --sysroot` sets it)."""
    sysroot = tmp_path / "sysroot"
    (sysroot / "etc").mkdir(parents=True, exist_ok=True)
    if hold:
        (sysroot / "etc/pcipass.early").write_text(f"dev {NIC_A} 8086:10d3 vfio-pci\n")
    setup = tmp_path / "module-setup.sh"
    setup.write_text((MODULE / "module-setup.sh").read_text().replace("@LIBDIR@",
                                                                      "/usr/lib/pcipassd"))
    env = {"PATH": os.environ["PATH"], "dracutsysrootdir": str(sysroot),
           "moddir": str(MODULE), "initdir": "/tmp/initramfs",
           "systemdsystemunitdir": "/usr/lib/systemd/system", "SYSTEMCTL": "systemctl_stub",
           "INCLUDED": "systemd" if systemd else "none"}
    script = f'{STUBS}\n. "$0"\ncheck || echo "check $?"\ninstall\necho "install $?"'
    r = subprocess.run(["bash", "-c", script, str(setup)], env=env, capture_output=True,
                       text=True, check=False, timeout=30)
    assert r.stderr == ""
    return r.stdout.splitlines()


COMMON = ["inst_simple /etc/pcipass.early /etc/pcipass.early",
          "inst_simple /usr/lib/pcipassd/pcipassd-early /usr/lib/pcipassd/pcipassd-early",
          "inst_multiple mkdir rm"]


def test_module_setup_installs_the_cmdline_hook_00_under_shell_init(tmp_path: Path) -> None:
    assert module_setup(tmp_path, systemd=False) == [
        *COMMON, "inst_hook cmdline 00 pcipassd-hold.sh",
        "inst_hook pre-pivot 10 pcipassd-release.sh", "install 0"]


def test_module_setup_installs_the_unit_in_a_systemd_initrd(tmp_path: Path) -> None:
    assert module_setup(tmp_path, systemd=True) == [
        *COMMON,
        f"inst_simple {MODULE}/pcipassd-initrd.service "
        "/usr/lib/systemd/system/pcipassd-initrd.service",
        "systemctl -q --root /tmp/initramfs add-wants sysinit.target pcipassd-initrd.service",
        "inst_hook pre-pivot 10 pcipassd-release.sh", "install 0"]


def test_module_setup_installs_nothing_without_a_hold_list(tmp_path: Path) -> None:
    assert module_setup(tmp_path, systemd=False, hold=False) == ["install 0"]
