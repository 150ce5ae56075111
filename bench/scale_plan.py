"""How `pcipassd plan` scales: N devices and N address entries, for N = 256, 1024, 4096.

Builds a static fake host per N (a sysfs tree as the kernel lays it out, no simulated kernel
behind it): SR-IOV-like, every slot one IOMMU group of 8 functions (a PF and its VFs) bound to
ixgbevf, and a config with one `address:` entry per function (with `expect:` on every fourth),
all to pci-stub. `plan` checks the config as every verb but `validate` does: pcipassd's quick
check of the schema, and jsonschema only for a file that check is unsure of.

Times `plan` in-process (after imports: the parts, then the whole verb with its output going to
/dev/null) and as a fresh interpreter (`python3 -m pcipassd plan`, bytecode cached), against a
bare `python3 -c pass`. Prints medians, the cost per device, and the ratio of the per-device
cost at the largest N to the smallest (1.0 is linear).

    python3 bench/scale_plan.py [--runs 5] [--sizes 256 1024 4096]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pcipassd.cli import main  # noqa: E402

# As on a host: bytecode cached after the first run (the warm-up), whatever this shell says.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def bdf_of(n: int) -> str:
    return f"0000:{n // 256:02x}:{(n % 256) >> 3:02x}.{n & 7}"


def build_host(root: Path, count: int) -> None:
    """A static sysfs tree with `count` functions and a config selecting each by address."""
    sysfs = root / "sys"
    pci = sysfs / "bus/pci"
    for d in ("devices", "drivers/ixgbevf", "drivers/pci-stub"):
        (pci / d).mkdir(parents=True, exist_ok=True)
    (pci / "drivers_probe").write_text("")
    groups = sysfs / "kernel/iommu_groups"
    entries = []
    for n in range(count):
        bdf = bdf_of(n)
        dev = sysfs / "devices" / f"pci{bdf[:7]}" / bdf
        dev.mkdir(parents=True)
        vendor, device = (0x8086, 0x10FB) if n % 8 == 0 else (0x8086, 0x10ED)  # PF, VFs
        for name, text in (("vendor", f"0x{vendor:04x}"), ("device", f"0x{device:04x}"),
                           ("class", "0x020000"), ("driver_override", "(null)")):
            (dev / name).write_text(text + "\n")
        group = groups / str(n // 8)
        (group / "devices").mkdir(parents=True, exist_ok=True)
        (group / "devices" / bdf).symlink_to(os.path.relpath(dev, group / "devices"))
        (dev / "iommu_group").symlink_to(os.path.relpath(group, dev))
        driver = pci / "drivers/ixgbevf"
        (dev / "driver").symlink_to(os.path.relpath(driver, dev))
        (driver / bdf).symlink_to(os.path.relpath(dev, driver))
        (pci / "devices" / bdf).symlink_to(os.path.relpath(dev, pci / "devices"))
        expect = f'\n    expect: "{vendor:04x}:{device:04x}"' if n % 4 == 0 else ""
        entries.append(f'  - address: "{bdf}"{expect}\n')
    (root / "etc").mkdir()
    (root / "etc/pcipass.yaml").write_text("version: 1\ndevices:\n" + "".join(entries))
    (root / "proc").mkdir()


def median(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def quiet_plan(root: Path) -> None:
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        rc = main(["--root", str(root), "plan"])
    assert rc == 0, f"plan exited {rc}"


def parts(root: Path) -> dict[str, Callable[[], object]]:
    """The stages of `plan`, each timed on its own (inputs computed once, beforehand)."""
    from pcipassd.config import load_config  # noqa: PLC0415
    from pcipassd.host import Host  # noqa: PLC0415
    from pcipassd.inventory import scan  # noqa: PLC0415
    from pcipassd.plan import make_plan  # noqa: PLC0415
    from pcipassd.policy import enforce  # noqa: PLC0415
    from pcipassd.selection import select  # noqa: PLC0415

    host = Host(root)
    config = load_config(host, full=False)
    inventory = scan(host)
    selection = enforce(select(config, inventory), inventory, {})
    return {
        "load config": lambda: load_config(host, full=False),
        "scan sysfs": lambda: scan(host),
        "select": lambda: select(config, inventory),
        "enforce (groups)": lambda: enforce(select(config, inventory), inventory, {}),
        "make_plan": lambda: make_plan(selection, inventory, {}),
    }


def main_bench() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    args = ap.parse_args()
    py = sys.executable
    bare = [py, "-c", "pass"]
    subprocess.run(bare, check=True, env=ENV)
    base = median(lambda: subprocess.run(bare, check=True, env=ENV), args.runs)
    print(f"median of {args.runs} runs each, {py}; python3 -c pass: {base * 1000:.1f} ms")
    per_device: dict[int, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for count in args.sizes:
            root = Path(tmp) / f"root{count}"
            build_host(root, count)
            quiet_plan(root)  # warm the page cache
            stages = {name: median(fn, args.runs) for name, fn in parts(root).items()}
            whole = median(lambda r=root: quiet_plan(r), args.runs)  # type: ignore[misc]
            argv = [py, "-m", "pcipassd", "--root", str(root), "plan"]
            subprocess.run(argv, cwd=REPO, env=ENV, capture_output=True, check=True)
            fresh = median(lambda a=argv: subprocess.run(  # type: ignore[misc]
                a, cwd=REPO, env=ENV, capture_output=True, check=True), args.runs)
            per_device[count] = (whole / count, (fresh - base) / count)
            print(f"\nN = {count} devices, {count} address entries")
            for name, secs in stages.items():
                print(f"  {name:<28} {secs * 1000:9.1f} ms")
            print(f"  {'plan, in-process':<28} {whole * 1000:9.1f} ms  "
                  f"{whole / count * 1e6:7.1f} us/device")
            print(f"  {'plan, fresh interpreter':<28} {fresh * 1000:9.1f} ms  "
                  f"{fresh / base:6.2f}x python3 -c pass; beyond its start "
                  f"{(fresh - base) * 1000:.1f} ms, {(fresh - base) / count * 1e6:.1f} us/device")
    lo, hi = min(per_device), max(per_device)
    if lo != hi:
        print(f"\nper-device cost {hi}/{lo}: in-process "
              f"{per_device[hi][0] / per_device[lo][0]:.2f}x, fresh interpreter (beyond start) "
              f"{per_device[hi][1] / per_device[lo][1]:.2f}x  (1.00x = linear)")


if __name__ == "__main__":
    main_bench()
