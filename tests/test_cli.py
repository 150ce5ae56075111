"""The verbs as an admin runs them: output, exit codes, and errors as one line plus a hint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from machine import Machine
from simkernel import NIC_A, NIC_B, NIC_E1000, SimKernel

import pcipassd
from pcipassd.cli import main
from pcipassd.state import State


def test_plan_shows_what_apply_would_do_and_changes_nothing(m: Machine) -> None:
    m.with_guest_nic()
    r = m.run("plan")
    assert r.rc == 0
    lines = r.out.splitlines()
    assert lines[0].split() == ["DEVICE", "ID", "DRIVER", "TARGET", "GROUP", "ACTION", "ENTRY",
                                "NOTE"]
    assert lines[1].split() == [NIC_A, "8086:10d3", "e1000e", "pci-stub", "2", "bind",
                                "/etc/pcipass.yaml:3"]
    assert not m.sim.writes and not m.sim.modprobes


def test_plan_json(m: Machine) -> None:
    m.with_guest_nic()
    data = json.loads(m.run("plan", "--json").out)
    assert data["problems"] == []
    assert data["steps"] == [{
        "device": NIC_A, "id": "8086:10d3", "action": "bind", "driver": "e1000e",
        "target": "pci-stub", "original": None, "group": "2", "entry": "/etc/pcipass.yaml:3",
        "selects": "address 0000:00:02.0", "name": "guest-nic", "via": None, "note": "",
        "forced": None, "reset_method": None, "reset_method_now": None,
        "reset_method_original": None, "on_stop": "restore",
    }]


def test_status_exit_code_follows_convergence(m: Machine) -> None:
    m.with_guest_nic()
    r = m.run("status")
    assert r.rc == 1
    assert r.out.splitlines()[1].split()[6] == "bind"
    assert "not converged: run `systemctl reload pcipassd`" in r.out
    m.run("apply")
    r = m.run("status")
    assert r.rc == 0
    assert r.out.splitlines()[1].split() == [NIC_A, "8086:10d3", "pci-stub", "pci-stub", "2",
                                             "late", "unchanged", "guest-nic"]
    assert r.out.splitlines()[-1] == "converged"
    data = json.loads(m.run("status", "--json").out)
    assert data["converged"] is True
    assert data["devices"][0]["action"] == "unchanged"
    assert data["devices"][0]["stage"] == "late"
    assert "status" not in data["devices"][0] and "held" not in data["devices"][0]


def test_status_names_entries_by_what_they_select(m: Machine) -> None:
    """Not by FILE:LINE, which goes stale once the file is edited."""
    m.config(f'version: 1\ndevices:\n  - address: "{NIC_B}"\n  - id: "8086:100e"\n'
             f'  - address: "{NIC_A}"\n    name: guest-nic\n')
    m.run("apply")
    m.config(f'# edited\nversion: 1\n\ndevices:\n  - id: "8086:100e"\n  - address: "{NIC_B}"\n'
             f'  - address: "{NIC_A}"\n    name: guest-nic\n')
    rows = {line.split()[0]: line for line in m.run("status").out.splitlines()[1:4]}
    assert rows[NIC_B].endswith(f"unchanged  address {NIC_B}")
    assert rows[NIC_E1000].endswith("unchanged  id 8086:100e")
    assert rows[NIC_A].endswith("unchanged  guest-nic")


def test_status_shows_a_device_left_over_from_an_older_config(m: Machine) -> None:
    m.with_guest_nic()
    m.run("apply")
    m.config(f'version: 1\ndevices:\n  - address: "{NIC_B}"\n')
    r = m.run("status")
    assert r.rc == 1
    rows = {line.split()[0]: line.split() for line in r.out.splitlines()[1:3]}
    assert rows[NIC_A][6] == "restore"
    assert rows[NIC_A][3] == "-", "a restore has no target"
    assert rows[NIC_B][6] == "bind"
    plan = {line.split()[0]: line for line in m.run("plan").out.splitlines()[1:3]}
    assert plan[NIC_A].split()[3:6] == ["-", "2", "restore"]
    assert plan[NIC_A].endswith("no longer configured; back to e1000e")
    steps = {s["device"]: s for s in json.loads(m.run("plan", "--json").out)["steps"]}
    assert (steps[NIC_A]["driver"], steps[NIC_A]["target"], steps[NIC_A]["original"]) == (
        "pci-stub", None, "e1000e")
    assert (steps[NIC_B]["target"], steps[NIC_B]["original"]) == ("pci-stub", None)


def test_validate_ok_and_invalid(m: Machine) -> None:
    m.with_guest_nic()
    r = m.run("validate")
    assert (r.rc, r.out.strip()) == (0, "/etc/pcipass.yaml: valid, 1 entry")
    m.config('version: 2\ndevices:\n  - adress: "02:00.0"\n')
    r = m.run("validate")
    assert r.rc == 2
    assert r.out.splitlines() == [
        "/etc/pcipass.yaml:1:10: version: version must be 1, not 2",
        "    hint: this pcipassd reads format version 1",
        "/etc/pcipass.yaml:3:5: devices[0].adress: unknown key 'adress'",
        "    hint: did you mean 'address'?",
        "/etc/pcipass.yaml:3:5: devices[0]: an entry needs `address` or `id`",
        '    hint: e.g. - address: "0000:02:00.0"  or  - id: "8086:10d3"',
        "3 problems found",
    ]


def test_schema_is_the_packaged_json_schema(m: Machine) -> None:
    m.with_guest_nic()
    r = m.run("schema")
    schema = json.loads(r.out)
    assert schema["properties"]["version"] == {
        "description": "Format version of this file; must be 1.", "const": 1}
    assert "vfio-pci" in schema["$defs"]["driver"]["enum"]


def test_check_on_an_intel_host_without_the_kernel_argument(sim: SimKernel,
                                                            capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    sim.add_driver("pci-stub", loaded=False)
    (sim.root / "proc/cpuinfo").write_text("processor\t: 0\nvendor_id\t: GenuineIntel\n")
    (sim.root / "proc/cmdline").write_text("BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro quiet\n")
    (sim.root / "sys/firmware/acpi/tables").mkdir(parents=True)
    (sim.root / "sys/firmware/acpi/tables/DMAR").write_bytes(b"DMAR")
    r = Machine(sim, capsys).run("check")
    assert r.rc == 1
    assert "OK    ACPI DMAR table present: the firmware offers an IOMMU" in r.out
    assert "FAIL  kernel command line lacks intel_iommu=on" in r.out
    assert ("      fix: add intel_iommu=on to GRUB_CMDLINE_LINUX in /etc/default/grub, run "
            "update-grub") in r.out
    assert "FAIL  IOMMU off: /sys/kernel/iommu_groups is empty" in r.out
    assert "OK    pci-stub: module" in r.out
    assert ("WARN  this kernel has no vfio-pci driver (neither built in nor installed as a "
            "module)") in r.out
    assert r.out.splitlines()[-1] == "passthrough cannot work until the FAILs are fixed"


def test_check_on_an_intel_host_without_vtd_in_firmware(sim: SimKernel,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    (sim.root / "proc/cpuinfo").write_text("vendor_id\t: GenuineIntel\n")
    (sim.root / "proc/cmdline").write_text("root=/dev/sda1 intel_iommu=on\n")
    r = Machine(sim, capsys).run("check")
    assert r.rc == 1
    assert "FAIL  no ACPI DMAR table: the firmware does not offer an IOMMU" in r.out
    assert "fix: enable VT-d (Intel Virtualization Technology for Directed I/O)" in r.out


def test_check_on_amd_with_the_iommu_disabled(sim: SimKernel,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    (sim.root / "proc/cpuinfo").write_text("vendor_id\t: AuthenticAMD\n")
    (sim.root / "proc/cmdline").write_text("root=/dev/sda1 amd_iommu=off\n")
    r = Machine(sim, capsys).run("check")
    assert r.rc == 1
    assert "FAIL  kernel command line has amd_iommu=off" in r.out
    assert "enable AMD-Vi / IOMMU in the firmware setup" in r.out


def test_check_passes_with_groups_and_interrupt_remapping(sim_host: SimKernel,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    (sim_host.root / "proc/cpuinfo").write_text("vendor_id\t: GenuineIntel\nflags\t: fpu vmx\n")
    (sim_host.root / "proc/cmdline").write_text("root=/dev/vda intel_iommu=on iommu=pt\n")
    for dev in ("dev/kvm", "dev/vfio/vfio"):
        (sim_host.root / dev).parent.mkdir(parents=True, exist_ok=True)
        (sim_host.root / dev).touch()
    (sim_host.root / "proc/interrupts").write_text(
        "           CPU0\n 24:   100  IR-PCI-MSI 512000-edge  ahci[0000:00:1f.2]\n")
    r = Machine(sim_host, capsys).run("check", "--json")
    assert r.rc == 0
    data = json.loads(r.out)
    assert (data["format"], data["passthrough_possible"]) == (4, True)
    findings = {f["message"]: f["level"] for f in data["findings"]}
    assert findings["IOMMU on: 7 IOMMU groups"] == "OK"
    assert findings["interrupt remapping is on"] == "OK"
    assert findings["iommu=pt: host devices use pass-through mode"] == "OK"
    assert set(findings.values()) == {"OK"}


def test_errors_are_one_line_and_a_hint_and_debug_shows_the_traceback(
        m: Machine, capsys: pytest.CaptureFixture[str]) -> None:
    m.with_guest_nic()
    (m.root / "run").mkdir()
    (m.root / "run/pcipass").write_text("not a directory")
    r = m.run("apply")
    assert r.rc == 1
    assert r.err.splitlines() == [
        "pcipassd: error: /run/pcipass is not a directory (a symlink?) "
        "(hint: remove it; pcipassd keeps its state in a directory it owns)"]
    with pytest.raises(Exception, match="is not a directory"):
        main(["--root", str(m.root), "--debug", "apply"], kernel=m.sim)


def test_options_work_before_and_after_the_verb(m: Machine) -> None:
    m.with_guest_nic()
    capsys = m.capsys
    capsys.readouterr()
    assert main(["status", "--root", str(m.root)], kernel=m.sim) == 1
    assert NIC_A in capsys.readouterr().out


def test_help_and_module_entry_point() -> None:
    out = subprocess.run([sys.executable, "-m", "pcipassd", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for verb in ("validate", "check", "plan", "apply", "restore", "status", "schema"):
        assert verb in out
    assert "Exit status: 0" in out


def test_restore_with_nothing_recorded_is_a_no_op(m: Machine) -> None:
    m.with_guest_nic()
    r = m.run("restore")
    assert r.rc == 0
    assert "0 restored, 0 failed" in r.err
    assert not m.sim.writes


def test_a_closed_pipe_is_no_traceback(sim_host: SimKernel, tmp_path: Path) -> None:
    """`pcipassd list --json | true`: the reader is gone before the output is written."""
    env = {**os.environ, "PYTHONPATH": str(Path(pcipassd.__file__).parent.parent)}
    env.pop("JOURNAL_STREAM", None)
    env.pop("INVOCATION_ID", None)
    child = subprocess.run(
        f"{sys.executable} -m pcipassd --root {sim_host.root} list --json | true",
        shell=True, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert "Traceback" not in child.stderr and "BrokenPipe" not in child.stderr, child.stderr


def test_a_non_root_user_gets_one_line(m: Machine, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a non-root apply meets first: /run/pcipass cannot be created."""
    m.with_guest_nic()
    def denied(self: object, create: bool) -> bool:
        raise PermissionError(13, "Permission denied", "/run/pcipass")

    monkeypatch.setattr(State, "_check_dir", denied)
    m.with_guest_nic()
    r = m.run("apply")
    assert r.rc == 1
    assert r.err.splitlines() == ["pcipassd: error: /run/pcipass: Permission denied",
                                  "pcipassd: error: pcipassd apply needs root"]


