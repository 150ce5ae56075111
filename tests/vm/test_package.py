"""The Debian package's life on a host, with apt, on a real kernel: install, configure, reboot,
upgrade to a newer build, purge, with the devices checked after each step.

Two boots of one disk that starts without pcipassd:

1. ``apt-get install ./pcipassd_0.1.0-1_all.deb``: both units enabled, neither started, no
   device touched, the shipped config in place as a conffile. Then a config that lists one of
   the two identical e1000e, and a reboot.
2. The enabled unit held the device at boot. ``apt-get install ./pcipassd_<newer>.deb``: the
   device stays on pci-stub, the unit is not restarted (same invocation) but reloaded, and the
   rebuilt initramfs carries the hold. ``apt-get purge pcipassd``: the device is back on
   e1000e, the config, the hold list, the units' links and /run/pcipass are gone, and so is
   pcipassd from the initramfs.
"""

from __future__ import annotations

import pytest
from pkgbuild import build_deb, debian_version

from .conftest import out_root
from .harness import DEFAULT_TOPOLOGY, BootResult, boot
from .image import BaseImage, FileContent, build_image, no_install

E1000E_A = DEFAULT_TOPOLOGY.bdf("e1000e-a")
E1000E_B = DEFAULT_TOPOLOGY.bdf("e1000e-b")
FIRST = debian_version()
NEWER = f"{FIRST.rsplit('-', 1)[0]}-{int(FIRST.rsplit('-', 1)[1]) + 1}"

CONFIG = f"""\
version: 1
devices:
  - address: "{E1000E_B}"
    expect: "8086:10d3"
    name: guest-nic
"""

SCRIPT = rf"""
initrd=/boot/initrd.img-$(uname -r)
exists() {{ if [ -e "$1" ] || [ -L "$1" ]; then echo present; else echo absent; fi; }}
in_initramfs() {{ lsinitramfs "$initrd" | grep -E 'pcipassd|pcipass\.early' | tr '\n' ' '; }}
mkdir -p /var/lib/apt/lists/partial  # the test image's apt lists were pruned
case $PCIPASS_BOOT in
1)
    pci_inventory before
    capture install apt-get install -y /root/pcipassd_{FIRST}_all.deb
    result installed.version "$(dpkg-query -W -f='${{Version}}' pcipassd)"
    result installed.enabled "$(systemctl is-enabled pcipassd.service pcipassd-early.service \
        | tr '\n' ' ')"
    result installed.active "$(systemctl is-active pcipassd.service)"
    result installed.conffiles "$(dpkg-query -W -f='${{Conffiles}}' pcipassd | awk '{{print $1}}')"
    cmp -s /etc/pcipass.yaml /usr/share/doc/pcipassd/pcipass.yaml.example
    result installed.config_is_shipped "$?"
    pci_inventory installed
    cp /root/pcipass.yaml /etc/pcipass.yaml
    next_action reboot
    ;;
2)
    pci_inventory configured
    result configured.active "$(systemctl is-active pcipassd.service)"
    result configured.parsed "$(stat -c '%U %a' /var/cache/pcipassd/parsed.json 2>&1)"
    invocation=$(systemctl show -p InvocationID --value pcipassd.service)
    since=$(date +%s); sleep 1
    capture upgrade apt-get install -y /root/pcipassd_{NEWER}_all.deb
    result upgraded.version "$(dpkg-query -W -f='${{Version}}' pcipassd)"
    result upgraded.active "$(systemctl is-active pcipassd.service)"
    result upgraded.same_invocation \
        "$([ "$(systemctl show -p InvocationID --value pcipassd.service)" = "$invocation" ] \
           && echo yes || echo no)"
    capture upgraded.journal journalctl -u pcipassd.service --since "@$since" -o cat --no-pager
    pci_inventory upgraded
    result upgraded.initramfs "$(in_initramfs)"

    capture purge apt-get purge -y pcipassd
    pci_inventory purged
    result purged.status "$(dpkg-query -W -f='${{db:Status-Abbrev}}' pcipassd 2>&1)"
    result purged.active "$(systemctl is-active pcipassd.service)"
    for f in /etc/pcipass.yaml /etc/pcipass.early /etc/pcipass.d /usr/lib/pcipassd \
             /usr/sbin/pcipassd /var/cache/pcipassd \
             /etc/systemd/system/sysinit.target.wants/pcipassd.service \
             /etc/systemd/system/sysinit.target.wants/pcipassd-early.service; do
        result "purged$f" "$(exists "$f")"
    done
    result purged.run "$(ls -A /run/pcipass 2>/dev/null | tr '\n' ' ')"
    result purged.initramfs "$(in_initramfs)"
    ;;
esac
"""


