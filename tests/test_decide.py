"""The IOMMU-group policy and the host-critical guard as decisions (pcipassd/policy.py's
`enforce`): given a selection, the devices and why some are host-critical, which devices are
bound, which entries are refused and with which words. Inputs built directly; the same rules end
to end through the CLI, with a simulated host, are in test_policy.py."""

from __future__ import annotations

from inputs import AUDIO, PCI_BRIDGE, VGA, config, device, entry, inventory, reason

from pcipassd.config import Entry
from pcipassd.guard import Reason
from pcipassd.inventory import Inventory
from pcipassd.model import CHIPSET, CONSOLE, NETWORK, STORAGE
from pcipassd.policy import enforce
from pcipassd.selection import Selection, select

GPU = "0000:41:00.0"
GPU_AUDIO = "0000:41:00.1"
NIC_A = "0000:00:02.0"
NIC_B = "0000:00:03.0"
DISK = "0000:06:00.0"
BRIDGE = "0000:00:1c.0"
LPC = "0000:00:1f.0"


def gpu_host(audio_driver: str | None = "snd_hda_intel") -> Inventory:
    """A GPU and its HDMI audio function, one IOMMU group."""
    return inventory(device(GPU, "10de:1e84", driver="nouveau", group="9", cls=VGA),
                     device(GPU_AUDIO, "10de:10f0", driver=audio_driver, group="9", cls=AUDIO))


def decide(inv: Inventory, *entries: Entry,
           critical: dict[str, tuple[Reason, ...]] | None = None) -> Selection:
    return enforce(select(config(*entries), inv), inv, critical or {})


# --- IOMMU groups -----------------------------------------------------------------------------

def test_isolated_refuses_a_device_whose_group_mate_is_on_a_host_driver() -> None:
    d = decide(gpu_host(), entry(3, address=GPU))
    assert d.chosen == {}
    [problem] = d.problems
    assert problem.message == (f"IOMMU group 9 of {GPU} also contains {GPU_AUDIO} [10de:10f0] "
                               "on snd_hda_intel")
    assert "`group: bind`" in problem.hint
    assert d.kept == {GPU}


def test_isolated_allows_a_group_mate_that_is_unbound_or_on_a_stub() -> None:
    for driver in (None, "pci-stub", "vfio-pci"):
        d = decide(gpu_host(audio_driver=driver), entry(3, address=GPU))
        assert list(d.chosen) == [GPU], driver
        assert d.problems == ()


def test_isolated_allows_a_group_whose_endpoints_are_all_selected() -> None:
    d = decide(gpu_host(), entry(3, address=GPU), entry(5, address=GPU_AUDIO))
    assert sorted(d.chosen) == [GPU, GPU_AUDIO]
    assert d.problems == ()


def test_group_bind_binds_the_group_mates_with_it_and_says_why() -> None:
    d = decide(gpu_host(), entry(3, address=GPU, driver="vfio-pci", group="bind"))
    assert sorted(d.chosen) == [GPU, GPU_AUDIO]
    audio = d.chosen[GPU_AUDIO]
    assert (audio.target, audio.via) == ("vfio-pci", GPU)
    assert audio.notes == (f"in IOMMU group 9 with {GPU}",)


def test_group_bind_never_binds_a_bridge_in_the_group() -> None:
    inv = inventory(device(NIC_A, group="5"),
                    device(BRIDGE, "1b36:000c", driver="pcieport", group="5", cls=PCI_BRIDGE))
    d = decide(inv, entry(3, address=NIC_A, group="bind"))
    assert list(d.chosen) == [NIC_A]


def test_group_ignore_binds_only_what_was_selected_with_a_warning() -> None:
    d = decide(gpu_host(), entry(3, address=GPU, group="ignore"))
    assert list(d.chosen) == [GPU]
    assert d.chosen[GPU].warning == (f"IOMMU group 9 is not viable for VFIO: it also contains "
                                     f"{GPU_AUDIO} [10de:10f0] on snd_hda_intel")


