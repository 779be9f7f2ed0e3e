"""The shape of the code: the model side imports no HTTP, HTTP lives in the ingress package,
nothing imports upwards, and there are no import cycles (read from the source, no Ray)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("deployments", "graphs", "vlgraph")
HTTP_LIBRARIES = ("fastapi", "starlette")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {
        module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")
    }


def imports_of(path: Path, top_level_only: bool = False) -> set[str]:
    """Modules ``path`` imports (every import, or only those run at import time)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else _runtime_nodes(tree)
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _runtime_nodes(tree: ast.AST):
    """Every node, less what only type checkers read (``if TYPE_CHECKING:`` blocks)."""
    pending = [tree]
    while pending:
        node = pending.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and getattr(child.test, "id", None) == "TYPE_CHECKING":
                continue
            pending.append(child)


def project_imports(
    path: Path, modules: dict[str, Path], top_level_only: bool = False, type_only: bool = False
):
    found = imports_of(path, top_level_only) | (type_only_imports(path) if type_only else set())
    return {name for name in found if name in modules}


def type_only_imports(path: Path) -> set[str]:
    """Modules imported in ``if TYPE_CHECKING:`` blocks."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and inner.module and inner.level == 0:
                    found.add(inner.module)
                elif isinstance(inner, ast.Import):
                    found.update(alias.name for alias in inner.names)
    return found


def test_the_model_side_imports_no_http() -> None:
    for name, path in project_modules().items():
        if name.startswith("deployments.ingress") or not name.startswith("deployments"):
            continue
        http = {i for i in imports_of(path) if i.split(".")[0] in HTTP_LIBRARIES}
        assert not http, f"{name} imports {sorted(http)}: HTTP belongs in deployments.ingress"


def test_only_the_ingress_package_imports_fastapi_or_starlette() -> None:
    for name, path in project_modules().items():
        http = {i for i in imports_of(path) if i.split(".")[0] in HTTP_LIBRARIES}
        if http:
            assert name.startswith("deployments.ingress."), f"{name} imports {sorted(http)}"


def test_graphs_reach_no_http_module_at_import_time() -> None:
    """What importing a graph runs never imports FastAPI or Starlette from project code."""
    modules = project_modules()
    seen: set[str] = set()
    pending = [name for name in modules if name.startswith("graphs")]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        path = modules[name]
        http = {
            i for i in imports_of(path, top_level_only=True) if i.split(".")[0] in HTTP_LIBRARIES
        }
        assert not http, f"graphs import {name}, which imports {sorted(http)} at import time"
        pending.extend(project_imports(path, modules, top_level_only=True))


@pytest.mark.parametrize(
    ("lower", "upper"),
    [
        ("vlgraph", "deployments"),
        ("vlgraph", "graphs"),
        ("deployments", "graphs"),
    ],
)
def test_nothing_imports_upwards(lower: str, upper: str) -> None:
    for name, path in project_modules().items():
        if name.split(".")[0] != lower:
            continue
        upward = {i for i in imports_of(path) if i.split(".")[0] == upper}
        assert not upward, f"{name} imports {sorted(upward)}: {lower} sits below {upper}"


def test_no_import_cycles() -> None:
    """Not even through imports that only type checkers read."""
    modules = project_modules()
    graph = {
        name: {
            target
            for target in project_imports(path, modules, type_only=True)
            if target != name and not name.startswith(f"{target}.")
        }
        for name, path in modules.items()
    }
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycle = [*trail[trail.index(target) :], target] if target in trail else [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*trail, target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
