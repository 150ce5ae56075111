"""Say when a reboot is needed: a device `apply` moved late, from the original driver that had
it, is held from the first instant only from the next boot on. apply says so once, in its output
and the journal; status says so while it holds (until the reboot clears /run)."""

from __future__ import annotations

import os
import shutil
from typing import Any

import pytest
from machine import Machine
from simkernel import NIC_A, NIC_B

from pcipassd import log as logsetup

GPU_NOTE = "a GPU initialised by its original driver may not reset cleanly"
MOVED = (f"pcipassd moved {NIC_A} (from e1000e) late, from the original driver that had "
         "initialised it")


def initramfs_tools(m: Machine, *, built: float | None = None) -> None:
    """The host has pcipassd's initramfs-tools hook and update-initramfs; `built`: the mtime
    of the running kernel's initramfs (None: newer than anything apply writes)."""
    for path in ("usr/share/initramfs-tools/hooks/pcipassd", "usr/sbin/update-initramfs"):
        (m.root / path).parent.mkdir(parents=True, exist_ok=True)
        (m.root / path).touch()
    release = (m.root / "proc/sys/kernel/osrelease").read_text().strip()
    image = m.root / f"boot/initrd.img-{release}"
    image.parent.mkdir(exist_ok=True)
    image.write_bytes(b"initramfs")
    stamp = 4_000_000_000 if built is None else built
    os.utime(image, (stamp, stamp))


def warnings_of(text: str) -> list[str]:
    return [line for line in text.splitlines() if "reboot" in line]


def test_apply_and_status_say_reboot_once_with_a_current_initramfs(m: Machine) -> None:
    m.with_guest_nic()
    initramfs_tools(m)
    line = f"reboot to have it held from the first instant: {MOVED} ({GPU_NOTE})"
    r = m.run("apply")
    assert r.rc == 0, r.err
    assert warnings_of(r.err) == [f"pcipassd: warning: {line}"]
    assert warnings_of(m.run("status").out) == [f"warning: {line}"]
    assert m.run("status").rc == 0, "a reboot to come is advice, not a failure"
    assert warnings_of(m.run("apply").err) == [], "said once: a second apply moved nothing"
    assert warnings_of(m.run("status").out) == [f"warning: {line}"], "until the reboot"
    shutil.rmtree(m.root / "run/pcipass")  # the reboot: /run is empty again
    assert warnings_of(m.run("status").out) == []


def test_a_stale_initramfs_is_rebuilt_before_the_reboot(m: Machine) -> None:
    m.with_guest_nic()
    initramfs_tools(m, built=1)
    r = m.run("apply")
    assert (f"pcipassd: warning: run `update-initramfs -u`, then reboot to have it held from "
            f"the first instant: {MOVED} ({GPU_NOTE})") in r.err.splitlines()


def test_without_an_initramfs_stage_it_says_what_to_do_instead(m: Machine) -> None:
    """dracut hosts: no initramfs-tools hook; the real-root stage holds it from the next boot,
    but a driver in the initramfs still probes first."""
    m.config(f'version: 1\ndevices:\n  - address: "{NIC_A}"\n  - address: "{NIC_B}"\n')
    r = m.run("apply")
    [line] = warnings_of(r.err)
    assert line == (
        f"pcipassd: warning: reboot to have them held from the next boot: pcipassd moved "
        f"{NIC_A} (from e1000e), {NIC_B} (from e1000e) late, from the original driver that had "
        f"initialised them ({GPU_NOTE}). This host has no initramfs stage of pcipassd (dracut?): "
        "pcipassd-early.service holds them before udev's coldplug, but a driver inside the "
        "initramfs still probes first; leave it out of the initramfs (`omit_drivers+=\" e1000e "
        "\"` in /etc/dracut.conf.d/pcipassd.conf, then `dracut -f`) or add "
        "`rd.driver.blacklist=e1000e` to the kernel command line")


def test_no_reboot_for_a_device_no_host_driver_had(m: Machine) -> None:
    m.with_guest_nic()
    initramfs_tools(m)
    m.sim.unload("e1000e")  # NIC_A is unbound: nothing initialised it
    r = m.run("apply")
    assert m.driver(NIC_A) == "pci-stub"
    assert warnings_of(r.err) == []
    assert warnings_of(m.run("status").out) == []


def test_no_reboot_when_the_hold_list_cannot_hold_it(m: Machine) -> None:
    m.with_guest_nic()
    initramfs_tools(m)
    (m.root / "etc/pcipass.early").mkdir()  # the hold list cannot be written
    r = m.run("apply")
    assert m.driver(NIC_A) == "pci-stub"
    assert warnings_of(r.err) == [], r.err


def test_the_journal_has_it_once_with_its_message_id(m: Machine,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    m.with_guest_nic()
    entries: list[dict[str, Any]] = []
    monkeypatch.setenv("INVOCATION_ID", "0123456789abcdef")
    monkeypatch.setattr(logsetup, "_journal_send",
                        lambda: lambda message, **f: entries.append({"MESSAGE": message, **f}))
    initramfs_tools(m)
    m.run("apply")
    m.run("apply")
    said = [e for e in entries if e.get("MESSAGE_ID") == logsetup.MESSAGE_IDS["reboot needed"]]
    assert [e["MESSAGE"] for e in said] == [
        f"reboot to have it held from the first instant: {MOVED} ({GPU_NOTE})"]
    assert said[0]["PRIORITY"] == "4"
