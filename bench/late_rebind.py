"""The late path on a real kernel: moving 16 e1000e NICs to pci-stub and back, pcipassd against
the raw sysfs loop, in one QEMU guest (the tests/vm harness; TCG unless PCIPASSD_VM_ACCEL=kvm).

Inside the guest (as root, pci-stub loaded beforehand, bytecode and validation cache warm), each
measure is repeated (`--rounds`, default 3, the variants taking turns) and the median is kept:

- raw: per device driver_override + unbind + drivers_probe, then back (empty override, unbind
  from pci-stub, drivers_probe), for the 16 NICs and for one;
- pcipassd: `pcipassd apply` (a config naming them by address) + `pcipassd restore`, same
  devices; with `--before REF`, also the pcipassd of that commit, installed beside it; with
  `--stderr`, also this tree's with its log lines going to a file instead of journald (what
  journald's handling of them costs);
- start-up: `python3 -c pass`, `pcipassd --version` and a converged (no-op) `pcipassd apply`.

Each timed window ends with `udevadm settle`, so that each variant pays for the udev work its
own rebinds caused. The guest also reports `python3 -X importtime` and a cProfile of a
one-device apply and of the 16 devices' apply and restore (in the boot's results.log:
`importtime`, `profile`, `profile16`, `profile16r`).

Prints the medians and the ratios against the baseline measured in the same run.

    python3 bench/late_rebind.py [--before 2dfbda7] [--rounds 3] [--timeout 1500]

Needs root (the harness builds a disk with mkfs.ext4 -d) and the cached base image
(/var/cache/pcipassd-vm, or $PCIPASSD_VM_CACHE): built on first use, a few minutes.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from vm.harness import E1000E_ID, BootError, PciDevice, Topology, boot  # noqa: E402
from vm.image import (  # noqa: E402
    HarnessUnavailable,
    ImageError,
    build_image,
    ensure_base,
    ensure_host_tools,
    install_with_make,
)

COUNT = 16
NICS = tuple(
    PciDevice(name=f"nic{n}", bdf=f"0000:00:{3 + n:02x}.0", vendor_device=E1000E_ID,
              driver="e1000e", qemu_args=(
                  "-netdev", f"user,id=net-nic{n},restrict=on",
                  "-device", f"e1000e,netdev=net-nic{n},id=nic{n},bus=pcie.0,addr={3 + n:#x}"))
    for n in range(COUNT)
)
TOPOLOGY = Topology(devices=NICS)
ALL = " ".join(d.bdf for d in NICS)
ONE = NICS[0].bdf
BEFORE_DIR = "/opt/pcipassd-before"


def config(bdfs: list[str]) -> str:
    return "version: 1\ndriver: pci-stub\ndevices:\n" + "".join(
        f'  - address: "{b}"\n' for b in bdfs)


SCRIPT = r"""
set -u
modprobe pci-stub
ALL="@ALL@"
ONE="@ONE@"
VERSIONS="@VERSIONS@"
ROUNDS=@ROUNDS@
ns() { date +%s%N; }
# CPU=the milliseconds (user + system) this shell and its children have used so far: less
# disturbed than the wall clock by a loaded host. `times` runs in this shell, not a subshell.
cpu() {
    times >/tmp/times
    CPU=$(awk '{ for (i = 1; i <= NF; i++) { split($i, t, "m"); s += t[1] * 60 + t[2] } }
               END { printf "%d", s * 1000 }' /tmp/times)
}
# timed KEY CMD...: the wall-clock ns (t.KEY) and CPU ms (c.KEY) of CMD and of udev handling
# the events it caused (so that no variant leaves its aftermath to the next); rc.KEY: its status
timed() {
    local key=$1 t c rc=0
    shift
    udevadm settle
    cpu; c=$CPU; t=$(ns)
    "$@" || rc=$?
    udevadm settle
    t=$(( $(ns) - t )); cpu
    result t.$key $t; result c.$key $(( CPU - c )); result rc.$key $rc
}
raw() {
    for d in "$@"; do
        echo pci-stub > /sys/bus/pci/devices/$d/driver_override
        echo $d > /sys/bus/pci/devices/$d/driver/unbind
        echo $d > /sys/bus/pci/drivers_probe
    done
    for d in "$@"; do
        echo > /sys/bus/pci/devices/$d/driver_override
        echo $d > /sys/bus/pci/drivers/pci-stub/unbind
        echo $d > /sys/bus/pci/drivers_probe
    done
}
# pcipassd VERSION ARGS...: the installed pcipassd ("after"), the same logging to stderr instead
# of journald ("stderr"), or the one beside it ("before")
run() {
    local v=$1; shift
    case $v in
    after) pcipassd "$@" ;;
    stderr) env -u JOURNAL_STREAM -u INVOCATION_ID pcipassd "$@" ;;
    *) pcipassd-before "$@" ;;
    esac
}
cycle() {  # VERSION CONFIG: apply, then restore (whatever apply did)
    local a=0 r=0
    run "$1" --config "$2" apply || a=$?
    run "$1" restore || r=$?
    return $(( a || r ))
}
drivers() {
    for d in $ALL; do basename "$(readlink -f /sys/bus/pci/devices/$d/driver)"; done \
        | sort | uniq -c | tr -s ' \n' ' '
}
result drivers.start "$(drivers)"
for v in $VERSIONS; do  # warm: bytecode, validation cache, page cache
    cycle $v /etc/pcipass.yaml >/dev/null 2>&1; cycle $v /etc/pcipass-one.yaml >/dev/null 2>&1
    run $v --version >/dev/null
