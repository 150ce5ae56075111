"""A card is one unit (issue 17, section 1): function 0 with the multi-function bit in its
header, with the other functions of its slot in its IOMMU group. Through the CLI on the
simulated kernel: what the admin sees (exit status, the message line, where each device ends,
the order of the give-back)."""

from __future__ import annotations

import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from machine import FakeJournal, Machine
from simkernel import SimKernel

from pcipassd.card import card_of
from pcipassd.host import Host
from pcipassd.inventory import scan

GPU = "0000:41:00.0"  # multi-function: a card with its HDMI audio, both in IOMMU group 9
AUDIO = "0000:41:00.1"
GPU2 = "0000:42:00.0"  # multi-function, its audio in another IOMMU group (ACS on the slot)
AUDIO2 = "0000:42:00.1"
PLAIN = "0000:43:00.0"  # two functions, function 0 without the multi-function bit
PLAIN_AUDIO = "0000:43:00.1"
PF0 = "0000:44:00.0"  # a two-port NIC with SR-IOV: PFs 44:00.0 and .1, a VF at 44:00.2
PF1 = "0000:44:00.1"
VF = "0000:44:00.2"
LPC = "0000:00:1f.0"  # the chipset's slot: LPC bridge, HD audio, SMBus, one IOMMU group
HDA = "0000:00:1f.3"
SMBUS = "0000:00:1f.4"


@pytest.fixture(autouse=True)
def cards(sim_host: SimKernel) -> None:
    sim = sim_host
    sim.add_driver("nouveau", [(0x10DE, 0x1E84), (0x10DE, 0x1F08), (0x10DE, 0x1F82)])
    sim.add_driver("snd_hda_intel", [(0x10DE, 0x10F0), (0x10DE, 0x10F9), (0x8086, 0x7A50)])
    sim.add_driver("ixgbe", [(0x8086, 0x10FB)])
    sim.add_driver("ixgbevf", [(0x8086, 0x10ED)])
    sim.add_driver("lpc_ich", [(0x8086, 0x7A06)])
    sim.add_driver("i801_smbus", [(0x8086, 0x7A23)])
    sim.add_device(GPU, 0x10DE, 0x1E84, cls=0x030000, iommu_group=9, multifunction=True)
    sim.add_device(AUDIO, 0x10DE, 0x10F0, cls=0x040300, iommu_group=9)
    sim.add_device(GPU2, 0x10DE, 0x1F08, cls=0x030000, iommu_group=10, multifunction=True)
    sim.add_device(AUDIO2, 0x10DE, 0x10F9, cls=0x040300, iommu_group=11)
    sim.add_device(PLAIN, 0x10DE, 0x1F82, cls=0x030000, iommu_group=12)
    sim.add_device(PLAIN_AUDIO, 0x10DE, 0x10F0, cls=0x040300, iommu_group=13)
    sim.add_device(PF0, 0x8086, 0x10FB, iommu_group=14, multifunction=True)
    sim.add_device(PF1, 0x8086, 0x10FB, iommu_group=15)
    sim.add_device(VF, 0x8086, 0x10ED, iommu_group=16, physfn=PF0)
    sim.add_device(LPC, 0x8086, 0x7A06, cls=0x060100, iommu_group=17, multifunction=True)
    sim.add_device(HDA, 0x8086, 0x7A50, cls=0x040300, iommu_group=17)
    sim.add_device(SMBUS, 0x8086, 0x7A23, cls=0x0C0500, iommu_group=17)


def config(m: Machine, body: str) -> None:
    m.config("version: 1\ndriver: vfio-pci\ndevices:\n" + body)


def test_the_simulated_kernel_has_the_multifunction_bit_in_the_header(sim: SimKernel) -> None:
    assert (sim.device_dir(GPU) / "config").read_bytes()[0x0E] == 0x80
    assert (sim.device_dir(AUDIO) / "config").read_bytes()[0x0E] == 0x00
    assert (sim.device_dir(VF) / "physfn").resolve() == sim.device_dir(PF0).resolve()


