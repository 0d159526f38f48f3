"""The folder tree is the architecture: imports go one way, and no file grows past what a reader can hold.

Layers, lowest first (a module may import its own folder and any lower layer, never a higher one):

    recsys.config, recsys.data
    -> recsys.encoder, recsys.candidates, feature_store     (each other: never)
    -> recsys.evaluation                                    (metrics and protocols)
    -> recsys.ranking -> recsys.pipeline -> recsys.experiments
    -> serving -> recsys.cli

``recsys.cli`` is the top because ``recsys serve`` hands the process over to the service. Every import
counts, also one inside a function or under ``TYPE_CHECKING``: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("recsys", "feature_store", "serving")
LAYERS: tuple[tuple[str, ...], ...] = (
    ("recsys.config", "recsys.data"),
    ("recsys.encoder", "recsys.candidates", "feature_store"),
    ("recsys.evaluation",),
    ("recsys.ranking",),
    ("recsys.pipeline",),
    ("recsys.experiments",),
    ("serving",),
    ("recsys.cli",),
)
LAYER_OF = {folder: rank for rank, folders in enumerate(LAYERS) for folder in folders}
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80
# Written at the top of a long module's docstring, or of a long function's, with the reason after it.
LONG_BY_DESIGN = "Long by design:"


def modules() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            yield name, path


def imported(tree: ast.Module) -> Iterator[str]:
    """Every project module named by an import anywhere in ``tree`` (``from a import b`` yields ``a.b``
    as well as ``a``; the caller keeps whichever is a module)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def folder(module: str) -> str:
    top, _, rest = module.partition(".")
    if top != "recsys" or not rest:
        return top
    return f"recsys.{rest.partition('.')[0]}"


def module_graph() -> dict[str, set[str]]:
    known = dict(modules())
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        targets = {m for m in imported(ast.parse(path.read_text())) if m in known and m != name}
        graph[name] = targets
    return graph


def test_every_folder_has_a_layer() -> None:
    folders = {folder(name) for name, _ in modules()} - {"recsys"}
    assert folders <= set(LAYER_OF), f"place these folders in LAYERS: {sorted(folders - set(LAYER_OF))}"


def test_imports_go_down_the_layers_only() -> None:
    wrong = []
    for name, targets in module_graph().items():
        source = folder(name)
        if source == "recsys":  # the package's own __init__ re-exports nothing heavy
            continue
        for target in targets:
            if folder(target) == source or folder(target) == "recsys":
                continue
            if LAYER_OF[folder(target)] >= LAYER_OF[source]:
                wrong.append(f"{name} imports {target}")
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


def test_no_import_circle_between_files() -> None:
    graph = module_graph()
    # a package's __init__ importing its own submodules is how it re-exports them, not a circle
    edges = {
        name: {t for t in targets if not (path_is_init(name) and t.startswith(f"{name}."))}
        for name, targets in graph.items()
    }
    circles = strongly_connected(edges)
    assert not circles, "import circles: " + "; ".join(" <-> ".join(sorted(c)) for c in circles)


def path_is_init(name: str) -> bool:
    return (ROOT / name.replace(".", "/") / "__init__.py").exists()


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm; returns the components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, ()):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def code_lines(lines: list[str]) -> int:
    return sum(1 for line in lines if line.strip() and not line.strip().startswith("#"))


@pytest.mark.parametrize("name,path", list(modules()), ids=[name for name, _ in modules()])
def test_module_and_function_size(name: str, path: Path) -> None:
    source = path.read_text()
    tree = ast.parse(source)
    lines = source.splitlines()
    module_docstring = ast.get_docstring(tree) or ""
    if len(lines) > MAX_MODULE_LINES:
        assert LONG_BY_DESIGN in module_docstring, (
            f"{name} has {len(lines)} lines (> {MAX_MODULE_LINES}): split it, or say why at its top "
            f"with {LONG_BY_DESIGN!r}"
        )
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        docstring = ast.get_docstring(node) or ""
        first = node.body[1] if docstring and len(node.body) > 1 else node.body[0]
        size = code_lines(lines[first.lineno - 1 : node.end_lineno])
        long_by_design = LONG_BY_DESIGN in docstring
        assert size <= MAX_FUNCTION_LINES or long_by_design, (
            f"{name}.{node.name} (line {node.lineno}) has {size} lines of code (> {MAX_FUNCTION_LINES}): "
            f"split it, or say why in its docstring with {LONG_BY_DESIGN!r}"
        )
