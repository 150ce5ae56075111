"""Configuration loading and validation, as the admin sees it: `pcipassd validate` (and the
validation every other verb runs first) on /etc/pcipass.yaml and /etc/pcipass.d/*.yaml.

Every problem is one `FILE:LINE:COL: path: message` line (FILE as the host names it, also under
--root) followed by `    hint: ...`; then `N problems found`; exit status 2. Valid: exit 0."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from hosttree import FakeHost
from simkernel import DISK, NIC_A, NIC_B, NIC_E1000, PCIE_BRIDGE, SimKernel

import pcipassd
from pcipassd import yamldoc
from pcipassd.cli import main
from pcipassd.yamldoc import MAX_BYTES

MAIN = "/etc/pcipass.yaml"
LSPCI = ("    hint: list the devices with `lspci -Dnn`; addresses change after hardware or BIOS "
         "changes")
NO_FILE_HINT = ("    hint: copy the annotated example: cp "
                "/usr/share/doc/pcipassd/pcipass.yaml.example /etc/pcipass.yaml, then list your "
                "devices in it (`pcipassd list` shows them)")

# Added to the typical machine: hex letters in bus and slot, and a GPU whose audio function
# (bound to its own driver) shares IOMMU group 7 with it.
SATA = "0000:0b:1e.0"  # 1b21:0612, ahci, group 8
GPU = "0000:0a:00.0"  # 10de:1b80, no driver, group 7
GPU_AUDIO = "0000:0a:00.1"  # 10de:10f0, snd_hda_intel, group 7


@pytest.fixture
def machine(sim_host: SimKernel) -> SimKernel:
    sim_host.add_driver("ahci", [(0x1B21, 0x0612)])
    sim_host.add_device(SATA, 0x1B21, 0x0612, cls=0x010601, iommu_group=8)
    sim_host.add_driver("snd_hda_intel", [(0x10DE, 0x10F0)])
    sim_host.add_device(GPU, 0x10DE, 0x1B80, cls=0x030000, iommu_group=7, driver=None)
    sim_host.add_device(GPU_AUDIO, 0x10DE, 0x10F0, cls=0x040300, iommu_group=7)
    fake = FakeHost(sim_host.root)  # / on the virtio disk: the SATA controller holds nothing
    disk = os.path.relpath(sim_host.device_dir(DISK), sim_host.root)
    fake.partition(fake.disk("vda", "254:0", f"/{disk}/virtio2"), "vda1", "254:1")
    fake.mountinfo("22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw")
    return sim_host


@dataclass
class Result:
    rc: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()

    def row(self, bdf: str) -> list[str]:
        """The `plan` table row of `bdf`, split into columns."""
        rows = [line.split() for line in self.lines if line.startswith(bdf)]
        assert len(rows) == 1, self.out
        return rows[0]


class Cli:
    """Writes config files under the simulated root and runs `pcipassd --root ROOT VERB`."""

    def __init__(self, sim: SimKernel, capsys: pytest.CaptureFixture[str]) -> None:
        self.sim = sim
        self.capsys = capsys

    def path(self, name: str | None = None) -> Path:
        etc = self.sim.root / "etc"
        return etc / "pcipass.yaml" if name is None else etc / "pcipass.d" / name

    def write(self, text: str | bytes, name: str | None = None) -> Path:
        """Write the main file (name None) or the drop-in `name`; str is dedented."""
        path = self.path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(textwrap.dedent(text))
        return path

    def __call__(self, *argv: str) -> Result:
        self.capsys.readouterr()
        rc = main(["--root", str(self.sim.root), *argv], kernel=self.sim)
        out, err = self.capsys.readouterr()
        assert "Traceback" not in out + err
        return Result(rc, out, err)

    def validate(self, *argv: str) -> Result:
        return self("validate", *argv)


@pytest.fixture
def cli(machine: SimKernel, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(machine, capsys)


def problems(*lines: str) -> str:
    """The expected `validate` output for these problem (and hint) lines."""
    n = sum(1 for line in lines if not line.startswith("    hint: "))
    return "\n".join([*lines, f"{n} problem{'s' if n != 1 else ''} found"]) + "\n"


def one_entry(entry: str, top: str = "") -> str:
    """A main file with `top` settings and one device entry (entry lines indented by 4)."""
    body = textwrap.indent(textwrap.dedent(entry).strip("\n"), "    ")
    return f"version: 1\n{textwrap.dedent(top)}devices:\n  - {body.lstrip()}\n"


# ---- valid configurations -------------------------------------------------------------------


def test_a_valid_config_says_so_and_exits_0(cli: Cli) -> None:
    cli.write(f"""\
        version: 1
        driver: vfio-pci
        iommu: warn
        group: isolated
        devices:
          - address: "{NIC_A}"
            expect: "8086:10d3"
            name: guest-nic
            force: false
          - id: "8086:100e"
            count: 1
            driver: pci-stub
        """)
    result = cli.validate()
    assert (result.rc, result.out) == (0, f"{MAIN}: valid, 2 entries\n")
    assert cli.sim.writes == []  # validating changes nothing


def test_the_example_in_the_issue_is_valid_apart_from_the_hardware(cli: Cli) -> None:
    cli.write("""\
        version: 1                  # required; must be 1
        driver: pci-stub            # default target for every entry
        iommu: required             # required (default) | warn
        devices:                    # required, non-empty
          - address: "0000:02:00.0" # a BDF; "02:00.0" means domain 0000
            expect: "14e4:1639"     # optional: the device there must have this vendor:device
            driver: vfio-pci        # optional per-entry target
            name: guest-nic         # optional label, shown in logs and status
          - id: "8086:10d3"         # vendor:device: every device with this ID
            count: 2                # optional: exactly this many must be present, else error
        """)
    assert cli.validate("--offline").out == f"{MAIN}: valid, 2 entries\n"
    result = cli.validate()  # this machine has the two 8086:10d3 NICs but nothing at 02:00.0
    assert (result.rc, result.out) == (1, problems(
        f"{MAIN}:5:5: devices[0]: no device at 0000:02:00.0", LSPCI))


# ---- every problem at once, in order --------------------------------------------------------


def test_every_problem_of_every_file_in_one_run_in_file_then_line_order(cli: Cli) -> None:
    cli.write("""\
        version: 1
        drivr: vfio-pci
        devices:
          - address: "02:00"
            dirver: vfio
          - id: "8086:10d3"
            driver: vfio
          - name: lonely
        """)
    cli.write('version: 1\ndevices:\n  - address: "00:04.0\n', "05-broken.yaml")
    cli.write(f'version: 2\ndevices:\n  - address: "{NIC_B}"\n', "10-future.yaml")
    cli.write(f'version: 1\niommu: warn\ndevices:\n  - address: "{NIC_B}"\n', "20-iommu.yaml")
    result = cli.validate()
    assert result.rc == 2
    assert result.out == problems(
        f"{MAIN}:2:1: drivr: unknown key 'drivr'",
        "    hint: did you mean 'driver'?",
        f"{MAIN}:4:14: devices[0].address: '02:00' is not a PCI address: expected "
        "[DDDD:]BB:SS.F, e.g. 0000:02:00.0",
        '    hint: write it like "0000:02:00.0", quoted',
        f"{MAIN}:5:5: devices[0].dirver: unknown key 'dirver'",
        "    hint: did you mean 'driver'?",
        f"{MAIN}:7:13: devices[1].driver: 'vfio' is not one of pci-stub, vfio-pci",
        "    hint: did you mean 'vfio-pci'?",
        f"{MAIN}:8:5: devices[2]: an entry needs `address` or `id`",
        '    hint: e.g. - address: "0000:02:00.0"  or  - id: "8086:10d3"',
        "/etc/pcipass.d/05-broken.yaml:4:1: YAML syntax: while scanning a quoted scalar found "
        "unexpected end of stream",
        "    hint: check the indentation and quoting on that line",
        "/etc/pcipass.d/10-future.yaml:1:10: version: version must be 1, not 2",
        "    hint: this pcipassd reads format version 1",
        "/etc/pcipass.d/20-iommu.yaml:2:1: iommu: only the main file may set iommu",
        f"    hint: iommu is host-wide: move it to {MAIN}",
    )


def test_json_lists_the_problems_and_an_empty_list_when_valid(cli: Cli) -> None:
    cli.write(one_entry('adress: "0000:00:02.0"\nid: "8086:10d3"'))
    result = cli.validate("--json")
    assert result.rc == 2
    assert json.loads(result.out) == {
        "format": 4, "verb": "validate", "ok": False, "exit": 2, "error": None, "problems": [{
            "file": MAIN, "line": 3, "column": 5, "path": "devices[0].adress",
            "message": "unknown key 'adress'", "hint": "did you mean 'address'?",
        }], "warnings": [], "valid": False}
    cli.write(one_entry(f'address: "{NIC_A}"'))
    result = cli.validate("--json")
    assert (result.rc, json.loads(result.out)) == (0, {
        "format": 4, "verb": "validate", "ok": True, "exit": 0, "error": None, "problems": [],
        "warnings": [], "valid": True})


def test_json_lists_device_problems_too(cli: Cli) -> None:
    cli.write(one_entry('id: "8086:10d3"\ncount: 1'))
    result = cli.validate("--json")
    assert result.rc == 1
    assert json.loads(result.out)["problems"] == [{
        "file": MAIN, "line": 3, "column": 5, "path": "devices[0]",
        "message": f"count: 1, but 2 present: {NIC_A} [8086:10d3], {NIC_B} [8086:10d3]",
        "hint": "a card was added or removed? fix the hardware or the count",
    }]


@pytest.mark.parametrize("verb", ["plan", "apply", "status"])
def test_every_verb_validates_first_and_changes_nothing(cli: Cli, verb: str) -> None:
    cli.write(one_entry(f'address: "{NIC_A}"\ndirver: vfio-pci'))
    result = cli(verb)
    assert result.rc == 2
    assert result.err.splitlines() == [
        f"pcipassd: error: {MAIN}:4:5: devices[0].dirver: unknown key 'dirver' "
        "(hint: did you mean 'driver'?)",
        "pcipassd: error: invalid configuration: nothing was changed",
    ]
    assert cli.sim.writes == []
    assert cli.sim.modprobes == []


# ---- keys -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ('version: 1\ndevics:\n  - address: "00:02.0"\n',
     [f"{MAIN}:2:1: devics: unknown key 'devics'", "    hint: did you mean 'devices'?"]),
    ('version: 1\niommmu: warn\ndevices:\n  - address: "00:02.0"\n',
     [f"{MAIN}:2:1: iommmu: unknown key 'iommmu'", "    hint: did you mean 'iommu'?"]),
    ('version: 1\nDriver: vfio-pci\ndevices:\n  - address: "00:02.0"\n',
     [f"{MAIN}:2:1: Driver: unknown key 'Driver'", "    hint: did you mean 'driver'?"]),
    ('version: 1\ncolour: blue\ndevices:\n  - address: "00:02.0"\n',
     [f"{MAIN}:2:1: colour: unknown key 'colour'",
      "    hint: expected one of: devices, driver, group, iommu, node_labels, version"]),
    ('version: 1\ndevices:\n  - address: "00:02.0"\n    dirver: vfio-pci\n',
     [f"{MAIN}:4:5: devices[0].dirver: unknown key 'dirver'", "    hint: did you mean 'driver'?"]),
    ('version: 1\ndevices:\n  - address: "00:02.0"\n    ID: "8086:10d3"\n',
     [f"{MAIN}:4:5: devices[0].ID: unknown key 'ID'", "    hint: did you mean 'id'?"]),
    ('version: 1\ndevices:\n  - address: "00:02.0"\n    label: nic\n',
     [f"{MAIN}:4:5: devices[0].label: unknown key 'label'",
      "    hint: expected one of: address, count, driver, expect, force, group, id, name, "
      "on_stop, reset_method, vfs"]),
], ids=["devics", "iommmu", "Driver", "colour", "dirver", "ID", "label"])
def test_unknown_keys_are_errors_with_did_you_mean(
    cli: Cli, text: str, expected: list[str]
) -> None:
    cli.write(text)
    result = cli.validate()
    assert (result.rc, result.out) == (2, problems(*expected))


def test_a_misspelt_address_key_also_leaves_the_entry_without_address(cli: Cli) -> None:
    cli.write(one_entry('adress: "00:02.0"'))
    assert cli.validate().out == problems(
        f"{MAIN}:3:5: devices[0].adress: unknown key 'adress'",
        "    hint: did you mean 'address'?",
        f"{MAIN}:3:5: devices[0]: an entry needs `address` or `id`",
        '    hint: e.g. - address: "0000:02:00.0"  or  - id: "8086:10d3"',
    )


@pytest.mark.parametrize(("text", "expected"), [
    ('version: 1\ndriver: pci-stub\ndevices:\n  - address: "00:02.0"\ndriver: vfio-pci\n',
     f"{MAIN}:5:1: driver: duplicate key 'driver'"),
    ('version: 1\ndevices:\n  - address: "00:02.0"\n    address: "00:03.0"\n',
     f"{MAIN}:4:5: devices[0].address: duplicate key 'address'"),
], ids=["top-level", "in-an-entry"])
def test_duplicate_keys_are_errors_at_the_second_one(cli: Cli, text: str, expected: str) -> None:
    cli.write(text)
    result = cli.validate()
    assert (result.rc, result.out) == (
        2, problems(expected, "    hint: each key may appear once per mapping"))


def test_keys_must_be_words(cli: Cli) -> None:
    cli.write('version: 1\n1: one\ndevices:\n  - address: "00:02.0"\n')
    assert cli.validate().out == problems(
        f"{MAIN}:2:1: keys must be plain words", "    hint: write the key as text, e.g. driver:")


# ---- version, driver, iommu, group, types ---------------------------------------------------


@pytest.mark.parametrize(("version_line", "expected"), [
    ("", [f"{MAIN}:1:1: missing required key 'version'", "    hint: add `version: 1` at the top"]),
    ("version: 2\n", [f"{MAIN}:1:10: version: version must be 1, not 2",
                      "    hint: this pcipassd reads format version 1"]),
    ('version: "1"\n', [f"{MAIN}:1:10: version: version must be 1, not '1'",
                        "    hint: write it as a number: version: 1"]),
    ("version:\n", [f"{MAIN}:1:9: version: version must be 1, not an empty value",
                    "    hint: this pcipassd reads format version 1"]),
])
def test_version_must_be_1(cli: Cli, version_line: str, expected: list[str]) -> None:
    cli.write(f'{version_line}devices:\n  - address: "{NIC_A}"\n')
    result = cli.validate()
    assert (result.rc, result.out) == (2, problems(*expected))


@pytest.mark.parametrize(("top", "entry", "expected"), [
    ("", "driver: vfio", [f"{MAIN}:4:13: devices[0].driver: 'vfio' is not one of pci-stub, "
                          "vfio-pci", "    hint: did you mean 'vfio-pci'?"]),
    ("", "driver: VFIO-PCI", [f"{MAIN}:4:13: devices[0].driver: 'VFIO-PCI' is not one of "
                              "pci-stub, vfio-pci", "    hint: did you mean 'vfio-pci'?"]),
    ("driver: stub\n", "", [f"{MAIN}:2:9: driver: 'stub' is not one of pci-stub, vfio-pci",
                            "    hint: did you mean 'pci-stub'?"]),
    ("driver: nvidia\n", "", [f"{MAIN}:2:9: driver: 'nvidia' is not one of pci-stub, vfio-pci",
                              "    hint: expected one of: pci-stub, vfio-pci"]),
    ("iommu: off\n", "", [f"{MAIN}:2:8: iommu: false is not one of required, warn",
                          "    hint: yes/no/on/off are true/false in YAML; write one of: "
                          "required, warn"]),
    ("iommu: optional\n", "", [f"{MAIN}:2:8: iommu: 'optional' is not one of required, warn",
                               "    hint: expected one of: required, warn"]),
    ("group: isolate\n", "", [f"{MAIN}:2:8: group: 'isolate' is not one of isolated, bind, "
                              "ignore", "    hint: did you mean 'isolated'?"]),
    ("", "driver:", [f"{MAIN}:4:12: devices[0].driver: an empty value is not one of pci-stub, "
                     "vfio-pci", "    hint: expected one of: pci-stub, vfio-pci"]),
])
def test_enumerated_settings(cli: Cli, top: str, entry: str, expected: list[str]) -> None:
    cli.write(one_entry(f'address: "{NIC_A}"\n{entry}', top))
    result = cli.validate()
    assert (result.rc, result.out) == (2, problems(*expected))


@pytest.mark.parametrize(("entry", "expected"), [
    ("count: 0", [f"{MAIN}:4:12: devices[0].count: must be at least 1"]),
    ("count: two", [f"{MAIN}:4:12: devices[0].count: expected a whole number, got text"]),
    ("count: 1.5", [f"{MAIN}:4:12: devices[0].count: expected a whole number, got a number"]),
    ("force: 1", [f"{MAIN}:4:12: devices[0].force: expected true or false, or a list of "
                  "storage, network, boot-vga, console, chipset; got a number",
                  "    hint: e.g. force: [console] overrides only the console"]),
    ('force: "yes"', [f"{MAIN}:4:12: devices[0].force: expected true or false, or a list of "
                      "storage, network, boot-vga, console, chipset; got text",
                      "    hint: e.g. force: [console] overrides only the console"]),
    ("name: 7", [f"{MAIN}:4:11: devices[0].name: expected text, got a number",
                 "    hint: quote it"]),
    ('name: ""', [f"{MAIN}:4:11: devices[0].name: must not be empty",
                  "    hint: give it a value, or remove the key"]),
])
def test_value_types(cli: Cli, entry: str, expected: list[str]) -> None:
    cli.write(one_entry(f'id: "8086:100e"\n{entry}'))
    result = cli.validate()
    assert (result.rc, result.out) == (2, problems(*expected))


@pytest.mark.parametrize(("devices", "expected"), [
    ("devices: []\n", [f"{MAIN}:2:10: devices: must list at least one device",
                       "    hint: add an entry, or remove the key"]),
    ("devices:\n", [f"{MAIN}:2:9: devices: expected a list (- item), got nothing",
                    "    hint: list the devices as `- address: ...` items"]),
    (f'devices:\n  address: "{NIC_A}"\n',
     [f"{MAIN}:3:3: devices: expected a list (- item), got a mapping",
      "    hint: list the devices as `- address: ...` items"]),
    (f'devices:\n  - "{NIC_A}"\n',
     [f"{MAIN}:3:5: devices[0]: expected a mapping (key: value), got text",
      '    hint: write each entry as  - address: "0000:02:00.0"  or  - id: "8086:10d3"']),
    ("devices:\n  - {}\n", [f"{MAIN}:3:5: devices[0]: an entry needs `address` or `id`",
                            '    hint: e.g. - address: "0000:02:00.0"  or  - id: "8086:10d3"']),
    ("", [f"{MAIN}:1:1: no devices are configured",
          "    hint: edit /etc/pcipass.yaml first: add a `devices:` list with at least one "
          "entry (`pcipassd list` shows the devices)"]),
])
def test_the_devices_list(cli: Cli, devices: str, expected: list[str]) -> None:
    cli.write(f"version: 1\n{devices}")
    result = cli.validate()
    assert (result.rc, result.out) == (2, problems(*expected))


# ---- addresses and IDs ----------------------------------------------------------------------


@pytest.mark.parametrize("entry", [
    'address: "0000:0b:1e.0"',
    'address: "0000:0B:1E.0"',
    'address: "0b:1E.0"',
    'address: "0000:0B:1e.*"',
    'id: "1b21:0612"',
    'id: "1B21:0612"',
    'address: "0000:0B:1E.0"\nid: "1B21:0612"',
    'address: "0b:1e.0"\nexpect: "1b21:0612"',
    'address: "0B:1E.0"\nexpect: "1B21:0612"',
    'id: "1B21:0612"\nexpect: "1b21:0612"\ncount: 1',
])
def test_hex_is_case_insensitive(cli: Cli, entry: str) -> None:
    cli.write(one_entry(entry))
    result = cli.validate()
    assert (result.rc, result.out) == (0, f"{MAIN}: valid, 1 entry\n")
    plan = cli("plan")
    assert plan.row(SATA)[:6] == [SATA, "1b21:0612", "ahci", "pci-stub", "8", "bind"]


@pytest.mark.parametrize(("value", "col", "message"), [
    ('"02:00"', 14, "'02:00' is not a PCI address: expected [DDDD:]BB:SS.F, e.g. 0000:02:00.0"),
    ('"0000:02:00"', 14, "'0000:02:00' is not a PCI address: expected [DDDD:]BB:SS.F, "
     "e.g. 0000:02:00.0"),
    ('"0000:00:02:00.0"', 14, "'0000:00:02:00.0' is not a PCI address: expected "
     "[DDDD:]BB:SS.F, e.g. 0000:02:00.0"),
    ('"00:20.0"', 14, "00:20.0: slot 20 is out of range (00-1f)"),
    ('"0000:00:3f.0"', 14, "0000:00:3f.0: slot 3f is out of range (00-1f)"),
    ('"00:02.8"', 14, "00:02.8: function '8' must be 0-7 or *"),
    ('"00:02.a"', 14, "00:02.a: function 'a' must be 0-7 or *"),
    ('"00:02.01"', 14, "00:02.01: function '01' must be 0-7 or *"),
    ('"0g:02.0"', 14, "0g:02.0: bus '0g' must be 2 hex digits"),
    ('"000:02.0"', 14, "000:02.0: bus '000' must be 2 hex digits"),
    ('"00:2.0"', 14, "00:2.0: slot '2' must be 2 hex digits"),
    ('"00000:00:02.0"', 14, "00000:00:02.0: domain '00000' must be 4 hex digits"),
    ('"0000:00:02.0 "', 14, "'0000:00:02.0 ' has blanks around it"),
    ("02-00.0", 14, "'02-00.0' is not a PCI address: expected [DDDD:]BB:SS.F, e.g. 0000:02:00.0"),
])
def test_a_malformed_address_is_named_exactly(
    cli: Cli, value: str, col: int, message: str
) -> None:
    cli.write(one_entry(f"address: {value}"))
    result = cli.validate()
    assert (result.rc, result.out) == (2, problems(
        f"{MAIN}:3:{col}: devices[0].address: {message}",
        '    hint: write it like "0000:02:00.0", quoted'))


@pytest.mark.parametrize(("key", "value", "message"), [
    ("id", '"808610d3"', "'808610d3' is not a vendor:device ID, e.g. 8086:10d3"),
    ("id", '"8086:10g3"', "device '10g3' must be 4 hex digits"),
    ("id", '"86:10d3"', "vendor '86' must be 4 hex digits"),
    ("id", '"8086:10d3:1"', "device '10d3:1' must be 4 hex digits"),
    ("expect", '"8086-10d3"', "'8086-10d3' is not a vendor:device ID, e.g. 8086:10d3"),
    ("expect", '"8086:0x10d3"', "device '0x10d3' must be 4 hex digits"),
])
def test_a_malformed_id_is_named_exactly(cli: Cli, key: str, value: str, message: str) -> None:
    cli.write(one_entry(f'address: "{NIC_A}"\n{key}: {value}'))
    result = cli.validate()
    col = 5 + len(key) + 2
    assert (result.rc, result.out) == (2, problems(
        f"{MAIN}:4:{col}: devices[0].{key}: {message}",
        '    hint: write it like "8086:10d3", quoted'))


@pytest.mark.parametrize("unquoted", ["00:02.0", "0000:00:02.0", "00:02.*"])
def test_an_unquoted_address_is_still_an_address(cli: Cli, unquoted: str) -> None:
    if not unquoted.endswith("*"):  # YAML 1.1 reads these as base-60 numbers
        assert isinstance(yaml.safe_load(f"a: {unquoted}")["a"], float)
    cli.write(one_entry(f"address: {unquoted}"))
    assert cli.validate().out == f"{MAIN}: valid, 1 entry\n"
    assert cli("plan").row(NIC_A)[:6] == [NIC_A, "8086:10d3", "e1000e", "pci-stub", "2", "bind"]


def test_an_unquoted_absent_address_is_named_as_written(cli: Cli) -> None:
    cli.write(one_entry("address: 02:00.0"))  # YAML 1.1: 120.0
    assert cli.validate().out == problems(f"{MAIN}:3:5: devices[0]: no device at 0000:02:00.0",
                                          LSPCI)


def test_a_numeric_address_needs_quotes(cli: Cli) -> None:
    cli.write(one_entry("address: 5"))
    assert cli.validate().out == problems(
        f"{MAIN}:3:14: devices[0].address: expected text, got a number", "    hint: quote it")


# ---- what an entry selects ------------------------------------------------------------------


def test_an_entry_needs_address_or_id(cli: Cli) -> None:
    cli.write(one_entry('name: guest-nic\nexpect: "8086:10d3"'))
    result = cli.validate()
    assert (result.rc, result.out) == (2, problems(
        f"{MAIN}:3:5: devices[0]: an entry needs `address` or `id`",
        '    hint: e.g. - address: "0000:02:00.0"  or  - id: "8086:10d3"'))


def test_address_and_id_the_device_there_must_have_that_id(cli: Cli) -> None:
    cli.write(one_entry(f'address: "{NIC_A}"\nid: "8086:10d3"'))
    assert cli.validate().rc == 0
    plan = cli("plan")
    assert plan.row(NIC_A)[5] == "bind"
    assert not any(line.startswith(NIC_B) for line in plan.lines)  # the id does not widen it

    cli.write(one_entry(f'address: "{NIC_A}"\nid: "8086:100e"'))
    result = cli.validate()
    assert (result.rc, result.out) == (1, problems(
        f"{MAIN}:3:5: devices[0]: {NIC_A} [8086:10d3] is not the expected 8086:100e; "
        "nothing bound",
        "    hint: the hardware changed, or the address is wrong: list the devices with "
        "`lspci -Dnn`; addresses change after hardware or BIOS changes"))


def test_expect_mismatch_is_refused(cli: Cli) -> None:
    cli.write(one_entry(f'address: "{NIC_E1000}"\nexpect: "14e4:1639"\nname: guest-nic'))
    result = cli.validate()
    assert (result.rc, result.out) == (1, problems(
        f"{MAIN}:3:5: devices[0]: {NIC_E1000} [8086:100e] is not the expected 14e4:1639; "
        "nothing bound",
        "    hint: the hardware changed, or the address is wrong: list the devices with "
        "`lspci -Dnn`; addresses change after hardware or BIOS changes"))


def test_expect_contradicting_id(cli: Cli) -> None:
    cli.write(one_entry('id: "8086:10d3"\nexpect: "8086:100e"'))
    result = cli.validate("--offline")  # needs no hardware to see
    assert (result.rc, result.out) == (2, problems(
        f"{MAIN}:4:13: devices[0].expect: expect 8086:100e contradicts id 8086:10d3",
        "    hint: keep one of them"))


@pytest.mark.parametrize(("count", "present"), [(1, 2), (3, 2)])
def test_count_mismatch_names_every_device_found(cli: Cli, count: int, present: int) -> None:
    cli.write(one_entry(f'id: "8086:10d3"\ncount: {count}'))
    result = cli.validate()
    assert (result.rc, result.out) == (1, problems(
        f"{MAIN}:3:5: devices[0]: count: {count}, but {present} present: "
        f"{NIC_A} [8086:10d3], {NIC_B} [8086:10d3]",
        "    hint: a card was added or removed? fix the hardware or the count"))
    plan = cli("plan")
    assert not any(line.startswith(NIC_A) or line.startswith(NIC_B) for line in plan.lines)


def test_count_matching_selects_all_identical_devices(cli: Cli) -> None:
    cli.write(one_entry('id: "8086:10d3"\ncount: 2'))
    assert cli.validate().out == f"{MAIN}: valid, 1 entry\n"
    plan = cli("plan")
    assert plan.row(NIC_A)[5] == plan.row(NIC_B)[5] == "bind"
    assert plan.row(NIC_A)[6] == plan.row(NIC_B)[6] == f"{MAIN}:3"


def test_count_on_one_address_can_never_match(cli: Cli) -> None:
    cli.write(one_entry(f'address: "{NIC_A}"\ncount: 2'))
    result = cli.validate("--offline")
    assert (result.rc, result.out) == (2, problems(
        f"{MAIN}:4:12: devices[0].count: count 2 can never match one address",
        "    hint: an address selects one device; use * as the function"))


def test_wildcard_function_selects_every_function_of_the_slot(cli: Cli) -> None:
    cli.write(one_entry('address: "0000:0a:00.*"\ncount: 2\ndriver: vfio-pci'))
    assert cli.validate().out == f"{MAIN}: valid, 1 entry\n"
    plan = cli("plan")
    assert plan.row(GPU)[:6] == [GPU, "10de:1b80", "-", "vfio-pci", "7", "bind"]
    assert plan.row(GPU_AUDIO)[:6] == [GPU_AUDIO, "10de:10f0", "snd_hda_intel", "vfio-pci",
                                       "7", "bind"]
    cli.write(one_entry('address: "0a:00.*"\ncount: 3'))
    assert cli.validate().out == problems(
        f"{MAIN}:3:5: devices[0]: count: 3, but 2 present: {GPU} [10de:1b80], "
        f"{GPU_AUDIO} [10de:10f0]",
        "    hint: a card was added or removed? fix the hardware or the count")


def test_same_device_two_drivers_names_both_lines(cli: Cli) -> None:
    cli.write(f"""\
        version: 1
        devices:
          - address: "{NIC_A}"
            driver: vfio-pci
          - id: "8086:10d3"
          - address: "{NIC_E1000}"
        """)
    result = cli.validate()
    assert (result.rc, result.out) == (1, problems(
        f"{MAIN}:5:5: devices[1]: {NIC_A} is also selected by {MAIN}:3 with driver vfio-pci, "
        "here with pci-stub",
        "    hint: give both entries the same driver, or remove one"))
    plan = cli("plan")  # both entries are refused; the third one still applies
    assert plan.rc == 1
    assert [line.split()[0] for line in plan.lines[1:] if line.startswith("0000:")] == [
        NIC_E1000]


def test_same_device_two_drivers_across_files(cli: Cli) -> None:
    cli.write(f'version: 1\ndevices:\n  - address: "{NIC_A}"\n')
    cli.write('version: 1\ndriver: vfio-pci\ndevices:\n  - address: "00:02.0"\n', "50-vm.yaml")
    assert cli.validate().out == problems(
        f"/etc/pcipass.d/50-vm.yaml:4:5: devices[0]: {NIC_A} is also selected by {MAIN}:3 "
        "with driver pci-stub, here with vfio-pci",
        "    hint: give both entries the same driver, or remove one")


def test_same_device_same_driver_is_fine(cli: Cli) -> None:
    cli.write(f"""\
        version: 1
        driver: vfio-pci
        devices:
          - address: "{NIC_A}"
          - id: "8086:10d3"
          - address: "00:02.*"
            driver: vfio-pci
        """)
    result = cli.validate()
    assert (result.rc, result.out) == (0, f"{MAIN}: valid, 3 entries\n")
    plan = cli("plan")
    assert plan.row(NIC_A)[3:7] == ["vfio-pci", "2", "bind", f"{MAIN}:4"]  # the first entry
    assert plan.row(NIC_B)[3:7] == ["vfio-pci", "3", "bind", f"{MAIN}:5"]


def test_an_entry_selecting_nothing_is_an_error_and_the_others_still_apply(cli: Cli) -> None:
    cli.write(f"""\
        version: 1
        devices:
          - address: "{NIC_A}"
          - address: "0000:41:00.0"
          - id: "14e4:1639"
            name: broadcom
          - address: "{NIC_E1000}"
        """)
    expected = [
        f"{MAIN}:4:5: devices[1]: no device at 0000:41:00.0", LSPCI,
        f"{MAIN}:5:5: devices[2]: no device with ID 14e4:1639 is present", LSPCI,
    ]
    result = cli.validate()
    assert (result.rc, result.out) == (1, problems(*expected))
    plan = cli("plan")
    assert plan.rc == 1
    assert plan.row(NIC_A)[5] == plan.row(NIC_E1000)[5] == "bind"
    assert plan.lines[-4:] == expected
    apply = cli("apply")
    assert apply.rc == 3
    assert cli.sim.driver_of(NIC_A) == cli.sim.driver_of(NIC_E1000) == "pci-stub"
    assert apply.err.splitlines()[-1] == "pcipassd: 2 bound, 0 unchanged, 0 restored, 0 failed"


@pytest.mark.parametrize(("address", "id_"), [
    (PCIE_BRIDGE, "1b36:000c"), ("0000:00:00.0", "8086:29c0")])
def test_a_bridge_is_refused(cli: Cli, address: str, id_: str) -> None:
    cli.write(one_entry(f'address: "{address}"\nforce: true'))
    result = cli.validate()
    assert (result.rc, result.out) == (1, problems(
        f"{MAIN}:3:5: devices[0]: {address} [{id_}] is a PCI bridge; bridges are never bound",
        "    hint: select the devices behind the bridge instead"))


# ---- main file and drop-ins -----------------------------------------------------------------


def test_dropins_merge_in_name_order_with_per_file_driver_defaults(cli: Cli) -> None:
    cli.write(f'version: 1\ndriver: vfio-pci\ndevices:\n  - address: "{NIC_A}"\n')
    # written out of order: the name decides
    cli.write(f'version: 1\ndevices:\n  - address: "{NIC_B}"\n', "20-inherits.yaml")
    cli.write(f'version: 1\ndriver: pci-stub\ndevices:\n  - address: "{NIC_E1000}"\n'
              f'  - address: "{SATA}"\n    driver: vfio-pci\n', "10-own-default.yaml")
    cli.write("version: 7\nnot: [valid", "30-off.yaml.disabled")  # not *.yaml: never read
    (cli.path("README")).write_text("drop-ins go here\n")
    result = cli.validate()
    assert (result.rc, result.out) == (0, f"{MAIN}, /etc/pcipass.d/10-own-default.yaml, "
                                          "/etc/pcipass.d/20-inherits.yaml: valid, 4 entries\n")
    plan = cli("plan")
    assert plan.row(NIC_A)[3:7] == ["vfio-pci", "2", "bind", f"{MAIN}:4"]
    assert plan.row(NIC_E1000)[3:7] == ["pci-stub", "4", "bind",
                                        "/etc/pcipass.d/10-own-default.yaml:4"]
    assert plan.row(SATA)[3:7] == ["vfio-pci", "8", "bind", "/etc/pcipass.d/10-own-default.yaml:5"]
    assert plan.row(NIC_B)[3:7] == ["vfio-pci", "3", "bind", "/etc/pcipass.d/20-inherits.yaml:3"]


def test_a_yml_dropin_is_read_like_a_yaml_one(cli: Cli) -> None:
    """`.yml` is Ansible's habit: such a drop-in is read, in name order with the `.yaml` ones."""
    cli.write(f'version: 1\ndevices:\n  - address: "{NIC_A}"\n')
    cli.write(f'version: 1\ndriver: vfio-pci\ndevices:\n  - address: "{NIC_B}"\n', "10-vm.yml")
    cli.write(f'version: 1\ndevices:\n  - address: "{NIC_E1000}"\n', "20-more.yaml")
    cli.write("version: 7\n", "30-old.yml~")  # a backup: never read
    result = cli.validate()
    assert (result.rc, result.out) == (0, f"{MAIN}, /etc/pcipass.d/10-vm.yml, "
                                          "/etc/pcipass.d/20-more.yaml: valid, 3 entries\n")
    assert cli("plan").row(NIC_B)[3:7] == ["vfio-pci", "3", "bind", "/etc/pcipass.d/10-vm.yml:4"]