def test_a_card_is_function_0_with_its_functions_in_its_group(sim: SimKernel) -> None:
    inventory = scan(Host(sim.root))
    card = card_of(inventory.devices[AUDIO], inventory, {})
    assert card is not None
    assert [d.bdf for d in card.functions] == [GPU, AUDIO]
    assert card.fix == 'address: "0000:41:00.*"'
    apart = card_of(inventory.devices[GPU2], inventory, {})
    assert apart is not None
    assert ([d.bdf for d in apart.functions], [d.bdf for d in apart.apart]) == ([GPU2], [AUDIO2])
    assert card_of(inventory.devices[PLAIN], inventory, {}) is None, "no multi-function bit"
    nic = card_of(inventory.devices[PF0], inventory, {})
    assert nic is not None
    assert VF not in [d.bdf for d in (*nic.functions, *nic.apart)], "a VF is no card function"
    assert card_of(inventory.devices[VF], inventory, {}) is None


def test_function_0_without_its_audio_is_refused_naming_the_audio(m: Machine) -> None:
    config(m, f'  - address: "{GPU}"\n')
    r = m.run("apply")
    assert r.rc == 1
    assert (f'pcipassd: error: /etc/pcipass.yaml:4:5: devices[0]: refusing {GPU}: a card is held '
            f"as one unit, and this leaves behind {AUDIO} [10de:10f0] on snd_hda_intel (card "
            '0000:41:00, IOMMU group 9) (hint: take the whole card: address: "0000:41:00.*")'
            ) in r.err.splitlines()
    assert "also contains" not in r.err, "said once, as a card, not again as a group"
    assert (m.driver(GPU), m.driver(AUDIO)) == ("nouveau", "snd_hda_intel")


def test_audio_without_its_gpu_is_refused_naming_the_gpu(m: Machine) -> None:
    config(m, f'  - address: "{AUDIO}"\n')
    r = m.run("plan")
    assert r.rc == 1
    assert (f"/etc/pcipass.yaml:4:5: devices[0]: refusing {AUDIO}: a card is held as one unit, "
            f"and this leaves behind {GPU} [10de:1e84] on nouveau (card 0000:41:00, IOMMU "
            "group 9)") in r.out, "plan shows the problem with its hint"
    assert '    hint: take the whole card: address: "0000:41:00.*"' in r.out.splitlines()
    assert m.run("apply").rc == 1
    assert (m.driver(GPU), m.driver(AUDIO)) == ("nouveau", "snd_hda_intel")


def test_a_function_left_unbound_is_still_left_behind(m: Machine) -> None:
    """The group alone would let this pass (an unbound mate does not make the group unviable),
    but the audio would be left to snd_hda_intel at the next boot."""
    m.sim.write(m.sim.pci / "drivers/snd_hda_intel/unbind", AUDIO)
    config(m, f'  - address: "{GPU}"\n')
    r = m.run("apply")
    assert r.rc == 1
    assert f"leaves behind {AUDIO} [10de:10f0] on (none)" in r.err
    assert m.driver(GPU) == "nouveau"


def test_the_fix_takes_the_card_whole(m: Machine) -> None:
    config(m, '  - address: "0000:41:00.*"\n')
    r = m.run("apply")
    assert r.rc == 0, r.err
    assert (m.driver(GPU), m.driver(AUDIO)) == ("vfio-pci", "vfio-pci")


def test_two_entries_that_take_the_card_between_them_are_fine(m: Machine) -> None:
    config(m, f'  - address: "{GPU}"\n  - id: "10de:10f0"\n    count: 2\n'
              f'  - address: "{PLAIN}"\n')
    r = m.run("apply")
    assert r.rc == 0, r.err
    assert (m.driver(GPU), m.driver(AUDIO)) == ("vfio-pci", "vfio-pci")


def test_group_bind_takes_the_rest_of_the_card(m: Machine) -> None:
    config(m, f'  - address: "{GPU}"\n    group: bind\n')
    r = m.run("apply")
    assert r.rc == 0, r.err
    assert (m.driver(GPU), m.driver(AUDIO)) == ("vfio-pci", "vfio-pci")


def test_group_ignore_warns_instead(m: Machine) -> None:
    config(m, f'  - address: "{GPU}"\n    group: ignore\n')
    r = m.run("apply")
    assert r.rc == 0, r.err
    assert (f"pcipassd: warning: {GPU}: only part of card 0000:41:00 is held; left behind: "
            f"{AUDIO} [10de:10f0] on snd_hda_intel (IOMMU group 9) (hint: take the whole card: "
            'address: "0000:41:00.*" in /etc/pcipass.yaml:4)') in r.err.splitlines()
    assert (m.driver(GPU), m.driver(AUDIO)) == ("vfio-pci", "snd_hda_intel")


