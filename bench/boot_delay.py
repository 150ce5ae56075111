"""What pcipassd costs every boot, on a real kernel: the same Debian guest (TCG, two e1000e and
an e1000, one e1000e held on pci-stub by address) booted with pcipassd enabled and with it
disabled, `--boots` times each (default 3), the two taking turns.

From systemd's own monotonic timestamps (`systemctl show -p ActiveEnterTimestampMonotonic`), for
each boot: when sysinit.target and multi-user.target were reached, when pcipassd.service became
active, and how long udev's coldplug trigger took (systemd-udev-trigger.service, from its start
to active), and the CPU time pcipassd's two units took (systemd's CPUUsageNSec). Prints the
medians and the delay of each target against the disabled boots of the same run. The disabled
image is the same package with both units disabled, as `systemctl disable pcipassd` leaves
them. Each image boots once first, not counted: the hold list is written then, and the
initramfs rebuilt with it, as pcipassd tells the admin to, so that later boots hold the device
from the initramfs on, as a host's do. With `--before REF`, the package of that commit is
booted too, in the same rounds.

    python3 bench/boot_delay.py [--boots 3] [--before REF]

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

from pkgbuild import build_deb  # noqa: E402
from vm.harness import DEFAULT_TOPOLOGY, boot  # noqa: E402
from vm.image import (  # noqa: E402
    build_image,
    ensure_base,
    ensure_host_tools,
    install_debs,
    install_from_deb,
)

HELD = DEFAULT_TOPOLOGY.bdf("e1000e-b")
# The harness's scenario unit is wanted by multi-user.target, and a target waits for what it
# wants: here graphical.target wants it, after multi-user.target, so that multi-user.target's
# timestamp is the boot's own.
WANTED = "/etc/systemd/system/multi-user.target.wants/pcipass-test.service"
AFTER_MULTI_USER = {
    "/etc/systemd/system/pcipass-test.service.d/after.conf": "[Unit]\nAfter=multi-user.target\n",
    "/etc/systemd/system/graphical.target.d/pcipass-test.conf":
        "[Unit]\nWants=pcipass-test.service\n",
}
CONFIG = f'version: 1\ndevices:\n  - address: "{HELD}"\n'
UNITS = ("sysinit.target", "multi-user.target", "pcipassd.service",
         "systemd-udev-trigger.service")
SCRIPT = r"""
# this scenario runs after multi-user.target here (see _after_multi_user)
for unit in sysinit.target multi-user.target pcipassd.service systemd-udev-trigger.service; do
    result "t.$unit" "$(systemctl show -p ActiveEnterTimestampMonotonic --value "$unit")"
    result "s.$unit" "$(systemctl show -p InactiveExitTimestampMonotonic --value "$unit")"
done
result held "$(basename "$(readlink /sys/bus/pci/devices/""" + HELD + r"""/driver)")"
# After the warm-up boot's apply wrote the hold list, the initramfs is rebuilt, as pcipassd
# tells the admin to: from the next boot on the device is held from the initramfs on, before
# the initramfs's e1000e can bind it (else the service moves it late at every boot, waiting for
# udev's coldplug to finish first). Only the warm-up boot does this; it is not counted.
initrd=/boot/initrd.img-$(uname -r)
if [ -e /etc/pcipass.early ] && [ /etc/pcipass.early -nt "$initrd" ]; then
    update-initramfs -u >/dev/null 2>&1
fi
capture journal journalctl -b -u pcipassd -o cat --no-pager
# the CPU time the units took (systemd's accounting; "[not set]" without it)
for unit in pcipassd.service pcipassd-early.service; do
    result "cpu.$unit" "$(systemctl show -p CPUUsageNSec --value "$unit")"
