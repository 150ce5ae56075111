"""The guard at boot: what a live run judged is remembered and refused at boot, before the
network is up; a NIC never judged live is judged from the network configuration. End to end
through the CLI on the simulated kernel, with mounts, routes and interfaces faked under the same
root: two identical e1000e NICs, NIC_A the uplink (enp0s2), NIC_B its twin (enp0s3)."""

from __future__ import annotations

import json
import os

import pytest
from hosttree import FakeHost
from machine import Machine
from simkernel import DISK, NIC_A, NIC_B, NIC_E1000

MEMORY = "var/lib/pcipassd/guard.json"
HOLD_LIST = "etc/pcipass.early"
BOTH = '  - id: "8086:10d3"\n    driver: vfio-pci\n'
DEFAULT_VIA = "{}\t00000000\t0202000A\t0003\t0\t0\t100\t00000000\t0\t0\t0"
SUBNET_VIA = "{}\t0002000A\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0"
UNTIL = "refused until a live run decides otherwise"


@pytest.fixture(autouse=True)
def booting_host(m: Machine) -> None:
    """Every test here starts from the typical machine as at boot: / on vda1 (DISK), the three
    NICs' interfaces down, no route."""
    fake = FakeHost(m.root)
    disk = fake.disk("vda", "254:0", f"{rel(m, DISK)}/virtio2")
    fake.partition(disk, "vda1", "254:1")
    fake.mountinfo("22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw")
    for name, bdf, mac in (("enp0s2", NIC_A, "52:54:00:12:34:02"),
                           ("enp0s3", NIC_B, "52:54:00:12:34:03"),
                           ("enp0s4", NIC_E1000, "52:54:00:12:34:04")):
        path = fake.netdev(name, rel(m, bdf), flags="0x1002")  # down, as at boot
        fake.write(f"{path}/address", f"{mac}\n")
        fake.write(f"{path}/type", "1\n")


def rel(m: Machine, bdf: str) -> str:
    return "/" + os.path.relpath(m.sim.device_dir(bdf), m.root)


def network_up(m: Machine, iface: str = "enp0s2") -> None:
    """systemd-networkd got a DHCP lease on `iface`: it is up, with the default route."""
    fake = FakeHost(m.root)
    fake.write(f"/sys/class/net/{iface}/flags", "0x1003\n")
    fake.routes(DEFAULT_VIA.format(iface), SUBNET_VIA.format(iface))


def boot(m: Machine) -> None:
    """The next boot, before network-pre.target: no route, every interface down."""
    fake = FakeHost(m.root)
    fake.routes()
    for iface in ("enp0s2", "enp0s3", "enp0s4"):
        fake.write(f"/sys/class/net/{iface}/flags", "0x1002\n")


def config(m: Machine, body: str) -> None:
    m.config("version: 1\ndevices:\n" + body)


def networkd(m: Machine, name: str, match: str, enabled: bool = True) -> str:
    fake = FakeHost(m.root)
    fake.write(f"/etc/systemd/network/{name}", f"[Match]\n{match}\n\n[Network]\nDHCP=yes\n")
    if enabled:
        fake.link("/etc/systemd/system/multi-user.target.wants/systemd-networkd.service",
                  "/lib/systemd/system/systemd-networkd.service")
        fake.write("/lib/systemd/system/systemd-networkd.service", "[Unit]\n")
    return f"/etc/systemd/network/{name}"


def hold_lines(m: Machine) -> list[str]:
    path = m.root / HOLD_LIST
    return path.read_text().splitlines()[2:] if path.exists() else []


# --- remembered from a live run --------------------------------------------------------------


def test_the_uplink_refused_live_is_still_refused_at_boot(m: Machine) -> None:
    network_up(m)
    config(m, BOTH)
    live = m.run("apply")
    assert live.rc == 1
    assert f"refusing {NIC_A}: {NIC_A} carries the default route via enp0s2 (hint:" in live.err
    assert (m.root / MEMORY).exists(), "a live apply remembers what it judged"

    boot(m)
    r = m.run("apply")
    assert r.rc == 1
    assert (f"refusing {NIC_A}: {NIC_A} carries the default route via enp0s2 as last seen live "
            f"(") in r.err
    assert (f"UTC); {UNTIL} (hint: to bind only the matches the host can spare, replace the "
            f'entry with:\n      - address: "{NIC_B}"\n') in r.err
    assert f"add `force: [network]` to take {NIC_A} too, which carries the default route" in r.err
    assert (m.driver(NIC_A), m.driver(NIC_B)) == ("e1000e", "e1000e"), \
        "the id: entry is refused as a whole, as it was live"
    assert not any(NIC_A in line for line in hold_lines(m))


def test_at_boot_the_twin_binds_and_the_uplink_stays_out_of_the_hold_list(m: Machine) -> None:
    network_up(m)
    config(m, f'  - address: "{NIC_A}"\n  - address: "{NIC_B}"\n')
    assert m.run("apply").rc == 3
    boot(m)
    r = m.run("apply")
    assert r.rc == 3
    assert f"refusing {NIC_A}: {NIC_A} carries the default route via enp0s2 as last seen" in r.err
    assert (m.driver(NIC_A), m.driver(NIC_B)) == ("e1000e", "pci-stub")
    assert hold_lines(m) == [f"dev {NIC_B} 8086:10d3 pci-stub"]


