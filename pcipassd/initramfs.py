"""This host's initramfs builder: which tool builds the image that boots next, where that image
is, the command that rebuilds it, and whether the image carries the current hold list.

Two builders carry pcipassd's initramfs stage: initramfs-tools (Debian, Ubuntu, Proxmox; the
hook under /usr/share/initramfs-tools) and dracut (Fedora, RHEL, openSUSE, and Debian's
`dracut` package, which replaces initramfs-tools; the module 90pcipassd). The builder is the
tool that is installed: `update-initramfs`, else `dracut`. The image that boots next is the
newest installed kernel's (`update-initramfs -u` rebuilds that one; `dracut -f` only the running
kernel's, so after a kernel update the command is `dracut --regenerate-all -f`).
"""

from __future__ import annotations

import re

from pcipassd.host import Host
from pcipassd.inventory import kernel_release
from pcipassd.log import get_logger
from pcipassd.value import frozen

TYPE_CHECKING = False  # as typing's, without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from pathlib import Path

log = get_logger()

HOLD_LIST = "/etc/pcipass.early"  # early.HOLD_LIST: the list the image should carry
EARLY_SCRIPT = "usr/lib/pcipassd/pcipassd-early"  # where both builders put the early hold
INITRAMFS_TOOLS = "initramfs-tools"
DRACUT = "dracut"
#: pcipassd's initramfs stage for each builder, as the packages and `make install` install it
STAGE = {INITRAMFS_TOOLS: "/usr/share/initramfs-tools/hooks/pcipassd",
         DRACUT: "/usr/lib/dracut/modules.d/90pcipassd/module-setup.sh"}
_TOOL = {INITRAMFS_TOOLS: "update-initramfs", DRACUT: "dracut"}
#: the tool that lists an image's files, for each builder
_LISTER = {INITRAMFS_TOOLS: "lsinitramfs", DRACUT: "lsinitrd"}
_BIN_DIRS = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")
_LIST_TIMEOUT = 120


@frozen
class Builder:
    """The tool that builds this host's initramfs (`name`: initramfs-tools or dracut), the
    kernel that boots next (`kernel`), its image, and the command that rebuilds that image."""

    name: str
    kernel: str
    image: str
    command: str


def _tool(host: Host, name: str) -> Path | None:
    for d in _BIN_DIRS:
        path = host.path(f"{d}/{name}")
        if path.exists():
            return path
    return None


def _version_key(release: str) -> tuple[tuple[int, int | str], ...]:
    """A kernel release as it sorts: its numbers as numbers ("6.1.0-13" after "6.1.0-9")."""
    return tuple((0, int(part)) if part.isdigit() else (1, part)
                 for part in re.split(r"(\d+)", release) if part)


def installed_kernels(host: Host) -> list[str]:
    """The releases of the installed kernels (/boot/vmlinuz-*, or /lib/modules/* with a kernel
    image or modules.dep), and the running one, oldest first."""
    found = {kernel_release(host)} - {""}
    found |= {p.name[len("vmlinuz-"):] for p in host.path("/boot").glob("vmlinuz-*")}
    found |= {p.name for p in host.path("/lib/modules").glob("*")
              if (p / "vmlinuz").exists() or (p / "modules.dep").exists()}
    return sorted(found, key=_version_key)


def next_kernel(host: Host) -> str:
    """The kernel that boots next: the newest installed one ("" when none is known)."""
    kernels = installed_kernels(host)
    return kernels[-1] if kernels else ""


def builder(host: Host) -> Builder | None:
    """This host's initramfs builder; None when neither initramfs-tools nor dracut is installed."""
    kernel = next_kernel(host)
    if _tool(host, "update-initramfs"):
        return Builder(INITRAMFS_TOOLS, kernel, f"/boot/initrd.img-{kernel}",
                       "update-initramfs -u")
    if not _tool(host, "dracut"):
        return None
    # Debian's dracut names the image as initramfs-tools does (initrdname in 01-debian.conf)
    image = (f"/boot/initrd.img-{kernel}" if host.path("/etc/debian_version").exists()
             else f"/boot/initramfs-{kernel}.img")
    command = "dracut -f" if kernel == kernel_release(host) else "dracut --regenerate-all -f"
    return Builder(DRACUT, kernel, image, command)


def rebuild_command(host: Host) -> str | None:
    """The command that rebuilds the image that boots next; None without a known builder."""
    found = builder(host)
    return found.command if found else None


def has_stage(host: Host) -> bool:
    """True when the initramfs holds devices too: the host has a builder and pcipassd's stage
    for it is installed."""
    found = builder(host)
    return found is not None and host.path(STAGE[found.name]).exists()


def _listing(host: Host, found: Builder) -> list[str] | None:
    """The paths in the image (lsinitramfs, lsinitrd), without a leading "./"; None when it
    cannot be told (no such tool, or it failed). Takes seconds: never on the boot path."""
    lister = _tool(host, _LISTER[found.name])
    if lister is None:
        return None
    import subprocess  # noqa: PLC0415 - only here, off the boot path

    try:
        proc = subprocess.run([str(lister), str(host.path(found.image))], capture_output=True,
                              text=True, errors="replace", timeout=_LIST_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.debug("cannot list %s: %s", found.image, e)
        return None
    if proc.returncode != 0:
        return None
    # lsinitramfs prints paths alone, lsinitrd `ls -l` lines: the path is the last field
    return [line.split()[-1].lstrip("./") for line in proc.stdout.splitlines() if line.split()]


def _carries(host: Host, found: Builder) -> bool | None:
    """Whether the image lists the hold list; None when it cannot be told."""
    paths = _listing(host, found)
    return None if paths is None else HOLD_LIST.lstrip("/") in paths


@frozen
class Contents:
    """What the image that boots next carries: its builder, whether it has pcipassd's stage
    (the early hold), and the kernel modules in it (names, dashes as underscores)."""

    builder: Builder
    early_hold: bool  # the early hold's script and the hold list are in it
    modules: frozenset[str]


def contents(host: Host) -> Contents | None:
    """The modules and pcipassd's stage in the image that boots next; None without a builder,
    an image or a tool that lists it. Takes seconds (preflight, never on the boot path)."""
    found = builder(host)
    if found is None or not host.path(found.image).exists():
        return None
    paths = _listing(host, found)
    if paths is None:
        return None
    modules = frozenset(p.rsplit("/", 1)[-1].split(".ko", 1)[0].replace("-", "_")
                        for p in paths if ".ko" in p.rsplit("/", 1)[-1])
    # the early hold is in the image when it carries both builders' script and the hold list
    stage = {EARLY_SCRIPT, HOLD_LIST.lstrip("/")} <= set(paths)
    return Contents(found, stage, modules)


def stale(host: Host, *, look_inside: bool = False) -> str | None:
    """A warning when the image that boots next predates the hold list it should carry, or
    (`look_inside`: `check` and `status`) does not carry it at all; None when it is current, or
    when there is no hold list, no builder or no image."""
    found = builder(host)
    if found is None:
        return None
    try:
        listed = host.path(HOLD_LIST).stat().st_mtime
        built = host.path(found.image).stat().st_mtime
    except OSError:
        return None
    if built < listed:
        why = f"{found.image} is older than {HOLD_LIST}"
    elif (look_inside and host.path(STAGE[found.name]).exists()
          and _carries(host, found) is False):  # without the stage a rebuild adds nothing
        why = f"{found.image} does not carry {HOLD_LIST}"
    else:
        return None
    return (f"{why}: until `{found.command}` is run, a driver in the initramfs can bind a "
            "configured device before pcipassd holds it")