done
"""


def _disabled(rootfs: Path) -> None:
    """The package installed, both units disabled (the package enables them)."""
    install_from_deb(rootfs)
    for link in (rootfs / "etc/systemd/system").glob("*.wants/pcipassd*.service"):
        link.unlink()


def _package_of(ref: str, tmp: Path) -> Callable[[Path], None]:
    """The .deb of commit `ref` (a git worktree of it, built as the working tree's is)."""
    tree = tmp / "before-tree"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), ref],
                   check=True, capture_output=True)

    def install(rootfs: Path) -> None:
        install_debs(rootfs, [build_deb(repo=tree)])

    return install


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--boots", type=int, default=3)
    ap.add_argument("--before", metavar="REF", help="also boot the package of this commit")
    args = ap.parse_args()
    ensure_host_tools()
    base = ensure_base()
    seconds: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="pcipassd-boot-delay-") as name:
        tmp = Path(name)
        installers: dict[str, Callable[[Path], None]] = {
            "enabled": install_from_deb, "disabled": _disabled}
        if args.before:
            installers[f"before ({args.before})"] = _package_of(args.before, tmp)
        images = {}
        for n, (variant, install) in enumerate(installers.items()):
            images[variant] = build_image(CONFIG, SCRIPT, base=base, workdir=tmp / f"v{n}",
                                          install=install, extra_files=AFTER_MULTI_USER,
                                          remove_files=(WANTED,),
                                          enable_pcipassd=variant != "disabled")
        # One boot each first, not counted: the first boot writes the hold list, rebuilds the
        # initramfs with it (SCRIPT) and does systemd's first-boot work. From then on each disk
        # boots the initramfs the guest built, as a host does (the harness's is the image's).
        for round_ in range(-1, args.boots):
            for n, (variant, image) in enumerate(images.items()):
                res = boot(image, log_dir=tmp / f"v{n}" / f"log{round_}", timeout=900)
                on = variant != "disabled"
                assert res["held"] == ("pci-stub" if on else "e1000e"), res.where()
                if round_ < 0:
                    images[variant] = image.with_guest_initrd()
                    continue
                if on:  # held from the initramfs on: e1000e never bound it
                    assert "the initramfs loaded" not in res["journal"], res["journal"]
                times = seconds.setdefault(variant, {})
                for unit in UNITS:
                    times.setdefault(unit, []).append(int(res.get(f"t.{unit}") or 0) / 1e6)
                start = int(res.get("s.systemd-udev-trigger.service") or 0) / 1e6
                times.setdefault("coldplug", []).append(
                    times["systemd-udev-trigger.service"][-1] - start)
                started = int(res.get("s.pcipassd.service") or 0) / 1e6
                times.setdefault("unit", []).append(
                    times["pcipassd.service"][-1] - started if on else 0.0)
                for unit in ("pcipassd.service", "pcipassd-early.service"):
                    used = res.get(f"cpu.{unit}") or ""
                    times.setdefault(f"cpu.{unit}", []).append(
                        int(used) / 1e9 if used.isdigit() and on else 0.0)
        if args.before:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force",
                            str(tmp / "before-tree")], check=False)
    med = {v: {k: statistics.median(x) for k, x in d.items()} for v, d in seconds.items()}
    print(f"medians of {args.boots} boots each after one warm-up boot "
          "(seconds since the kernel started, TCG guest)")
    off = med["disabled"]
    for variant, median in med.items():
        print(f"  {variant}:")
        for unit in ("sysinit.target", "multi-user.target"):
            delay = f"  delay {median[unit] / off[unit] - 1:+.1%}" if variant != "disabled" else ""
            print(f"    {unit:<20} {median[unit]:6.2f}{delay}")
        if variant != "disabled":
            print(f"    pcipassd.service     active at {median['pcipassd.service']:.2f}, "
                  f"{median['unit']:.2f} s from its start, "
                  f"{median['cpu.pcipassd.service']:.2f} s CPU "
                  f"(pcipassd-early.service {median['cpu.pcipassd-early.service']:.2f} s)")
        print(f"    udev coldplug        {median['coldplug']:.2f} s")
    print("each boot (sysinit.target / multi-user.target), in the order they ran:")
    for variant, times in seconds.items():
        print(f"  {variant + ':':<20}", "  ".join(
            f"{a:.2f}/{b:.2f}" for a, b in zip(times["sysinit.target"],
                                                times["multi-user.target"])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
