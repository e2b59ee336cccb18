"""Dependencies point one way: each hbt module imports only from its own layer or the layers below, and
no chain of imports (function-level and typing-only ones included) comes back to where it started.
docs/architecture.md describes the layers."""

import ast

from conftest import ROOT

# Lowest first. A module belongs to the first prefix it matches, in this order of precedence.
LAYERS = [
    (
        "base",
        [
            "hbt.errors",
            "hbt.progress",
            "hbt.sampling",
            "hbt.distributed",
            "hbt.data.schema",
            "hbt.stats",
            "hbt.checkpointing",
            "hbt.watchdog",
            "hbt.sweeps",
            "hbt.results",
            "hbt.compat",
            "hbt.hardware",
            "hbt.cli",
        ],
    ),
    ("data", ["hbt.data"]),
    ("model", ["hbt.models", "hbt.loss"]),
    ("train", ["hbt.grad_cache", "hbt.plan", "hbt.strategies", "hbt.module"]),
    ("reporting", ["hbt.report", "hbt.tracking"]),
    ("eval", ["hbt.eval"]),
    ("run", ["hbt.tasks", "hbt.mine", "hbt"]),
]


def layer_of(module: str) -> int:
    for level, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if prefix != "hbt" and (module == prefix or module.startswith(prefix + ".")):
                return level
    return len(LAYERS) - 1  # the package itself (hbt/__init__)


def hbt_imports(tree: ast.Module) -> list[str]:
    """Every hbt import in the module, at any depth: function-level ones and those under
    ``if TYPE_CHECKING:`` included (a typing-only import is still a dependency a reader follows)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "hbt":  # from hbt import hardware
            found += [f"hbt.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "hbt":
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.split(".")[0] == "hbt"]
    return found


def import_graph() -> dict[str, set[str]]:
    src = ROOT / "src"
    graph = {}
    for path in sorted((src / "hbt").rglob("*.py")):
        module = ".".join(path.relative_to(src).with_suffix("").parts).removesuffix(".__init__")
        graph[module] = set(hbt_imports(ast.parse(path.read_text())))
    return graph


def test_every_import_points_to_the_same_layer_or_below():
    wrong = [
        f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for module, targets in import_graph().items()
        for target in targets
        if layer_of(target) > layer_of(module)
    ]
    assert not wrong, wrong


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target in graph and target not in state and (cycle := visit(target, [*path, target])):
                return cycle
        state[module] = 2
        return None

    for module in graph:
        if module not in state and (cycle := visit(module, [module])):
            return cycle
    return None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checks_catch_an_upward_import_and_a_cycle():
    """Negative controls: data importing the evaluation layer is flagged, a TYPE_CHECKING import counts
    as much as any other, and a cycle through a function-level import is found."""
    tree = ast.parse(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from hbt.models.encoder import X\ndef f():\n    from hbt.eval.retrieval import Y\n"
    )
    assert sorted(hbt_imports(tree)) == ["hbt.eval.retrieval", "hbt.models.encoder"]
    assert layer_of("hbt.eval.retrieval") > layer_of("hbt.data.toy") > layer_of("hbt.data.schema")
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_every_layer_holds_a_module():
    assert {layer_of(module) for module in import_graph()} == set(range(len(LAYERS)))


MAX_LINES = 400


def test_no_module_is_over_400_lines_without_saying_why_at_its_top():
    """A module longer than MAX_LINES says why in its docstring (the words "over 400 lines")."""
    long = []
    for path in sorted((ROOT / "src" / "hbt").rglob("*.py")):
        text = path.read_text()
        docstring = ast.get_docstring(ast.parse(text)) or ""
        if len(text.splitlines()) > MAX_LINES and "over 400 lines" not in docstring.lower():
            long.append(f"{path.relative_to(ROOT)}: {len(text.splitlines())} lines")
    assert not long, long
