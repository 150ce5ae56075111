"""The pipeline, read from the imports: each module has a layer, and imports only downward.

pcipassd reads the host, reads the config, decides what may be held, plans, acts and records,
then a sequence, a verb and the command line run that. Subpackages per stage (host/, config/,
decide/, act/, cli/) would show this in `ls`, at the price of renaming every import for no
change in behaviour; this table shows it instead, and this test keeps it true: a module imports
only modules of its own layer or of a lower one, and a new module must be given a layer here.

Imports inside functions and under ``if TYPE_CHECKING:`` (the deferred ones, which let a verb
import only what it runs) follow the same rule, except for those listed in DEFERRED_UPWARD.
"""

from __future__ import annotations

import pytest
from importgraph import deferred_imports, find_cycle, longest_chain, module_graph, module_names

#: The layers, lowest first: the pipeline in the order it runs.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # pcipassd's words (model) and the plumbing every stage uses: errors, exit codes, logging,
    # the host root, safe file reads and writes, PCI addresses, printable text, value classes
    ("words", ("pcipassd", "value", "model", "errors", "exits", "log", "host", "safefile",
               "address", "printable", "strictmodes")),
    # reading the host: the kernel's devices, drivers, modules, IOMMU, mounts, network, names
    ("host", ("kernel", "inventory", "hostfiles", "storage", "netconfig", "iommu", "modules",
              "names", "vfio", "survey", "initramfs", "resetbugs")),
    # reading the configuration
    ("config", ("yamldoc", "parsecache", "config")),
    # deciding what may be held: the selection, the guard, the policy that joins them
    ("decide", ("selection", "settle", "guard", "card", "policy")),
    # what apply would do, decided without touching anything
    # and what will go wrong at a VM's first start (preflight: check, list, status only)
    ("plan", ("plan", "preflight")),
    # acting and recording: apply (the only writer of /sys), the state file, the guard's
    # memory, the early hold list and what a reboot would change
    ("act", ("apply", "state", "memory", "early", "reboot", "sriov")),
    # running it: the apply/restore sequence, the context a verb runs in, its output, systemd
    ("run", ("sequence", "context", "output", "node", "service", "engines")),
    ("verbs", ("verbs", "verbs.check", "verbs.list", "verbs.plan", "verbs.schema",
               "verbs.status", "verbs.validate", "verbs.publish")),
    ("cli", ("cli", "cmdline", "__main__")),
)

# the import graph, read from the source: the same on every Python and library version
pytestmark = pytest.mark.same_everywhere

#: Deferred imports allowed to go upward, {(importer, imported): why}. None today: every
#: function-level import already points down the pipeline.
DEFERRED_UPWARD: dict[tuple[str, str], str] = {}

#: The longest chain of module-level imports, in modules, pcipassd.value left out: 10 before
#: pcipassd.model (issue 16), 6 since. Raise it only knowingly: a longer chain is what model.py
#: is for.
MAX_CHAIN = 6


def _layer_of() -> dict[str, int]:
    return {("pcipassd" if name == "pcipassd" else f"pcipassd.{name}"): rank
            for rank, (_, names) in enumerate(LAYERS) for name in names}


def upward(graph: dict[str, frozenset[str]], layer: dict[str, int]) -> list[tuple[str, str]]:
    """Every import of `graph` from a lower layer to a higher one, (importer, imported)."""
    return [(src, dst) for src in sorted(graph) for dst in sorted(graph[src])
            if layer[dst] > layer[src]]


def _say(found: list[tuple[str, str]]) -> str:
    names, layer = [name for name, _ in LAYERS], _layer_of()
    return "\n".join(f"{src} ({names[layer[src]]}) imports {dst} ({names[layer[dst]]})"
                     for src, dst in found)


def test_every_module_has_one_layer() -> None:
    listed = [name for _, names in LAYERS for name in names]
    assert len(listed) == len(set(listed)), "a module in two layers"
    layer = _layer_of()
    modules = set(module_names())
    assert not modules - set(layer), f"give these modules a layer in LAYERS: {modules - set(layer)}"
    assert not set(layer) - modules, f"no such modules (renamed?): {set(layer) - modules}"


def test_module_level_imports_follow_the_pipeline() -> None:
    found = upward(module_graph(), _layer_of())
    assert found == [], _say(found)


def test_deferred_imports_follow_the_pipeline() -> None:
    found = [edge for edge in upward(deferred_imports(), _layer_of())
             if edge not in DEFERRED_UPWARD]
    assert found == [], _say(found)


def test_the_words_import_nothing_of_pcipassd() -> None:
    """model.py imports only the value classes, which import nothing of pcipassd."""
    assert module_graph()["pcipassd.model"] == frozenset({"pcipassd.value"})
    assert deferred_imports()["pcipassd.model"] == frozenset()
    assert module_graph()["pcipassd.value"] == frozenset()
    assert deferred_imports()["pcipassd.value"] == frozenset()


def test_no_cycle_and_a_short_chain() -> None:
    graph = module_graph()
    assert find_cycle(graph) is None
    # pcipassd.value stands in for the dataclasses module (a leaf the words import): not counted
    chain = longest_chain({src: dsts - {"pcipassd.value"} for src, dsts in graph.items()
                           if src != "pcipassd.value"})
    assert len(chain) <= MAX_CHAIN, " -> ".join(chain)


@pytest.mark.parametrize(("graph", "bad"), [
    ({"pcipassd.model": frozenset({"pcipassd.plan"}), "pcipassd.plan": frozenset()},
     [("pcipassd.model", "pcipassd.plan")]),
    ({"pcipassd.plan": frozenset({"pcipassd.model"}), "pcipassd.model": frozenset()}, []),
    ({"pcipassd.guard": frozenset({"pcipassd.policy"}), "pcipassd.policy": frozenset()}, []),
])
def test_the_check_can_fail(graph: dict[str, frozenset[str]],
                            bad: list[tuple[str, str]]) -> None:
    """An upward import is found; a downward one, or one within a layer, is not."""
    assert upward(graph, _layer_of()) == bad


def test_a_cycle_is_found() -> None:
    graph = {"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset({"a"})}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
