"""Fuzzing the configuration reader: mutations of valid configs (byte flips, truncation,
duplication, YAML tags, anchors and aliases, deep nesting, huge numbers, dates, binary) must
each end in an exit status and at most some clear lines, never an uncaught exception, a crash
or a hang.

Bounded: PCIPASSD_FUZZ_CASES cases (default 300) from the seed PCIPASSD_FUZZ_SEED (default
fixed, so CI is repeatable; set it to explore: a failure names the seed and the case).
"""

from __future__ import annotations

import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
import yaml
from simkernel import NIC_A, NIC_B, NIC_E1000, SimKernel

import pcipassd
from pcipassd.cli import main
from pcipassd.config import _schema, conforms, load_config
from pcipassd.errors import InvalidConfig
from pcipassd.host import Host
from pcipassd.yamldoc import load

SEED = int(os.environ.get("PCIPASSD_FUZZ_SEED", "20240225"))
CASES = int(os.environ.get("PCIPASSD_FUZZ_CASES", "300"))
IN_CHILDREN = 8  # of the cases, also run as `python -m pcipassd` in a child process

VALID = [
    f'version: 1\ndevices:\n  - address: "{NIC_A}"\n    name: guest-nic\n',
    f"""version: 1
driver: vfio-pci
iommu: warn
group: bind
devices:
  - address: "{NIC_A}"
    expect: "8086:10d3"
    name: guest-nic
    force: false
  - id: "8086:100e"
    count: 1
    driver: pci-stub
  - {{address: "{NIC_B}", group: ignore}}
""",
    """version: 1
devices:
  - &nic
    address: "0000:00:02.*"
    count: 1
  - *nic
  - id: 8086:100e
    expect: 8086:100e
  - address: 00:04.0
""",
    f'version: 1\ngroup: isolated\ndevices: [{{id: "8086:10d3", count: 2}}, '
    f'{{address: "{NIC_E1000}", force: true}}]\n',
]

SPECIAL = [
    "!!int ", "!!bool ", "!!float ", "!!null ", "!!str ", "!!binary ", "!!timestamp ",
    "!!set ", "!!omap ", "!!python/object:os.system ", "!!python/tuple ", "!x ", "! ",
    "&a ", "*a", "*zz", "<<: *a\n", "&a [*a]", "? ", ": ", "- ", "---\n", "...\n",
    "%YAML 1.1\n", "%TAG ! tag:x,2000:\n", "'", '"', "\\", "#", "|\n", ">-\n", "\t", "{", "}",
    "[", "]", ",", "9" * 5000, "0x" + "f" * 4000, "-0b" + "1" * 300, "1e999", ".nan", "-.inf",
    "0b_", "._", "2024-02-30", "2001-12-14t21:59:43.10-05:00", "1:20:30", "02:00.0", "~",
    "yes", "off", "\x00", "\x1b[2J", "\xff", "\ufeff", "\u2028", "\ud7ff", "\U0001f600",
    "[" * 200, "{a: " * 100, "- " * 2000, "  " * 300 + "- x\n",
]


def mutate(rng: random.Random, text: str) -> bytes:
    data = bytearray(text.encode())
    for _ in range(rng.randint(1, 4)):
        pos = rng.randint(0, len(data))
        op = rng.randrange(7)
        if op == 0 and data:  # flip bits of a byte
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1:  # truncate
            del data[pos:]
        elif op == 2 and data:  # duplicate a slice somewhere
            a = rng.randrange(len(data))
            b = min(len(data), a + rng.randint(1, 80))
            chunk = data[a:b] * rng.choice((1, 2, 50))
            data[pos:pos] = chunk
        elif op == 3:  # random bytes
            data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 4 and data:  # delete a slice
            del data[pos:pos + rng.randint(1, 10)]
        else:  # YAML syntax, tags, aliases, nesting, numbers, dates, binary
            data[pos:pos] = rng.choice(SPECIAL).encode("utf-8", "surrogatepass")
    return bytes(data)


def cases() -> list[bytes]:
    rng = random.Random(SEED)
    return [mutate(rng, rng.choice(VALID)) for _ in range(CASES)]


def _show(i: int, content: bytes) -> str:
    return f"PCIPASSD_FUZZ_SEED={SEED} case {i}: {content[:300]!r}"


def _outcome(host: Host) -> str:
    """"valid", or the problem lines; anything else raised fails the test."""
    try:
        load_config(host, full=True)
    except InvalidConfig as e:
        return "\n".join(str(p) for p in e.problems)
    return "valid"


