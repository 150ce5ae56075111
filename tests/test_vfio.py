"""Handing devices to VMs on the simulated kernel: `status --qemu` / `--libvirt`, and never
unbinding a device a VM has open (a fake /proc/PID/fd holding /dev/vfio/N)."""

from __future__ import annotations

import json

import pytest
from machine import Machine
from simkernel import NIC_A, NIC_B, NIC_E1000, SimKernel


def vm_opens(m: Machine, group: int, pid: int = 359, comm: str = "qemu-system-x86") -> None:
    """A process holding /dev/vfio/<group> open, as QEMU does while the VM runs."""
    proc = m.root / "proc" / str(pid)
    (proc / "fd").mkdir(parents=True)
    (proc / "comm").write_text(comm + "\n")
    (proc / "fd" / "0").symlink_to("/dev/null")
    (proc / "fd" / "17").symlink_to(f"/dev/vfio/{group}")


VFIO_CONFIG = f"""\
    version: 1
    driver: vfio-pci
    devices:
      - address: "{NIC_A}"
        name: guest-nic
      - address: "{NIC_B}"
    """


def test_restore_leaves_a_device_a_vm_has_open_and_names_the_vm(m: Machine) -> None:
    m.config(VFIO_CONFIG)
    m.run("apply")
    vm_opens(m, group=2)  # NIC_A's group
    r = m.run("restore")
    assert r.rc == 1
    assert (f"warning: qemu-system-x86 (pid 359) has {NIC_A} open: stop the VM first; left on "
            "vfio-pci (/etc/pcipass.yaml:4)") in r.err
    assert "1 restored, 0 failed, 1 in use" in r.err
    assert m.driver(NIC_A) == "vfio-pci", "never unbound under a running VM"
    assert not [w for w in m.writes_to("vfio-pci/unbind") if w[1] == NIC_A]
    assert m.driver(NIC_B) == "e1000e", "the rest is given back"
    assert list(m.state) == [NIC_A], "its record stays, so a later restore returns it"
    (m.root / "proc/359/fd/17").unlink()  # the VM stopped
    assert m.run("restore").rc == 0
    assert m.driver(NIC_A) == "e1000e"


def test_reload_does_not_take_a_device_from_a_vm(m: Machine) -> None:
    m.config(VFIO_CONFIG)
    m.run("apply")
    vm_opens(m, group=2)
    m.config(f'version: 1\ndevices:\n  - address: "{NIC_B}"\n    driver: vfio-pci\n')
    r = m.run("apply")
    assert r.rc == 3
    assert f"qemu-system-x86 (pid 359) has {NIC_A} open" in r.err
    assert m.driver(NIC_A) == "vfio-pci"


def test_status_qemu_prints_arguments_for_vfio_devices(m: Machine) -> None:
    m.config(VFIO_CONFIG)
    m.run("apply")
    r = m.run("status", "--qemu")
    assert r.rc == 0
    assert r.out == f"-device vfio-pci,host={NIC_A}\n-device vfio-pci,host={NIC_B}\n"


def test_status_libvirt_prints_hostdev_xml(m: Machine) -> None:
    m.config(VFIO_CONFIG)
    m.run("apply")
    r = m.run("status", "--libvirt")
    assert r.rc == 0
    assert ("<hostdev mode='subsystem' type='pci' managed='no'>\n  <source>\n"
            "    <address domain='0x0000' bus='0x00' slot='0x02' function='0x0'/>\n"
            "  </source>\n</hostdev>") in r.out
    assert f"<!-- {NIC_A} [8086:10d3] guest-nic -->" in r.out


def test_status_qemu_says_how_to_switch_a_device_on_pci_stub(m: Machine) -> None:
    m.config(f'version: 1\ndevices:\n  - address: "{NIC_E1000}"\n')
    m.run("apply")
    r = m.run("status", "--qemu")
    assert r.rc == 1
    assert r.out == (f"# {NIC_E1000} [8086:100e] is held on pci-stub, which QEMU cannot use (it "
                     "needs vfio-pci): set `driver: vfio-pci` in its entry (/etc/pcipass.yaml:3) "
                     "and run `systemctl reload pcipassd`\n")
    assert r.err == ("pcipassd: error: nothing to give QEMU: no configured device is on vfio-pci "
                     "(hint: the `#` lines above say what to change)\n")


@pytest.mark.parametrize("to", ["--qemu", "--libvirt"])
def test_status_qemu_with_nothing_to_give_says_why_in_one_line(m: Machine, to: str) -> None:
    m.config('version: 1\ndevices:\n  - address: "0000:07:00.0"\n    driver: vfio-pci\n')
    r = m.run("status", to)
    assert (r.rc, r.out) == (1, "")
    who = "QEMU" if to == "--qemu" else "libvirt"
    assert r.err == (f"pcipassd: error: nothing to give {who}: the configuration selects no "
                     "device present on this host (hint: `pcipassd status` shows why)\n")


def test_status_names_the_process_holding_a_device(m: Machine) -> None:
    m.config(VFIO_CONFIG)
    m.run("apply")
    vm_opens(m, group=2)
    m.config(f'version: 1\ndevices:\n  - address: "{NIC_B}"\n    driver: vfio-pci\n')
    m.run("apply")  # NIC_A is no longer configured, but the VM has it
    r = m.run("status")
    assert f"in use: {NIC_A} is open in qemu-system-x86 (pid 359)" in r.out.splitlines()
    assert f"{NIC_B} is open" not in r.out
    devices = {d["device"]: d for d in json.loads(m.run("status", "--json").out)["devices"]}
    assert devices[NIC_A]["in_use_by"] == ["qemu-system-x86 (pid 359)"]
    assert devices[NIC_A]["action"] == "restore"
    assert devices[NIC_B]["in_use_by"] == []


def test_functions_of_one_card_go_to_qemu_together(sim: SimKernel,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    sim.enable_iommu()
    sim.add_driver("nouveau", [(0x10DE, 0x1B80)])
    sim.add_driver("snd_hda_intel", [(0x10DE, 0x10F0)])
    sim.add_driver("vfio-pci", loaded=False, needs_iommu=True)
    sim.add_device("0000:41:00.0", 0x10DE, 0x1B80, cls=0x030000, iommu_group=9)
    sim.add_device("0000:41:00.1", 0x10DE, 0x10F0, cls=0x040300, iommu_group=9)
    m = Machine(sim, capsys)
    m.config('version: 1\ndriver: vfio-pci\ndevices:\n  - address: "41:00.*"\n')
    assert m.run("apply").rc == 0
    assert m.run("status", "--qemu").out == (
        "-device vfio-pci,host=0000:41:00.0 -device vfio-pci,host=0000:41:00.1\n")
