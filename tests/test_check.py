"""`pcipassd check` never sends an admin the wrong way: the kernel's own build options, a host
that is itself a VM, the IOMMU vendor from the IOMMU, and virt-host-validate's basics."""

from __future__ import annotations

import gzip
import json

import pytest
from machine import Machine
from simkernel import SimKernel, build_typical_machine

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


def test_a_kernel_without_the_iommu_driver_is_not_a_firmware_problem(
        sim: SimKernel, capsys: pytest.CaptureFixture[str]) -> None:
    """A QEMU guest whose kernel lacks CONFIG_AMD_IOMMU on an AMD CPU."""
    host(sim, cpu="AuthenticAMD", dmi="QEMU", flags="fpu svm hypervisor",
         config=INTEL_CONFIG.replace("CONFIG_AMD_IOMMU=y", "# CONFIG_AMD_IOMMU is not set"))
    rc, out = check(sim, capsys)
    assert rc == 1
    assert "FAIL  this kernel was built without CONFIG_AMD_IOMMU" in out
    assert "boot a kernel built with CONFIG_AMD_IOMMU=y" in out
    assert "FAIL  this host is a virtual machine (QEMU) without a virtual IOMMU" in out
    assert "-device intel-iommu,intremap=on" in out
    assert "firmware setup" not in out, "no firmware advice for a VM or a kernel problem"


def test_the_iommu_vendor_comes_from_the_iommu_not_the_cpu(
        sim: SimKernel, capsys: pytest.CaptureFixture[str]) -> None:
    """A QEMU guest with an AMD-reporting CPU and an Intel vIOMMU gets Intel advice."""
    build_typical_machine(sim)  # Intel IOMMU: dmar0, DMAR table, groups
    host(sim, cpu="AuthenticAMD", dmi="QEMU", cmdline="root=/dev/vda intel_iommu=on")
    _, out = check(sim, capsys)
    assert "OK    IOMMU vendor: intel (from IOMMU unit dmar0)" in out
    assert "OK    this host is a virtual machine (QEMU) with a virtual IOMMU" in out
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
    assert "WARN  vfio-pci: this kernel was built without CONFIG_VFIO_PCI" in out


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
    found = {f["what"]: f["level"] for f in data["findings"]}
    assert found["CPU virtualization: svm"] == "OK"
    assert found["/dev/kvm: KVM is available"] == "OK"
