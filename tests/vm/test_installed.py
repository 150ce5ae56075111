"""The real project, installed from its Debian package, on a real kernel."""

from __future__ import annotations

import pytest

from .conftest import out_root
from .harness import DEFAULT_TOPOLOGY, BootResult, boot
from .image import REPO_ROOT, BaseImage, build_image, install_from_deb

pytestmark = pytest.mark.skipif(
    not (REPO_ROOT / "Makefile").is_file(), reason="the project has no Makefile yet"
)

E1000E_A = DEFAULT_TOPOLOGY.bdf("e1000e-a")
E1000E_B = DEFAULT_TOPOLOGY.bdf("e1000e-b")
E1000 = DEFAULT_TOPOLOGY.bdf("e1000")

# Scenario 1: one of the two identical e1000e, by address, to pci-stub.
ONE_E1000E = f"""\
version: 1
devices:
  - address: "{E1000E_B}"
    expect: "8086:10d3"
    name: guest-nic
"""


APPLY_THEN_STOP = r"""
capture help pcipassd --help
capture version pcipassd --version
capture check pcipassd check
capture validate pcipassd validate
capture plan pcipassd plan
capture example pcipassd --config /usr/share/doc/pcipassd/pcipass.yaml.example validate
result unit.enabled "$(systemctl is-enabled pcipassd.service 2>&1)"
pci_inventory boot
capture unit.boot systemctl show pcipassd.service -p ActiveState -p Result -p ExecMainStatus
capture status.boot pcipassd status
capture journal.export journalctl -b --no-pager -o export -u pcipassd.service
journalctl --update-catalog
capture journal.explained journalctl -x -b --no-pager -u pcipassd.service
capture security systemd-analyze security pcipassd.service
systemctl stop pcipassd.service
result stop.rc "$?"
pci_inventory stopped
capture unit.stopped systemctl show pcipassd.service -p ActiveState -p Result
"""


@pytest.fixture(scope="module")
def applied(vm_base: BaseImage, tmp_path_factory: pytest.TempPathFactory) -> BootResult:
    """One boot shared by the tests below: apply at boot, then ``systemctl stop``."""
    workdir = tmp_path_factory.mktemp("apply-then-stop")
    image = build_image(
        ONE_E1000E, APPLY_THEN_STOP, base=vm_base, workdir=workdir, install=install_from_deb
    )
    try:
        return boot(image, log_dir=out_root() / "apply_then_stop" / "boot-1")
    finally:
        image.disk.unlink(missing_ok=True)


def test_pcipassd_runs_in_guest(applied: BootResult) -> None:
    """The package's files work on Debian's python3: --help, --version, check, validate, plan
    (converged after the boot's apply)."""
    res = applied
    print(res["check"])
    assert res.rc("help") == 0, res["help"]
    assert res["help"].startswith("usage: pcipassd"), res["help"]
    assert res.rc("version") == 0, res["version"]
    assert res.rc("check") == 0, (res["check"], res.where())
    assert res.rc("validate") == 0, res["validate"]
    assert res.rc("plan") == 0, res["plan"]
    assert res["unit.enabled"] == "enabled"
    # The shipped example names a device this machine does not have: refused, exit 2.
    assert res.rc("example") == 2, res["example"]


def test_boot_apply_then_stop_restores(applied: BootResult) -> None:
    """At boot one of two identical e1000e goes to pci-stub; ``systemctl stop`` gives it back."""
    res = applied
    where = f"{res.where()}; journal: {res.get('journal.pcipassd')}"
    assert "ActiveState=active" in res["unit.boot"], where
    assert res.driver(E1000E_B, "boot") == "pci-stub", where
    assert res.driver(E1000E_A, "boot") == "e1000e", where
    assert res.driver(E1000, "boot") == "e1000", where

    assert res["stop.rc"] == "0", where
    assert res.driver(E1000E_B, "stopped") == "e1000e", where
    assert res[f"stopped.{E1000E_B}.override"] == "none", where
    assert res.driver(E1000E_A, "stopped") == "e1000e", where


def test_journal_gets_structured_fields(applied: BootResult) -> None:
    """Under systemd, pcipassd logs through python3-systemd with its PCIPASS_* fields."""
    journal = applied["journal.pcipassd"]
    assert "Logging error" not in journal, journal
    export = applied["journal.export"]
    assert "SYSLOG_IDENTIFIER=pcipassd" in export, export
    assert f"PCIPASS_DEVICE={E1000E_B}" in export, export
    for field in ("PCIPASS_ACTION=bind", "PCIPASS_DRIVER_FROM=e1000e", "PCIPASS_DRIVER_TO=pci-stub",
                  "PCIPASS_ID=8086:10d3", "PCIPASS_NAME=guest-nic",
                  "PCIPASS_ENTRY=/etc/pcipass.yaml:3"):
        assert field in export, field
    assert "MESSAGE=1 bound, 0 unchanged, 0 restored, 0 failed" in export


def test_journalctl_x_explains_a_bind_from_the_catalog(applied: BootResult) -> None:
    explained = applied["journal.explained"]
    assert f"Subject: PCI device {E1000E_B} handed to pci-stub" in explained, explained
    assert "`systemctl stop pcipassd` gives it back to the host." in explained


def test_the_unit_is_hardened(applied: BootResult) -> None:
    """systemd-analyze rated the unit 9.5 UNSAFE before it was hardened."""
    last = applied["security"].strip().splitlines()[-1]
    assert "Overall exposure level for pcipassd.service:" in last, applied["security"]
    assert float(last.split(":")[1].split()[0]) < 5.0, last
