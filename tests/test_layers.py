"""The folders are layers and imports point inward: core < adapters < service < ui / sandbox
< cli. ui and sandbox are siblings and import neither each other nor the CLI (the demo runs the
tray as a process of its own). Lazy imports inside functions count too."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "bastion_tray"
ORDER = ["core", "adapters", "service", "ui", "sandbox", "cli"]
BANNED = {"core": ORDER[1:], "adapters": ORDER[2:], "service": ORDER[3:],
          "ui": ["sandbox", "cli"], "sandbox": ["ui", "cli"]}


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every import; `from bastion_tray import ui` names bastion_tray.ui."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            if node.module == "bastion_tray":
                found += [(node.lineno, f"bastion_tray.{a.name}") for a in node.names]
    return found


def upward_imports() -> list[str]:
    problems = []
    for layer, banned in BANNED.items():
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for line, module in imported_modules(tree):
                if any(module == f"bastion_tray.{b}" or module.startswith(f"bastion_tray.{b}.")
                       for b in banned):
                    problems.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}")
    return problems


def test_no_layer_imports_one_above_it_or_its_sibling() -> None:
    assert upward_imports() == []


def test_no_relative_imports_that_would_hide_from_the_check() -> None:
    relative = [f"{p.relative_to(PACKAGE.parent)}:{n.lineno}"
                for p in sorted(PACKAGE.rglob("*.py"))
                for n in ast.walk(ast.parse(p.read_text()))
                if isinstance(n, ast.ImportFrom) and n.level > 0]
    assert relative == []


def test_the_check_sees_an_upward_import() -> None:
    """The check itself can fail: each form of an upward import is caught."""
    for source in ("import bastion_tray.cli.session", "from bastion_tray.cli import session",
                   "from bastion_tray import cli", "def f():\n    from bastion_tray.ui import x"):
        modules = [m for _, m in imported_modules(ast.parse(source))]
        assert any(m.startswith("bastion_tray.cli") or m.startswith("bastion_tray.ui")
                   for m in modules), source