def test_the_rest_in_another_group_is_warned_about(m: Machine) -> None:
    config(m, f'  - address: "{GPU2}"\n')
    r = m.run("apply")
    assert r.rc == 0, r.err
    assert (f"pcipassd: warning: {GPU2}: only part of card 0000:42:00 is held; left behind: "
            f"{AUDIO2} [10de:10f9] on snd_hda_intel (IOMMU group 11) (hint: take the whole "
            'card: address: "0000:42:00.*" in /etc/pcipass.yaml:4)') in r.err.splitlines()
    assert (m.driver(GPU2), m.driver(AUDIO2)) == ("vfio-pci", "snd_hda_intel")
    r = m.run("plan")
    assert f"only part of card 0000:42:00 is held; left behind: {AUDIO2}" in r.out


def test_audio_apart_from_its_gpu_is_warned_about(m: Machine) -> None:
    config(m, f'  - address: "{AUDIO2}"\n')
    r = m.run("apply")
    assert r.rc == 0, r.err
    assert (f"warning: {AUDIO2}: only part of card 0000:42:00 is held; left behind: {GPU2} "
            "[10de:1f08] on nouveau (IOMMU group 10)") in r.err


def test_no_multifunction_bit_no_card(m: Machine) -> None:
    config(m, f'  - address: "{PLAIN}"\n')
    r = m.run("apply")
    assert r.rc == 0, r.err
    assert "card" not in r.err
    assert (m.driver(PLAIN), m.driver(PLAIN_AUDIO)) == ("vfio-pci", "snd_hda_intel")


def test_an_sriov_vf_is_not_left_behind(m: Machine) -> None:
    config(m, '  - address: "0000:44:00.0"\n  - address: "0000:44:00.1"\n')
    r = m.run("apply")
    assert r.rc == 0, r.err
    assert "card" not in r.err
    assert (m.driver(PF0), m.driver(PF1), m.driver(VF)) == ("vfio-pci", "vfio-pci", "ixgbevf")


def test_a_vf_alone_is_no_part_of_a_card(m: Machine) -> None:
    config(m, f'  - address: "{VF}"\n')
    r = m.run("apply")
    assert r.rc == 0, r.err
    assert "card" not in r.err
    assert m.driver(VF) == "vfio-pci"


def test_the_chipset_slot_is_not_a_card(m: Machine) -> None:
    config(m, f'  - address: "{HDA}"\n')
    r = m.run("apply")
    assert r.rc == 1
    assert f"refusing {HDA}: IOMMU group 17 also contains the chipset" in r.err
    assert "card" not in r.err, "the chipset is never a card to pass through"
    assert m.driver(HDA) == "snd_hda_intel"


def _given_back(err: str) -> list[str]:
    return [line.split()[1] for line in err.splitlines() if "vfio-pci -> " in line]


def test_restore_gives_the_card_back_function_0_last(m: Machine) -> None:
    config(m, '  - address: "0000:41:00.*"\n  - address: "0000:42:00.*"\n'
              f'  - address: "{PLAIN}"\n  - address: "{PLAIN_AUDIO}"\n')
    assert m.run("apply").rc == 0
    r = m.run("restore")
    assert r.rc == 0, r.err
    assert _given_back(r.err) == [AUDIO, GPU, AUDIO2, GPU2, PLAIN, PLAIN_AUDIO], (
        "a card's audio first, function 0 last; other devices in BDF order")
    assert [m.driver(d) for d in (GPU, AUDIO, GPU2, AUDIO2)] == [
        "nouveau", "snd_hda_intel", "nouveau", "snd_hda_intel"]


def test_an_entry_removed_gives_its_card_back_function_0_last(
        m: Machine, journal: FakeJournal) -> None:
    config(m, '  - address: "0000:41:00.*"\n')
    assert m.run("apply").rc == 0
    config(m, f'  - address: "{PLAIN}"\n')
    assert m.run("apply").rc == 0
    restores = [e["PCIPASS_DEVICE"] for e in journal.entries
                if e.get("PCIPASS_ACTION") == "restore"]
    assert restores == [AUDIO, GPU]
    r = m.run("plan", "--json")
    assert r.rc == 0
    assert (m.driver(GPU), m.driver(AUDIO)) == ("nouveau", "snd_hda_intel")


def test_plan_lists_a_cards_restores_function_0_last(m: Machine) -> None:
    config(m, '  - address: "0000:41:00.*"\n')
    assert m.run("apply").rc == 0
    config(m, f'  - address: "{PLAIN}"\n')
    r = m.run("plan")
    rows = [line.split()[0] for line in r.out.splitlines() if " restore " in line]
    assert rows == [AUDIO, GPU]


