"""Tests of the simulated kernel itself: the tree it builds, and every binding rule (with errno)
from the kernel facts pcipassd is built on (drivers/pci/pci-driver.c, drivers/base/dd.c). Also
proves the real-/sys guard works."""

from __future__ import annotations

import errno
import os
import subprocess
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from simkernel import (
    BOOT_VGA,
    DISK,
    HOST_BRIDGE,
    NIC_A,
    NIC_B,
    NIC_E1000,
    PCIE_BRIDGE,
    RELEASE,
    TYPICAL_DEVICES,
    SimKernel,
)

from pcipassd.errors import KernelError
from pcipassd.host import Host

# the simulated kernel the other tests stand on: the same on every Python and library version
pytestmark = pytest.mark.same_everywhere

if TYPE_CHECKING:
    from conftest import SysGuard


def devpath(sim: SimKernel, bdf: str, attr: str) -> Path:
    """An attribute through the bus symlink, the way pcipassd addresses devices."""
    return sim.root / "sys/bus/pci/devices" / bdf / attr


def drvpath(sim: SimKernel, driver: str, attr: str) -> Path:
    return sim.root / "sys/bus/pci/drivers" / driver / attr


def probe_path(sim: SimKernel) -> Path:
    return sim.root / "sys/bus/pci/drivers_probe"


def expect_errno(code: int, sim: SimKernel, path: Path, data: str) -> None:
    with pytest.raises(OSError, match=os.strerror(code)) as info:
        sim.write(path, data)
    assert info.value.errno == code


# ---- the tree ---------------------------------------------------------------------------------


def test_typical_machine_tree(sim_host: SimKernel, host: Host) -> None:
    sim = sim_host
    assert sorted(os.listdir(host.pci_devices)) == sorted(TYPICAL_DEVICES)
    for bdf in TYPICAL_DEVICES:
        link = host.pci_devices / bdf
        assert not os.path.isabs(os.readlink(link))
        assert link.resolve() == sim.device_dir(bdf).resolve()
        assert link.resolve().is_relative_to(sim.root.resolve())
    disk = sim.device_dir(DISK)
    assert disk == sim.root / f"sys/devices/pci0000:00/{PCIE_BRIDGE}/{DISK}"
    nic = host.pci_devices / NIC_A
    assert (nic / "vendor").read_text() == "0x8086\n"
    assert (nic / "device").read_text() == "0x10d3\n"
    assert (nic / "subsystem_device").read_text() == "0xa01f\n"
    assert (nic / "class").read_text() == "0x020000\n"
    assert (nic / "driver_override").read_text() == "(null)\n"
    assert (nic / "modalias").read_text().startswith("pci:v00008086d000010D3sv00008086sd0000A01F")
    assert (nic / "enable").read_text() == "1\n"
    assert os.readlink(nic / "driver") == "../../../bus/pci/drivers/e1000e"
    assert (nic / "driver").resolve() == (host.pci_drivers / "e1000e").resolve()
    assert (host.pci_drivers / "e1000e" / NIC_A).resolve() == sim.device_dir(NIC_A)
    assert (host.pci_drivers / "e1000e" / "module").resolve() == sim.root / "sys/module/e1000e"
    assert (nic / "iommu_group").resolve().name == "2"
    groups = sim.root / "sys/kernel/iommu_groups"
    assert (groups / "2/devices" / NIC_A).resolve() == sim.device_dir(NIC_A)
    assert (host.pci_devices / BOOT_VGA / "boot_vga").read_text() == "1\n"
    assert not (nic / "boot_vga").exists()
    assert (sim.root / "sys/class/iommu/dmar0").is_dir()
    drivers = {bdf: sim.driver_of(bdf) for bdf in TYPICAL_DEVICES}
    assert drivers == {
        HOST_BRIDGE: None,
        BOOT_VGA: None,
        NIC_A: "e1000e",
        NIC_B: "e1000e",
        NIC_E1000: "e1000",
        PCIE_BRIDGE: "pcieport",
        DISK: "virtio-pci",
    }