def test_offline_validate_refuses_one_address_with_two_drivers(cli: Cli) -> None:
    """That conflict is in the files, whatever the host has at that address (none here)."""
    cli.write("""\
        version: 1
        devices:
          - address: "0000:42:00.0"
            driver: vfio-pci
          - address: "42:00.*"
          - address: "0000:42:00.1"
            driver: vfio-pci
        """)
    result = cli.validate("--offline")
    assert (result.rc, result.out) == (2, problems(
        f"{MAIN}:5:5: devices[1]: 0000:42:00.0 is also selected by {MAIN}:3 with driver "
        "vfio-pci, here with pci-stub",
        "    hint: give both entries the same driver, or remove one",
        f"{MAIN}:6:5: devices[2]: 0000:42:00.1 is also selected by {MAIN}:5 with driver "
        "pci-stub, here with vfio-pci",
        "    hint: give both entries the same driver, or remove one"))
    cli.write('version: 1\ndevices:\n  - address: "42:00.0"\n  - address: "42:00.1"\n'
              '    driver: vfio-pci\n')  # two functions of one card: no conflict
    assert cli.validate("--offline").rc == 0


def test_an_earlier_dropin_wins_the_conflict_message(cli: Cli) -> None:
    cli.write(f'version: 1\ndevices:\n  - address: "{NIC_E1000}"\n')
    cli.write('version: 1\ndevices:\n  - id: "8086:10d3"\n', "b.yaml")
    cli.write(f'version: 1\ndriver: vfio-pci\ndevices:\n  - address: "{NIC_B}"\n', "a.yaml")
    assert cli.validate().out == problems(
        f"/etc/pcipass.d/b.yaml:3:5: devices[0]: {NIC_B} is also selected by "
        "/etc/pcipass.d/a.yaml:4 with driver vfio-pci, here with pci-stub",
        "    hint: give both entries the same driver, or remove one")