def test_status_qemu_q35_keeps_the_card_layout(m: Machine) -> None:
    config(m, '  - address: "0000:41:00.*"\n  - address: "0000:42:00.1"\n'
              f'  - address: "{PLAIN}"\n')
    assert m.run("apply").rc == 0
    r = m.run("status", "--qemu-q35", "20")
    assert r.rc == 0, r.err
    assert r.out.splitlines() == [
        "# needs -machine q35 (PCI Express): a pcie-root-port per card, chassis 20-22, its "
        "functions at their host function numbers",
        "-device pcie-root-port,id=pcipass-rp20,bus=pcie.0,chassis=20,slot=20 "
        f"-device vfio-pci,host={GPU},bus=pcipass-rp20,addr=00.0,multifunction=on "
        f"-device vfio-pci,host={AUDIO},bus=pcipass-rp20,addr=00.1",
        "-device pcie-root-port,id=pcipass-rp21,bus=pcie.0,chassis=21,slot=21 "
        f"-device vfio-pci,host={AUDIO2},bus=pcipass-rp21,addr=00.0",
        "-device pcie-root-port,id=pcipass-rp22,bus=pcie.0,chassis=22,slot=22 "
        f"-device vfio-pci,host={PLAIN},bus=pcipass-rp22,addr=00.0",
    ], "function 0 multifunction=on; a function alone at 00.0, where a guest looks"
    plain = m.run("status", "--qemu")
    assert plain.out.splitlines() == [
        f"-device vfio-pci,host={GPU} -device vfio-pci,host={AUDIO}",
        f"-device vfio-pci,host={AUDIO2}", f"-device vfio-pci,host={PLAIN}"], "the default stays"


@pytest.mark.parametrize("base", ["0", "256", "x"])
def test_status_qemu_q35_base_is_a_chassis_number(m: Machine, base: str) -> None:
    with pytest.raises(SystemExit) as e:
        m.run("status", "--qemu-q35", base)
    assert e.value.code == 64


def test_status_qemu_q35_root_ports_must_fit(m: Machine) -> None:
    config(m, '  - address: "0000:41:00.*"\n  - address: "0000:42:00.*"\n')
    assert m.run("apply").rc == 0
    r = m.run("status", "--qemu-q35", "255")
    assert r.rc == 1
    assert "2 root ports from 255 go past chassis 255 (hint: give a lower BASE: --qemu-q35 254)" \
        in r.err


def test_status_qemu_q35_one_card_as_the_readme_shows_it(m: Machine) -> None:
    config(m, '  - address: "0000:41:00.*"\n')
    assert m.run("apply").rc == 0
    out = m.run("status", "--qemu-q35", "20").out
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert f"   # pcipassd status --qemu-q35 20\n{textwrap.indent(out, '   ')}   ```" in readme


# ---- status --libvirt: a card in one guest slot, and one file per function (--entry) ---------
def _hostdevs(xml: str) -> dict[str, dict[str, str] | None]:
    """Each <hostdev> of `status --libvirt`'s output (or of one file): its host address ->
    the attributes of its guest <address>, None when it has none."""
    root = ET.fromstring(f"<out>{xml}</out>")
    out: dict[str, dict[str, str] | None] = {}
    for hostdev in root.iter("hostdev"):
        source = hostdev.find("source/address")
        assert source is not None
        a = {k: int(v, 16) for k, v in source.attrib.items()}
        guest = hostdev.find("address")
        out[f"{a['domain']:04x}:{a['bus']:02x}:{a['slot']:02x}.{a['function']:x}"] = (
            None if guest is None else dict(guest.attrib))
    return out


def _guest(slot: str, function: str, multi: bool = False) -> dict[str, str]:
    return {"type": "pci", "domain": "0x0000", "bus": "0x00", "slot": slot,
            "function": function, **({"multifunction": "on"} if multi else {})}


def test_status_libvirt_puts_a_cards_functions_in_one_guest_slot(m: Machine) -> None:
    config(m, '  - address: "0000:41:00.*"\n  - address: "0000:42:00.*"\n'
              f'  - address: "{PLAIN}"\n')
    assert m.run("apply").rc == 0
    r = m.run("status", "--libvirt")
    assert r.rc == 0, r.err
    assert _hostdevs(r.out) == {
        GPU: _guest("0x10", "0x0", multi=True), AUDIO: _guest("0x10", "0x1"),
        GPU2: _guest("0x11", "0x0", multi=True), AUDIO2: _guest("0x11", "0x1"),
        PLAIN: None}, "a card per guest slot from 0x10; a single function: libvirt picks"
    assert ("<!-- a card: its functions in guest slot 0x10 of bus 0x00, function 0 "
            "multifunction='on'; libvirt cannot hot-plug a multi-function card: add it with the "
            "VM shut off (virsh edit) -->") in r.out.splitlines()
    moved = m.run("status", "--libvirt", "--guest-slot", "0x1a")
    assert [(g or {}).get("slot") for g in _hostdevs(moved.out).values()] == [
        "0x1a", "0x1a", "0x1b", "0x1b", None]


