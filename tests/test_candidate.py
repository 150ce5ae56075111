"""`validate --main FILE` and `plan --main FILE`: a main file about to be installed, checked in
place of /etc/pcipass.yaml with the real drop-ins. Ansible with `become` renders it in the SSH
user's private temp directory: StrictModes is not asked of it (it still must be a regular file,
no symlink), and the drop-ins keep StrictModes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from machine import Machine
from simkernel import NIC_A, NIC_B

NIC = f'version: 1\ndevices:\n  - address: "{NIC_A}"\n    driver: vfio-pci\n'


@pytest.fixture
def users_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The SSH user's private temp directory (0700, theirs), as Ansible's `become` has it. Not
    root: chowned to uid 1000 when root; else run as if pcipassd ran as another user."""
    d = tmp_path / "home/ansible/.ansible/tmp/ansible-tmp-1"
    d.mkdir(parents=True)
    d.chmod(0o700)
    if os.geteuid() == 0:
        for p in (d, *list(d.parents)[:3]):
            os.chown(p, 1000, 1000)
    else:
        monkeypatch.setattr(os, "geteuid", lambda: 65533 if os.getuid() == 65534 else 65534)
    return d


def candidate(d: Path, text: str) -> Path:
    path = d / "source"
    path.write_text(text)
    if os.geteuid() == 0:
        os.chown(path, 1000, 1000)
    path.chmod(0o600)
    return path


def test_a_candidate_in_the_users_private_dir_is_valid(m: Machine, users_temp: Path) -> None:
    m.config("version: 1\ndevices: []\n")
    path = candidate(users_temp, NIC)
    assert m.run("validate", str(path)).rc == 2, "StrictModes refuses it as a plain FILE"
    r = m.run("validate", "--main", str(path))
    assert (r.rc, r.out) == (0, f"{path}: valid, 1 entry\n"), r.err
    r = m.run("plan", "--main", str(path))
    assert r.rc == 0, r.err
    assert [line.split()[5:7] for line in r.out.splitlines()[1:2]] == [["bind", f"{path}:3"]]


def test_the_candidate_is_checked_with_the_real_dropins(m: Machine, users_temp: Path) -> None:
    m.config(NIC)
    m.dropin("vm.yaml", f'version: 1\ndevices:\n  - address: "{NIC_A}"\n    driver: pci-stub\n')
    path = candidate(users_temp, NIC)
    r = m.run("validate", "--main", str(path), "--json")
    assert r.rc == 2
    doc = json.loads(r.out)
    assert doc["valid"] is False
    assert [(p["file"], p["line"]) for p in doc["problems"]] == [("/etc/pcipass.d/vm.yaml", 3)]
    assert f"is also selected by {path}:3 with driver vfio-pci" in doc["problems"][0]["message"]


def test_dropins_keep_strictmodes(m: Machine, users_temp: Path) -> None:
    m.config(NIC)
    m.dropin("b.yaml", f'version: 1\ndevices:\n  - address: "{NIC_B}"\n').parent.chmod(0o777)
    r = m.run("validate", "--main", str(candidate(users_temp, NIC)))
    assert r.rc == 2
    assert r.out.startswith("/etc/pcipass.d: directory is writable by group and others")


def test_a_symlink_candidate_is_refused(m: Machine, users_temp: Path) -> None:
    m.config(NIC)
    real = candidate(users_temp, NIC)
    link = users_temp / "link.yaml"
    link.symlink_to(real)
    r = m.run("validate", "--main", str(link))
    assert r.rc == 2
    assert r.out.splitlines()[0] == (
        f"{link}: is a symlink; pcipassd checks the file about to be installed, not a link")


def test_a_fifo_candidate_is_refused(m: Machine, users_temp: Path) -> None:
    m.config(NIC)
    fifo = users_temp / "fifo"
    os.mkfifo(fifo)
    r = m.run("validate", "--main", str(fifo))
    assert r.rc == 2
    assert r.out.splitlines()[:2] == [
        f"{fifo}: is a FIFO, not a regular file; pcipassd reads only regular files",
        "    hint: give --main the file about to be installed"]


def test_a_bad_candidate_names_its_path_and_line(m: Machine, users_temp: Path) -> None:
    m.config(NIC)
    path = candidate(users_temp, f'version: 1\ndevices:\n  - adress: "{NIC_A}"\n')
    r = m.run("validate", "--main", str(path))
    assert r.rc == 2
    assert r.out.splitlines()[0].startswith(f"{path}:3:5: devices[0].adress: unknown key")
    r = m.run("plan", "--main", str(path), "--json")
    assert r.rc == 2
    assert json.loads(r.out)["problems"][0]["file"] == str(path)


def test_main_and_files_are_one_or_the_other(m: Machine, users_temp: Path) -> None:
    path = candidate(users_temp, NIC)
    with pytest.raises(SystemExit) as e:
        m.run("validate", "--main", str(path), str(path))
    assert e.value.code == 64


def test_with_config_the_dropins_are_those_next_to_it(m: Machine, users_temp: Path) -> None:
    alt = m.root / "srv/pcipass"
    (alt / "pcipass.d").mkdir(parents=True)
    (alt / "pcipass.yaml").write_text("version: 1\ndevices: []\n")
    (alt / "pcipass.d/vm.yaml").write_text(
        f'version: 1\ndevices:\n  - address: "{NIC_A}"\n    driver: pci-stub\n')
    path = candidate(users_temp, NIC)
    r = m.run("--config", str(alt / "pcipass.yaml"), "validate", "--main", str(path))
    assert r.rc == 2
    assert r.out.startswith("/srv/pcipass/pcipass.d/vm.yaml:3:")
