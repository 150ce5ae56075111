"""What apply would do to each device (pcipassd/plan.py): the steps, their actions and drivers,
decided from a selection, the devices and the state file's records, built directly."""

from __future__ import annotations

from inputs import config, device, entry, inventory, reason, record

from pcipassd.config import Entry
from pcipassd.inventory import Inventory
from pcipassd.model import NETWORK, Action, Record
from pcipassd.plan import Plan, Step, make_plan, predict, restore_plan
from pcipassd.policy import enforce
from pcipassd.selection import select
from pcipassd.value import replace

NIC_A = "0000:00:02.0"
NIC_B = "0000:00:03.0"
E1000 = "0000:00:04.0"


def plan(inv: Inventory, *entries: Entry, records: tuple[Record, ...] = ()) -> Plan:
    selection = select(config(*entries), inv)
    return make_plan(selection, inv, {r.bdf: r for r in records})


def step(p: Plan, bdf: str) -> Step:
    [found] = [s for s in p.steps if s.bdf == bdf]
    return found


def test_a_selected_device_on_its_original_driver_is_bound_to_its_target() -> None:
    p = plan(inventory(device(NIC_A, group="2")),
             entry(3, address=NIC_A, driver="vfio-pci", name="guest-nic"))
    s = step(p, NIC_A)
    assert (s.action, s.driver, s.target, s.original) == (Action.BIND, "e1000e", "vfio-pci", None)
    assert (s.entry, s.name, s.selects) == ("/etc/pcipass.yaml:3", "guest-nic",
                                            f"address {NIC_A}")
    assert not p.converged


def test_a_device_already_on_its_target_is_unchanged_and_the_plan_converged() -> None:
    p = plan(inventory(device(NIC_A, driver="pci-stub", group="2")), entry(3, address=NIC_A),
             records=(record(NIC_A),))
    assert [s.action for s in p.steps] == [Action.UNCHANGED]
    assert p.converged


def test_a_recorded_device_no_longer_configured_goes_back_to_its_original_driver() -> None:
    inv = inventory(device(NIC_A, group="2"), device(NIC_B, driver="pci-stub", group="3"))
    p = plan(inv, entry(3, address=NIC_A), records=(record(NIC_B),))
    s = step(p, NIC_B)
    assert (s.action, s.driver, s.target, s.original) == (Action.RESTORE, "pci-stub", None,
                                                          "e1000e")
    assert s.reason == "no longer configured"
    assert s.summary == f"{NIC_B} [8086:10d3] pci-stub -> e1000e (/etc/pcipass.yaml:3)"
    assert (s.journal_fields["PCIPASS_DRIVER_FROM"], s.journal_fields["PCIPASS_DRIVER_TO"]) == (
        "pci-stub", "e1000e")


def test_a_recorded_device_that_is_gone_fails_and_is_forgotten() -> None:
    p = plan(inventory(device(NIC_A, group="2")), entry(3, address=NIC_A),
             records=(record(NIC_B),))
    s = step(p, NIC_B)
    assert (s.action, s.forget) == (Action.FAIL, True)
    assert s.reason == "device is gone (hot-removed?); forgetting it"


def test_a_configured_device_whose_id_changed_since_it_was_bound_is_not_touched() -> None:
    inv = inventory(device(NIC_A, "8086:100e", driver="pci-stub", group="2"))
    p = plan(inv, entry(3, address=NIC_A), records=(record(NIC_A, "8086:10d3"),))
    s = step(p, NIC_A)
    assert s.action is Action.FAIL
    assert s.reason == ("is now 8086:100e but was 8086:10d3 when pcipassd bound it: the "
                        "hardware changed; not touching it")


def test_a_bound_device_whose_entry_is_refused_is_kept_as_it_is() -> None:
    inv = inventory(device(NIC_A, driver="pci-stub", group="2"), device(NIC_B, group="3"))
    p = plan(inv, entry(3, id="8086:10d3", count=3), records=(record(NIC_A),))
    s = step(p, NIC_A)
    assert (s.action, s.driver, s.target, s.original) == (Action.KEEP, "pci-stub", "pci-stub",
                                                          "e1000e")
    assert s.journal_fields["PCIPASS_DRIVER_TO"] == "pci-stub", "a keep moves nothing"
    assert s.reason == "its entry has a problem; left as it is"
    assert [problem.message.split(",")[0] for problem in p.problems] == ["count: 3"]
    assert not p.converged