def test_module_listings(sim_host: SimKernel) -> None:
    sim = sim_host
    assert (sim.root / "proc/sys/kernel/osrelease").read_text().strip() == RELEASE
    mods = sim.root / "lib/modules" / RELEASE
    assert "kernel/drivers/pci/pcieport.ko" in (mods / "modules.builtin").read_text().split()
    dep = (mods / "modules.dep").read_text()
    assert "kernel/drivers/pci/vfio_pci.ko:" in dep.split()
    assert "kernel/drivers/pci/pci_stub.ko:" in dep.split()
    assert not drvpath(sim, "vfio-pci", "bind").parent.exists()
    assert not (sim.root / "sys/module/vfio_pci").exists()
    assert (sim.root / "sys/bus/pci/drivers_probe").is_file()
    assert (sim.root / "sys/bus/pci/rescan").is_file()


def test_boot_vga_only_for_vga_class(sim: SimKernel) -> None:
    with pytest.raises(ValueError, match="VGA"):
        sim.add_device("0000:00:05.0", 0x8086, 0x10D3, boot_vga=True)


def test_named_driver_must_be_registered(sim: SimKernel) -> None:
    sim.add_driver("vfio-pci", loaded=False)
    with pytest.raises(ValueError, match="not registered"):
        sim.add_device("0000:00:05.0", 0x8086, 0x10D3, driver="vfio-pci")


# ---- unbind / bind ------------------------------------------------------------------------------


def test_unbind(sim_host: SimKernel) -> None:
    sim = sim_host
    expect_errno(errno.ENODEV, sim, drvpath(sim, "e1000", "unbind"), NIC_A)  # bound elsewhere
    sim.write(devpath(sim, NIC_A, "driver/unbind"), NIC_A + "\n")  # via the driver symlink
    assert sim.driver_of(NIC_A) is None
    assert not (drvpath(sim, "e1000e", NIC_A)).is_symlink()
    assert (sim.device_dir(NIC_A) / "enable").read_text() == "0\n"
    expect_errno(errno.ENODEV, sim, drvpath(sim, "e1000e", "unbind"), NIC_A)  # not bound
    expect_errno(errno.ENODEV, sim, drvpath(sim, "e1000e", "unbind"), "0000:09:00.0")


def test_bind_errors(sim_host: SimKernel) -> None:
    sim = sim_host
    expect_errno(errno.EBUSY, sim, drvpath(sim, "e1000e", "bind"), NIC_A)  # already bound
    expect_errno(errno.ENODEV, sim, drvpath(sim, "e1000", "bind"), NIC_A)  # no match
    expect_errno(errno.ENODEV, sim, drvpath(sim, "e1000e", "bind"), "0000:09:00.0")
    sim.write(drvpath(sim, "e1000e", "unbind"), NIC_A)
    expect_errno(errno.ENODEV, sim, drvpath(sim, "e1000", "bind"), NIC_A)
    sim.write(drvpath(sim, "e1000e", "bind"), NIC_A)
    assert sim.driver_of(NIC_A) == "e1000e"


def test_override_allows_and_blocks_bind(sim_host: SimKernel) -> None:
    sim = sim_host
    sim.write(devpath(sim, NIC_A, "driver_override"), "e1000\n")
    assert sim.driver_of(NIC_A) == "e1000e"  # the override does not unbind
    sim.write(drvpath(sim, "e1000e", "unbind"), NIC_A)
    expect_errno(errno.ENODEV, sim, drvpath(sim, "e1000e", "bind"), NIC_A)  # blocked
    sim.write(drvpath(sim, "e1000", "bind"), NIC_A)  # named by the override, no id needed
    assert sim.driver_of(NIC_A) == "e1000"
    # bound + override naming another driver: the match fails first, so ENODEV not EBUSY
    expect_errno(errno.ENODEV, sim, drvpath(sim, "e1000e", "bind"), NIC_A)


