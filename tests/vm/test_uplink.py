"""The network guard across a reboot: the uplink is the host's at boot too.

Two identical e1000e NICs. The first is the uplink: systemd-networkd brings it up with DHCP on
QEMU's user network, and a default route via 10.0.2.2 (its gateway: with restrict=on, so that
nothing leaves the host, QEMU's DHCP offers none). The config selects both by ID. pcipassd
runs at boot before the network is configured, when no route says which NIC is the uplink.

1. First boot: refused at boot (judged from networkd's configuration), and again by a live
   `systemctl reload` with the network up; the twin stays e1000e too (the entry is refused as a
   whole), the hint names it by address. An e1000 on pci-stub keeps the unit active. Then a
   reboot.
2. Second boot: the uplink is still on e1000e, with its default route.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from .conftest import out_root
from .harness import DEFAULT_TOPOLOGY, E1000E_ID, BootResult, boot
from .image import BaseImage, build_image, enable_unit, install_from_deb

UPLINK_MAC = "52:54:00:00:00:03"
_uplink = DEFAULT_TOPOLOGY.device("e1000e-a")
TOPO = replace(DEFAULT_TOPOLOGY, devices=tuple(
    replace(d, qemu_args=(*d.qemu_args[:-1], f"{d.qemu_args[-1]},mac={UPLINK_MAC}"))
    if d is _uplink else d for d in DEFAULT_TOPOLOGY.devices))
UPLINK, TWIN, OTHER = TOPO.bdf("e1000e-a"), TOPO.bdf("e1000e-b"), TOPO.bdf("e1000")

CONFIG = f"""\
version: 1
devices:
  - id: "{E1000E_ID}"
    driver: vfio-pci
  - address: "{OTHER}"
"""

NETWORK = f"""\
[Match]
MACAddress={UPLINK_MAC}

[Network]
DHCP=ipv4
# QEMU's user network with restrict=on (nothing leaves the host) offers no router by DHCP
Gateway=10.0.2.2
"""

SCRIPT = r"""
route() {  # route PREFIX: the default route and the uplink's driver, once the network is up
    for i in $(seq 120); do ip -4 route show default | grep -q . && break; sleep 1; done
    result "$1.route" "$(ip -4 route show default)"
    pci_inventory "$1"
}
route boot$PCIPASS_BOOT
capture journal journalctl -b -u pcipassd -o cat --no-pager
capture networkd journalctl -b -u systemd-networkd -o cat --no-pager
capture links networkctl status --no-pager
case $PCIPASS_BOOT in
1)
    systemctl reload pcipassd; result reload.rc "$?"
    pci_inventory reloaded
    capture journal.reload journalctl -b -u pcipassd -o cat --no-pager
    capture plan pcipassd plan
    next_action reboot
    ;;
esac
"""


def _install(rootfs: Path) -> None:
    install_from_deb(rootfs)
    (rootfs / "etc/systemd/network").mkdir(parents=True, exist_ok=True)
    (rootfs / "etc/systemd/network/10-uplink.network").write_text(NETWORK)
    (rootfs / "etc/systemd/system/systemd-networkd.service").unlink()  # the base masks it
    enable_unit(rootfs, "systemd-networkd.service")


@pytest.fixture(scope="module")
def uplink(vm_base: BaseImage, tmp_path_factory: pytest.TempPathFactory) -> list[BootResult]:
    image = build_image(CONFIG, SCRIPT, base=vm_base, workdir=tmp_path_factory.mktemp("uplink"),
                        install=_install)
    logs = out_root() / "uplink"
    try:
        return [boot(image, topology=TOPO, log_dir=logs / f"boot-{n}") for n in (1, 2)]
    finally:
        image.disk.unlink(missing_ok=True)


def test_the_uplink_is_refused_at_boot_and_live(uplink: list[BootResult]) -> None:
    res = uplink[0]
    assert "via 10.0.2.2" in res["boot1.route"], res.where()
    assert res.driver(UPLINK, "boot1") == "e1000e"
    assert res.driver(UPLINK, "reloaded") == "e1000e"
    assert res["reload.rc"] == "0"
    assert res.driver(OTHER, "reloaded") == "pci-stub"
    assert f"refusing {UPLINK}" in res["journal"], res["journal"]
    assert f"refusing {UPLINK}" in res["journal.reload"]
    assert f'- address: "{TWIN}"' in res["journal.reload"], "the safe config, ready to paste"


def test_the_uplink_is_still_the_hosts_after_a_reboot(uplink: list[BootResult]) -> None:
    res = uplink[1]
    assert res.driver(UPLINK, "boot2") == "e1000e", res.where()
    assert "via 10.0.2.2" in res["boot2.route"], res.where()
    assert f"refusing {UPLINK}" in res["journal"], res["journal"]
