"""`pcipassd check` never sends an admin the wrong way: the kernel's own build options, a host
that is itself a VM, the IOMMU vendor from the IOMMU, and virt-host-validate's basics."""

from __future__ import annotations

import gzip
import json

import pytest
from machine import Machine
from simkernel import NIC_A, SimKernel, build_typical_machine

INTEL_CONFIG = """\
CONFIG_INTEL_IOMMU=y
# CONFIG_INTEL_IOMMU_DEFAULT_ON is not set
CONFIG_AMD_IOMMU=y
CONFIG_IRQ_REMAP=y
CONFIG_VFIO_PCI=m
CONFIG_PCI_STUB=m
"""


def host(sim: SimKernel, *, cpu: str = "GenuineIntel", cmdline: str = "root=/dev/sda1 ro",
         config: str | None = INTEL_CONFIG, dmi: str = "Dell Inc.",
         flags: str = "fpu vmx") -> SimKernel:
    root = sim.root
    (root / "proc/cpuinfo").write_text(f"vendor_id\t: {cpu}\nflags\t\t: {flags}\n")
    (root / "proc/cmdline").write_text(cmdline + "\n")
    if config is not None:
        (root / "boot").mkdir(exist_ok=True)
        (root / "boot/config-6.1.0-sim").write_text(config)
    (root / "sys/class/dmi/id").mkdir(parents=True, exist_ok=True)
    (root / "sys/class/dmi/id/sys_vendor").write_text(dmi + "\n")
    return sim


