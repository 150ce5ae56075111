"""This host's initramfs builder (pcipassd/initramfs.py) against a fake root: which tool builds
the image, which image boots next, the command that rebuilds it, and when the image is stale;
and what `check`, `status` and the "early hold missed" warning say on a dracut host."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from machine import Machine
from simkernel import NIC_A

from pcipassd import initramfs
from pcipassd.host import Host

RUNNING = "6.1.0-9-amd64"


def fake_host(root: Path, *tools: str, debian: bool = False,
              kernels: tuple[str, ...] = ()) -> Host:
    """A root whose running kernel is RUNNING, with `tools` in /usr/sbin (update-initramfs) or
    /usr/bin (the others), and `kernels` installed in /boot besides the running one."""
    (root / "proc/sys/kernel").mkdir(parents=True)
    (root / "proc/sys/kernel/osrelease").write_text(RUNNING + "\n")
    (root / "boot").mkdir()
    for kernel in (RUNNING, *kernels):
        (root / f"boot/vmlinuz-{kernel}").touch()
    for tool in tools:
        path = root / ("usr/sbin" if tool == "update-initramfs" else "usr/bin") / tool
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o755)
    if debian:
        (root / "etc").mkdir(exist_ok=True)
        (root / "etc/debian_version").write_text("12.8\n")
    return Host(root)


def test_no_builder_no_command_no_warning(tmp_path: Path) -> None:
    host = fake_host(tmp_path)
    assert initramfs.builder(host) is None
    assert initramfs.rebuild_command(host) is None
    assert initramfs.stale(host, look_inside=True) is None


@pytest.mark.parametrize(("tools", "debian", "expected"), [
    (("update-initramfs",), True, ("initramfs-tools", f"/boot/initrd.img-{RUNNING}",
                                   "update-initramfs -u")),
    (("update-initramfs", "dracut"), True, ("initramfs-tools", f"/boot/initrd.img-{RUNNING}",
                                            "update-initramfs -u")),
    (("dracut",), False, ("dracut", f"/boot/initramfs-{RUNNING}.img", "dracut -f")),
    (("dracut",), True, ("dracut", f"/boot/initrd.img-{RUNNING}", "dracut -f")),
])
def test_the_builder_is_the_installed_tool_and_names_its_image(
        tmp_path: Path, tools: tuple[str, ...], debian: bool,
        expected: tuple[str, str, str]) -> None:
    name, image, command = expected
    found = initramfs.builder(fake_host(tmp_path, *tools, debian=debian))
    assert found == initramfs.Builder(name, RUNNING, image, command)


def test_after_a_kernel_update_dracut_must_regenerate_all(tmp_path: Path) -> None:
    """`dracut -f` rebuilds only the running kernel's image; the newer kernel boots next."""
    host = fake_host(tmp_path, "dracut", kernels=("6.1.0-10-amd64", "5.10.0-30-amd64"))
    assert initramfs.next_kernel(host) == "6.1.0-10-amd64", "10 after 9, as numbers"
    assert initramfs.builder(host) == initramfs.Builder(
        "dracut", "6.1.0-10-amd64", "/boot/initramfs-6.1.0-10-amd64.img",
        "dracut --regenerate-all -f")


def test_update_initramfs_rebuilds_the_newest_kernel_s_image(tmp_path: Path) -> None:
    host = fake_host(tmp_path, "update-initramfs", kernels=("6.1.0-10-amd64",))
    found = initramfs.builder(host)
    assert found is not None
    assert (found.image, found.command) == ("/boot/initrd.img-6.1.0-10-amd64",
                                            "update-initramfs -u")


def test_a_modules_directory_alone_counts_only_with_a_kernel_in_it(tmp_path: Path) -> None:
    host = fake_host(tmp_path, "dracut")
    (tmp_path / "lib/modules/6.2.0-1/extra").mkdir(parents=True)  # left by DKMS: no kernel
    assert initramfs.next_kernel(host) == RUNNING
    (tmp_path / "lib/modules/6.2.0-1/vmlinuz").touch()  # Fedora puts the kernel here
    assert initramfs.next_kernel(host) == "6.2.0-1"