def test_plan_status_and_list_show_the_remembered_reason(m: Machine) -> None:
    network_up(m)
    config(m, BOTH)
    m.run("apply")
    boot(m)
    plan = m.run("plan")
    assert plan.rc == 1
    assert f"{NIC_A} carries the default route via enp0s2 as last seen live (" in plan.out
    status = m.run("status")
    assert f"{NIC_A} carries the default route via enp0s2 as last seen live (" in status.out
    listed = m.run("list", "--json")
    groups = {g["group"]: g for g in json.loads(listed.out)["groups"]}
    assert groups["2"]["passable"] is False
    assert groups["2"]["verdict"].startswith(
        f"blocked: {NIC_A} carries the default route via enp0s2 as last seen live (")
    assert groups["3"]["passable"] is True


def test_force_network_still_binds_a_remembered_uplink(m: Machine) -> None:
    network_up(m)
    config(m, BOTH)
    m.run("apply")
    boot(m)
    config(m, BOTH + "    force: [network]\n")
    assert m.run("apply").rc == 0
    assert (m.driver(NIC_A), m.driver(NIC_B)) == ("vfio-pci", "vfio-pci")


def test_a_live_run_where_the_uplink_is_no_longer_critical_lets_it_bind_at_boot(
        m: Machine) -> None:
    network_up(m)
    config(m, BOTH)
    m.run("apply")
    boot(m)
    network_up(m, "enp0s4")  # the e1000 carries the network now
    assert m.run("apply").rc == 0, "live: decides anew"
    boot(m)
    config(m, f'  - address: "{NIC_A}"\n')
    assert m.run("apply").rc == 0
    assert m.driver(NIC_A) == "pci-stub"


def test_read_only_verbs_never_write_the_memory(m: Machine) -> None:
    network_up(m)
    config(m, BOTH)
    for verb in ("plan", "status", "list", "check", "validate"):
        m.run(verb)
    assert not (m.root / MEMORY).exists()


def test_another_card_at_the_remembered_address_voids_the_memory_for_it(m: Machine) -> None:
    network_up(m)
    config(m, f'  - address: "{NIC_A}"\n')
    m.run("apply")
    memory = json.loads((m.root / MEMORY).read_text())
    for device in memory["devices"]:
        if device["bdf"] == NIC_A:
            device["id"] = "8086:1533"  # an i210 was there when it was judged
    (m.root / MEMORY).write_text(json.dumps(memory))
    boot(m)
    r = m.run("apply")
    assert r.rc == 0, r.err
    assert m.driver(NIC_A) == "pci-stub"


# --- never judged live: the network configuration --------------------------------------------


def test_networkd_names_the_uplink_of_a_nic_never_judged_live(m: Machine) -> None:
    path = networkd(m, "20-wired.network", "Name=enp0s2")
    config(m, f'  - address: "{NIC_A}"\n  - address: "{NIC_B}"\n')
    r = m.run("apply")
    assert r.rc == 3
    assert (f"refusing {NIC_A}: {NIC_A} has enp0s2, which will be brought up at boot by "
            f"systemd-networkd ({path}), and was never judged with the network up; {UNTIL}"
            ) in r.err
    assert (m.driver(NIC_A), m.driver(NIC_B)) == ("e1000e", "pci-stub")


def test_networkd_by_mac_address(m: Machine) -> None:
    networkd(m, "10-uplink.network", "MACAddress=52:54:00:12:34:03")
    config(m, f'  - address: "{NIC_A}"\n  - address: "{NIC_B}"\n')
    r = m.run("apply")
    assert f"refusing {NIC_B}: {NIC_B} has enp0s3, which will be brought up" in r.err
    assert (m.driver(NIC_A), m.driver(NIC_B)) == ("pci-stub", "e1000e")


def test_a_networkd_glob_matching_both_nics_refuses_both_and_says_so(m: Machine) -> None:
    path = networkd(m, "20-wired.network", "Name=en*")
    config(m, f'  - address: "{NIC_A}"\n  - address: "{NIC_B}"\n')
    r = m.run("apply")
    assert r.rc == 1
    assert (f"{path} matches enp0s2, enp0s3, enp0s4: counting each as brought up; a run while "
            "the network is up tells which one carries it") in r.err
    assert f"{NIC_B} has enp0s3, which may be brought up at boot by systemd-networkd" in r.err
    assert (m.driver(NIC_A), m.driver(NIC_B)) == ("e1000e", "e1000e")


def test_networkd_files_are_not_read_while_networkd_is_disabled(m: Machine) -> None:
    networkd(m, "20-wired.network", "Name=enp0s2", enabled=False)
    config(m, f'  - address: "{NIC_A}"\n')
    assert m.run("apply").rc == 0
    assert m.driver(NIC_A) == "pci-stub"