def test_status_libvirt_gives_a_vf_no_card_layout(m: Machine) -> None:
    """44:00.1 (a PF) and 44:00.2 (a VF of 44:00.0) share a slot, but a VF is no function of a
    card: each is a device of its own, and only the real card gets a guest slot."""
    config(m, f'  - address: "{PF1}"\n  - address: "{VF}"\n  - address: "0000:41:00.*"\n')
    assert m.run("apply").rc == 0
    assert _hostdevs(m.run("status", "--libvirt").out) == {
        GPU: _guest("0x10", "0x0", multi=True), AUDIO: _guest("0x10", "0x1"),
        PF1: None, VF: None}


def test_status_libvirt_leaves_a_single_function_as_it_was(m: Machine) -> None:
    config(m, f'  - address: "{PLAIN}"\n    name: guest-gpu\n')
    assert m.run("apply").rc == 0
    r = m.run("status", "--libvirt", "--guest-slot", "12")
    assert (r.rc, r.out) == (0, (
        f"<!-- {PLAIN} [10de:1f82] guest-gpu -->\n"
        "<hostdev mode='subsystem' type='pci' managed='no'>\n"
        "  <source>\n"
        "    <address domain='0x0000' bus='0x43' slot='0x00' function='0x0'/>\n"
        "  </source>\n"
        "</hostdev>\n")), "no guest <address>: libvirt picks a slot, as before"


@pytest.mark.parametrize("slot", ["0", "0x20", "x", "0x"])
def test_status_libvirt_guest_slot_is_a_slot_of_bus_0(m: Machine, slot: str) -> None:
    with pytest.raises(SystemExit) as e:
        m.run("status", "--libvirt", "--guest-slot", slot)
    assert e.value.code == 64
    err = m.capsys.readouterr().err
    assert f"--guest-slot: {slot!r} is not a guest slot (hex, 0x01-0x1f)" in err


def test_status_libvirt_cards_must_fit_in_bus_0(m: Machine) -> None:
    config(m, '  - address: "0000:41:00.*"\n  - address: "0000:42:00.*"\n')
    assert m.run("apply").rc == 0
    r = m.run("status", "--libvirt", "--guest-slot", "1f")
    assert (r.rc, r.out) == (1, "")
    assert r.err == ("pcipassd: error: 2 cards from guest slot 0x1f go past slot 0x1f (hint: "
                     "give a lower slot: --guest-slot 0x1e)\n")


CARD_AND_NIC = ('  - address: "0000:41:00.*"\n    name: guest-gpu\n'
                f'  - address: "{PLAIN}"\n    name: guest-nic\n')