GROUP_REFUSED = [
    "/etc/pcipass.d/gpu.yaml:3:5: devices[0]: IOMMU group 7 of 0000:0a:00.0 also contains "
    "0000:0a:00.1 [10de:10f0] on snd_hda_intel",
    "    hint: select those devices too, or set `group: bind` to bind them with it, "
    "or `group: ignore`",
]


@pytest.mark.parametrize(("main_group", "dropin_group", "expected"), [
    ("", "", GROUP_REFUSED),  # the default is isolated
    ("group: ignore\n", "", []),  # inherited from the main file
    ("group: ignore\n", "group: isolated\n", GROUP_REFUSED),  # the drop-in's own default
    ("", "group: ignore\n", []),
])
def test_dropins_inherit_the_main_files_group(
    cli: Cli, main_group: str, dropin_group: str, expected: list[str]
) -> None:
    cli.write(f'version: 1\n{main_group}devices:\n  - address: "{NIC_A}"\n')
    cli.write(f'version: 1\ndevices:\n  - address: "{GPU}"\n{dropin_group}', "gpu.yaml")
    result = cli.validate()
    valid = f"{MAIN}, /etc/pcipass.d/gpu.yaml: valid, 2 entries\n"
    assert (result.rc, result.out) == ((1, problems(*expected)) if expected else (0, valid))


