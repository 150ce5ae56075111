"""The command line's parser (argparse): imported only when a command line is not one of the
plain ones the units run (cli._plain), which need no parser: argparse, its translations (gettext,
locale) and building the parser cost a converged boot more than its own work."""

from __future__ import annotations

import argparse
import sys

from pcipassd import __version__
from pcipassd.cli import VERBS, _UsageError

TYPE_CHECKING = False  # as typing's, without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any, NoReturn


def _columns() -> int:
    """shutil.get_terminal_size().columns, without importing shutil (and bz2, lzma with it):
    argparse asks for a formatter, so for the width, at each add_argument."""
    import os  # noqa: PLC0415 - imported at start-up already

    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        stdout = sys.__stdout__
        try:
            columns = os.get_terminal_size(stdout.fileno()).columns if stdout else 0
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class _Formatter(argparse.HelpFormatter):
    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         _columns() - 2 if width is None else width)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        """A wrong command line exits 64, not 2: 2 means an invalid configuration."""
        self.print_usage(sys.stderr)
        raise _UsageError(f"{self.prog}: error: {message}")


def _class_arg(text: str) -> str:
    from pcipassd.survey import class_arg  # noqa: PLC0415 - only when --class is given

    try:
        return class_arg(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _id_arg(text: str) -> str:
    from pcipassd.survey import id_arg  # noqa: PLC0415 - only when --id is given

    try:
        return id_arg(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _chassis_arg(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 255:
        raise argparse.ArgumentTypeError(f"{text!r} is not a chassis number (1-255)")
    return int(text)


def _guest_slot_arg(text: str) -> int:
    """A guest PCI slot on bus 0, in hex as libvirt writes it: 0x10 or 10 (0x01-0x1f)."""
    digits = text[2:] if text[:2].lower() == "0x" else text
    try:
        slot = int(digits, 16) if digits.isalnum() else -1
    except ValueError:
        slot = -1
    if not 0x01 <= slot <= 0x1F:
        raise argparse.ArgumentTypeError(f"{text!r} is not a guest slot (hex, 0x01-0x1f)")
    return slot


def parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The command line; with `verb`, only that verb's parser (see _verb)."""
    common = _Parser(add_help=False)
    common.add_argument("--root", metavar="DIR", default=argparse.SUPPRESS,
                        help="resolve every host path (sys, proc, etc, run) under DIR; "
                        "modprobe never runs unless DIR is /")
    common.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="main config file (default: ROOT/etc/pcipass.yaml, with drop-ins "
                        "from pcipass.d/ next to it)")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="log every sysfs write; show tracebacks")
    p = _Parser(
        prog="pcipassd", parents=[common],
        description="Hand PCI devices to virtual machines: bind them to pci-stub or vfio-pci "
        "as /etc/pcipass.yaml says, and give them back on restore.",
        epilog="Exit status: 0 done/converged/valid, 1 not converged or failed (or a valid "
        "config that does not fit this host), 2 invalid config, "
        "3 apply partly applied (holds devices; an entry was refused or a device failed), "
        "143 apply stopped by SIGTERM (every device given back), 64 a wrong command line.",
    )
    p.add_argument("--version", action="version", version=f"pcipassd {__version__}")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    for name, (_, help_text, takes_json) in VERBS.items():
        if verb is not None and name != verb:
            continue
        sp = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        # `status --json` is one JSON object; --qemu, --libvirt, --kubevirt and
        # --proxmox-mapping print something else
        to = sp.add_mutually_exclusive_group() if name == "status" else sp
        if takes_json:
            to.add_argument("--json", action="store_true", help="machine-readable output")
        if name in ("validate", "plan"):
            # a main file about to be installed (Ansible's `validate: pcipassd validate --main
            # %s`), checked with the configuration's drop-ins
            files = sp.add_mutually_exclusive_group()
            files.add_argument("--main", metavar="FILE",
                               help="check FILE in place of the main config file, with the "
                               "drop-ins of pcipass.d; FILE may be another user's, in a private "
                               "directory (a file about to be installed), but not a symlink")
        if name == "validate":
            files.add_argument("files", nargs="*", metavar="FILE", default=[],
                               help="files to validate (default: the configuration)")
            sp.add_argument("--offline", action="store_true",
                            help="check the files only, not against this host's devices")
        if name == "restore":
            sp.add_argument("devices", nargs="*", metavar="ADDRESS", default=[],
                            help="give back only the devices at these addresses (0000:41:00.0; "
                            "F may be *), a device kept by on_stop: keep too")
            sp.add_argument("--on-stop", action="store_true",
                            help="as the unit's stop runs it (systemctl stop, poweroff): leave "
                            "the devices whose entry says on_stop: keep held")
        if name == "list":
            sp.add_argument("--class", dest="cls", metavar="CLASS", type=_class_arg,
                            help="only devices of this class: a hex prefix (02, 0300), a word "
                            "(gpu, display, vga, network, ethernet, storage, nvme, audio, usb) "
                            "or words of its name")
            sp.add_argument("--id", metavar="VENDOR[:DEVICE]", type=_id_arg,
                            help="only devices with this ID (hex: 8086:10d3, or 10de:)")
            sp.add_argument("--address", metavar="BDF", help="only this address (F may be *)")
            sp.add_argument("--verbose", action="store_true",
                            help="also the preflight of each display and audio function listed: "
                            "reset, boot framebuffer, initramfs drivers (README: Preflight)")
        if name == "status":
            to.add_argument("--qemu", action="store_true",
                            help="print the QEMU arguments for the devices held on vfio-pci")
            to.add_argument("--qemu-q35", metavar="BASE", type=_chassis_arg,
                            help="print QEMU arguments for a q35 machine (-machine q35): each "
                            "card behind a pcie-root-port with its function layout, the root "
                            "ports numbered from BASE (1-255), so as not to clash with yours")
            to.add_argument("--libvirt", action="store_true",
                            help="print libvirt <hostdev> XML for the devices held on vfio-pci: "
                            "a card's functions in one guest slot, function 0 "
                            "multifunction='on'")
            sp.add_argument("--guest-slot", metavar="SLOT", type=_guest_slot_arg,
                            help="with --libvirt: the guest slot (hex, on bus 0) of the first "
                            "card, the next card in the next slot (default: 0x10)")
            sp.add_argument("--entry", metavar="NAME",
                            help="with --libvirt: write one <hostdev> file per function of the "
                            "entry named NAME, and print the `virsh attach-device DOMAIN FILE "
                            "--config` commands in order (libvirt cannot hot-plug a "
                            "multi-function card)")
            sp.add_argument("--xml-dir", metavar="DIR",
                            help="with --entry: write the files in DIR (default: the current "
                            "directory)")
            to.add_argument("--kubevirt", action="store_true",
                            help="print KubeVirt's permittedHostDevices entries for the devices "
                            "held on vfio-pci")
            to.add_argument("--proxmox-mapping", action="store_true",
                            help="print this node's --map values of a Proxmox PCI resource "
                            "mapping for the devices held on vfio-pci")
    return p
