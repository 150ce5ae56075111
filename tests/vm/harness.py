"""Boot a pcipassd test image under QEMU (TCG) and collect the guest's report.

The guest writes its results to a second serial port (ttyS1), which QEMU
writes to ``results.log``; the kernel and systemd console (ttyS0) goes to
``console.log``.  Both live in a per-boot log directory.  See guest/lib.sh
for the guest side of the protocol.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from .image import Image

DEFAULT_TIMEOUT = 240.0
DEFAULT_MEMORY_MB = 1024
BASE_KERNEL_ARGS: tuple[str, ...] = (
    "console=ttyS0,115200",
    "root=/dev/vda",
    "rw",
    "fsck.mode=skip",
    "panic=-1",  # reboot at once on panic; with -no-reboot QEMU then exits
    "systemd.show_status=auto",
    "net.ifnames=0",
    "cryptomgr.notests",  # skip crypto self-tests: seconds under TCG
    "mitigations=off",  # CPU-bug mitigations: ~1/3 of boot time under TCG
    # the IO-APIC timer check: on a loaded host TCG's timer misses it, and with interrupt
    # remapping that panics ("timer doesn't work through Interrupt-remapped IO-APIC")
    "no_timer_check",
)

Shutdown = Literal["poweroff", "reboot", "panic", "timeout", "unknown"]


# --------------------------------------------------------------------------
# PCI topology

E1000E_ID = "8086:10d3"  # 82574L, QEMU's e1000e
E1000_ID = "8086:100e"  # 82540EM, QEMU's e1000


@dataclass(frozen=True)
class PciDevice:
    """One guest PCI device at a pinned address."""

    name: str
    bdf: str  # as the guest sees it, e.g. "0000:00:03.0"
    vendor_device: str  # "8086:10d3"
    driver: str | None  # the original driver: what the guest kernel binds by default
    qemu_args: tuple[str, ...]


def _nic(*, name: str, model: str, bdf: str, vendor_device: str, placement: str) -> PciDevice:
    return PciDevice(
        name=name,
        bdf=bdf,
        vendor_device=vendor_device,
        driver=model,  # both e1000 and e1000e bind a driver of the model's name
        qemu_args=(
            *("-netdev", f"user,id=net-{name},restrict=on"),
            *("-device", f"{model},netdev=net-{name},id={name},{placement}"),
        ),
    )


@dataclass(frozen=True)
class Topology:
    """The guest's PCI layout and IOMMU setting.  Every address is pinned."""

    devices: tuple[PciDevice, ...]
    iommu: bool = True
    # QEMU arguments that create buses/bridges but are not test devices.
    infrastructure: tuple[str, ...] = ()

    def device(self, name: str) -> PciDevice:
        for dev in self.devices:
            if dev.name == name:
                return dev
        raise KeyError(name)

    def bdf(self, name: str) -> str:
        return self.device(name).bdf

    def qemu_args(self) -> list[str]:
        args: list[str] = []
        if self.iommu:
            # intel-iommu must come before the PCI devices it translates for.
            args += ["-device", "intel-iommu,intremap=on"]
        args += self.infrastructure
        for dev in self.devices:
            args += dev.qemu_args
        return args

    def kernel_args(self) -> list[str]:
        return ["intel_iommu=on"] if self.iommu else ["intel_iommu=off"]

    def without_iommu(self) -> Topology:
        return replace(self, iommu=False)

    def with_devices(self, *devices: PciDevice, infrastructure: Sequence[str] = ()) -> Topology:
        return replace(
            self,
            devices=self.devices + devices,
            infrastructure=self.infrastructure + tuple(infrastructure),
        )

    def with_bridge_pair(self) -> Topology:
        """Add two e1000 behind a PCIe-to-PCI bridge: they share one IOMMU group.

        pcie-root-port 00:06.0 -> pcie-pci-bridge 01:00.0 -> e1000 02:01.0, 02:02.0
        """
        return self.with_devices(
            _nic(
                name="br-e1000-a",
                model="e1000",
                bdf="0000:02:01.0",
                vendor_device=E1000_ID,
                placement="bus=pci-br0,addr=0x1",
            ),
            _nic(
                name="br-e1000-b",
                model="e1000",
                bdf="0000:02:02.0",
                vendor_device=E1000_ID,
                placement="bus=pci-br0,addr=0x2",
            ),
            infrastructure=(
                *("-device", "pcie-root-port,id=rp-br0,bus=pcie.0,addr=0x6,chassis=1,slot=1"),
                *("-device", "pcie-pci-bridge,id=pci-br0,bus=rp-br0,addr=0x0"),
            ),
        )