def test_devices_may_all_be_in_dropins(cli: Cli) -> None:
    cli.write("version: 1\niommu: warn\n")
    cli.write(f'version: 1\ndevices:\n  - address: "{NIC_A}"\n', "nic.yaml")
    assert cli.validate().rc == 0


def test_no_devices_in_any_file(cli: Cli) -> None:
    cli.write("version: 1\ndriver: vfio-pci\n")
    cli.write("version: 1\n", "empty.yaml")
    assert cli.validate().out == problems(
        f"{MAIN}:1:1: no devices are configured",
        "    hint: edit /etc/pcipass.yaml first: add a `devices:` list with at least one entry "
        "(`pcipassd list` shows the devices)")


def test_iommu_only_in_the_main_file(cli: Cli) -> None:
    cli.write(f'version: 1\niommu: warn\ndevices:\n  - address: "{NIC_A}"\n')
    assert cli.validate().rc == 0
    cli.write(f'version: 1\ndevices:\n  - address: "{NIC_B}"\niommu: required\n', "x.yaml")
    result = cli.validate()
    assert (result.rc, result.out) == (2, problems(
        "/etc/pcipass.d/x.yaml:4:1: iommu: only the main file may set iommu",
        f"    hint: iommu is host-wide: move it to {MAIN}"))


