"""The layering DESIGN.md describes is the one the code has: read from the imports themselves."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

from tests.helpers import REPO

PACKAGE = REPO / "dashboard"
TARGET = "dashboard.target"
# The app factory imports blueprints inside create_app so that the runner and renderer
# children, which load the package, do not pay for every view and template on start.
FACTORY = "dashboard"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(module: str) -> set[str]:
    """Every dashboard module `module` imports, at any depth of its code (functions too)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in MODULES else base)
    return {name for name in found if name in MODULES and name != module}


def function_level_imports(module: str) -> list[str]:
    """Imports of dashboard modules written inside a function of `module`."""
    tree = ast.parse(MODULES[module].read_text())
    inside = []
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(function):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dashboard"):
                inside.append(f"{function.name}: from {node.module}")
            elif isinstance(node, ast.Import) and any(
                alias.name.startswith("dashboard") for alias in node.names
            ):
                inside.append(f"{function.name}: import {node.names[0].name}")
    return inside


def test_no_module_of_the_dashboard_imports_itself_in_a_circle():
    graph = {module: imported_modules(module) for module in MODULES}
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as error:
        pytest.fail(f"import circle: {' → '.join(error.args[1])}")


def test_only_the_target_package_imports_alembic_or_creates_engines():
    offenders = []
    for module, path in MODULES.items():
        if module == TARGET or module.startswith(TARGET + "."):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            if any(name == "alembic" or name.startswith("alembic.") for name in names):
                offenders.append(f"{module} imports alembic")
            if isinstance(node, ast.Attribute | ast.Name) and "create_engine" in (
                getattr(node, "attr", None),
                getattr(node, "id", None),
            ):
                offenders.append(f"{module} creates an engine (line {node.lineno})")
    assert offenders == []


def test_no_function_imports_a_dashboard_module_but_the_app_factory():
    offenders = {
        module: inside
        for module in MODULES
        if module != FACTORY and (inside := function_level_imports(module))
    }
    assert offenders == {}


def test_the_services_know_nothing_of_views_flows_or_the_cli():
    above = ("views", "flows", "cli")
    offenders = [
        f"{module} → {imported}"
        for module in MODULES
        if module.endswith(".service") or module.startswith(TARGET)
        for imported in imported_modules(module)
        if imported.rpartition(".")[2] in above or imported == "dashboard.cli"
    ]
    assert offenders == []


def test_the_target_package_stands_on_its_own():
    """It takes one frozen TargetDatabase, so it needs no feature package to describe one."""
    allowed = ("dashboard.errors", "dashboard.redact", "dashboard.processes", TARGET)
    offenders = [
        f"{module} → {imported}"
        for module in MODULES
        if module.startswith(TARGET + ".")
        for imported in imported_modules(module)
        if imported != TARGET and not imported.startswith(allowed)
    ]
    assert offenders == []