def test_ifupdown_bridge_port_is_the_uplink(m: Machine) -> None:
    fake = FakeHost(m.root)
    fake.write("/etc/network/interfaces",
               "source /etc/network/interfaces.d/*\nauto lo\niface lo inet loopback\n")
    fake.write("/etc/network/interfaces.d/br0",
               "auto br0\niface br0 inet dhcp\n    bridge_ports enp0s3\n")
    config(m, f'  - address: "{NIC_A}"\n  - address: "{NIC_B}"\n')
    r = m.run("apply")
    assert (f"refusing {NIC_B}: {NIC_B} has enp0s3, which will be brought up at boot by "
            "ifupdown (/etc/network/interfaces.d/br0)") in r.err
    assert (m.driver(NIC_A), m.driver(NIC_B)) == ("pci-stub", "e1000e")


def network_manager(m: Machine, no_auto_default: bool) -> None:
    fake = FakeHost(m.root)
    fake.link("/etc/systemd/system/multi-user.target.wants/NetworkManager.service",
              "/lib/systemd/system/NetworkManager.service")
    fake.write("/lib/systemd/system/NetworkManager.service", "[Unit]\n")
    fake.write("/etc/NetworkManager/system-connections/uplink.nmconnection",
               "[connection]\nid=uplink\ntype=ethernet\ninterface-name=enp0s2\n\n"
               "[ipv4]\nmethod=auto\n")
    if no_auto_default:
        fake.write("/etc/NetworkManager/conf.d/10-no-auto.conf", "[main]\nno-auto-default=*\n")


def test_network_manager_profile_names_the_uplink(m: Machine) -> None:
    network_manager(m, no_auto_default=True)
    config(m, f'  - address: "{NIC_A}"\n  - address: "{NIC_B}"\n')
    r = m.run("apply")
    assert (f"{NIC_A} has enp0s2, which will be brought up at boot by NetworkManager "
            "(/etc/NetworkManager/system-connections/uplink.nmconnection)") in r.err
    assert (m.driver(NIC_A), m.driver(NIC_B)) == ("e1000e", "pci-stub")


def test_network_managers_default_auto_connect_refuses_every_wired_nic(m: Machine) -> None:
    network_manager(m, no_auto_default=False)
    config(m, f'  - address: "{NIC_B}"\n')
    r = m.run("apply")
    assert r.rc == 1
    assert ("NetworkManager connects every wired NIC that has no profile (enp0s3, enp0s4) "
            "unless `no-auto-default=*`: counting each as brought up") in r.err
    assert m.driver(NIC_B) == "e1000e"


def test_a_damaged_memory_is_one_line_and_the_boot_run_still_fails_closed(
        m: Machine) -> None:
    networkd(m, "20-wired.network", "Name=enp0s2")
    path = m.root / MEMORY
    path.parent.mkdir(parents=True)
    path.write_text('{"format": 1, "devices": [')
    config(m, BOTH)
    r = m.run("apply")
    assert r.rc == 1
    assert "Traceback" not in r.err
    lines = [line for line in r.err.splitlines() if "guard.json" in line]
    assert len(lines) == 1
    assert lines[0].startswith(
        "pcipassd: warning: /var/lib/pcipassd/guard.json is damaged: it is not JSON (line 1")
    assert lines[0].endswith("; judging as if nothing was remembered, until `pcipassd apply` "
                             "runs with the network up")
    assert f"refusing {NIC_A}: {NIC_A} has enp0s2, which will be brought up" in r.err
    assert (m.driver(NIC_A), m.driver(NIC_B)) == ("e1000e", "e1000e")


@pytest.mark.parametrize("body", [
    '{"format": 1, "judged": "2025-01-02T13:45:07Z", "devices": [{"bdf": "../../x"}]}',
    '{"format": 2, "devices": []}',
    '[]',
    '{"format": 1, "judged": "yesterday", "devices": []}',
    '{"format": 1, "judged": "2025-01-02T13:45:07Z", "devices": [{"bdf": "0000:00:02.0", '
    '"id": "8086:10d3", "reasons": [{"kind": "magic", "text": "x"}], "refused": []}]}',
])
def test_a_memory_of_the_wrong_shape_is_never_trusted(m: Machine, body: str) -> None:
    path = m.root / MEMORY
    path.parent.mkdir(parents=True)
    path.write_text(body)
    config(m, f'  - address: "{NIC_A}"\n')
    r = m.run("plan")
    assert "Traceback" not in r.err
    assert "/var/lib/pcipassd/guard.json is damaged: " in r.err


def test_a_live_apply_rewrites_a_damaged_memory(m: Machine) -> None:
    path = m.root / MEMORY
    path.parent.mkdir(parents=True)
    path.write_text("garbage")
    network_up(m)
    config(m, BOTH)
    m.run("apply")
    data = json.loads(path.read_text())
    assert data["format"] == 1
    uplink = next(d for d in data["devices"] if d["bdf"] == NIC_A)
    assert uplink["reasons"] == [{"kind": "network",
                                  "text": "carries the default route via enp0s2"}]
    assert not [n for n in os.listdir(path.parent) if n.startswith(".")], "no temp file left"