def test_a_problem_in_one_file_does_not_hide_those_of_another(cli: Cli) -> None:
    cli.write(f'version: 1\ncolour: red\ndevices:\n  - address: "{NIC_A}"\n')
    cli.write('version: 1\niommu: warn\ndevices:\n  - id: "8086:100e"\n    expect: "8086:1000"\n',
              "x.yaml")
    assert cli.validate().out == problems(
        f"{MAIN}:2:1: colour: unknown key 'colour'",
        "    hint: expected one of: devices, driver, group, iommu, node_labels, version",
        "/etc/pcipass.d/x.yaml:2:1: iommu: only the main file may set iommu",
        f"    hint: iommu is host-wide: move it to {MAIN}",
        "/etc/pcipass.d/x.yaml:5:13: devices[0].expect: expect 8086:1000 contradicts id 8086:100e",
        "    hint: keep one of them",
    )


def test_a_missing_main_file_with_dropins(cli: Cli) -> None:
    cli.write(f'version: 1\ndevices:\n  - address: "{NIC_A}"\n', "nic.yaml")
    result = cli.validate()
    assert (result.rc, result.out) == (2, problems(
        f"{MAIN}: no such file", NO_FILE_HINT))


# ---- files that are not a config ------------------------------------------------------------

ALIAS_BOMB = "version: 1\n" + "".join(
    f"{x}: &{x} [{', '.join([f'*{p}'] * 9) if p else ', '.join(['lol'] * 9)}]\n"
    for p, x in zip(["", *"abcdefgh"], "abcdefghi"))


