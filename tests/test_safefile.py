"""Every file that matters is written one way (temp, fsync, rename, directory fsync where it
must survive a power cut), and every untrusted file is read one way: seen through what an
admin sees (the hold list the next boot reads, early.log adopted, the message on failure)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from machine import Machine, deadline
from simkernel import NIC_A, SimKernel

from pcipassd import safefile

HOLD_LIST = "etc/pcipass.early"
EARLY_LOG = "run/pcipass/early.log"


@pytest.fixture
def m(sim_host: SimKernel, capsys: pytest.CaptureFixture[str]) -> Machine:
    return Machine(sim_host, capsys)


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths fsync was called on, in order (directories end in "/")."""
    done: list[str] = []
    fsync = os.fsync

    def recording(fd: int) -> None:
        fsync(fd)
        path = os.readlink(f"/proc/self/fd/{fd}")
        done.append(path + "/" if os.path.isdir(path) else path)

    monkeypatch.setattr(os, "fsync", recording)
    return done


def test_the_hold_list_is_on_disk_with_its_directory_before_apply_ends(
        m: Machine, synced: list[str]) -> None:
    m.with_guest_nic()
    assert m.run("apply").rc == 0
    etc = m.root / "etc"
    hold = [p for p in synced if p.startswith(str(etc))]
    assert len(hold) == 2, hold
    assert Path(hold[0]).name.startswith(".pcipass.early."), "the temp file, before the rename"
    assert hold[1] == f"{etc}/", "then /etc, so that the rename survives a power cut"
    assert f"dev {NIC_A} 8086:10d3 pci-stub" in (m.root / HOLD_LIST).read_text()
    assert [p.name for p in etc.iterdir() if p.name.startswith(".pcipass")] == []


def test_the_state_file_in_run_is_synced_but_not_its_directory(
        m: Machine, synced: list[str]) -> None:
    m.with_guest_nic()
    assert m.run("apply").rc == 0
    run = m.root / "run/pcipass"
    assert any(Path(p).name.startswith(".state.json.") for p in synced)
    assert f"{run}/" not in synced, "a tmpfs: a power cut loses it anyway"


def test_a_hold_list_that_cannot_be_synced_is_reported_and_leaves_no_temp_file(
        m: Machine, monkeypatch: pytest.MonkeyPatch) -> None:
    m.with_guest_nic()
    hold = m.root / HOLD_LIST
    hold.parent.mkdir(parents=True, exist_ok=True)
    hold.write_text("# the previous list\n")
    fsync = os.fsync

    def failing(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(m.root / "etc")):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", failing)
    result = m.run("apply")
    assert "cannot write /etc/pcipass.early: Input/output error; the next boot holds the " \
           "devices late" in result.err
    assert hold.read_text() == "# the previous list\n", "the old list stays whole"
    assert sorted(p.name for p in hold.parent.iterdir()) == ["pcipass.early", "pcipass.yaml"]


def test_a_symlink_planted_as_the_hold_list_is_replaced_not_followed(
        m: Machine, tmp_path: Path) -> None:
    m.with_guest_nic()
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    hold = m.root / HOLD_LIST
    hold.symlink_to(victim)
    assert m.run("apply").rc == 0
    assert victim.read_text() == "untouched\n"
    assert not hold.is_symlink()
    assert f"dev {NIC_A} 8086:10d3 pci-stub" in hold.read_text()


def test_a_fifo_as_early_log_neither_hangs_apply_nor_is_adopted(m: Machine) -> None:
    m.with_guest_nic()
    log = m.root / EARLY_LOG
    log.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(log)
    with deadline(10):
        assert m.run("apply").rc == 0
    assert m.state[NIC_A]["stage"] == "late"


def test_a_symlink_as_early_log_is_not_read(m: Machine, tmp_path: Path) -> None:
    m.with_guest_nic()
    elsewhere = tmp_path / "log"
    elsewhere.write_text(f"{NIC_A} early pci-stub e1000e\n")
    log = m.root / EARLY_LOG
    log.parent.mkdir(parents=True, exist_ok=True)
    log.symlink_to(elsewhere)
    assert m.run("apply").rc == 0
    assert m.state[NIC_A]["stage"] == "late", "not adopted from a file it points to"


# -- the three functions, each way a file can be -------------------------------------------
def test_read_untrusted_refuses_each_kind_of_file_with_what_it_is(tmp_path: Path) -> None:
    regular = tmp_path / "file"
    regular.write_bytes(b"12345")
    (tmp_path / "link").symlink_to(regular)
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    assert safefile.read_untrusted(regular, 5) == b"12345"
    assert safefile.read_untrusted(tmp_path / "missing", 5) is None
    assert safefile.read_untrusted(tmp_path / "link", 5, follow_symlinks=True) == b"12345"
    for name, kind, what in (("link", "not a file", "a symlink"),
                             ("fifo", "not a file", "a FIFO"),
                             ("dir", "not a file", "a directory"),
                             ("file", "too large", "")):
        with pytest.raises(safefile.Refused) as refused:
            safefile.read_untrusted(tmp_path / name, 4)
        assert (refused.value.kind, refused.value.text) == (kind, what), name
    assert safefile.read_untrusted(regular, 4, partial=True) == b"1234"
    with pytest.raises(safefile.Refused) as refused:
        safefile.read_untrusted(regular, 5, check=lambda st: "is owned by nobody")
    assert (refused.value.kind, refused.value.text) == ("refused", "is owned by nobody")


def test_read_host_is_none_when_absent_and_replaces_bytes_that_are_not_text(
        tmp_path: Path) -> None:
    (tmp_path / "cpuinfo").write_bytes(b"model name\t: \xff CPU\n")
    assert safefile.read_host(tmp_path / "cpuinfo") == "model name\t: \ufffd CPU\n"
    assert safefile.read_host(tmp_path / "absent") is None
    assert safefile.read_host(tmp_path) is None, "a directory is no evidence either"


def test_write_atomic_keeps_the_mode_asked_for_and_leaves_no_temp_on_failure(
        tmp_path: Path) -> None:
    target = tmp_path / "list"
    old = os.umask(0o022)
    try:
        safefile.write_atomic(target, b"one\n", ".list.", durable=True, mode=0o644)
    finally:
        os.umask(old)
    assert (target.read_bytes(), target.stat().st_mode & 0o777) == (b"one\n", 0o644)
    with pytest.raises(FileNotFoundError):
        safefile.write_atomic(tmp_path / "no-such-dir" / "list", b"x", ".list.", durable=False)
    (tmp_path / "blocked").mkdir()
    with pytest.raises(IsADirectoryError):  # a directory where the file goes: no rename
        safefile.write_atomic(tmp_path / "blocked", b"two\n", ".blocked.", durable=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocked", "list"]


def test_a_temp_hold_list_left_by_a_killed_apply_is_removed_by_the_next(m: Machine) -> None:
    m.with_guest_nic()
    etc = m.root / "etc"
    (etc / ".pcipass.early.1234").write_text("dev half-writ")  # an older pcipassd's pid name
    (etc / ".pcipass.early.00ff00ff00ff00ff").write_text("")
    assert m.run("apply").rc == 0
    assert sorted(p.name for p in etc.iterdir() if p.name.startswith(".pcipass")) == []
    assert f"dev {NIC_A} 8086:10d3 pci-stub" in (m.root / HOLD_LIST).read_text()