def test_an_early_held_device_whose_entry_is_refused_goes_back_instead() -> None:
    """Held at boot before its driver bound, never moved to its target (vfio-pci): nothing
    would drive it, so it is given back rather than kept."""
    inv = inventory(device(NIC_A, driver="pci-stub", group="2"))
    held = record(NIC_A, original=None, target="vfio-pci", stage="early")
    p = plan(inv, entry(3, address=NIC_A, expect="8086:100e", driver="vfio-pci"),
             records=(held,))
    assert step(p, NIC_A).action is Action.RESTORE


def test_what_force_overrode_is_taken_from_the_record_made_when_it_was_bound() -> None:
    """Once held, a NIC has no interface left to show the evidence: the record keeps it."""
    inv = inventory(device(NIC_A, driver="pci-stub", group="2"))
    forced = entry(3, address=NIC_A, force=(NETWORK,))
    now = enforce(select(config(forced), inv), inv, reason(NIC_A, NETWORK, "is up"))
    assert now.chosen[NIC_A].forced == "is up"
    bound = replace(record(NIC_A), forced="carries the default route via enp0s2")
    s = step(make_plan(now, inv, {NIC_A: bound}), NIC_A)
    assert s.forced_note == "forced: carries the default route via enp0s2"
    assert s.journal_fields["PCIPASS_FORCED"] == "carries the default route via enp0s2"


def test_steps_are_in_address_order_whatever_the_entry_order() -> None:
    inv = inventory(device(NIC_A, group="2"), device(E1000, "8086:100e", driver="e1000",
                                                     group="4"))
    p = plan(inv, entry(3, address=E1000), entry(5, address=NIC_A))
    assert [s.bdf for s in p.steps] == [NIC_A, E1000]


def test_restore_plan_gives_every_recorded_device_back() -> None:
    inv = inventory(device(NIC_A, driver="pci-stub", group="2"),
                    device(E1000, "8086:100e", driver="vfio-pci", group="4"))
    p = restore_plan(inv, {E1000: record(E1000, "8086:100e", original="e1000",
                                         target="vfio-pci"),
                           NIC_A: record(NIC_A)})
    assert [(s.bdf, s.action, s.target, s.original) for s in p.steps] == [
        (NIC_A, Action.RESTORE, None, "e1000e"), (E1000, Action.RESTORE, None, "e1000")]


# --- predict: the plan as apply will fare on this kernel ---------------------------------------

def bind_to(driver: str, group: str | None = "2") -> Plan:
    return plan(inventory(device(NIC_A, group=group)), entry(3, address=NIC_A, driver=driver))


def test_with_the_iommu_off_and_required_a_bind_is_predicted_to_fail() -> None:
    p = predict(bind_to("pci-stub"), iommu_on=False, iommu_policy="required", unavailable={})
    assert step(p, NIC_A).action is Action.FAIL
    assert step(p, NIC_A).reason == ("will not be bound: the IOMMU is off (iommu: required; "
                                     "see `pcipassd check`)")


def test_with_the_iommu_off_and_warn_a_stub_bind_still_binds() -> None:
    p = predict(bind_to("pci-stub", group=None), iommu_on=False, iommu_policy="warn",
                unavailable={})
    assert step(p, NIC_A).action is Action.BIND


def test_vfio_without_an_iommu_group_is_predicted_to_fail() -> None:
    p = predict(bind_to("vfio-pci", group=None), iommu_on=False, iommu_policy="warn",
                unavailable={})
    assert step(p, NIC_A).action is Action.FAIL
    assert "vfio-pci needs an IOMMU group" in step(p, NIC_A).reason


def test_a_target_driver_the_kernel_cannot_have_is_predicted_to_fail_saying_why() -> None:
    p = predict(bind_to("vfio-pci"), iommu_on=True, iommu_policy="required",
                unavailable={"vfio-pci": "module vfio-pci is not available"})
    assert step(p, NIC_A).reason == ("will fail: module vfio-pci is not available "
                                     "(see `pcipassd check`)")


def test_predict_leaves_unchanged_devices_alone() -> None:
    unchanged = plan(inventory(device(NIC_A, driver="pci-stub", group="2")),
                     entry(3, address=NIC_A))
    p = predict(unchanged, iommu_on=False, iommu_policy="required", unavailable={})
    assert [s.action for s in p.steps] == [Action.UNCHANGED]