def test_no_group_binds_the_chipset_sharing_the_group() -> None:
    inv = inventory(device(NIC_A, group="0"), device(LPC, "8086:2918", driver="lpc_ich",
                                                     group="0", cls=0x060100))
    critical = reason(LPC, CHIPSET, "is the chipset's ISA bridge")
    d = decide(inv, entry(3, address=NIC_A, group="bind"), critical=critical)
    assert d.chosen == {}
    [problem] = d.problems
    assert problem.message == (f"refusing {NIC_A}: IOMMU group 0 also contains the chipset, which "
                               f"the host needs: {LPC} is the chipset's ISA bridge")
    assert problem.hint.startswith("`group: bind` never binds the chipset")


# --- the host-critical guard ------------------------------------------------------------------

UPLINK = reason(NIC_A, NETWORK, "carries the default route via enp0s2")


def test_the_nic_with_the_default_route_is_refused_and_the_hint_names_the_force() -> None:
    d = decide(inventory(device(NIC_A, group="2")), entry(3, address=NIC_A), critical=UPLINK)
    assert d.chosen == {}
    [problem] = d.problems
    assert problem.message == f"refusing {NIC_A}: {NIC_A} carries the default route via enp0s2"
    assert "add `force: [network]` to the entry" in problem.hint
    assert d.kept == {NIC_A}


def test_force_naming_the_reason_binds_it_and_marks_it_forced() -> None:
    d = decide(inventory(device(NIC_A, group="2")), entry(3, address=NIC_A, force=(NETWORK,)),
               critical=UPLINK)
    assert d.problems == ()
    assert d.chosen[NIC_A].forced == "carries the default route via enp0s2"


def test_force_naming_another_kind_still_refuses() -> None:
    critical = reason(DISK, STORAGE, "carries / (vda1)")
    d = decide(inventory(device(DISK, "1af4:1001", driver="virtio-pci", group="6")),
               entry(3, address=DISK, force=(CONSOLE,)), critical=critical)
    assert d.chosen == {}
    assert [p.message for p in d.problems] == [f"refusing {DISK}: {DISK} carries / (vda1)"]


def test_a_device_sharing_a_group_with_a_critical_one_is_refused_naming_it() -> None:
    inv = inventory(device(NIC_A, group="2"), device(NIC_B, driver=None, group="2"))
    d = decide(inv, entry(3, address=NIC_B, group="ignore"), critical=UPLINK)
    assert d.chosen == {}, "`group: ignore` does not get past the guard"
    assert [p.message for p in d.problems] == [
        f"refusing {NIC_B}: {NIC_A} carries the default route via enp0s2, "
        f"and shares IOMMU group 2 with {NIC_B}"]


def test_a_refused_entry_is_told_every_reason_at_once() -> None:
    inv = inventory(device(NIC_A, group="2"), device(NIC_B, driver=None, group="2"))
    d = decide(inv, entry(3, address=NIC_B), critical=UPLINK)
    assert [p.message for p in d.problems] == [
        f"IOMMU group 2 of {NIC_B} also contains {NIC_A} [8086:10d3] on e1000e",
        f"refusing {NIC_B}: {NIC_A} carries the default route via enp0s2, "
        f"and shares IOMMU group 2 with {NIC_B}"]


def test_an_id_entry_matching_the_uplink_offers_the_spare_matches_ready_to_paste() -> None:
    inv = inventory(device(NIC_A, group="2"), device(NIC_B, group="3"))
    d = decide(inv, entry(3, id="8086:10d3", driver="vfio-pci"), critical=UPLINK)
    assert d.chosen == {}, "a refused entry binds nothing, not even its spare match"
    [problem] = d.problems
    assert problem.hint.splitlines() == [
        "to bind only the matches the host can spare, replace the entry with:",
        f'  - address: "{NIC_B}"',
        "    driver: vfio-pci",
        f"or add `force: [network]` to take {NIC_A} too, which carries the default route via "
        "enp0s2: the host loses its network",
    ]