def test_probe_error_passes_through_bind(sim_host: SimKernel) -> None:
    sim = sim_host
    sim.set_probe_error("e1000e", NIC_A, errno.EIO)
    sim.write(drvpath(sim, "e1000e", "unbind"), NIC_A)
    expect_errno(errno.EIO, sim, drvpath(sim, "e1000e", "bind"), NIC_A)
    assert sim.driver_of(NIC_A) is None
    sim.write(probe_path(sim), NIC_A)  # drivers_probe: same failure, still succeeds
    assert sim.driver_of(NIC_A) is None
    sim.write(drvpath(sim, "e1000e", "unbind"), NIC_B)  # other devices are unaffected
    sim.write(drvpath(sim, "e1000e", "bind"), NIC_B)
    sim.set_probe_error("e1000e", NIC_A, None)
    sim.write(drvpath(sim, "e1000e", "bind"), NIC_A)
    assert sim.driver_of(NIC_A) == "e1000e"


def test_driver_wide_probe_error(sim: SimKernel) -> None:
    sim.add_driver("flaky", [(0x10EC, 0x8168)], probe_error=errno.ENXIO)
    sim.add_device("0000:03:00.0", 0x10EC, 0x8168)
    assert sim.driver_of("0000:03:00.0") is None
    expect_errno(errno.ENXIO, sim, drvpath(sim, "flaky", "bind"), "0000:03:00.0")


def test_vfio_needs_iommu_group(sim: SimKernel) -> None:
    sim.add_driver("vfio-pci", needs_iommu=True)
    sim.add_device("0000:03:00.0", 0x10DE, 0x1C82, driver=None)  # no IOMMU group
    sim.add_device("0000:04:00.0", 0x10DE, 0x1C82, driver=None, iommu_group=7)
    for bdf in ("0000:03:00.0", "0000:04:00.0"):
        sim.write(devpath(sim, bdf, "driver_override"), "vfio-pci")
    expect_errno(errno.EINVAL, sim, drvpath(sim, "vfio-pci", "bind"), "0000:03:00.0")
    sim.write(probe_path(sim), "0000:03:00.0")
    assert sim.driver_of("0000:03:00.0") is None
    sim.write(probe_path(sim), "0000:04:00.0")
    assert sim.driver_of("0000:04:00.0") == "vfio-pci"


# ---- driver_override / drivers_probe ----------------------------------------------------------


def test_driver_override_values(sim_host: SimKernel) -> None:
    sim = sim_host
    attr = devpath(sim, NIC_A, "driver_override")
    sim.write(attr, "vfio-pci\n")
    assert attr.read_text() == "vfio-pci\n"
    assert sim.override_of(NIC_A) == "vfio-pci"
    sim.write(attr, "\n")
    assert attr.read_text() == "(null)\n"
    assert sim.override_of(NIC_A) is None
    sim.write(sim.device_dir(NIC_A) / "driver_override", "pci-stub")  # via the real dir
    assert sim.override_of(NIC_A) == "pci-stub"
    sim.write(attr, "")
    assert sim.override_of(NIC_A) is None


def test_drivers_probe(sim_host: SimKernel) -> None:
    sim = sim_host
    sim.write(probe_path(sim), HOST_BRIDGE + "\n")  # nothing matches: succeeds, stays unbound
    assert sim.driver_of(HOST_BRIDGE) is None
    sim.write(probe_path(sim), NIC_A)  # already bound: untouched
    assert sim.driver_of(NIC_A) == "e1000e"
    expect_errno(errno.ENODEV, sim, probe_path(sim), "0000:09:00.0")
    expect_errno(errno.ENODEV, sim, probe_path(sim), "02:00.0")  # short BDF matches nothing
    sim.write(drvpath(sim, "e1000e", "unbind"), NIC_A)
    sim.write(probe_path(sim), NIC_A)  # id-table match
    assert sim.driver_of(NIC_A) == "e1000e"


def test_drivers_probe_override_unregistered_stays_unbound(sim_host: SimKernel) -> None:
    sim = sim_host
    sim.write(devpath(sim, NIC_A, "driver_override"), "vfio-pci")
    sim.write(devpath(sim, NIC_A, "driver/unbind"), NIC_A)
    sim.write(probe_path(sim), NIC_A)  # e1000e matches by id but the override blocks it
    assert sim.driver_of(NIC_A) is None