def images(root: Path, image: str, *, built: float, listed: float) -> None:
    (root / image.lstrip("/")).write_bytes(b"initramfs")
    os.utime(root / image.lstrip("/"), (built, built))
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/pcipass.early").write_text(f"dev {NIC_A} 8086:10d3 vfio-pci\n")
    os.utime(root / "etc/pcipass.early", (listed, listed))


def test_an_image_older_than_the_hold_list_is_stale(tmp_path: Path) -> None:
    host = fake_host(tmp_path, "dracut")
    images(tmp_path, f"/boot/initramfs-{RUNNING}.img", built=1000, listed=2000)
    assert initramfs.stale(host) == (
        f"/boot/initramfs-{RUNNING}.img is older than /etc/pcipass.early: until `dracut -f` is "
        "run, a driver in the initramfs can bind a configured device before pcipassd holds it")
    os.utime(tmp_path / f"boot/initramfs-{RUNNING}.img", (3000, 3000))  # rebuilt
    assert initramfs.stale(host) is None


def lister(root: Path, name: str, listing: str) -> None:
    """A stub of lsinitrd or lsinitramfs that prints `listing` for the image it is given."""
    path = root / "usr/bin" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\n[ -f "$1" ] || exit 1\nprintf "%b" "{listing}"\n')
    path.chmod(0o755)


DRACUT_STAGE = "usr/lib/dracut/modules.d/90pcipassd/module-setup.sh"
WITHOUT = ("drwxr-xr-x 1 root root 0 Jan 1 00:00 etc\\n"
           "-rw-r--r-- 1 root root 9 Jan 1 00:00 etc/fstab\\n")
WITH = WITHOUT + "-rw-r--r-- 1 root root 40 Jan 1 00:00 etc/pcipass.early\\n"


@pytest.mark.parametrize(("listing", "carries"), [(WITHOUT, False), (WITH, True)])
def test_check_and_status_look_inside_a_newer_image(tmp_path: Path, listing: str,
                                                    carries: bool) -> None:
    host = fake_host(tmp_path, "dracut")
    (tmp_path / DRACUT_STAGE).parent.mkdir(parents=True)
    (tmp_path / DRACUT_STAGE).touch()
    images(tmp_path, f"/boot/initramfs-{RUNNING}.img", built=3000, listed=2000)
    lister(tmp_path, "lsinitrd", listing)
    assert initramfs.stale(host) is None, "the boot path never lists the image"
    lacks = (f"/boot/initramfs-{RUNNING}.img does not carry /etc/pcipass.early: until `dracut "
             "-f` is run, a driver in the initramfs can bind a configured device before "
             "pcipassd holds it")
    assert initramfs.stale(host, look_inside=True) == (None if carries else lacks)


def test_lsinitramfs_lists_paths_alone(tmp_path: Path) -> None:
    host = fake_host(tmp_path, "update-initramfs")
    (tmp_path / "usr/share/initramfs-tools/hooks").mkdir(parents=True)
    (tmp_path / "usr/share/initramfs-tools/hooks/pcipassd").touch()
    images(tmp_path, f"/boot/initrd.img-{RUNNING}", built=3000, listed=2000)
    lister(tmp_path, "lsinitramfs", ".\\nusr\\nusr/lib/pcipassd/pcipassd-early\\n")
    assert "does not carry" in str(initramfs.stale(host, look_inside=True))
    lister(tmp_path, "lsinitramfs", ".\\netc/pcipass.early\\n")
    assert initramfs.stale(host, look_inside=True) is None


