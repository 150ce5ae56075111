"""Boot-path cost of the early hold: `pcipassd-early boot early` vs a bare `sh -c :`.

Builds a simulated host (tests/simkernel.py) with N PCI functions, a hold list naming half of
them, and times the real script (with the simulated root as its prefix) holding them, each run
starting from cleared overrides. Prints medians and ratios to the bare shell start, for dash
(Debian's /bin/sh) and, where installed, busybox sh (the initramfs's shell).

    python3 bench/early_hold.py [--runs 15] [--devices 16 256]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "early" / "pcipassd-early"
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from simkernel import SimKernel  # noqa: E402


def machine(root: Path, count: int) -> list[str]:
    sim = SimKernel(root)
    sim.add_driver("e1000e", [(0x8086, 0x10D3)], loaded=False)
    bdfs = [f"0000:{n // 32:02x}:{n % 32:02x}.0" for n in range(count)]
    for bdf in bdfs:
        sim.add_device(bdf, 0x8086, 0x10D3, iommu_group=int(bdf[5:7], 16) * 32 + int(bdf[8:10], 16))
    (root / "proc/cmdline").write_text("root=/dev/vda ro quiet\n")
    held = bdfs[::2]
    (root / "etc").mkdir()
    (root / "etc/pcipass.early").write_text(
        "# generated\n" + "".join(f"dev {b} 8086:10d3 vfio-pci\n" for b in held))
    return held


def median_seconds(argv: list[str], runs: int, env: dict[str, str], reset: list[Path]) -> float:
    times = []
    for _ in range(runs):
        for path in reset:
            path.write_text("(null)\n")
        start = time.perf_counter()
        subprocess.run(argv, check=True, env=env, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--devices", type=int, nargs="+", default=[16, 256])
    args = ap.parse_args()
    shells = [["sh"]] + ([["busybox", "sh"]] if shutil.which("busybox") else [])
    print(f"median of {args.runs} runs each")
    for count in args.devices:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "root"
            held = machine(root, count)
            env = {"PATH": os.environ["PATH"], "PCIPASS_ROOT": str(root)}
            overrides = [root / "sys/bus/pci/devices" / b / "driver_override" for b in held]
            log = root / "run/pcipass/early.log"
            for shell in shells:
                base = median_seconds([*shell, "-c", ":"], args.runs, env, [])
                hold = median_seconds([*shell, str(SCRIPT), "boot", "early"], args.runs, env,
                                      overrides)
                log.unlink(missing_ok=True)
                name = " ".join(shell)
                print(f"  {count:4} devices, {len(held):4} held, {name:<10} "
                      f"{name} -c ':' {base * 1000:6.2f} ms  pcipassd-early {hold * 1000:6.2f} ms  "
                      f"{hold / base:5.2f}x")


if __name__ == "__main__":
    main()