@pytest.mark.parametrize(("content", "expected"), [
    pytest.param("", [f"{MAIN}: is empty",
                      "    hint: a config needs at least `version: 1` and `devices:`"], id="empty"),
    pytest.param(" \n\n\t\n", [f"{MAIN}: is empty", "    hint: a config needs at least "
                               "`version: 1` and `devices:`"], id="blank"),
    pytest.param("# pcipassd\n# nothing yet\n", [
        f"{MAIN}: is empty", "    hint: a config needs at least `version: 1` and `devices:`"],
        id="only-comments"),
    pytest.param(b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\xb7\x00\xe8\x03", [
        f"{MAIN}: is not UTF-8 text (byte 12)", "    hint: is this the right file?"], id="elf"),
    pytest.param(b"version: 1\ndevices:\n\x00\x00\x01\x02", [
        f"{MAIN}:3:1: not a text file: control character #x0000",
        "    hint: is this the right file? a config is plain text"], id="nul-bytes"),
    pytest.param(b"\xff\xfev\x00e\x00r\x00", [
        f"{MAIN}: is not UTF-8 text (byte 0)", "    hint: is this the right file?"], id="utf-16"),
    pytest.param('version: 1\ndevices:\n  - address: "00:02.0\n', [
        f"{MAIN}:4:1: YAML syntax: while scanning a quoted scalar found unexpected end of stream",
        "    hint: check the indentation and quoting on that line"], id="unclosed-quote"),
    pytest.param('version: 1\ndevices:\n  - address: "00:02.0"\n   driver: vfio-pci\n', [
        f"{MAIN}:4:4: YAML syntax: while parsing a block collection did not find expected '-' "
        "indicator", "    hint: check the indentation and quoting on that line"], id="indent"),
    pytest.param('version: 1\ndevices:\n\t- address: "00:02.0"\n', [
        f"{MAIN}:3:1: YAML syntax: while scanning for the next token found character that "
        "cannot start any token", "    hint: check the indentation and quoting on that line"],
        id="tab"),
    pytest.param("version: 1\ndevices: [\n", [
        f"{MAIN}:3:1: YAML syntax: while parsing a flow node did not find expected node "
        "content", "    hint: check the indentation and quoting on that line"],
        id="unclosed-bracket"),
    pytest.param("version: 1\n---\nversion: 1\n", [
        f"{MAIN}:2:1: YAML syntax: expected a single document in the stream but found another "
        "document", "    hint: check the indentation and quoting on that line"],
        id="two-documents"),
    pytest.param('- version: 1\n- devices: ["00:02.0"]\n', [
        f"{MAIN}:1:1: the top level must be a mapping of keys (version:, devices:)",
        "    hint: start the file with `version: 1`"], id="list-at-top"),
    pytest.param("pci-stub 0000:00:02.0\n", [
        f"{MAIN}:1:1: the top level must be a mapping of keys (version:, devices:)",
        "    hint: start the file with `version: 1`"], id="plain-text"),
    pytest.param("[Unit]\nDescription=x\n", [
        f"{MAIN}:2:1: YAML syntax: did not find expected <document start>",
        "    hint: check the indentation and quoting on that line"], id="ini-file"),
    pytest.param(ALIAS_BOMB, [
        f"{MAIN}: has more than 50000 values (YAML aliases expanding?)",
        "    hint: write the devices out; pcipassd does not expand large aliases"],
        id="alias-bomb"),
    pytest.param("version: 1\nloop: &a [*a]\n", [
        f"{MAIN}:2:7: a YAML alias refers to itself",
        "    hint: write the devices out; pcipassd does not expand large aliases"],
        id="recursive-alias"),
    pytest.param("version: 1\nx:\n" + "".join("  " * i + "-\n" for i in range(1, 200)), [
        f"{MAIN}:66:129: nests more than 64 levels deep; not a pcipassd config",
        "    hint: is this the right file?"], id="deep-block-nesting"),
    pytest.param("version: 1\ndevices:\n" + "- " * 30_000 + "x\n", [
        f"{MAIN}:3:127: nests more than 64 levels deep; not a pcipassd config",
        "    hint: is this the right file?"], id="deep-compact-sequences"),
    pytest.param(f'version: 1\ndevices:\n  - address: !!python/object:os.system "{NIC_A}"\n', [
        f"{MAIN}:3:14: devices[0].address: YAML: the tag !!python/object:os.system is not "
        "allowed",
        "    hint: pcipassd reads plain YAML: no tags (!x) or merge keys (<<)"], id="python-tag"),
    pytest.param(f'version: 1\nx: &x {{driver: vfio-pci}}\ndevices:\n  - <<: *x\n'
                 f'    address: "{NIC_A}"\n', [
        f"{MAIN}:4:5: devices[0]: YAML: merge keys (<<) are not supported",
        "    hint: pcipassd reads plain YAML: no tags (!x) or merge keys (<<)"], id="merge-key"),
])
def test_a_file_that_is_not_a_config_is_one_clear_line(
    cli: Cli, content: str | bytes, expected: list[str]
) -> None:
    cli.write(content)
    result = cli.validate()
    assert (result.rc, result.out, result.err) == (2, problems(*expected), "")
    plan = cli("plan")  # the same line, logged, before anything is touched
    assert plan.rc == 2
    assert plan.err.splitlines()[0].startswith(f"pcipassd: error: {expected[0]}")
    assert cli.sim.writes == []