def test_first_registered_driver_wins(sim: SimKernel) -> None:
    sim.add_driver("first", [(0x1234, 0x5678)])
    sim.add_driver("second", [(0x1234, 0x5678)])
    sim.add_device("0000:03:00.0", 0x1234, 0x5678)
    assert sim.driver_of("0000:03:00.0") == "first"
    sim.set_probe_error("first", "0000:03:00.0", errno.ENODEV)
    sim.write(drvpath(sim, "first", "unbind"), "0000:03:00.0")
    sim.write(probe_path(sim), "0000:03:00.0")  # a failed probe lets the next driver try
    assert sim.driver_of("0000:03:00.0") == "second"


# ---- new_id / remove_id -------------------------------------------------------------------------


def test_new_id_grabs_every_identical_unbound_device(sim_host: SimKernel) -> None:
    sim = sim_host
    sim.modprobe("pci_stub")
    sim.write(drvpath(sim, "e1000e", "unbind"), NIC_A)
    sim.write(drvpath(sim, "e1000e", "unbind"), NIC_B)
    extra = "0000:00:05.0"
    sim.add_device(extra, 0x8086, 0x10D3, driver=None, iommu_group=8)
    sim.write(devpath(sim, extra, "driver_override"), "e1000e")  # blocks pci-stub
    sim.write(drvpath(sim, "pci-stub", "new_id"), "8086 10d3\n")
    assert sim.driver_of(NIC_A) == "pci-stub"
    assert sim.driver_of(NIC_B) == "pci-stub"  # the classic new_id accident
    assert sim.driver_of(extra) is None
    assert sim.dynamic_ids("pci-stub") == [(0x8086, 0x10D3)]
    # a twin plugged later is probed in registration order: e1000e came first and wins it
    sim.add_device("0000:00:06.0", 0x8086, 0x10D3, iommu_group=9)
    assert sim.driver_of("0000:00:06.0") == "e1000e"


def test_new_id_applies_to_devices_plugged_later(sim: SimKernel) -> None:
    sim.add_driver("pci-stub")
    sim.write(drvpath(sim, "pci-stub", "new_id"), "10de 1c82")
    sim.add_device("0000:03:00.0", 0x10DE, 0x1C82)
    assert sim.driver_of("0000:03:00.0") == "pci-stub"


def test_new_id_leaves_bound_devices(sim_host: SimKernel) -> None:
    sim = sim_host
    sim.modprobe("pci-stub")
    sim.write(drvpath(sim, "e1000e", "unbind"), NIC_A)
    sim.write(drvpath(sim, "pci-stub", "new_id"), "0x8086 0x10d3 ffffffff ffffffff")
    assert sim.driver_of(NIC_A) == "pci-stub"
    assert sim.driver_of(NIC_B) == "e1000e"


def test_new_id_and_remove_id_errors(sim_host: SimKernel) -> None:
    sim = sim_host
    sim.modprobe("pci-stub")
    new_id, remove_id = drvpath(sim, "pci-stub", "new_id"), drvpath(sim, "pci-stub", "remove_id")
    expect_errno(errno.ENODEV, sim, remove_id, "8086 10d3")  # never added
    sim.write(new_id, "8086 10d3")
    expect_errno(errno.EEXIST, sim, new_id, "8086 10d3\n")  # duplicate
    expect_errno(errno.EEXIST, sim, drvpath(sim, "e1000e", "new_id"), "8086 10d3")  # static
    for bad in ("", "8086", "zzzz 10d3", "\n"):
        expect_errno(errno.EINVAL, sim, new_id, bad)
        expect_errno(errno.EINVAL, sim, remove_id, bad)
    sim.write(remove_id, "8086 10d3\n")
    assert sim.dynamic_ids("pci-stub") == []
    expect_errno(errno.ENODEV, sim, remove_id, "8086 10d3")


def test_remove_id_does_not_unbind(sim_host: SimKernel) -> None:
    sim = sim_host
    sim.modprobe("pci-stub")
    sim.write(drvpath(sim, "e1000e", "unbind"), NIC_A)
    sim.write(drvpath(sim, "pci-stub", "new_id"), "8086 10d3")
    sim.write(drvpath(sim, "pci-stub", "remove_id"), "8086 10d3")
    assert sim.driver_of(NIC_A) == "pci-stub"


# ---- modprobe / unload ----------------------------------------------------------------------