def test_without_pcipassd_s_stage_or_a_lister_nothing_is_said_about_the_contents(
        tmp_path: Path) -> None:
    host = fake_host(tmp_path, "dracut")
    images(tmp_path, f"/boot/initramfs-{RUNNING}.img", built=3000, listed=2000)
    lister(tmp_path, "lsinitrd", WITHOUT)
    assert initramfs.stale(host, look_inside=True) is None, "a rebuild would not add it"
    (tmp_path / DRACUT_STAGE).parent.mkdir(parents=True)
    (tmp_path / DRACUT_STAGE).touch()
    (tmp_path / "usr/bin/lsinitrd").unlink()
    assert initramfs.stale(host, look_inside=True) is None, "cannot tell"


# -- what the admin sees on a dracut host ------------------------------------------------------
def dracut_host(m: Machine, *, built: float) -> str:
    """The simulated machine builds its initramfs with dracut (Fedora's image name) and has
    pcipassd's module; `built`: its image's mtime. Returns the image's host path."""
    for path in ("usr/bin/dracut", DRACUT_STAGE):
        (m.root / path).parent.mkdir(parents=True, exist_ok=True)
        (m.root / path).touch()
    release = (m.root / "proc/sys/kernel/osrelease").read_text().strip()
    image = f"/boot/initramfs-{release}.img"
    (m.root / "boot").mkdir(exist_ok=True)
    (m.root / image.lstrip("/")).write_bytes(b"initramfs")
    os.utime(m.root / image.lstrip("/"), (built, built))
    return image


def test_check_and_status_name_dracut_for_a_stale_image(m: Machine) -> None:
    image = dracut_host(m, built=1)
    m.with_guest_nic()
    r = m.run("apply")
    stale = (f"{image} is older than /etc/pcipass.early: until `dracut -f` is run, a driver in "
             "the initramfs can bind a configured device before pcipassd holds it")
    assert f"warning: {stale}" in r.err
    assert f"warning: {stale}" in m.run("status").out
    assert f"WARN  {stale}\n      fix: dracut -f" in m.run("check").out


@pytest.mark.parametrize(("cmdline", "why"), [
    ("root=/dev/vda ro quiet",
     "the initramfs loaded e1000e, which bound it before pcipassd could hold it: the initramfs "
     "predates the hold list; run `dracut -f`"),
    # `rd.pcipassd=off` turned the initramfs stage off: that, not the image, is why (seen in the
    # dracut VM test); rebuilding the image would change nothing
    ("root=/dev/vda ro rd.pcipassd=off quiet",
     "the initramfs loaded e1000e, which bound it: the kernel command line has rd.pcipassd=off, "
     "so the initramfs held nothing; pcipassd moved it"),
])
def test_a_missed_early_hold_says_why_and_what_to_do(m: Machine, cmdline: str, why: str) -> None:
    """e1000e (in the image) bound the NIC before the real-root stage held it."""
    dracut_host(m, built=4_000_000_000)
    (m.root / "proc/cmdline").write_text(cmdline + "\n")
    run = m.root / "run/pcipass"
    run.mkdir(parents=True, exist_ok=True)
    (run / "early.log").write_text(f"{NIC_A} early pci-stub e1000e\n")
    m.with_guest_nic()
    r = m.run("apply")
    assert r.rc == 0, r.err
    assert f"warning: {NIC_A} [8086:10d3]: {why}" in r.err, r.err
    assert f"warning: {NIC_A}: {why}" in m.run("status").out
    assert m.driver(NIC_A) == "pci-stub"


def test_the_reboot_advice_names_the_dracut_rebuild_first(m: Machine) -> None:
    """A device moved late on a dracut host with pcipassd's module and a stale image: rebuild,
    then reboot (not the advice for hosts without an initramfs stage)."""
    dracut_host(m, built=1)
    m.with_guest_nic()
    r = m.run("apply")
    assert (f"pcipassd: warning: run `dracut -f`, then reboot to have it held from the first "
            f"instant: pcipassd moved {NIC_A} (from e1000e) late") in r.err
    assert "no initramfs stage" not in r.err