#: The default layout.  Devices q35 always has: 00:00.0 host bridge,
#: 00:1f.0 ISA/LPC, 00:1f.2 AHCI, 00:1f.3 SMBus.  The boot disk is virtio-blk
#: at 00:02.0 (added by :func:`boot`, not a test device).
DEFAULT_TOPOLOGY = Topology(
    devices=(
        _nic(
            name="e1000e-a",
            model="e1000e",
            bdf="0000:00:03.0",
            vendor_device=E1000E_ID,
            placement="bus=pcie.0,addr=0x3",
        ),
        _nic(
            name="e1000e-b",
            model="e1000e",
            bdf="0000:00:04.0",
            vendor_device=E1000E_ID,
            placement="bus=pcie.0,addr=0x4",
        ),
        _nic(
            name="e1000",
            model="e1000",
            bdf="0000:00:05.0",
            vendor_device=E1000_ID,
            placement="bus=pcie.0,addr=0x5",
        ),
    ),
)
DISK_BDF = "0000:00:02.0"


# --------------------------------------------------------------------------
# results


class BootError(AssertionError):
    """The guest did not finish its scenario cleanly.  The message names the logs."""


@dataclass
class BootResult:
    console: str = field(repr=False)
    results: dict[str, str] = field(repr=False)
    log_dir: Path
    console_path: Path
    results_path: Path
    seconds: float
    shutdown: Shutdown
    returncode: int | None
    done: bool  # the guest runner reached @@PCIPASS-DONE
    action: str | None  # what the runner asked for: "poweroff" or "reboot"
    qemu_cmdline: list[str] = field(default_factory=list, repr=False)

    def __getitem__(self, key: str) -> str:
        try:
            return self.results[key]
        except KeyError:
            raise KeyError(f"guest reported no {key!r}; console: {self.console_path}") from None

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.results.get(key, default)

    def rc(self, key: str) -> int:
        """Exit code of a ``capture KEY ...`` in the guest."""
        return int(self[f"{key}.rc"])

    def driver(self, bdf: str, prefix: str = "pci") -> str:
        """Driver bound to ``bdf`` per the guest's ``pci_inventory`` ("none" if unbound)."""
        return self[f"{prefix}.{bdf}.driver"]

    def iommu_group(self, bdf: str, prefix: str = "pci") -> str:
        return self[f"{prefix}.{bdf}.group"]

    def pci_devices(self, prefix: str = "pci") -> list[str]:
        """BDFs seen by ``pci_inventory``, sorted."""
        start, end = f"{prefix}.", ".id"
        return sorted(
            k[len(start) : -len(end)]
            for k in self.results
            if k.startswith(start) and k.endswith(end)
        )

    @property
    def scenario_rc(self) -> int:
        return int(self["scenario.rc"])

    def where(self) -> str:
        return f"console log: {self.console_path}, results: {self.results_path}"


_BEGIN = re.compile(r"^@@PCIPASS-BLOB-BEGIN (\S+)$")
_END = re.compile(r"^@@PCIPASS-BLOB-END (\S+)$")
_RESULT = re.compile(r"^@@PCIPASS-RESULT ([^=\s]+)=(.*)$")
_DONE = re.compile(r"^@@PCIPASS-DONE action=(\S+)$")


def parse_results(text: str) -> tuple[dict[str, str], str | None]:
    """Parse the result channel.  Returns (results, done-action or None).

    Keys reported again (e.g. on a later boot of the same disk) overwrite.
    """
    results: dict[str, str] = {}
    action: str | None = None
    blob_key: str | None = None
    blob: list[str] = []
    for raw in text.splitlines():
        line = raw.rstrip("\r")
        if blob_key is not None:
            m = _END.match(line)
            if m and m.group(1) == blob_key:
                data = base64.b64decode("".join(blob), validate=False)
                results[blob_key] = data.decode("utf-8", errors="replace")
                blob_key, blob = None, []
            else:
                blob.append(line.strip())
            continue
        if m := _BEGIN.match(line):
            blob_key, blob = m.group(1), []
        elif m := _RESULT.match(line):
            results[m.group(1)] = m.group(2)
        elif m := _DONE.match(line):
            action = m.group(1)
    return results, action


def _classify(console: str, timed_out: bool) -> Shutdown:
    if timed_out:
        return "timeout"
    if "Kernel panic" in console:
        return "panic"
    if "reboot: Power down" in console:
        return "poweroff"
    if "reboot: Restarting system" in console:
        return "reboot"
    return "unknown"


# --------------------------------------------------------------------------
# booting


def accel() -> str:
    """QEMU accelerator: TCG unless ``$PCIPASSD_VM_ACCEL`` says otherwise."""
    return os.environ.get("PCIPASSD_VM_ACCEL", "tcg")


def cpu_model() -> str:
    """Guest CPU (``$PCIPASSD_VM_CPU`` overrides).  Intel, to go with the VT-d IOMMU:
    TCG's "max" on an AMD host would otherwise show an AMD CPU, and pcipassd's IOMMU
    check reasons from the CPU vendor."""
    return os.environ.get("PCIPASSD_VM_CPU", "max,vendor=GenuineIntel")


