"""What pcipassd costs every boot, on a real kernel: the same Debian guest (TCG, two e1000e and
an e1000, one e1000e held on pci-stub by address) booted with pcipassd enabled and with it
disabled, `--boots` times each (default 3), the two taking turns.

From systemd's own monotonic timestamps (`systemctl show -p ActiveEnterTimestampMonotonic`), for
each boot: when sysinit.target and multi-user.target were reached, when pcipassd.service became
active, and how long udev's coldplug trigger took (systemd-udev-trigger.service, from its start
to active). Prints the medians and the delay of each target against the disabled boots of the
same run. The disabled image is the same package with both units disabled, as `systemctl
disable pcipassd` leaves them.

    python3 bench/boot_delay.py [--boots 3]

Needs root (the harness builds a disk with mkfs.ext4 -d) and the cached base image
(/var/cache/pcipassd-vm, or $PCIPASSD_VM_CACHE): built on first use, a few minutes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from vm.harness import DEFAULT_TOPOLOGY, boot  # noqa: E402
from vm.image import build_image, ensure_base, ensure_host_tools, install_from_deb  # noqa: E402

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
"""


def _disabled(rootfs: Path) -> None:
    """The package installed, both units disabled (the package enables them)."""
    install_from_deb(rootfs)
    for link in (rootfs / "etc/systemd/system").glob("*.wants/pcipassd*.service"):
        link.unlink()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--boots", type=int, default=3)
    args = ap.parse_args()
    ensure_host_tools()
    base = ensure_base()
    seconds: dict[bool, dict[str, list[float]]] = {True: {}, False: {}}
    with tempfile.TemporaryDirectory(prefix="pcipassd-boot-delay-") as tmp:
        images = {on: build_image(CONFIG, SCRIPT, base=base, workdir=Path(tmp) / f"on-{on}",
                                  install=install_from_deb if on else _disabled,
                                  extra_files=AFTER_MULTI_USER, remove_files=(WANTED,),
                                  enable_pcipassd=on)
                  for on in (True, False)}
        for n in range(args.boots):
            for on in (True, False):
                res = boot(images[on], log_dir=Path(tmp) / f"on-{on}" / f"log-{n}")
                assert res["held"] == ("pci-stub" if on else "e1000e"), res.where()
                for unit in UNITS:
                    value = res.get(f"t.{unit}") or "0"
                    seconds[on].setdefault(unit, []).append(int(value) / 1e6)
                start = int(res.get("s.systemd-udev-trigger.service") or 0) / 1e6
                seconds[on].setdefault("coldplug", []).append(
                    seconds[on]["systemd-udev-trigger.service"][-1] - start)
    med = {on: {k: statistics.median(v) for k, v in d.items()} for on, d in seconds.items()}
    print(f"medians of {args.boots} boots each (seconds since the kernel started, TCG guest)")
    for unit in ("sysinit.target", "multi-user.target"):
        on, off = med[True][unit], med[False][unit]
        print(f"  {unit:<20} enabled {on:6.2f}  disabled {off:6.2f}  delay {on / off - 1:+.1%}")
    print(f"  pcipassd.service active at {med[True]['pcipassd.service']:.2f}")
    print(f"  udev coldplug: enabled {med[True]['coldplug']:.2f}, "
          f"disabled {med[False]['coldplug']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
