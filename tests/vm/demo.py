"""See pcipassd work on a real kernel: ``make demo`` (as root).

Boots a QEMU guest twice (TCG, about five minutes; the first run also builds the
cached Debian image, a few minutes) with two identical e1000e NICs and an e1000,
where /etc/pcipass.yaml hands one e1000e to vfio-pci and the e1000 to pci-stub.
The first boot applies the config and rebuilds the guest's initramfs
(``update-initramfs -u``) so that it carries the hold list. The second boot, from
that initramfs and with the kernel logging every probe attempt, shows that e1000e
never probed the held NIC (it did probe its twin), what pcipassd did, then
``systemctl stop pcipassd`` and what that gave back.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python3 tests/vm/demo.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vm.harness import DEFAULT_TOPOLOGY, BootError, boot
from vm.image import (
    HarnessUnavailable,
    ImageError,
    build_image,
    ensure_base,
    ensure_host_tools,
    install_from_deb,
)

NICS = [dev.bdf for dev in DEFAULT_TOPOLOGY.devices]

CONFIG = f"""\
version: 1
driver: vfio-pci
devices:
  # one of the two identical Intel 82574L, by address
  - address: "{DEFAULT_TOPOLOGY.bdf("e1000e-b")}"
    expect: "8086:10d3"
    name: guest-nic
  # the 82540EM, by ID, to pci-stub
  - id: "8086:100e"
    count: 1
    driver: pci-stub
    name: spare-nic
"""

SCRIPT = f"""
nics() {{ for d in {" ".join(NICS)}; do lspci -nnk -s "$d"; done; }}
if [ "$PCIPASS_BOOT" = 1 ]; then
    capture initramfs update-initramfs -u
    next_action reboot
    exit 0
fi
capture probes sh -c "dmesg | grep 'really_probe: probing driver e1000e'"
capture a.lspci nics
capture a.status pcipassd status
capture a.journal journalctl -b --no-pager -o cat -u pcipassd.service
systemctl stop pcipassd.service
capture b.lspci nics
capture b.status pcipassd status
"""
PROBE_LOG = ('dyndbg="file drivers/base/dd.c +p"', "log_buf_len=8M")


def section(title: str, text: str) -> None:
    print(f"\n=== {title}\n{text.rstrip()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--timeout", type=float, default=600,
                        help="seconds per boot (default 600)")
    args = parser.parse_args(argv)
    try:
        ensure_host_tools()
        base = ensure_base()
        workdir = Path(tempfile.mkdtemp(prefix="pcipassd-demo-"))
        print(f"kernel {base.kernel_release}; building the guest disk in {workdir} ...")
        image = build_image(CONFIG, SCRIPT, workdir=workdir, base=base, install=install_from_deb)
        section("/etc/pcipass.yaml in the guest", CONFIG)
        print("\nbooting (QEMU, TCG) ...", flush=True)
        try:
            first = boot(image, timeout=args.timeout)
            print("first boot: pcipassd applied the config; the guest rebuilt its initramfs "
                  f"({first.seconds:.0f}s). Booting from that initramfs ...", flush=True)
            res = boot(image.with_guest_initrd(), timeout=args.timeout, kernel_args=PROBE_LOG)
        finally:
            image.disk.unlink(missing_ok=True)  # the logs stay
    except (HarnessUnavailable, ImageError, BootError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    held = DEFAULT_TOPOLOGY.bdf("e1000e-b")
    section(f"every probe by e1000e this boot (dmesg): none for {held}, the held NIC",
            res["probes"])
    section("after boot: lspci -nnk (the three NICs)", res["a.lspci"])
    section("after boot: pcipassd status", res["a.status"])
    section("journal of pcipassd.service", res["a.journal"])
    section("after `systemctl stop pcipassd`: lspci -nnk", res["b.lspci"])
    section("after `systemctl stop pcipassd`: pcipassd status", res["b.status"])
    print(f"\nguest boot to poweroff: {res.seconds:.0f}s; logs in {res.log_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