def test_mutated_configs_never_raise(sim_host: SimKernel,
                                     capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    validator = jsonschema.Draft7Validator(_schema())
    host = Host(sim_host.root)
    main_file = sim_host.root / "etc/pcipass.yaml"
    main_file.parent.mkdir(parents=True)
    dropin = sim_host.root / "etc/pcipass.d/50-fuzz.yaml"
    dropin.parent.mkdir()
    start = time.monotonic()
    outcomes: set[int] = set()
    for i, content in enumerate(cases()):
        as_dropin = i % 5 == 4  # some as a drop-in next to a valid main file
        (dropin if as_dropin else main_file).write_bytes(content)
        if as_dropin:
            main_file.write_text(VALID[0])
        try:
            full = _outcome(host)
            try:  # the boot path's quick check agrees with the full one on what is valid
                load_config(host, full=False)
                quick = "valid"
            except InvalidConfig:
                quick = "invalid"
        except BaseException as e:  # the point: nothing may escape
            pytest.fail(f"raised {e!r}: {_show(i, content)}")
        assert (full == "valid") == (quick == "valid"), (full, _show(i, content))
        assert "\x1b" not in full and "\n" not in full.replace("\n/", "/"), _show(i, content)
        # the quick check never accepts what the schema rejects
        doc, _ = load(dropin if as_dropin else main_file, "x")
        if doc is not None and conforms(doc.data):
            assert not list(validator.iter_errors(doc.data)), _show(i, content)
        if i % 3 == 0:  # the whole command, as the admin runs it (argparse is the slow part)
            verb = "plan" if i % 2 else "validate"
            try:
                rc = main(["--root", str(sim_host.root), verb], kernel=sim_host)
            except BaseException as e:  # the point: nothing may escape
                pytest.fail(f"{verb} raised {e!r}: {_show(i, content)}")
            out, err = capsys.readouterr()
            assert rc in (0, 1, 2), _show(i, content)
            assert "Traceback" not in out + err, _show(i, content)
            outcomes.add(rc)
        if as_dropin:
            dropin.unlink()
    assert sim_host.writes == []
    assert outcomes >= {0, 2}, "the mutations should reach both valid and invalid configs"
    assert time.monotonic() - start < 60 * max(1.0, CASES / 300)  # a hang, not a slow CI


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID")}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(pcipassd.__file__).parent.parent), *filter(None, [env.get("PYTHONPATH")])])
    return env


def test_mutated_configs_never_crash_the_process(sim_host: SimKernel) -> None:
    env = _child_env()
    main_file = sim_host.root / "etc/pcipass.yaml"
    main_file.parent.mkdir(parents=True)
    all_cases = cases()
    step = max(1, len(all_cases) // IN_CHILDREN)
    for i in range(0, len(all_cases), step)[:IN_CHILDREN]:
        main_file.write_bytes(all_cases[i])
        child = subprocess.run(
            [sys.executable, "-m", "pcipassd", "--root", str(sim_host.root), "validate"],
            capture_output=True, text=True, errors="replace", env=env, timeout=60, check=False)
        assert child.returncode in (0, 1, 2), (child.returncode, _show(i, all_cases[i]))
        assert "Traceback" not in child.stderr, _show(i, all_cases[i])


def _laughs(width: int, levels: int, flow: bool = True) -> str:
    lines = ["version: 1", f"a0: &a0 {'[' + ', '.join(['lol'] * width) + ']'}"]
    for n in range(1, levels):
        refs = [f"*a{n - 1}"] * width
        lines.append(f"a{n}: &a{n} [{', '.join(refs)}]" if flow else
                     f"a{n}: &a{n}\n" + "".join(f"  - {r}\n" for r in refs).rstrip("\n"))
    return "\n".join(lines) + "\ndevices: *a" + str(levels - 1) + "\n"


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))  # 1 GiB: a bomb would need far more


@pytest.mark.parametrize("bomb", [
    _laughs(9, 9), _laughs(10, 12, flow=False), _laughs(2, 60),
    "version: 1\na: &a {x: 1}\n" + "".join(f"b{n}: &b{n} {{k: *{'a' if n == 0 else f'b{n - 1}'}"
                                           f", j: *{'a' if n == 0 else f'b{n - 1}'}}}\n"
                                           for n in range(40)),
], ids=["billion-laughs", "block-laughs", "deep-doubling", "mapping-doubling"])
def test_alias_bombs_neither_hang_nor_eat_memory(sim_host: SimKernel, bomb: str) -> None:
    assert len(bomb) < 100_000 and yaml.compose(bomb) is not None  # small, and valid YAML
    env = _child_env()
    main_file = sim_host.root / "etc/pcipass.yaml"
    main_file.parent.mkdir(parents=True)
    main_file.write_text(bomb)
    start = time.monotonic()
    child = subprocess.run(
        [sys.executable, "-m", "pcipassd", "--root", str(sim_host.root), "validate"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
        preexec_fn=_limit_memory)
    assert time.monotonic() - start < 20
    assert (child.returncode, child.stderr) == (2, "")
    assert child.stdout.splitlines()[-1] == "1 problem found"
    assert " has more than 50000 values (YAML aliases expanding?)" in child.stdout or (
        "nests more than 64 levels deep" in child.stdout), child.stdout