@pytest.fixture(scope="module")
def lifecycle(vm_base: BaseImage,
              tmp_path_factory: pytest.TempPathFactory) -> tuple[BootResult, BootResult]:
    first, newer = build_deb(), build_deb(revision=NEWER)
    files: dict[str, FileContent] = {f"/root/{deb.name}": (deb.read_bytes(), 0o644)
                                     for deb in (first, newer)}
    files["/root/pcipass.yaml"] = CONFIG
    image = build_image(None, SCRIPT, files, base=vm_base, install=no_install,
                        workdir=tmp_path_factory.mktemp("package"))
    logs = out_root() / "package"
    try:
        # update-initramfs runs in the guest at every step: about a minute each under TCG
        return (boot(image, log_dir=logs / "boot-1", timeout=600),
                boot(image, log_dir=logs / "boot-2", timeout=900))
    finally:
        image.disk.unlink(missing_ok=True)


def test_install_enables_both_units_and_starts_nothing(
        lifecycle: tuple[BootResult, BootResult]) -> None:
    res = lifecycle[0]
    where = f"{res['install']}\n{res.where()}"
    assert res.rc("install") == 0, where
    assert res["installed.version"] == FIRST, where
    assert res["installed.enabled"].split() == ["enabled", "enabled"], where
    assert res["installed.active"] == "inactive", where
    assert res["installed.conffiles"] == "/etc/pcipass.yaml", where
    assert res["installed.config_is_shipped"] == "0", where
    for bdf in (E1000E_A, E1000E_B):
        assert res.driver(bdf, "before") == "e1000e", where
        assert res.driver(bdf, "installed") == "e1000e", where
        assert res[f"installed.{bdf}.override"] == "none", where


def test_the_enabled_unit_holds_the_configured_device_at_boot(
        lifecycle: tuple[BootResult, BootResult]) -> None:
    res = lifecycle[1]
    assert res["configured.active"] == "active", res.where()
    assert res.driver(E1000E_B, "configured") == "pci-stub", res.where()
    assert res.driver(E1000E_A, "configured") == "e1000e", res.where()
    # the unit, hardened as it is, kept the configuration's parse for the next run
    assert res["configured.parsed"] == "root 600", res.where()


def test_upgrade_keeps_the_device_held_and_reloads(
        lifecycle: tuple[BootResult, BootResult]) -> None:
    res = lifecycle[1]
    where = f"{res['upgrade']}\n{res.where()}"
    assert res.rc("upgrade") == 0, where
    assert res["upgraded.version"] == NEWER, where
    assert res["upgraded.active"] == "active", where
    assert res["upgraded.same_invocation"] == "yes", where  # not restarted
    assert res.driver(E1000E_B, "upgraded") == "pci-stub", where
    assert res.driver(E1000E_A, "upgraded") == "e1000e", where
    journal = res["upgraded.journal"]
    assert "0 bound, 1 unchanged, 0 restored, 0 failed" in journal, journal  # the reload
    assert "1 restored" not in journal, journal  # what a stop would have logged
    # the update-initramfs trigger rebuilt the initramfs, with the hold list
    assert "etc/pcipass.early" in res["upgraded.initramfs"].split(), where


def test_purge_gives_the_device_back_and_deletes_everything(
        lifecycle: tuple[BootResult, BootResult]) -> None:
    res = lifecycle[1]
    where = f"{res['purge']}\n{res.where()}"
    assert res.rc("purge") == 0, where
    assert res.driver(E1000E_B, "purged") == "e1000e", where
    assert res[f"purged.{E1000E_B}.override"] == "none", where
    assert res.driver(E1000E_A, "purged") == "e1000e", where
    assert res["purged.active"] == "inactive", where
    assert not res["purged.status"].startswith("ii"), where
    for path in ("/etc/pcipass.yaml", "/etc/pcipass.early", "/etc/pcipass.d", "/usr/lib/pcipassd",
                 "/usr/sbin/pcipassd", "/var/cache/pcipassd",
                 "/etc/systemd/system/sysinit.target.wants/pcipassd.service",
                 "/etc/systemd/system/sysinit.target.wants/pcipassd-early.service"):
        assert res[f"purged{path}"] == "absent", (path, where)
    assert res["purged.run"] == "", where
    assert res["purged.initramfs"] == "", where  # no initramfs holds a device any more
