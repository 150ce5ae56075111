"""See pcipassd work on a real kernel: ``make demo`` (as root).

Boots a QEMU guest (TCG, about a minute; the first run also builds the cached
Debian image, a few minutes) with two identical e1000e NICs and an e1000, where
/etc/pcipass.yaml hands one e1000e to vfio-pci and the e1000 to pci-stub.  The
guest shows what pcipassd did at boot, then ``systemctl stop pcipassd`` and
what that gave back.
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
    install_with_make,
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
capture a.lspci nics
capture a.status pcipassd status
capture a.journal journalctl -b --no-pager -o cat -u pcipassd.service
systemctl stop pcipassd.service
capture b.lspci nics
capture b.status pcipassd status
"""


def section(title: str, text: str) -> None:
    print(f"\n=== {title}\n{text.rstrip()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--timeout", type=float, default=300, help="seconds (default 300)")
    args = parser.parse_args(argv)
    try:
        ensure_host_tools()
        base = ensure_base()
        workdir = Path(tempfile.mkdtemp(prefix="pcipassd-demo-"))
        print(f"kernel {base.kernel_release}; building the guest disk in {workdir} ...")
        image = build_image(CONFIG, SCRIPT, workdir=workdir, base=base, install=install_with_make)
        section("/etc/pcipass.yaml in the guest", CONFIG)
        print("\nbooting (QEMU, TCG) ...", flush=True)
        try:
            res = boot(image, timeout=args.timeout)
        finally:
            image.disk.unlink(missing_ok=True)  # the logs stay
    except (HarnessUnavailable, ImageError, BootError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    section("after boot: lspci -nnk (the three NICs)", res["a.lspci"])
    section("after boot: pcipassd status", res["a.status"])
    section("journal of pcipassd.service", res["a.journal"])
    section("after `systemctl stop pcipassd`: lspci -nnk", res["b.lspci"])
    section("after `systemctl stop pcipassd`: pcipassd status", res["b.status"])
    print(f"\nguest boot to poweroff: {res.seconds:.0f}s; logs in {res.log_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
