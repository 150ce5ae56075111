"""`status --kubevirt` and `status --proxmox-mapping` on the simulated kernel: what KubeVirt and
a Proxmox cluster need from this node, for the devices it holds on vfio-pci."""

from __future__ import annotations

import os
import re

import pytest
import yaml
from machine import Machine
from simkernel import NIC_A, NIC_B, NIC_E1000

VFIO_CONFIG = f"""\
    version: 1
    driver: vfio-pci
    devices:
      - address: "{NIC_A}"
        name: guest-nic
      - address: "{NIC_B}"
    """

# Kubernetes: a qualified name, its prefix a DNS subdomain, its name at most 63 characters
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_SUBDOMAIN = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*")
_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")


def valid_extended_resource_name(text: str) -> bool:
    prefix, sep, name = text.partition("/")
    return (bool(sep) and len(prefix) <= 253 and bool(_SUBDOMAIN.fullmatch(prefix))
            and not prefix.endswith("kubernetes.io") and len(name) <= 63
            and bool(_NAME.fullmatch(name)))


def test_kubevirt_prints_one_entry_per_vendor_device(m: Machine) -> None:
    m.config(VFIO_CONFIG)
    m.run("apply")
    r = m.run("status", "--kubevirt")
    assert r.rc == 0, r.err
    assert r.out.startswith("# paste under spec.configuration of the KubeVirt CR")
    assert f"    # {NIC_A} guest-nic, {NIC_B}\n" in r.out
    doc = yaml.safe_load(r.out)
    assert doc == {"permittedHostDevices": {"pciHostDevices": [
        {"pciVendorSelector": "8086:10d3", "resourceName": "pcipassd.io/8086-10d3"}]}}
    assert valid_extended_resource_name(
        doc["permittedHostDevices"]["pciHostDevices"][0]["resourceName"])


def test_kubevirt_resource_names_come_from_the_ids_only(m: Machine) -> None:
    m.config(f"""\
        version: 1
        driver: vfio-pci
        devices:
          - address: "{NIC_E1000}"
            name: "a name with spaces: and colons"
          - address: "{NIC_A}"
        """)
    m.run("apply")
    r = m.run("status", "--kubevirt")
    assert r.rc == 0, r.err
    entries = yaml.safe_load(r.out)["permittedHostDevices"]["pciHostDevices"]
    assert [e["resourceName"] for e in entries] == ["pcipassd.io/8086-100e",
                                                     "pcipassd.io/8086-10d3"]
    assert all(valid_extended_resource_name(e["resourceName"]) for e in entries)


def test_proxmox_mapping_prints_a_map_per_device_with_its_identity(m: Machine) -> None:
    (m.root / "etc").mkdir(exist_ok=True)
    (m.root / "etc/hostname").write_text("pve-7.example.org\n")
    m.config(VFIO_CONFIG)
    m.run("apply")
    r = m.run("status", "--proxmox-mapping")
    assert r.rc == 0, r.err
    lines = r.out.splitlines()
    assert lines[0].startswith("# this node's part of a Proxmox PCI resource mapping")
    assert [x for x in lines if not x.startswith("#")] == [
        f"--map node=pve-7,path={NIC_A},id=8086:10d3,subsystem-id=8086:a01f,iommugroup=2",
        f"--map node=pve-7,path={NIC_B},id=8086:10d3,subsystem-id=8086:a01f,iommugroup=3"]
    assert f"# {NIC_A} [8086:10d3] guest-nic" in lines


@pytest.mark.parametrize(("option", "to"), [("--kubevirt", "KubeVirt"),
                                             ("--proxmox-mapping", "Proxmox")])
def test_engines_say_what_to_change_for_a_device_on_pci_stub(m: Machine, option: str,
                                                             to: str) -> None:
    m.config(f'version: 1\ndevices:\n  - address: "{NIC_E1000}"\n')
    m.run("apply")
    r = m.run("status", option)
    assert r.rc == 1
    assert r.out == (f"# {NIC_E1000} [8086:100e] is held on pci-stub, which {to} cannot use (it "
                     "needs vfio-pci): set `driver: vfio-pci` in its entry (/etc/pcipass.yaml:3) "
                     "and run `systemctl reload pcipassd`\n")
    assert r.err == (f"pcipassd: error: nothing to give {to}: no configured device is on "
                     "vfio-pci (hint: the `#` lines above say what to change)\n")


def test_engines_leave_out_a_device_not_on_vfio_pci_yet(m: Machine) -> None:
    m.config(VFIO_CONFIG)
    m.run("apply")
    m.config(VFIO_CONFIG + f'  - address: "{NIC_E1000}"\n')  # not applied yet
    r = m.run("status", "--proxmox-mapping")
    assert r.rc == 1
    assert f"# {NIC_E1000} [8086:100e] is not on vfio-pci yet: run `systemctl reload pcipassd`" \
        in r.out.splitlines()
    assert f"path={NIC_E1000}" not in r.out
    assert f"path={NIC_A}" in r.out


def test_engine_options_exclude_each_other_and_json(m: Machine) -> None:
    m.config(VFIO_CONFIG)
    for argv in (["--kubevirt", "--proxmox-mapping"], ["--json", "--kubevirt"],
                 ["--qemu", "--proxmox-mapping"]):
        with pytest.raises(SystemExit) as e:
            m.run("status", *argv)
        assert e.value.code == 64


def test_proxmox_node_is_the_short_uname_without_etc_hostname(m: Machine) -> None:
    m.config(VFIO_CONFIG)
    m.run("apply")
    (m.root / "etc/hostname").unlink(missing_ok=True)
    r = m.run("status", "--proxmox-mapping")
    assert f"--map node={os.uname().nodename.partition('.')[0]},path={NIC_A}," in r.out
