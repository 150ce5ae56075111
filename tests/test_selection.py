"""Which present devices each config entry selects, and which entries are refused and why
(pcipassd/selection.py), decided from entries and devices built directly: no sysfs, no CLI."""

from __future__ import annotations

from inputs import PCI_BRIDGE, config, device, entry, inventory

from pcipassd.selection import select

NIC_A = "0000:00:02.0"
NIC_B = "0000:00:03.0"
E1000 = "0000:00:04.0"
BRIDGE = "0000:00:1c.0"
HOST = inventory(
    device(NIC_A, "8086:10d3", group="2"),
    device(NIC_B, "8086:10d3", group="3"),
    device(E1000, "8086:100e", driver="e1000", group="4"),
    device(BRIDGE, "1b36:000c", driver="pcieport", group="5", cls=PCI_BRIDGE),
)


def test_an_address_entry_selects_the_device_there_for_its_driver() -> None:
    wanted = entry(3, address=NIC_A, driver="vfio-pci")
    s = select(config(wanted), HOST)
    assert list(s.chosen) == [NIC_A]
    assert s.chosen[NIC_A].entry == wanted
    assert s.chosen[NIC_A].target == "vfio-pci"
    assert s.problems == ()


def test_an_id_entry_selects_every_device_with_that_id() -> None:
    s = select(config(entry(3, id="8086:10d3")), HOST)
    assert sorted(s.chosen) == [NIC_A, NIC_B]
    assert s.problems == ()


def test_an_address_with_no_device_is_refused_and_names_the_address() -> None:
    s = select(config(entry(3, address="0000:07:00.0")), HOST)
    assert s.chosen == {}
    [problem] = s.problems
    assert (problem.file, problem.line) == ("/etc/pcipass.yaml", 3)
    assert problem.message == "no device at 0000:07:00.0"
    assert "lspci -Dnn" in problem.hint


def test_an_id_no_device_has_is_refused() -> None:
    s = select(config(entry(3, id="10de:1e84")), HOST)
    assert s.chosen == {}
    assert [p.message for p in s.problems] == ["no device with ID 10de:1e84 is present"]


def test_a_device_that_is_not_the_expected_one_refuses_the_entry_and_is_kept() -> None:
    s = select(config(entry(3, address=E1000, expect="8086:10d3")), HOST)
    assert s.chosen == {}
    assert [p.message for p in s.problems] == [
        f"{E1000} [8086:100e] is not the expected 8086:10d3; nothing bound"]
    assert s.kept == {E1000}, "if pcipassd bound it before, a mistake does not restore it"


def test_a_wrong_count_refuses_the_whole_entry_and_keeps_what_it_matched() -> None:
    s = select(config(entry(3, id="8086:10d3", count=3)), HOST)
    assert s.chosen == {}
    assert [p.message for p in s.problems] == [
        f"count: 3, but 2 present: {NIC_A} [8086:10d3], {NIC_B} [8086:10d3]"]
    assert s.kept == {NIC_A, NIC_B}


def test_the_right_count_selects_them_all() -> None:
    s = select(config(entry(3, id="8086:10d3", count=2)), HOST)
    assert sorted(s.chosen) == [NIC_A, NIC_B]


def test_a_bridge_is_never_selected() -> None:
    s = select(config(entry(3, address=BRIDGE)), HOST)
    assert s.chosen == {}
    assert [(p.message, p.hint) for p in s.problems] == [
        (f"{BRIDGE} [1b36:000c] is a PCI bridge; bridges are never bound",
         "select the devices behind the bridge instead")]


def test_one_device_wanted_on_two_drivers_refuses_both_entries() -> None:
    s = select(config(entry(3, address=NIC_A), entry(5, id="8086:10d3", driver="vfio-pci")),
               HOST)
    assert s.chosen == {}, "neither entry wins: NIC_B is not bound either"
    [problem] = s.problems
    assert problem.line == 5
    assert problem.message == (f"{NIC_A} is also selected by /etc/pcipass.yaml:3 with driver "
                               "pci-stub, here with vfio-pci")
    assert s.kept == {NIC_A, NIC_B}


def test_one_device_wanted_twice_on_the_same_driver_is_chosen_once_by_the_first_entry() -> None:
    first, second = entry(3, address=NIC_A, name="guest-nic"), entry(5, id="8086:10d3")
    s = select(config(first, second), HOST)
    assert s.problems == ()
    assert s.chosen[NIC_A].entry == first
    assert s.chosen[NIC_B].entry == second


def test_a_refused_entry_leaves_the_others_selected() -> None:
    s = select(config(entry(3, address="0000:07:00.0"), entry(5, address=E1000)), HOST)
    assert list(s.chosen) == [E1000]
    assert [p.line for p in s.problems] == [3]