def test_status_libvirt_entry_writes_one_file_per_function(
        m: Machine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config(m, '  - address: "0000:42:00.*"\n    name: guest-gpu\n  - address: "0000:41:00.*"\n')
    assert m.run("apply").rc == 0
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    r = m.run("status", "--libvirt", "--entry", "guest-gpu")
    assert r.rc == 0, r.err
    first, second = "guest-gpu-1-0000-42-00.0.xml", "guest-gpu-2-0000-42-00.1.xml"
    assert r.out.splitlines() == [
        "# wrote 2 files in .: one <hostdev> per function, as `virsh attach-device` takes one "
        "device at a time",
        "# libvirt cannot hot-plug a multi-function card: shut the VM off, run these in order "
        "(function 0 first), then start it",
        f"virsh attach-device DOMAIN ./{first} --config",
        f"virsh attach-device DOMAIN ./{second} --config"]
    assert sorted(p.name for p in here.iterdir()) == [first, second]
    # the guest slot `status --libvirt` gives the card: 42:00 is the second card, in slot 0x11
    assert _hostdevs((here / first).read_text()) == {GPU2: _guest("0x11", "0x0", multi=True)}
    assert _hostdevs((here / second).read_text()) == {AUDIO2: _guest("0x11", "0x1")}
    assert (here / first).read_text().startswith(f"<!-- {GPU2} [10de:1f08] guest-gpu -->\n")
    ET.parse(here / second)  # each file one XML document, as virsh reads it
    assert (here / first).stat().st_mode & 0o777 == 0o644


def test_status_libvirt_entry_of_a_single_function_into_xml_dir(m: Machine,
                                                                tmp_path: Path) -> None:
    config(m, CARD_AND_NIC)
    assert m.run("apply").rc == 0
    out = tmp_path / "vm xml"
    out.mkdir()
    r = m.run("status", "--libvirt", "--entry", "guest-nic", "--xml-dir", str(out))
    assert r.rc == 0, r.err
    assert r.out.splitlines()[1:] == [
        "# add --live to give it to the running VM as well",
        f"virsh attach-device DOMAIN '{out}/guest-nic-1-0000-43-00.0.xml' --config"]
    assert _hostdevs((out / "guest-nic-1-0000-43-00.0.xml").read_text()) == {PLAIN: None}


def test_status_libvirt_entry_refuses_a_name_no_entry_has(
        m: Machine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config(m, CARD_AND_NIC)
    assert m.run("apply").rc == 0
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.iterdir())
    r = m.run("status", "--libvirt", "--entry", "guest-gpus")
    assert (r.rc, r.out) == (64, "")
    assert r.err == ("pcipassd: error: --entry 'guest-gpus': no entry has that name (hint: the "
                     "entries' names: guest-gpu, guest-nic)\n")
    assert sorted(tmp_path.iterdir()) == before, "no file written"


@pytest.mark.parametrize("argv", [["--entry", "guest-gpu"], ["--qemu", "--guest-slot", "10"],
                                  ["--libvirt", "--xml-dir", "."]])
def test_status_libvirt_options_go_together(m: Machine, argv: list[str]) -> None:
    config(m, CARD_AND_NIC)
    assert m.run("apply").rc == 0
    r = m.run("status", *argv)
    assert (r.rc, r.out) == (64, "")
    assert r.err.startswith(f"pcipassd: error: {argv[-2]} goes with --")


def test_status_libvirt_card_as_the_readme_shows_it(m: Machine, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    config(m, '  - address: "0000:41:00.*"\n    name: guest-gpu\n')
    assert m.run("apply").rc == 0
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    out = m.run("status", "--libvirt").out
    assert f"   # pcipassd status --libvirt\n{textwrap.indent(out, '   ')}   ```" in readme
    monkeypatch.chdir(tmp_path)
    out = m.run("status", "--libvirt", "--entry", "guest-gpu").out
    assert (f"   # pcipassd status --libvirt --entry guest-gpu\n"
            f"{textwrap.indent(out, '   ')}   ```") in readme


def test_a_card_taken_with_two_on_stops_is_refused(m: Machine) -> None:
    """`on_stop: keep` for the GPU, the default for its audio: the unit's stop would split it."""
    config(m, f'  - address: "{GPU}"\n    on_stop: keep\n  - address: "{AUDIO}"\n')
    r = m.run("apply")
    assert r.rc != 0
    assert (f"{GPU}: card 0000:41:00 is given back as one unit, and /etc/pcipass.yaml:6 "
            "(on_stop: restore) takes its other functions with another on_stop than this "
            "entry's (keep)") in r.err, r.err
    assert "hint: give every entry that takes the card the same on_stop" in r.err
    assert (m.driver(GPU), m.driver(AUDIO)) == ("nouveau", "snd_hda_intel")


def test_restore_of_one_function_gives_back_the_whole_card_function_0_last(
        m: Machine, journal: FakeJournal) -> None:
    config(m, '  - address: "0000:41:00.*"\n    on_stop: keep\n')
    assert m.run("apply").rc == 0
    assert m.run("restore", "--on-stop").rc == 0
    assert (m.driver(GPU), m.driver(AUDIO)) == ("vfio-pci", "vfio-pci")  # kept
    r = m.run("restore", GPU)
    assert r.rc == 0, r.err
    assert (m.driver(GPU), m.driver(AUDIO)) == ("nouveau", "snd_hda_intel")
    said = [e["MESSAGE"] for e in journal.entries]
    assert f"{AUDIO}: given back with its card 0000:41:00, which goes back as one unit" in said
    order = [e["PCIPASS_DEVICE"] for e in journal.entries
             if e.get("PCIPASS_ACTION") == "restore"]
    assert order[-2:] == [AUDIO, GPU], order
