"""``shared/`` (outside ``shared/infra/``) is the pure contract: no framework, no I/O client."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
FORBIDDEN = {"litestar", "uvicorn", "asyncpg", "redis", "httpx"}
PURE = sorted(SHARED.glob("*.py"))


def imported_packages(path: Path) -> set[str]:
    """Top-level packages ``path`` imports, at module level or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def shared_modules(path: Path) -> set[str]:
    """The ``shared.*`` modules ``path`` imports."""
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("shared"):
            modules.add(node.module)
        elif isinstance(node, ast.Import):
            modules.update(a.name for a in node.names if a.name.startswith("shared"))
    return modules


def test_the_pure_modules_are_all_there() -> None:
    names = {p.stem for p in PURE}
    expected = {"domain", "pricing", "events", "views", "ids", "errors", "offer_token", "settings"}
    assert expected <= names


@pytest.mark.parametrize("path", PURE, ids=lambda p: p.name)
def test_pure_module_imports_no_framework_or_client(path: Path) -> None:
    assert not imported_packages(path) & FORBIDDEN


@pytest.mark.parametrize("path", PURE, ids=lambda p: p.name)
def test_pure_module_does_not_lean_on_the_infra_part(path: Path) -> None:
    assert not {m for m in shared_modules(path) if m.startswith("shared.infra")}


def test_the_scan_sees_imports() -> None:
    infra = imported_packages(SHARED / "infra" / "db.py") | imported_packages(
        SHARED / "infra" / "problems.py"
    )
    assert {"asyncpg", "litestar"} <= infra
