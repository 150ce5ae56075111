"""One JSON contract: every `--json` verb prints exactly one object on every exit (a valid
config, an invalid one, nothing configured, an error, a wrong command line), `format` first,
the same common keys, and the exit status it always had."""

from __future__ import annotations

import json
from typing import Any

import pytest
from machine import Machine
from simkernel import NIC_A

from pcipassd.cli import main

COMMON = ["format", "verb", "ok", "exit", "error", "problems", "warnings"]
OWN = {
    "validate": ["valid"],
    "check": ["passthrough_possible", "findings", "preflight"],
    "plan": ["steps", "groups"],
    "status": ["converged", "last_error", "actions", "reboot_required", "devices", "sriov",
               "groups", "preflight"],
    "list": ["names", "groups", "preflight"],
}
PROBLEM = ["file", "line", "column", "path", "message", "hint"]
VERBS = list(OWN)


def one_object(m: Machine, *argv: str) -> tuple[int, dict[str, Any]]:
    """Run a verb with --json: stdout must be exactly one JSON object in the documented
    shape, and `exit` the exit status."""
    r = m.run(*argv, "--json")
    data = json.loads(r.out)  # one document, nothing else on stdout
    assert isinstance(data, dict)
    verb = argv[0]
    assert list(data) == [*COMMON, *OWN[verb]], list(data)
    assert (data["format"], data["verb"], data["exit"], data["ok"]) == (4, verb, r.rc, r.rc == 0)
    for p in data["problems"]:
        assert list(p) == PROBLEM
    for w in data["warnings"]:
        assert list(w) == ["message", "hint"]
    if data["error"] is not None:
        assert list(data["error"]) == ["message", "hint"]
    for f in data.get("findings", []):
        assert list(f) == ["level", "message", "hint"]
    return r.rc, data


@pytest.mark.parametrize("verb", VERBS)
def test_a_valid_config(m: Machine, verb: str) -> None:
    m.with_guest_nic()
    rc, data = one_object(m, verb)
    assert data["error"] is None and data["problems"] == []
    assert rc == {"validate": 0, "check": 0, "plan": 0, "status": 1, "list": 0}[verb]


# The exit status each verb always had for an invalid config: 2, but `list`, which needs none.
INVALID_RC = {"validate": 2, "check": 2, "plan": 2, "status": 2, "list": 0}


@pytest.mark.parametrize("verb", VERBS)
def test_an_invalid_config_prints_one_object_with_the_problems_inside(m: Machine,
                                                                      verb: str) -> None:
    m.config('version: 1\ndevices:\n  - adress: "0000:00:02.0"\n')
    rc, data = one_object(m, verb)
    assert rc == INVALID_RC[verb]
    assert [(p["line"], p["path"], p["message"]) for p in data["problems"]] == [
        (3, "devices[0].adress", "unknown key 'adress'"),
        (3, "devices[0]", "an entry needs `address` or `id`")]
    assert data["problems"][0]["hint"] == "did you mean 'address'?"
    if verb in ("plan", "status"):  # stopped by the config: an error, and the keys empty
        assert data["error"] == {"message": "invalid configuration: nothing was changed",
                                 "hint": "did you mean 'address'?"}
        assert data["groups"] == []
    else:
        assert data["error"] is None


@pytest.mark.parametrize("verb", VERBS)
def test_nothing_configured(m: Machine, verb: str) -> None:
    m.config("version: 1\n")  # as installed: nothing held, nothing to hold
    rc, data = one_object(m, verb)
    assert rc == {"validate": 2, "check": 0, "plan": 2, "status": 2, "list": 0}[verb]
    if verb in ("validate", "plan", "status"):
        assert [p["message"] for p in data["problems"]] == ["no devices are configured"]


@pytest.mark.parametrize("verb", ["plan", "status", "list"])
def test_an_error_prints_one_object_with_the_error(m: Machine, verb: str) -> None:
    m.with_guest_nic()
    (m.root / "run").mkdir()
    (m.root / "run/pcipass").write_text("not a directory")
    rc, data = one_object(m, verb)
    assert rc == 1
    assert data["error"] == {
        "message": "/run/pcipass is not a directory (a symlink?)",
        "hint": "remove it; pcipassd keeps its state in a directory it owns"}
    assert data["groups"] == []