def qemu_command(
    image: Image,
    *,
    topology: Topology,
    console_path: Path,
    results_path: Path,
    qemu_args: Sequence[str] = (),
    kernel_args: Sequence[str] = (),
    memory_mb: int = DEFAULT_MEMORY_MB,
    cpus: int | None = None,
) -> list[str]:
    acc = accel()
    machine = "q35,kernel-irqchip=split" if acc == "kvm" else "q35"
    append = [*BASE_KERNEL_ARGS, *topology.kernel_args(), *kernel_args]
    options = [
        ("-machine", machine),
        ("-accel", acc),
        ("-cpu", cpu_model()),
        ("-m", str(memory_mb)),
        ("-smp", str(cpus or int(os.environ.get("PCIPASSD_VM_CPUS", "2")))),
        ("-display", "none"),
        ("-serial", f"file:{console_path}"),  # guest ttyS0: console
        ("-serial", f"file:{results_path}"),  # guest ttyS1: result channel
        ("-kernel", str(image.kernel)),
        ("-initrd", str(image.initrd)),
        ("-append", " ".join(append)),
    ]
    disk = [
        ("-drive", f"file={image.disk},format=raw,if=none,id=disk0,cache=unsafe"),
        ("-device", "virtio-blk-pci,drive=disk0,bus=pcie.0,addr=0x2"),  # DISK_BDF
    ]
    return [
        "qemu-system-x86_64",
        "-nodefaults",
        "-no-user-config",
        "-no-reboot",
        *(arg for pair in options for arg in pair),
        *topology.qemu_args(),
        *(arg for pair in disk for arg in pair),
        *qemu_args,
    ]


def _default_log_dir(image: Image) -> Path:
    n = 1
    while (image.workdir / f"boot-{n}").exists():
        n += 1
    return image.workdir / f"boot-{n}"


def boot(
    image: Image,
    *,
    topology: Topology = DEFAULT_TOPOLOGY,
    qemu_args: Sequence[str] = (),
    kernel_args: Sequence[str] = (),
    timeout: float = DEFAULT_TIMEOUT,
    log_dir: Path | None = None,
    memory_mb: int = DEFAULT_MEMORY_MB,
    check: bool = True,
) -> BootResult:
    """Boot ``image`` once, wait for QEMU to exit (guest poweroff or reboot).

    With ``check`` (the default), raise :class:`BootError` unless the guest's
    runner finished and the machine shut down as it asked; on timeout QEMU is
    killed first.  Either way the logs stay in ``log_dir`` (default:
    ``<image.workdir>/boot-N``) and the error message gives their paths.
    """
    log_dir = log_dir or _default_log_dir(image)
    log_dir.mkdir(parents=True, exist_ok=True)
    console_path = log_dir / "console.log"
    results_path = log_dir / "results.log"
    stderr_path = log_dir / "qemu.stderr"
    for p in (console_path, results_path):
        p.write_bytes(b"")
    cmd = qemu_command(
        image,
        topology=topology,
        console_path=console_path,
        results_path=results_path,
        qemu_args=qemu_args,
        kernel_args=kernel_args,
        memory_mb=memory_mb,
    )
    (log_dir / "qemu.cmdline").write_text(" ".join(cmd) + "\n")
    if shutil.which(cmd[0]) is None:
        raise BootError(f"{cmd[0]} not found")

    start = time.monotonic()
    timed_out = False
    with stderr_path.open("wb") as err:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True
        )
        try:
            returncode: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            returncode = None
    seconds = time.monotonic() - start

    console = console_path.read_text(errors="replace")
    results, action = parse_results(results_path.read_text(errors="replace"))
    shutdown = _classify(console, timed_out)
    result = BootResult(
        console=console,
        results=results,
        log_dir=log_dir,
        console_path=console_path,
        results_path=results_path,
        seconds=seconds,
        shutdown=shutdown,
        returncode=returncode,
        done=action is not None,
        action=action,
        qemu_cmdline=cmd,
    )
    (log_dir / "summary.txt").write_text(
        f"seconds={seconds:.1f} shutdown={shutdown} returncode={returncode} "
        f"done={result.done} action={action}\n"
    )
    if check:
        problem = None
        if timed_out:
            problem = f"guest timed out after {timeout:.0f}s (QEMU killed)"
        elif returncode != 0:
            qemu_err = stderr_path.read_text(errors="replace").strip()
            problem = f"QEMU exited with {returncode}: {qemu_err[-2000:]}"
        elif shutdown == "panic":
            problem = "guest kernel panicked"
        elif not result.done:
            problem = f"guest test runner did not finish (shutdown: {shutdown})"
        elif action != shutdown:
            problem = f"guest asked for {action} but the machine did {shutdown}"
        if problem:
            raise BootError(f"{problem}; {result.where()}")
    return result
