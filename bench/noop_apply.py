"""Start-up cost: `pcipassd --version` and a no-op `pcipassd apply` on an already-converged
host vs `python3 -c pass`, and vs `python3 -c "import yaml"` (issue 16's goal: a converged
apply within 2x of importing PyYAML).

Builds a simulated host (tests/simkernel.py) in a temp dir, converges it once, then times the
CLI as the unit runs it (a fresh interpreter each time) against a bare interpreter start and
against `python3 -c "import yaml"` and `python3 -c "import yaml, jsonschema"`. Prints medians
(wall clock, and CPU time, which a loaded machine disturbs less), ratios to the bare start and
to `import yaml`.

    python3 bench/noop_apply.py [--runs 15]
"""

from __future__ import annotations

import argparse
import os
import resource
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


def timed(argv: list[str]) -> tuple[float, float]:
    """Wall-clock and CPU (user + system) seconds of one run of `argv`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, check=True, cwd=REPO, capture_output=True, env=ENV)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def medians(cases: dict[str, list[str]], runs: int) -> dict[str, tuple[float, float]]:
    """Median wall and CPU time of each case; the cases take turns, so that the load of a
    shared machine weighs on all of them alike."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    for _ in range(runs):
        for name, argv in cases.items():
            times[name].append(timed(argv))
    return {name: (statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts))
            for name, ts in times.items()}


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
            "python3 -c 'import yaml'": [py, "-c", "import yaml"],
            "python3 -c 'import yaml, jsonschema'": [py, "-c", "import yaml, jsonschema"],
            "pcipassd --version": [py, "-m", "pcipassd", "--version"],
            "pcipassd apply (no-op)": [py, "-m", "pcipassd", "--root", str(root), "apply"],
            "pcipassd status": [py, "-m", "pcipassd", "--root", str(root), "status"],
        }
        for argv in cases.values():  # warm the page cache and write the bytecode
            subprocess.run(argv, cwd=REPO, capture_output=True, check=False, env=ENV)
        results = medians(cases, runs)
    base_wall, base_cpu = results["python3 -c pass"]
    yaml_wall, yaml_cpu = results["python3 -c 'import yaml'"]
    print(f"median of {runs} runs each, {py}; wall clock and CPU (user+system) time; "
          "ratios to `python3 -c pass` and to `import yaml`")
    for name, (wall, cpu) in results.items():
        print(f"  {name:<40} {wall * 1000:7.1f} ms {wall / base_wall:5.2f}x "
              f"{wall / yaml_wall:5.2f}y   cpu {cpu * 1000:7.1f} ms {cpu / base_cpu:5.2f}x "
              f"{cpu / yaml_cpu:5.2f}y")


if __name__ == "__main__":
    main_bench()