def test_deep_flow_nesting_is_one_line_not_a_crash(machine: SimKernel) -> None:
    """In a child process: libyaml's composer used to overflow the C stack (SIGSEGV) here."""
    path = machine.root / "etc/pcipass.yaml"
    path.parent.mkdir(parents=True)
    path.write_text("version: 1\nx: " + "[" * 100_000 + "]" * 100_000 + "\n")
    env = {**os.environ, "PYTHONPATH": str(Path(pcipassd.__file__).parent.parent)}
    env.pop("JOURNAL_STREAM", None)
    env.pop("INVOCATION_ID", None)
    child = subprocess.run(
        [sys.executable, "-m", "pcipassd", "--root", str(machine.root), "validate"],
        capture_output=True, text=True, env=env, timeout=60, check=False)
    # One problem naming the file, no crash. Which check stops it first, pcipassd's depth guard
    # or PyYAML's own flow-depth limit (PyYAML >= 6.0.2), is PyYAML's business.
    lines = child.stdout.splitlines()
    assert (child.returncode, child.stderr, lines[-1]) == (2, "", "1 problem found")
    assert lines[0].startswith(MAIN) and _deep(lines[0]), lines[0]


def _deep(line: str) -> bool:
    return "nests more than 64 levels deep" in line or "YAML syntax" in line


@pytest.mark.parametrize("loader", [yaml.SafeLoader, getattr(yaml, "CSafeLoader", None)],
                         ids=["python", "libyaml"])
@pytest.mark.parametrize(("content", "expected"), [
    (ALIAS_BOMB, f"{MAIN}: has more than 50000 values (YAML aliases expanding?)"),
    ("version: 1\nloop: &a [*a]\n", f"{MAIN}:2:7: a YAML alias refers to itself"),
    ("version: 1\nx: " + "[" * 5000 + "]" * 5000 + "\n",
     f"{MAIN}: nests more than 64 levels deep; not a pcipassd config"),
    ("version: 1\nx:\n" + "".join("  " * i + "-\n" for i in range(1, 200)),
     f"{MAIN}:66:129: nests more than 64 levels deep; not a pcipassd config"),
    ("version: 1\ndevices:\n" + "- " * 30_000 + "x\n",
     f"{MAIN}:3:127: nests more than 64 levels deep; not a pcipassd config"),
    ("version: 1\n\x07\n", f"{MAIN}:2:1: not a text file: control character #x0007"),
], ids=["alias-bomb", "recursive-alias", "deep-flow", "deep-block", "deep-compact",
        "control-character"])
def test_both_yaml_loaders_fail_cleanly(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, loader: type[yaml.SafeLoader] | None,
    content: str, expected: str,
) -> None:
    if loader is None:
        pytest.skip("PyYAML was built without libyaml")
    monkeypatch.setattr(yamldoc, "_loader", lambda: loader)
    cli.write(content)
    result = cli.validate()
    assert result.rc == 2
    if "[[[" in content:  # either depth limit may stop it first: see the test above
        assert result.lines[0].startswith(MAIN) and _deep(result.lines[0]), result.lines[0]
    else:
        assert result.lines[0] == expected
    assert result.lines[-1] == "1 problem found"


def test_plain_aliases_are_fine(cli: Cli) -> None:
    cli.write(f"""\
        version: 1
        devices:
          - &nic {{address: "{NIC_A}", driver: vfio-pci}}
          - *nic
        """)
    assert cli.validate().out == f"{MAIN}: valid, 2 entries\n"


def test_a_huge_file(cli: Cli) -> None:
    head = f'version: 1\ndevices:\n  - address: "{NIC_A}"\n'
    pad = "#" * (MAX_BYTES - len(head) - 1) + "\n"
    cli.write(head + pad)  # exactly at the limit: still read
    assert cli.validate().out == f"{MAIN}: valid, 1 entry\n"
    cli.write(head + pad + "\n")
    result = cli.validate()
    assert (result.rc, result.out) == (2, problems(
        f"{MAIN}: is larger than 1024 KiB; not a pcipassd config"))


def test_a_directory_instead_of_the_file(cli: Cli) -> None:
    cli.path().mkdir(parents=True)
    result = cli.validate()
    assert (result.rc, result.out) == (2, problems(f"{MAIN}: is a directory, not a YAML file"))


def test_a_directory_named_like_a_dropin(cli: Cli) -> None:
    cli.write(f'version: 1\ndevices:\n  - address: "{NIC_A}"\n')
    cli.path("old.yaml").mkdir(parents=True)
    assert cli.validate().out == problems(
        "/etc/pcipass.d/old.yaml: is a directory, not a YAML file")


def test_a_missing_file(cli: Cli) -> None:
    result = cli.validate()
    assert (result.rc, result.out) == (2, problems(
        f"{MAIN}: no such file", NO_FILE_HINT))


