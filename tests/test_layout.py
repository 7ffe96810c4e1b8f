"""The layout shows the architecture: ``mnemonics_lib`` is the engine only, the study layer
(``mnemonics_study``) and the tools (``tools``) sit on top of it, and no import goes in a circle.

Imports are read with ``ast``, at module level and inside functions alike; an import guarded by
``if TYPE_CHECKING:`` is for annotations only (it never runs) and is not an edge.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGINE, STUDY, TOOLS = "mnemonics_lib", "mnemonics_study", "tools"
PACKAGES = (ENGINE, STUDY, TOOLS)
ENGINE_MAX_LINES = 4_970  # 4,939 with host streaming (streaming.py), the CPU compile probe and cosinekd


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of a module, at any depth, except those under ``if TYPE_CHECKING:``."""
    out: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def _imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules that module ``name`` (file ``path``) imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for t in targets:
            while t and t not in known:  # `import a.b.c` of a non-module: its longest known prefix
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imported(name, path, set(mods)) for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (its modules in order, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_sees_function_local_and_relative_imports():
    graph = import_graph()
    assert "mnemonics_lib.protocol" in graph["mnemonics_lib.config"]  # `from .protocol import ...`
    assert "mnemonics_lib.weight_transfer" in graph["mnemonics_lib.trainer"]  # inside a function
    assert "mnemonics_study.results" in graph["mnemonics_study.study"]  # `from . import results`
    assert "mnemonics_lib.methods.base" in graph["mnemonics_lib.methods.lucir"]


def test_the_engine_imports_neither_the_study_layer_nor_the_tools():
    wrong = {f"{m} -> {t}" for m, targets in import_graph().items() if m.split(".")[0] == ENGINE
             for t in targets if t.split(".")[0] != ENGINE}
    assert not wrong, f"mnemonics_lib is the engine only; it imports {sorted(wrong)}"


def test_the_study_layer_does_not_import_the_tools():
    wrong = {f"{m} -> {t}" for m, targets in import_graph().items() if m.split(".")[0] == STUDY
             for t in targets if t.split(".")[0] == TOOLS}
    assert not wrong, f"the tools sit on the study layer, not under it: {sorted(wrong)}"


def test_no_import_goes_in_a_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, f"import cycle: {' -> '.join(cycle or [])}"


def test_the_cycle_finder_finds_config_and_protocol_importing_each_other():
    graph = import_graph()
    graph["mnemonics_lib.protocol"] = graph["mnemonics_lib.protocol"] | {"mnemonics_lib.config"}
    assert find_cycle(graph) == ["mnemonics_lib.config", "mnemonics_lib.protocol", "mnemonics_lib.config"]


def test_the_engine_stays_thin():
    files = sorted((ROOT / ENGINE).glob("*.py")) + sorted((ROOT / ENGINE / "methods").glob("*.py"))
    lines = sum(len(p.read_text(encoding="utf-8").splitlines()) for p in files)
    assert lines <= ENGINE_MAX_LINES, (
        f"mnemonics_lib has {lines} lines (bound {ENGINE_MAX_LINES}; 4,939 with host streaming, the compile probe "
        f"and cosinekd): keep the engine the engine, and put study or tool code in "
        f"mnemonics_study/ or tools/")


def test_the_top_level_the_design_card_names_exists():
    for name in ("notebooks", "mnemonics_lib", "mnemonics_study", "tools", "data", "results", "tests"):
        assert (ROOT / name).is_dir(), f"{name}/ is missing"
    for name in ("environment.yml", "README.md", "tools/__init__.py", "mnemonics_study/__init__.py"):
        assert (ROOT / name).is_file(), f"{name} is missing"