def check(sim: SimKernel, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    r = Machine(sim, capsys).run("check")
    return r.rc, r.out


def test_a_kernel_without_either_iommu_driver_is_not_a_firmware_problem(
        sim: SimKernel, capsys: pytest.CaptureFixture[str]) -> None:
    """A QEMU guest whose kernel lacks both IOMMU drivers: no vIOMMU can work in it."""
    host(sim, cpu="AuthenticAMD", dmi="QEMU", flags="fpu svm hypervisor",
         config=INTEL_CONFIG.replace("CONFIG_AMD_IOMMU=y", "# CONFIG_AMD_IOMMU is not set")
         .replace("CONFIG_INTEL_IOMMU=y", "# CONFIG_INTEL_IOMMU is not set"))
    rc, out = check(sim, capsys)
    assert rc == 1
    assert "FAIL  this kernel was built without CONFIG_INTEL_IOMMU and CONFIG_AMD_IOMMU" in out
    assert "boot a kernel built with CONFIG_INTEL_IOMMU=y or CONFIG_AMD_IOMMU=y" in out
    assert "FAIL  this host is a virtual machine (qemu) without a virtual IOMMU" in out
    assert "firmware setup" not in out, "no firmware advice for a VM or a kernel problem"


def test_a_guest_on_an_amd_cpu_can_have_an_intel_viommu(
        sim: SimKernel, capsys: pytest.CaptureFixture[str]) -> None:
    """The guest's vIOMMU can be Intel or AMD whatever the CPU: a kernel with the Intel
    driver only is fine on an AMD CPU, and the fix names the vIOMMU it has a driver for."""
    host(sim, cpu="AuthenticAMD", dmi="QEMU", flags="fpu svm hypervisor",
         config=INTEL_CONFIG.replace("CONFIG_AMD_IOMMU=y", "# CONFIG_AMD_IOMMU is not set"))
    rc, out = check(sim, capsys)
    assert rc == 1  # no vIOMMU yet
    assert "built without CONFIG_AMD_IOMMU" not in out
    assert "OK    kernel built with CONFIG_INTEL_IOMMU" in out
    lines = out.splitlines()
    vm = lines.index("FAIL  this host is a virtual machine (qemu) without a virtual IOMMU")
    assert lines[vm + 1] == (
        "      fix: give the VM a virtual IOMMU: QEMU `-machine q35` `-device intel-iommu,"
        "intremap=on`, libvirt `<iommu model='intel'/>` in <devices> (this kernel has the "
        "intel IOMMU driver only)")
    assert "amd-iommu" not in out
    assert "IOMMU vendor: amd" not in out, "the CPU says nothing of a guest's IOMMU"


def test_a_guest_with_an_amd_viommu_on_an_intel_cpu(
        sim: SimKernel, capsys: pytest.CaptureFixture[str]) -> None:
    """QEMU `-device amd-iommu` on an Intel CPU: AMD advice only, and passthrough can work."""
    build_typical_machine(sim)
    host(sim, cpu="GenuineIntel", dmi="QEMU", flags="fpu vmx hypervisor",
         cmdline="root=/dev/vda", config=INTEL_CONFIG)
    (sim.root / "sys/class/iommu/dmar0").unlink()
    (sim.root / "sys/firmware/acpi/tables/DMAR").unlink()
    sim.enable_iommu("amd")
    rc, out = check(sim, capsys)
    assert "OK    IOMMU vendor: amd (from IOMMU unit ivhd0)" in out
    assert "OK    kernel built with CONFIG_AMD_IOMMU" in out
    assert "OK    this host is a virtual machine (qemu) with a virtual IOMMU" in out
    assert "intel_iommu" not in out and "CONFIG_INTEL_IOMMU" not in out
    assert rc == 0, out


@pytest.mark.parametrize(("files", "name"), [
    ({"sys_vendor": "QEMU", "product_name": "Standard PC (Q35 + ICH9, 2009)"}, "qemu"),
    ({"sys_vendor": "QEMU", "clocksource": "kvm-clock tsc hpet acpi_pm"}, "kvm"),
    ({"sys_vendor": "innotek GmbH", "product_name": "VirtualBox",
      "clocksource": "kvm-clock tsc"}, "oracle"),
    ({"sys_vendor": "VMware, Inc.", "product_name": "VMware Virtual Platform"}, "vmware"),
    ({"sys_vendor": "Microsoft Corporation", "product_name": "Virtual Machine"}, "microsoft"),
    ({"sys_vendor": "Amazon EC2"}, "amazon"),
    ({"sys_vendor": "Google", "product_name": "Google Compute Engine"}, "google"),
    ({"hypervisor": "xen"}, "xen"),
    ({"flags": "fpu hypervisor"}, "vm-other"),
])
def test_the_hypervisor_is_named_as_systemd_detect_virt_names_it(
        sim: SimKernel, capsys: pytest.CaptureFixture[str], files: dict[str, str],
        name: str) -> None:
    host(sim, dmi="", flags=files.get("flags", "fpu vmx hypervisor"))
    dmi = sim.root / "sys/class/dmi/id"
    for f in ("sys_vendor", "product_name"):
        if f in files:
            (dmi / f).write_text(files[f] + "\n")
    if "clocksource" in files:
        clocks = sim.root / "sys/devices/system/clocksource/clocksource0"
        clocks.mkdir(parents=True)
        (clocks / "available_clocksource").write_text(files["clocksource"] + "\n")
    if "hypervisor" in files:
        (sim.root / "sys/hypervisor").mkdir()
        (sim.root / "sys/hypervisor/type").write_text(files["hypervisor"] + "\n")
    _, out = check(sim, capsys)
    assert f"FAIL  this host is a virtual machine ({name}) without a virtual IOMMU" in out
    assert "(a hypervisor)" not in out


def test_bare_metal_is_no_virtual_machine(sim: SimKernel,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    host(sim, dmi="Dell Inc.")
    _, out = check(sim, capsys)
    assert "virtual machine" not in out


def test_the_iommu_vendor_comes_from_the_iommu_not_the_cpu(
        sim: SimKernel, capsys: pytest.CaptureFixture[str]) -> None:
    """A QEMU guest with an AMD-reporting CPU and an Intel vIOMMU gets Intel advice."""
    build_typical_machine(sim)  # Intel IOMMU: dmar0, DMAR table, groups
    host(sim, cpu="AuthenticAMD", dmi="QEMU", cmdline="root=/dev/vda intel_iommu=on")
    _, out = check(sim, capsys)
    assert "OK    IOMMU vendor: intel (from IOMMU unit dmar0)" in out
    assert "OK    this host is a virtual machine (qemu) with a virtual IOMMU" in out
    assert "OK    kernel command line has intel_iommu=on" in out
    assert "amd_iommu" not in out and "AMD" not in out


def test_no_fix_says_fix_the_findings_above_and_no_ok_line_says_unknown(
        sim: SimKernel, capsys: pytest.CaptureFixture[str]) -> None:
    host(sim, cmdline="root=/dev/sda1 intel_iommu=on")
    (sim.root / "sys/firmware/acpi/tables").mkdir(parents=True)
    (sim.root / "sys/firmware/acpi/tables/DMAR").write_bytes(b"DMAR")
    rc, out = check(sim, capsys)
    assert rc == 1
    assert "fix the findings above" not in out
    assert "unknown" not in out
    off = out.split("FAIL  IOMMU off: /sys/kernel/iommu_groups is empty\n")[1].splitlines()[0]
    assert off.startswith("      fix: ") and "VT-d" in off


def test_intel_iommu_on_by_default_needs_no_kernel_argument(
        sim: SimKernel, capsys: pytest.CaptureFixture[str]) -> None:
    host(sim, config=INTEL_CONFIG.replace("# CONFIG_INTEL_IOMMU_DEFAULT_ON is not set",
                                          "CONFIG_INTEL_IOMMU_DEFAULT_ON=y"))
    (sim.root / "sys/firmware/acpi/tables").mkdir(parents=True)
    (sim.root / "sys/firmware/acpi/tables/DMAR").write_bytes(b"DMAR")
    _, out = check(sim, capsys)
    assert "lacks intel_iommu=on" not in out
    assert "OK    Intel IOMMU on by default in this kernel" in out


def test_the_kernel_config_is_read_from_proc_config_gz_first(
        sim: SimKernel, capsys: pytest.CaptureFixture[str]) -> None:
    host(sim, config=None)
    (sim.root / "proc/config.gz").write_bytes(gzip.compress(
        INTEL_CONFIG.replace("CONFIG_IRQ_REMAP=y", "# CONFIG_IRQ_REMAP is not set").encode()))
    _, out = check(sim, capsys)
    assert "OK    kernel built with CONFIG_INTEL_IOMMU" in out
    assert "WARN  this kernel was built without CONFIG_IRQ_REMAP" in out


def test_missing_stub_drivers_are_named_by_their_build_option(
        sim: SimKernel, capsys: pytest.CaptureFixture[str]) -> None:
    host(sim, config=INTEL_CONFIG.replace("CONFIG_VFIO_PCI=m", "# CONFIG_VFIO_PCI is not set"))
    _, out = check(sim, capsys)
    assert "WARN  this kernel has no vfio-pci driver (built without CONFIG_VFIO_PCI)" in out
    assert "      fix: boot a kernel built with CONFIG_VFIO_PCI=m" in out


def test_virtualization_basics_as_virt_host_validate_checks_them(
        sim: SimKernel, capsys: pytest.CaptureFixture[str]) -> None:
    host(sim, flags="fpu sse")
    _, out = check(sim, capsys)
    assert "WARN  the CPU shows no vmx/svm: KVM cannot run VMs here" in out
    assert "WARN  no /dev/kvm: KVM is not loaded" in out
    assert "WARN  no /dev/vfio/vfio: VFIO is not loaded" in out
    (sim.root / "dev/vfio").mkdir(parents=True)
    (sim.root / "dev/vfio/vfio").touch()
    (sim.root / "dev/kvm").touch()
    host(sim, flags="fpu svm")
    data = json.loads(Machine(sim, capsys).run("check", "--json").out)
    found = {f["message"]: f["level"] for f in data["findings"]}
    assert found["CPU virtualization: svm"] == "OK"
    assert found["/dev/kvm: KVM is available"] == "OK"


def test_check_fails_when_the_config_asks_for_a_driver_the_kernel_lacks(
        sim_host: SimKernel, capsys: pytest.CaptureFixture[str]) -> None:
    """`check` never says "passthrough can work" where `plan` says "will fail": one function
    decides, and both say it in the same words."""
    host(sim_host, cmdline="root=/dev/vda intel_iommu=on",
         config=INTEL_CONFIG.replace("CONFIG_VFIO_PCI=m", "# CONFIG_VFIO_PCI is not set"))
    modules_dep = sim_host.root / "lib/modules/6.1.0-sim/modules.dep"
    modules_dep.write_text("".join(line + "\n" for line in modules_dep.read_text().splitlines()
                                   if "vfio" not in line))
    m = Machine(sim_host, capsys)
    r = m.run("check")
    assert r.rc == 0, "no config: nothing asks for vfio-pci, a WARN only"
    why = "this kernel has no vfio-pci driver (built without CONFIG_VFIO_PCI)"
    assert f"WARN  {why}" in r.out
    m.config(f'version: 1\ndevices:\n  - address: "{NIC_A}"\n    driver: vfio-pci\n')
    r = m.run("check")
    assert r.rc == 1
    assert f"FAIL  {why}, and the configuration binds devices to it" in r.out
    assert "      fix: boot a kernel built with CONFIG_VFIO_PCI=m" in r.out
    assert r.out.splitlines()[-1] == "passthrough cannot work until the FAILs are fixed"
    plan = m.run("plan")
    assert plan.rc == 1
    assert f"will fail: {why} (see `pcipassd check`)" in plan.out
    data = json.loads(m.run("check", "--json").out)
    assert (data["ok"], data["exit"], data["passthrough_possible"]) == (False, 1, False)
    assert {"level": "FAIL", "message": f"{why}, and the configuration binds devices to it",
            "hint": "boot a kernel built with CONFIG_VFIO_PCI=m"} in data["findings"]


def test_check_with_an_invalid_config_reports_the_host_and_exits_2(
        sim_host: SimKernel, capsys: pytest.CaptureFixture[str]) -> None:
    host(sim_host, cmdline="root=/dev/vda intel_iommu=on")
    m = Machine(sim_host, capsys)
    m.config('version: 1\ndevices:\n  - adress: "0000:00:02.0"\n')
    r = m.run("check")
    assert r.rc == 2
    assert "OK    IOMMU on: 7 IOMMU groups" in r.out
    assert "/etc/pcipass.yaml:3:5: devices[0].adress: unknown key 'adress'" in r.out
    data = json.loads(m.run("check", "--json").out)
    assert data["exit"] == 2
    assert [p["path"] for p in data["problems"]] == ["devices[0].adress", "devices[0]"]


@pytest.mark.parametrize(("cmdline", "proc_modules", "why"), [
    ("root=/dev/vda intel_iommu=on nomodule", True, "the kernel command line has nomodule"),
    ("root=/dev/vda intel_iommu=on", False, "this kernel was built without module support"),
    ("root=/dev/vda intel_iommu=on module_blacklist=pci_stub,vfio_pci", True,
     "the kernel command line has module_blacklist=vfio_pci"),
])
def test_no_modprobe_advice_where_no_module_can_be_loaded(
        sim_host: SimKernel, capsys: pytest.CaptureFixture[str], cmdline: str,
        proc_modules: bool, why: str) -> None:
    """pci-stub and vfio-pci are modules here, and this kernel cannot load them."""
    host(sim_host, cmdline=cmdline)
    if not proc_modules:
        (sim_host.root / "proc/modules").unlink()
    m = Machine(sim_host, capsys)
    m.config(f'version: 1\ndevices:\n  - address: "{NIC_A}"\n    driver: vfio-pci\n')
    r = m.run("check")
    assert r.rc == 1
    advice = [line.strip() for line in r.out.splitlines() if "modprobe" in line]
    # module_blacklist= keeps those two modules out, not KVM's
    assert advice == (["fix: modprobe kvm_intel"] if "blacklist" in cmdline else [])
    assert "OK    vfio-pci: module" not in r.out
    assert ("FAIL  this kernel has no vfio-pci driver it can load: it is a module, and "
            f"{why}") in r.out
    assert "WARN  no /dev/kvm: KVM is not loaded" in r.out
    assert "will fail: this kernel has no vfio-pci driver it can load" in m.run("plan").out


def test_dev_kvm_present_without_the_vmx_flag_is_no_contradiction(
        sim: SimKernel, capsys: pytest.CaptureFixture[str]) -> None:
    host(sim, flags="fpu sse hypervisor")
    (sim.root / "dev").mkdir()
    (sim.root / "dev/kvm").touch()
    _, out = check(sim, capsys)
    assert "OK    /dev/kvm: KVM is available" in out
    assert "KVM cannot run" not in out
    assert "OK    CPU virtualization: in use by KVM (/dev/kvm)" in out


def test_no_modprobe_kvm_before_the_cpu_offers_virtualization(
        sim: SimKernel, capsys: pytest.CaptureFixture[str]) -> None:
    host(sim, flags="fpu sse")
    _, out = check(sim, capsys)
    assert "WARN  the CPU shows no vmx/svm: KVM cannot run VMs here" in out
    kvm = out.split("WARN  no /dev/kvm: KVM is not loaded\n")[1].splitlines()[0]
    assert kvm == "      fix: enable VT-x / AMD-V first (see above)"