def test_a_symlink_loop(cli: Cli) -> None:
    cli.path().parent.mkdir(parents=True)
    cli.path().symlink_to("pcipass.yaml")
    result = cli.validate()
    assert (result.rc, result.out) == (2, problems(
        f"{MAIN}: cannot read: Too many levels of symbolic links"))


NOBODY = 65534
SETPRIV = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]


def _as_nobody(work: Path) -> tuple[list[str], dict[str, str]]:
    """The argv prefix and environment that run pcipassd's Python as nobody: a Python nobody may
    run (this one, unless it lives under /root, mode 0700, as a venv's may; else the system's),
    with copies of pcipassd and, if that Python lacks it, PyYAML in `work` (world-readable)."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1", "LC_ALL": "C.UTF-8"}

    def runs(argv: list[str]) -> bool:
        return subprocess.run([*SETPRIV, *argv], env=env, capture_output=True,
                              check=False).returncode == 0

    python = next((p for p in (os.path.realpath(sys.executable), "/usr/bin/python3")
                   if os.path.exists(p) and runs([p, "-c", "pass"])), None)
    assert python, "no Python that nobody may run: install python3"
    shutil.copytree(Path(pcipassd.__file__).parent, work / "pcipassd")
    if not runs([python, "-c", "import yaml"]):  # e.g. Debian's python3 without python3-yaml
        shutil.copytree(Path(yaml.__file__).parent, work / "yaml")  # its C part may not load:
    work.chmod(0o755)  # then PyYAML's pure-Python parser serves, as pcipassd allows
    for d, _, names in os.walk(work):
        os.chmod(d, 0o755)
        for n in names:
            os.chmod(os.path.join(d, n), 0o644)
    return [*SETPRIV, python, "-m", "pcipassd"], {**env, "PYTHONPATH": str(work)}


def test_an_unreadable_file(cli: Cli) -> None:
    """A mode-000 file is readable to root (CAP_DAC_OVERRIDE), so as root this runs pcipassd as
    nobody: a child process, with a root that nobody may enter."""
    expected = (2, problems(f"{MAIN}: cannot read: permission denied", "    hint: run as root"))
    if os.geteuid() != 0:
        cli.write(f'version: 1\ndevices:\n  - address: "{NIC_A}"\n').chmod(0)
        result = cli.validate()
        assert (result.rc, result.out) == expected
        return
    with tempfile.TemporaryDirectory() as tmp:  # not tmp_path: under /tmp/pytest-of-root, 0700
        top = Path(tmp)
        top.chmod(0o755)
        (top / "root/etc").mkdir(parents=True)
        config = top / "root/etc/pcipass.yaml"
        config.write_text(f'version: 1\ndevices:\n  - address: "{NIC_A}"\n')
        config.chmod(0)
        argv, env = _as_nobody(top / "lib")
        child = subprocess.run([*argv, "--root", str(top / "root"), "validate", "--offline"],
                               capture_output=True, text=True, env=env, timeout=60, check=False)
        assert (child.returncode, child.stdout) == expected, child.stderr
        assert child.stderr == ""
        config.write_text("version: [1\n")  # and the same reader, given a readable file,
        config.chmod(0o644)  # reads it (its YAML: jsonschema may not be there for nobody)
        child = subprocess.run([*argv, "--root", str(top / "root"), "validate", "--offline"],
                               capture_output=True, text=True, env=env, timeout=60, check=False)
        assert (child.returncode, child.stdout.splitlines()[0]) == (
            2, f"{MAIN}:2:1: YAML syntax: while parsing a flow sequence did not find expected "
            "',' or ']'"), child.stderr


# ---- validate FILE..., --offline, --root ----------------------------------------------------


def test_validate_explicit_files(cli: Cli, tmp_path: Path) -> None:
    cli.write("not: [a config")  # the configured files are not read
    cli.write("neither: {", "x.yaml")
    good = tmp_path / "good.yaml"
    good.write_text(f'version: 1\ndevices:\n  - address: "{NIC_A}"\n')
    bad = tmp_path / "bad.yaml"
    bad.write_text('version: 1\ndevices:\n  - address: "00:02.9"\n')
    result = cli.validate(str(good))
    assert (result.rc, result.out) == (0, f"{good}: valid, 1 entry\n")
    result = cli.validate(str(good), str(bad))
    assert (result.rc, result.out) == (2, problems(
        f"{bad}:3:14: devices[0].address: 00:02.9: function '9' must be 0-7 or *",
        '    hint: write it like "0000:02:00.0", quoted'))
    result = cli.validate(str(good), str(tmp_path / "absent.yaml"))
    assert (result.rc, result.out) == (2, problems(
        f"{tmp_path / 'absent.yaml'}: no such file", "    hint: check its name"))


def test_validate_explicit_files_under_the_root_are_named_as_on_the_host(cli: Cli) -> None:
    path = cli.write('version: 1\ndevices:\n  - address: "00:02.0"\n    drive: x\n', "x.yaml")
    assert cli.validate(str(path)).out == problems(
        "/etc/pcipass.d/x.yaml:4:5: devices[0].drive: unknown key 'drive'",
        "    hint: did you mean 'driver'?")


def test_offline_skips_the_device_checks_only(cli: Cli) -> None:
    cli.write(one_entry('address: "0000:41:00.0"\nexpect: "14e4:1639"'))
    assert cli.validate().rc == 1
    result = cli.validate("--offline")
    assert (result.rc, result.out) == (0, f"{MAIN}: valid, 1 entry\n")
    cli.write(one_entry('address: "0000:41:00.0"\ndriver: vfio'))
    result = cli.validate("--offline")
    assert (result.rc, result.out) == (2, problems(
        f"{MAIN}:4:13: devices[0].driver: 'vfio' is not one of pci-stub, vfio-pci",
        "    hint: did you mean 'vfio-pci'?"))


def test_offline_needs_no_sysfs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "chroot"
    (root / "etc").mkdir(parents=True)
    (root / "etc/pcipass.yaml").write_text(f'version: 1\ndevices:\n  - address: "{NIC_A}"\n')
    assert main(["--root", str(root), "validate", "--offline"]) == 0
    assert capsys.readouterr().out == f"{MAIN}: valid, 1 entry\n"
    assert main(["--root", str(root), "validate"]) == 1  # nothing is present there
    assert capsys.readouterr().out == problems(f"{MAIN}:3:5: devices[0]: no device at {NIC_A}",
                                               LSPCI)


def test_the_config_option_names_another_main_file(cli: Cli, tmp_path: Path) -> None:
    other = tmp_path / "alt" / "pcipass.yaml"
    other.parent.mkdir()
    other.write_text(f'version: 1\ndevices:\n  - address: "{NIC_A}"\n')
    (other.parent / "pcipass.d").mkdir()
    (other.parent / "pcipass.d" / "b.yaml").write_text(
        f'version: 1\ndevices:\n  - address: "{NIC_B}"\n')
    result = cli("--config", str(other), "validate")
    assert (result.rc, result.out) == (
        0, f"{other}, {other.parent / 'pcipass.d' / 'b.yaml'}: valid, 2 entries\n")


def test_fixture_machine_is_what_the_tests_assume(machine: SimKernel) -> None:
    assert machine.driver_of(SATA) == "ahci"
    assert machine.driver_of(GPU) is None
    assert machine.driver_of(GPU_AUDIO) == "snd_hda_intel"
    assert machine.driver_of(NIC_A) == machine.driver_of(NIC_B) == "e1000e"
    assert os.path.basename(os.readlink(machine.device_dir(GPU) / "iommu_group")) == "7"
