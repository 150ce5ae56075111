"""What preflight costs, and that a converged `apply` pays none of it (issue 17 §2).

Builds the simulated two-function card of tests/test_preflight.py (a GPU with a boot
framebuffer in its BAR 0 and its HDMI audio, both configured for vfio-pci, an initramfs-tools
host whose image lists the early hold), converges it once, then times as fresh interpreters
(bytecode cached): a no-op `apply`, `status --json` and `check`, with this checkout's pcipassd
and, with `--before DIR`, another checkout's (e.g. main's worktree) on the same host. Also
in-process: the median of preflight() alone, with and without listing the initramfs.

    python3 bench/preflight_cost.py [--runs 11] [--before /work/main]
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

from simkernel import SimKernel  # noqa: E402
from test_preflight import DRIVERS, FB, HOLD, card  # noqa: E402

from pcipassd.cli import main  # noqa: E402

ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def timed(argv: list[str], tree: Path) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=False, cwd=tree, capture_output=True,
                   env={**ENV, "PYTHONPATH": str(tree)})
    return time.perf_counter() - start


def host(root: Path) -> SimKernel:
    sim = SimKernel(root)
    card(sim)
    sim.add_framebuffer(FB, 0x30_0000, "BOOTFB", "simpledrm")
    (root / "etc").mkdir()
    (root / "etc/pcipass.yaml").write_text(
        'version: 1\ndriver: vfio-pci\ndevices:\n  - address: "0000:03:00.*"\n')
    for tool, text in (("usr/sbin/update-initramfs", "#!/bin/sh\n"),
                       ("usr/bin/lsinitramfs", "#!/bin/sh\ncat <<'EOF'\n"
                        + "\n".join(DRIVERS + HOLD) + "\nEOF\n")):
        (root / tool).parent.mkdir(parents=True, exist_ok=True)
        (root / tool).write_text(text)
        (root / tool).chmod(0o755)
    (root / "boot").mkdir(exist_ok=True)
    (root / "boot/initrd.img-6.1.0-sim").write_bytes(b"image")
    return sim


def main_bench() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=11)
    ap.add_argument("--before", type=Path, help="another checkout of pcipassd to compare with")
    opts = ap.parse_args()
    trees = {"this": REPO, **({"before": opts.before.resolve()} if opts.before else {})}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        sim = host(root)
        assert main(["--root", str(root), "apply"], kernel=sim) == 0
        py = sys.executable
        verbs = {"apply (no-op)": ["apply"], "status --json": ["status", "--json"],
                 "check": ["check"]}
        cases = {(t, v): [py, "-m", "pcipassd", "--root", str(root), *argv]
                 for t in trees for v, argv in verbs.items()}
        cases.update({(t, "python3 -c pass"): [py, "-c", "pass"] for t in trees})
        for (t, _), argv in cases.items():  # warm up, write the bytecode
            timed(argv, trees[t])
        times: dict[tuple[str, str], list[float]] = {k: [] for k in cases}
        for _ in range(opts.runs):
            for key, argv in cases.items():
                times[key].append(timed(argv, trees[key[0]]))
        from pcipassd.context import Context  # noqa: PLC0415
        from pcipassd.inventory import scan  # noqa: PLC0415
        from pcipassd.preflight import preflight  # noqa: PLC0415

        ctx = Context(argparse.Namespace(root=str(root), config=None), sim)
        inventory = scan(ctx.host)
        critical = ctx.judgment(inventory).critical
        wanted = [(inventory.devices[b], "vfio-pci") for b in ("0000:03:00.0", "0000:03:00.1")]
        inproc = {}
        for look in (True, False):
            runs = []
            for _ in range(opts.runs):
                start = time.perf_counter()
                preflight(ctx.host, wanted, critical, look_inside=look)
                runs.append(time.perf_counter() - start)
            inproc[look] = statistics.median(runs)
    print(f"median of {opts.runs} runs, {py}, fresh interpreters (wall clock)")
    for (tree, verb), ts in times.items():
        print(f"  {tree:<7} {verb:<16} {statistics.median(ts) * 1000:7.1f} ms")
    print(f"in-process preflight() of 2 functions: {inproc[True] * 1000:.1f} ms with the "
          f"initramfs listed, {inproc[False] * 1000:.1f} ms without")


if __name__ == "__main__":
    main_bench()