def test_modprobe_registers_and_probes_honouring_override(sim_host: SimKernel) -> None:
    sim = sim_host
    sim.write(devpath(sim, NIC_A, "driver_override"), "vfio-pci")
    sim.write(devpath(sim, NIC_A, "driver/unbind"), NIC_A)
    sim.write(devpath(sim, HOST_BRIDGE, "driver_override"), "vfio-pci")  # unbound already
    expect_errno(errno.ENOENT, sim, drvpath(sim, "vfio-pci", "bind"), NIC_A)  # not registered
    sim.modprobe("vfio-pci")
    assert drvpath(sim, "vfio-pci", "bind").is_file()
    assert (sim.root / "sys/module/vfio_pci").is_dir()
    assert drvpath(sim, "vfio-pci", "module").resolve() == sim.root / "sys/module/vfio_pci"
    assert sim.driver_of(NIC_A) == "vfio-pci"
    assert sim.driver_of(HOST_BRIDGE) == "vfio-pci"
    assert sim.driver_of(NIC_B) == "e1000e"
    assert sim.driver_of(BOOT_VGA) is None  # unbound, but no override naming vfio-pci
    sim.modprobe("vfio_pci")  # already loaded: no-op
    sim.modprobe("pcieport")  # built in: no-op
    assert sim.modprobes == ["vfio-pci", "vfio_pci", "pcieport"]


def test_modprobe_probes_by_id(sim: SimKernel) -> None:
    sim.add_driver("igb", [(0x8086, 0x1533)], loaded=False)
    sim.add_device("0000:03:00.0", 0x8086, 0x1533)
    assert sim.driver_of("0000:03:00.0") is None
    sim.modprobe("igb")
    assert sim.driver_of("0000:03:00.0") == "igb"


def test_modprobe_unknown_module(sim_host: SimKernel) -> None:
    with pytest.raises(KernelError, match="modprobe nvidia failed: Module nvidia not found"):
        sim_host.modprobe("nvidia")


def test_unload(sim_host: SimKernel) -> None:
    sim = sim_host
    sim.modprobe("pci-stub")
    sim.write(drvpath(sim, "e1000e", "unbind"), NIC_A)
    sim.write(drvpath(sim, "pci-stub", "new_id"), "8086 10d3")
    sim.unload("pci-stub")
    assert sim.driver_of(NIC_A) is None
    assert not drvpath(sim, "pci-stub", "bind").parent.exists()
    assert not (sim.root / "sys/module/pci_stub").exists()
    expect_errno(errno.ENOENT, sim, drvpath(sim, "pci-stub", "new_id"), "8086 10d3")
    sim.modprobe("pci-stub")  # dynamic ids died with the module
    assert sim.dynamic_ids("pci-stub") == []
    assert sim.driver_of(NIC_A) is None
    with pytest.raises(ValueError, match="built in"):
        sim.unload("pcieport")


# ---- other writes ---------------------------------------------------------------------------


def test_other_writes_and_the_write_log(sim_host: SimKernel) -> None:
    sim = sim_host
    expect_errno(errno.ENOENT, sim, devpath(sim, NIC_A, "no_such_attr"), "1")
    expect_errno(errno.ELOOP, sim, devpath(sim, NIC_A, "driver"), "x")  # O_NOFOLLOW
    expect_errno(errno.EISDIR, sim, sim.device_dir(NIC_A), "x")
    sim.write(devpath(sim, NIC_A, "numa_node"), "0\n")  # a plain attribute: stored as is
    assert (sim.device_dir(NIC_A) / "numa_node").read_text() == "0\n"
    sim.write(sim.root / "sys/bus/pci/rescan", "1\n")
    assert sim.writes[-1] == ("sys/bus/pci/rescan", "1\n")
    assert sim.writes[0] == (f"sys/bus/pci/devices/{NIC_A}/no_such_attr", "1")
    with pytest.raises(RuntimeError, match="outside"):
        sim.write(sim.root / ".." / "elsewhere", "x")


# ---- the libvirt sequence and its restore ------------------------------------------------------


