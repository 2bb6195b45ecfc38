"""The layout's rules, read from the code: imports point one way, no package has an
import cycle, the plugin leaves `ac` out, and tests use public names only.

Imports are read from the source (every `import`, at any depth, function-level
ones included), so a lazy import cannot hide a cycle. A submodule's implicit
import of its parent package is not an edge: Python runs that one first.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.tiers("cpu"), pytest.mark.timeout(400)]

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ac", "ackit", "harness")
# What each package may import from this project (itself always).
ALLOWED = {"ac": set(), "harness": set(), "ackit": {"ac", "harness"}}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def _imported(node: ast.AST, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The project modules one import statement loads (its own names, not parent packages)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] in PACKAGES]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
        base = ".".join([*anchor, *([base] if base else [])])
    if base.split(".")[0] not in PACKAGES:
        return []
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]


def import_graph(modules: dict[str, Path] | None = None) -> dict[str, set[str]]:
    modules = modules or _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            edges.update(t for t in _imported(node, name, is_package, known) if t in known and t != name)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_package_has_an_import_cycle():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_sees_a_cycle_through_a_function_level_import(tmp_path):
    """The check above can fail: a planted pair that imports each other, one lazily."""
    package = tmp_path / "ac"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from ac import b\n")
    (package / "b.py").write_text("def f():\n    from ac.a import thing\n")
    modules = {"ac": package / "__init__.py", "ac.a": package / "a.py", "ac.b": package / "b.py"}
    assert cycles(import_graph(modules)) == [["ac.a", "ac.b"]]


def test_imports_point_one_way():
    wrong = [
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        for target in targets
        if (top := target.split(".")[0]) != module.split(".")[0] and top not in ALLOWED[module.split(".")[0]]
    ]
    assert wrong == []


PROJECT_TEST = """
def test_x(tier):
    assert tier.name == "cpu"
"""

CHECK_SYS_MODULES = """
import json, sys
import pytest
rc = pytest.main(sys.argv[1:])
print(json.dumps({"rc": int(rc), "imported": sorted(m for m in sys.modules if m.split(".")[0] in ("ac", "ackit"))}))
"""


def _clean_run(args: list[str], cwd: Path) -> dict:
    run = subprocess.run(
        [sys.executable, "-c", CHECK_SYS_MODULES, *args], cwd=cwd, capture_output=True, text=True, timeout=180
    )
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_importing_the_harness_leaves_ac_out():
    code = "import sys, harness, harness.plugin, harness.options, harness.env, harness.ci.matrix\n"
    code += "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ac', 'ackit')))"
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_an_inventory_and_a_tiered_run_leave_ac_out(tmp_path):
    (tmp_path / "test_project.py").write_text(PROJECT_TEST)
    (tmp_path / "pytest.ini").write_text("[pytest]\nharness = true\n")
    common = ["-q", "-p", "no:cacheprovider"]
    inventory = _clean_run([*common, "--collect-only", "--harness-inventory", "inv.json"], tmp_path)
    assert inventory == {"rc": 0, "imported": []}
    assert json.loads((tmp_path / "inv.json").read_text())[0]["tier"] == "cpu"
    assert _clean_run([*common, "--tier", "cpu"], tmp_path) == {"rc": 0, "imported": []}


def _private_names_defined() -> set[str]:
    """Names with one leading underscore that `ac`, `ackit` or `harness` define."""
    names = set()
    for path in _modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def private_reads(paths: list[Path], private: set[str]) -> list[tuple[str, int, str]]:
    found = []
    for path in paths:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            attr = None
            if isinstance(node, ast.Attribute):
                attr = node.attr
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PACKAGES:
                attr = next((a.name for a in node.names if a.name in private), None)
            if attr in private:
                found.append((path.name, node.lineno, attr))
    return found


def test_tests_read_no_private_name_of_the_packages():
    """A test that needs a private name says the package lacks a public view of it."""
    tests = [p for p in sorted((ROOT / "tests").rglob("*.py")) if p.name != "test_layout.py"]
    assert private_reads(tests, _private_names_defined()) == []


def test_the_private_name_check_sees_a_read(tmp_path):
    planted = tmp_path / "test_x.py"
    planted.write_text("from harness.plugin import _hidden\n\n\ndef test_y(m):\n    assert m._plans\n")
    assert sorted(private_reads([planted], {"_plans", "_hidden"})) == [
        ("test_x.py", 1, "_hidden"),
        ("test_x.py", 5, "_plans"),
    ]