done
raw $ALL; raw $ONE
for r in $(seq $ROUNDS); do
    timed raw.16.$r raw $ALL
    timed raw.1.$r raw $ONE
    for v in $VERSIONS; do
        timed $v.16.$r cycle $v /etc/pcipass.yaml 2>/tmp/err.$v.16
        timed $v.1.$r cycle $v /etc/pcipass-one.yaml 2>/tmp/err.$v.1
    done
    timed python.$r python3 -c pass
    for v in $VERSIONS; do
        timed $v.version.$r run $v --version >/dev/null
        run $v --config /etc/pcipass.yaml apply 2>/dev/null
        timed $v.noop.$r run $v --config /etc/pcipass.yaml apply 2>/tmp/noop.$v
        run $v restore 2>/dev/null
    done
done
result drivers.end "$(drivers)"
capture importtime python3 -X importtime /usr/sbin/pcipassd --config /etc/pcipass-one.yaml apply
pcipassd restore 2>/dev/null
capture profile python3 -m cProfile -s cumtime /usr/sbin/pcipassd --config /etc/pcipass-one.yaml \
    apply
pcipassd restore 2>/dev/null
capture profile16 python3 -m cProfile -s tottime /usr/sbin/pcipassd apply
capture profile16r python3 -m cProfile -s tottime /usr/sbin/pcipassd restore
for v in $VERSIONS; do capture err.$v cat /tmp/err.$v.16 /tmp/noop.$v; done
"""


def before_installer(ref: str) -> Callable[[Path], None]:
    """make install of this tree, plus the pcipassd package of `ref` beside it."""

    def install(rootfs: Path) -> None:
        install_with_make(rootfs)
        target = rootfs / BEFORE_DIR.lstrip("/")
        target.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "pcipassd"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
        launcher = rootfs / "usr/sbin/pcipassd-before"
        launcher.write_text(f'#!/usr/bin/python3\nimport sys\nsys.path.insert(0, "{BEFORE_DIR}")'
                            "\nfrom pcipassd.cli import main\nraise SystemExit(main())\n")
        launcher.chmod(0o755)

    return install


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--before", metavar="REF", help="also time the pcipassd of this commit")
    ap.add_argument("--stderr", action="store_true",
                    help="also time this tree logging to stderr (a file) instead of journald")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=1500, help="seconds for the boot")
    args = ap.parse_args()
    versions = ["after", *(["stderr"] if args.stderr else []),
                *(["before"] if args.before else [])]
    script = (SCRIPT.replace("@ALL@", ALL).replace("@ONE@", ONE)
              .replace("@VERSIONS@", " ".join(versions)).replace("@ROUNDS@", str(args.rounds)))
    extra = {"/etc/pcipass-one.yaml": config([ONE])}
    try:
        ensure_host_tools()
        base = ensure_base()
        workdir = Path(tempfile.mkdtemp(prefix="pcipassd-late-rebind-"))
        install = before_installer(args.before) if args.before else install_with_make
        image = build_image(config([d.bdf for d in NICS]), script, extra, base=base,
                            workdir=workdir, install=install, enable_pcipassd=False)
        print(f"booting a guest with {COUNT} e1000e (logs in {workdir}) ...", flush=True)
        try:
            res = boot(image, topology=TOPOLOGY, timeout=args.timeout)
        finally:
            image.disk.unlink(missing_ok=True)
    except (HarnessUnavailable, ImageError, BootError) as exc:
        print(f"late_rebind: {exc}", file=sys.stderr)
        return 1

    def median_ms(key: str) -> float:
        """The median wall-clock time of `key`, in ms."""
        return statistics.median(int(res[f"t.{key}.{r}"]) for r in range(1, args.rounds + 1)) / 1e6

    def cpu_ms(key: str) -> float:
        """The median CPU time (user + system, children included) of `key`, in ms."""
        return statistics.median(int(res[f"c.{key}.{r}"]) for r in range(1, args.rounds + 1))

    def table(rows: list[tuple[str, str]], base: str) -> None:
        wall, cpu = median_ms(base), cpu_ms(base)
        for label, key in rows:
            t, c = median_ms(key), cpu_ms(key)
            print(f"  {label:<40} {t:8.1f} ms {t / wall:5.2f}x   cpu {c:7.0f} ms {c / cpu:5.2f}x")

    rcs = {k: v for k, v in res.results.items() if k.startswith("rc.") and v != "0"}
    print(f"guest: {res['kernel.release']}; boot to poweroff {res.seconds:.0f}s; "
          f"median of {args.rounds} rounds; wall clock, and CPU time (user + system)")
    print(f"NIC drivers at start: {res['drivers.start']}; at the end: {res['drivers.end']}")
    if rcs:
        print(f"non-zero exit codes: {rcs}\n{res.get('err.after', '')}")
    names = {"after": "pcipassd (this tree)", "stderr": "pcipassd, logging to stderr",
             "before": f"pcipassd ({args.before})"}
    for n in (16, 1):
        print(f"\n{n} device{'s' if n > 1 else ''} to pci-stub and back")
        rows = [("raw sysfs loop", f"raw.{n}")]
        rows += [(f"{names[v]} apply + restore", f"{v}.{n}") for v in versions]
        table(rows, f"raw.{n}")
    print("\nstart-up")
    rows = [("python3 -c pass", "python")]
    for v in versions:
        rows += [(f"{names[v]} --version", f"{v}.version"),
                 (f"{names[v]} apply (no-op)", f"{v}.noop")]
    table(rows, "python")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