@pytest.mark.parametrize("verb", ["validate", "check", "plan", "status", "list"])
def test_every_json_output_is_one_object_with_a_format_version(m: Machine, verb: str) -> None:
    m.with_guest_nic()
    m.with_guest_nic()
    data = json.loads(m.run(verb, "--json").out)
    assert isinstance(data, dict)
    assert next(iter(data.items())) == ("format", 4)


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every file, link and directory under the root, with contents."""
    out: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            out[rel] = path.read_bytes()
        else:
            out[rel] = "dir"
    return out


def test_read_only_verbs_write_nothing(m: Machine) -> None:
    m.with_guest_nic()
    m.with_guest_nic()
    m.run("apply")
    before = snapshot(m.root)
    for argv in (["validate"], ["check"], ["plan"], ["status"], ["list"], ["schema"],
                 ["status", "--qemu"], ["plan", "--json"]):
        m.run(*argv)
    assert snapshot(m.root) == before


def test_plan_and_status_predict_what_apply_cannot_do(sim: SimKernel,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """No IOMMU here: `iommu: warn` lets pci-stub work, vfio-pci cannot, and a kernel without
    pci-stub at all cannot bind to it; `iommu: required` binds nothing."""
    sim.add_driver("e1000e", [(0x8086, 0x10D3)])
    sim.add_driver("vfio-pci", loaded=False, needs_iommu=True)
    sim.add_device(NIC_A, 0x8086, 0x10D3)
    sim.add_device(NIC_B, 0x8086, 0x10D3)
    m = Machine(sim, capsys)
    m.config(f'version: 1\niommu: warn\ndevices:\n  - address: "{NIC_A}"\n    driver: vfio-pci\n'
             f'  - address: "{NIC_B}"\n')
    r = m.run("plan")
    assert r.rc == 1
    rows = {line.split()[0]: line for line in r.out.splitlines()[1:3]}
    assert "fail" in rows[NIC_A] and "vfio-pci needs an IOMMU group" in rows[NIC_A]
    assert "fail" in rows[NIC_B] and "this kernel has no pci-stub driver" in rows[NIC_B]
    status = json.loads(m.run("status", "--json").out)
    assert [d["action"] for d in status["devices"]] == ["fail", "fail"]
    m.config(f'version: 1\ndevices:\n  - address: "{NIC_A}"\n    driver: vfio-pci\n')
    r = m.run("plan")
    assert r.rc == 1
    assert "will not be bound: the IOMMU is off (iommu: required" in r.out


def test_a_wrong_command_line_is_not_an_invalid_config(m: Machine) -> None:
    m.with_guest_nic()
    with pytest.raises(SystemExit) as exc:
        m.run("frobnicate")
    assert exc.value.code == 64
    with pytest.raises(SystemExit) as exc:
        m.run("status", "--qemu", "--libvirt")
    assert exc.value.code == 64


def test_validate_and_plan_agree_on_the_exit_status(m: Machine) -> None:
    m.config('version: 1\ndevices:\n  - address: "0000:07:00.0"\n')  # valid, not on this host
    assert m.run("validate").rc == m.run("plan").rc == 1
    m.config('version: 1\ndevices:\n  - adress: "0000:07:00.0"\n')  # invalid
    assert m.run("validate").rc == m.run("plan").rc == 2


@pytest.mark.parametrize("verb", ["status", "plan", "list"])
def test_a_user_who_cannot_read_the_state_runs_without_the_held_marks(
        m: Machine, monkeypatch: pytest.MonkeyPatch, verb: str) -> None:
    """state.json is root's (0600 in a 0700 directory): a user still gets list, plan, status."""
    m.with_guest_nic()
    m.with_guest_nic()
    m.run("apply")
    real_lstat = os.lstat

    def not_root(path: object, *args: object, **kwargs: object) -> os.stat_result:
        if str(path).endswith("state.json"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_lstat(path, *args, **kwargs)  # type: ignore[arg-type]

    assert m.run("status").out.splitlines()[1].split()[5] == "late"
    monkeypatch.setattr(os, "lstat", not_root)
    r = m.run(verb)
    assert r.rc == 0, r.err
    assert r.err == ("pcipassd: warning: cannot read /run/pcipass/state.json (only root can): "
                     "shown without the devices pcipassd holds and how it took them; run as "
                     "root to see them\n")
    if verb == "status":
        assert r.out.splitlines()[1].split() == [NIC_A, "8086:10d3", "pci-stub", "pci-stub",
                                                 "2", "-", "unchanged", "guest-nic"]
    if verb == "list":
        assert "held (late)" not in r.out and "configured" in r.out