def test_an_error_after_the_survey_began_keeps_the_shape(m: Machine) -> None:
    m.with_guest_nic()
    rc, data = one_object(m, "list", "--address", "zz")
    assert rc == 1
    assert data["error"] is not None and data["error"]["message"].startswith("--address: ")
    assert data["groups"] == []


@pytest.mark.parametrize("verb", VERBS)
def test_a_wrong_command_line_prints_one_object_and_exits_64(
        m: Machine, verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    m.with_guest_nic()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["--root", str(m.root), verb, "--json", "--frobnicate"], kernel=m.sim)
    assert exc.value.code == 64
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert list(data) == [*COMMON, *OWN[verb]]
    assert (data["verb"], data["exit"], data["ok"]) == (verb, 64, False)
    assert data["error"]["message"] == "unrecognized arguments: --frobnicate"
    assert "unrecognized arguments: --frobnicate" in captured.err


def test_groups_have_one_shape_in_list_plan_and_status(m: Machine) -> None:
    m.with_guest_nic()
    _, listed = one_object(m, "list")
    _, planned = one_object(m, "plan")
    _, status = one_object(m, "status")
    group = next(g for g in listed["groups"] if g["group"] == "2")
    assert planned["groups"] == status["groups"] == [group]
    assert list(group) == ["group", "passable", "verdict", "devices"]
    assert list(group["devices"][0]) == ["device", "id", "class", "class_name", "name", "lspci",
                                         "driver", "bridge", "forced", "notes"]
    assert group["devices"][0]["device"] == NIC_A
    assert group["devices"][0]["notes"] == ["configured"]
    m.run("apply")
    _, listed = one_object(m, "list")
    _, status = one_object(m, "status")
    group = next(g for g in listed["groups"] if g["group"] == "2")
    assert status["groups"] == [group]
    assert group["devices"][0]["notes"] == ["held (late)"]


def test_findings_and_warnings_use_the_keys_of_problems(m: Machine) -> None:
    """message and hint, never what/fix."""
    m.with_guest_nic()
    _, check = one_object(m, "check")
    assert all(set(f) == {"level", "message", "hint"} for f in check["findings"])
    no_kvm = next(f for f in check["findings"] if f["message"].startswith("no /dev/kvm"))
    assert no_kvm["hint"].startswith("enable VT-x / AMD-V") or "modprobe" in no_kvm["hint"]


def test_status_json_and_qemu_are_one_or_the_other(m: Machine,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    m.with_guest_nic()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["--root", str(m.root), "status", "--json", "--qemu"], kernel=m.sim)
    assert exc.value.code == 64
    data = json.loads(capsys.readouterr().out)
    assert (data["verb"], data["exit"]) == ("status", 64)
    assert "not allowed with argument" in data["error"]["message"]


def test_with_debug_the_object_comes_before_the_traceback(
        m: Machine, capsys: pytest.CaptureFixture[str]) -> None:
    m.with_guest_nic()
    (m.root / "run").mkdir()
    (m.root / "run/pcipass").write_text("not a directory")
    capsys.readouterr()
    with pytest.raises(Exception, match="is not a directory"):
        main(["--root", str(m.root), "--debug", "status", "--json"], kernel=m.sim)
    data = json.loads(capsys.readouterr().out)
    assert list(data) == [*COMMON, *OWN["status"]]
    assert data["error"]["message"] == "/run/pcipass is not a directory (a symlink?)"


def test_the_verbs_that_take_json_are_those_with_an_envelope() -> None:
    from pcipassd.cli import VERBS  # noqa: PLC0415
    from pcipassd.output import JSON_KEYS  # noqa: PLC0415

    assert {verb for verb, (_, _, json) in VERBS.items() if json} == set(JSON_KEYS)
