"""The package's shape: the import graph has no cycles (imports inside functions included), ``config`` sits at the
bottom, and nothing outside the task registry branches on a task's name or family."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "src" / "productgen"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, modules: dict[str, Path], here: str) -> set[str]:
    """Every productgen module ``here`` imports at run time, wherever the import statement is (``if
    TYPE_CHECKING:`` blocks excluded: they never run)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("productgen"):
                    found.add(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("productgen"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    found.add(sub if sub in modules else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    # Importing a.b.c runs a/__init__ and a/b/__init__ first: edges to those packages, except this module's own
    # ancestors (a package importing its own submodules is how packages work, not a cycle).
    edges: set[str] = set()
    for target in found:
        parts = target.split(".")
        for i in range(2, len(parts) + 1):
            mod = ".".join(parts[:i])
            if mod in modules and not (here == mod or here.startswith(mod + ".")) and mod != "productgen":
                edges.add(mod)
    edges.discard(here)
    return edges


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(ast.parse(path.read_text()), modules, name) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_import_graph_has_no_cycles() -> None:
    cycles = _cycles(import_graph())
    assert not cycles, "import cycles (imports inside functions count): " + "; ".join(" <-> ".join(c) for c in cycles)


def test_cycle_finder_finds_a_cycle_through_a_function_import() -> None:
    """The check above can fail: a cycle closed only by an import inside a function is found."""
    modules = {"productgen.a": Path("a.py"), "productgen.b": Path("b.py")}
    a = ast.parse("import productgen.b\n")
    b = ast.parse("def f():\n    from productgen.a import x\n")
    graph = {"productgen.a": _imports(a, modules, "productgen.a"), "productgen.b": _imports(b, modules, "productgen.b")}
    assert _cycles(graph) == [["productgen.a", "productgen.b"]]


def test_config_imports_nothing_above_it() -> None:
    """``config`` is the bottom layer: it may use the shared helpers and the task registry (data only), nothing
    that imports config back."""
    graph = import_graph()
    allowed = {m for m in graph if m.startswith("productgen.common")} | {"productgen.tasks"}
    assert graph["productgen.config"] <= allowed, sorted(graph["productgen.config"] - allowed)
    assert graph["productgen.tasks"] <= {m for m in graph if m.startswith("productgen.common")}


def test_at_most_eight_flat_modules() -> None:
    flat = sorted(p.name for p in PKG.glob("*.py"))
    assert len(flat) <= 8, flat


def _task_words() -> set[str]:
    from productgen import tasks

    return set(tasks.names()) | {spec.family for spec in tasks.TASKS.values()}


def _compared_words(tree: ast.AST, words: set[str]) -> list[tuple[int, str]]:
    """Line and text of every comparison of a task name or family: ``x == "gan"``, ``kind in ("pix2pix", ...)``,
    ``spec.family != ...``."""
    hits: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        consts: list[ast.AST] = []
        for side in sides:
            if isinstance(side, (ast.Tuple, ast.List, ast.Set)):
                consts.extend(side.elts)
            else:
                consts.append(side)
        named = any(isinstance(c, ast.Constant) and c.value in words for c in consts)
        family = any(isinstance(s, ast.Attribute) and s.attr == "family" for s in sides)
        if named or family:
            hits.append((node.lineno, ast.unparse(node)))
    return hits


def test_nothing_outside_the_registry_branches_on_a_task_name() -> None:
    words = _task_words()
    found = []
    for name, path in _modules().items():
        if name == "productgen.tasks":
            continue
        for line, text in _compared_words(ast.parse(path.read_text()), words):
            found.append(f"{path.relative_to(PKG.parent)}:{line}: {text}")
    assert not found, "ask the TaskSpec instead:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "source",
    ['if cfg.get("model") == "adain": pass', 'ok = kind not in ("pix2pix", "cyclegan")', "x = spec.family == f"],
)
def test_task_name_check_can_fail(source: str) -> None:
    assert _compared_words(ast.parse(source), {"adain", "pix2pix", "cyclegan", "generation"})


MAX_FUNCTION_LINES = 150


def test_no_function_longer_than_150_lines() -> None:
    """Long functions hide their steps: split them into named pieces (nested functions count on their own and
    inside the function that holds them)."""
    long = []
    for path in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PKG.parent)}:{node.lineno}: {node.name} ({n} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)
