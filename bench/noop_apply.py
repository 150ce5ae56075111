"""Boot-path cost: a no-op `pcipassd apply` on an already-converged host vs `python3 -c pass`.

Builds a simulated host (tests/simkernel.py) in a temp dir, converges it once, then times the
CLI as the unit runs it (a fresh interpreter each time) against a bare interpreter start and
against `python3 -c "import yaml, jsonschema"`. Prints medians and ratios to the bare start.

    python3 bench/noop_apply.py [--runs 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from simkernel import SimKernel, build_typical_machine  # noqa: E402

from pcipassd.cli import main  # noqa: E402

# As on a host: bytecode cached after the first run (the warm-up), whatever this shell says.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def median_seconds(argv: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, cwd=REPO, capture_output=True, env=ENV)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main_bench() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    runs = ap.parse_args().runs
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        sim = build_typical_machine(SimKernel(root))
        (root / "etc").mkdir()
        (root / "etc/pcipass.yaml").write_text(
            'version: 1\ndevices:\n  - id: "8086:10d3"\n    count: 2\n    driver: vfio-pci\n')
        assert main(["--root", str(root), "apply"], kernel=sim) == 0
        py = sys.executable
        cases = {
            "python3 -c pass": [py, "-c", "pass"],
            "python3 -c 'import yaml, jsonschema'": [py, "-c", "import yaml, jsonschema"],
            "pcipassd apply (no-op)": [py, "-m", "pcipassd", "--root", str(root), "apply"],
            "pcipassd status": [py, "-m", "pcipassd", "--root", str(root), "status"],
        }
        for argv in cases.values():  # warm the page cache and write the bytecode
            subprocess.run(argv, cwd=REPO, capture_output=True, check=False, env=ENV)
        results = {name: median_seconds(argv, runs) for name, argv in cases.items()}
    base = results["python3 -c pass"]
    print(f"median of {runs} runs each, {py}")
    for name, secs in results.items():
        print(f"  {name:<40} {secs * 1000:7.1f} ms  {secs / base:5.2f}x")


if __name__ == "__main__":
    main_bench()