def test_libvirt_sequence_and_restore(sim_host: SimKernel, host: Host) -> None:
    sim = sim_host
    # bind NIC_A to vfio-pci; its identical twin NIC_B must not move
    recorded = sim.driver_of(NIC_A)
    assert not (host.pci_drivers / "vfio-pci").exists()
    sim.modprobe("vfio-pci")
    sim.write(host.pci_devices / NIC_A / "driver_override", "vfio-pci\n")
    sim.write(host.pci_devices / NIC_A / "driver" / "unbind", NIC_A)
    sim.write(host.path("/sys/bus/pci/drivers_probe"), NIC_A)
    assert os.path.basename(os.readlink(host.pci_devices / NIC_A / "driver")) == "vfio-pci"
    assert sim.driver_of(NIC_B) == "e1000e"
    # restore
    sim.write(host.pci_devices / NIC_A / "driver_override", "\n")
    sim.write(host.pci_drivers / "vfio-pci" / "unbind", NIC_A)
    sim.write(host.path("/sys/bus/pci/drivers_probe"), NIC_A)
    assert sim.driver_of(NIC_A) == recorded == "e1000e"
    assert sim.override_of(NIC_A) is None
    assert [w[0] for w in sim.writes] == [
        f"sys/bus/pci/devices/{NIC_A}/driver_override",
        f"sys/bus/pci/devices/{NIC_A}/driver/unbind",
        "sys/bus/pci/drivers_probe",
        f"sys/bus/pci/devices/{NIC_A}/driver_override",
        "sys/bus/pci/drivers/vfio-pci/unbind",
        "sys/bus/pci/drivers_probe",
    ]


def test_restore_of_a_device_that_was_unbound(sim_host: SimKernel) -> None:
    sim = sim_host
    sim.modprobe("pci-stub")
    sim.write(devpath(sim, HOST_BRIDGE, "driver_override"), "pci-stub")
    sim.write(probe_path(sim), HOST_BRIDGE)
    assert sim.driver_of(HOST_BRIDGE) == "pci-stub"
    sim.write(devpath(sim, HOST_BRIDGE, "driver_override"), "\n")
    sim.write(drvpath(sim, "pci-stub", "unbind"), HOST_BRIDGE)
    sim.write(probe_path(sim), HOST_BRIDGE)
    assert sim.driver_of(HOST_BRIDGE) is None


# ---- the guard against the real /sys ---------------------------------------------------------


def test_guard_blocks_real_sys_reads(sys_guard: SysGuard) -> None:
    # Reads only: the audit hook raises before the file is even opened.
    with pytest.raises(RuntimeError, match="real host"):
        Path("/sys/bus/pci/drivers_probe").read_text()
    with pytest.raises(RuntimeError, match="real host"):
        os.listdir("/sys/bus/pci/devices")
    with pytest.raises(RuntimeError, match="real host"):
        Path("/sys/module/vfio_pci").exists()
    with pytest.raises(RuntimeError, match="real host"):
        os.readlink("/sys/bus/pci/devices/0000:00:00.0/driver")
    assert len(sys_guard.violations) == 4
    sys_guard.violations.clear()  # these were on purpose


def test_guard_blocks_modprobe(sys_guard: SysGuard) -> None:
    # A direct call of the hook: nothing is ever spawned.
    with pytest.raises(RuntimeError, match="modprobe"):
        sys_guard.audit(
            "subprocess.Popen", ("/sbin/modprobe", ["/sbin/modprobe", "--", "x"], None, None)
        )
    with pytest.raises(RuntimeError, match="rmmod"):
        sys_guard.audit("os.system", ("sudo rmmod vfio_pci",))
    sys_guard.violations.clear()
    subprocess.run(["true"], check=True)  # other programs are fine


def test_guard_fails_a_test_that_swallows_the_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:

    tests_dir = Path(__file__).parent
    pytester.makeconftest((tests_dir / "conftest.py").read_text())
    pytester.makepyfile(
        textwrap.dedent(
            """
            from pathlib import Path

            def test_swallowed():
                try:
                    Path("/sys/bus/pci/drivers_probe").read_text()
                except RuntimeError:
                    pass

            def test_clean(sim):
                assert sim.root.is_dir()
            """
        )
    )
    paths = [str(tests_dir), str(tests_dir.parent), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*test touched the real host: open /sys/bus/pci/drivers_probe*"])
