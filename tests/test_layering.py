"""Layering: the flow rules stay pure and no layer imports one above it (issue 11, item 3).

Layers, bottom up: models -> ledger -> hooks (ERP adapters) -> rules -> operators -> DAG files. The check
reads the source with ``ast``, so it sees every import: at module level, inside functions and under
``TYPE_CHECKING`` alike (a lazy import inside a function is still a dependency).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import omni_erp

PACKAGE_ROOT = Path(omni_erp.__file__).parent
SOURCE_ROOT = PACKAGE_ROOT.parent

# What the flow rules must never import: Airflow, I/O clients, the layers above and beside them.
RULES_FORBIDDEN = (
    "airflow",
    "omni_erp.operators",
    "omni_erp.hooks",
    "omni_erp.ledger",
    "omni_erp.inbox",
    "omni_erp.sandbox",
    "requests",
    "sqlalchemy",
)
# package -> the packages it must not import (no upward imports).
LAYERS = {
    "omni_erp.models": ("omni_erp.ledger", "omni_erp.hooks", "omni_erp.rules", "omni_erp.operators"),
    "omni_erp.ledger": ("omni_erp.hooks", "omni_erp.rules", "omni_erp.operators"),
    "omni_erp.hooks": ("omni_erp.ledger", "omni_erp.operators"),
    "omni_erp.rules": RULES_FORBIDDEN,
}


def module_name(path: Path, source_root: Path) -> str:
    """``omni_erp/rules/returns.py`` -> ``omni_erp.rules.returns`` (a package's ``__init__`` is the package)."""
    parts = list(path.relative_to(source_root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, source_root: Path) -> list[tuple[str, int]]:
    """Every module ``path`` imports, anywhere in the file, as (absolute name, line); relative imports resolved."""
    name = module_name(path, source_root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            # ``from omni_erp import ledger`` imports the package omni_erp.ledger: check each name as a module too.
            found.append((target, node.lineno))
            found += [(f"{target}.{alias.name}", node.lineno) for alias in node.names if alias.name != "*"]
    return found


def layer_violations(package_dir: Path, source_root: Path, forbidden: tuple[str, ...]) -> list[str]:
    """``file:line imports name`` for every import in ``package_dir`` of a module in (or under) ``forbidden``."""
    problems = []
    for path in sorted(package_dir.rglob("*.py")):
        for imported, line in imported_modules(path, source_root):
            if any(imported == bad or imported.startswith(bad + ".") for bad in forbidden):
                problems.append(f"{path.relative_to(source_root)}:{line} imports {imported}")
    return sorted(set(problems))


def _package_dir(package: str) -> Path:
    return SOURCE_ROOT.joinpath(*package.split("."))


def test_rules_package_holds_one_module_per_flow() -> None:
    modules = {p.stem for p in _package_dir("omni_erp.rules").glob("*.py")} - {"__init__"}
    assert {"order_posting", "invoice_upload", "cancellation", "completion", "returns", "credit_notes"} <= modules


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_no_layer_imports_a_layer_above_it(package: str) -> None:
    assert _package_dir(package).is_dir(), package
    assert layer_violations(_package_dir(package), SOURCE_ROOT, LAYERS[package]) == []


def test_rules_load_without_airflow_or_io_libraries() -> None:
    """Importing every rule in a fresh interpreter pulls in none of the forbidden modules, not even indirectly."""
    script = textwrap.dedent(
        f"""
        import importlib, pkgutil, sys
        import omni_erp.rules as rules
        for info in pkgutil.iter_modules(rules.__path__):
            importlib.import_module("omni_erp.rules." + info.name)
        forbidden = {RULES_FORBIDDEN!r}
        print(sorted(m for m in sys.modules if any(m == f or m.startswith(f + ".") for f in forbidden)))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"


def test_the_checker_finds_forbidden_imports_wherever_they_are(tmp_path: Path) -> None:
    """A deliberately bad rules module: imports at module level, in a function, under TYPE_CHECKING, relative."""
    rules = tmp_path / "omni_erp" / "rules"
    rules.mkdir(parents=True)
    (tmp_path / "omni_erp" / "__init__.py").write_text("")
    (rules / "__init__.py").write_text("")
    (rules / "good.py").write_text("from decimal import Decimal\nfrom omni_erp.states import ORDER_READY\nfrom . import good\n")
    (rules / "bad.py").write_text(
        textwrap.dedent(
            """
            from __future__ import annotations

            from typing import TYPE_CHECKING

            import sqlalchemy.sql
            from omni_erp import ledger

            if TYPE_CHECKING:
                from omni_erp.hooks.erp import ErpAdapter


            def rule(order):
                from airflow.sdk import Variable
                import requests
                from ..operators.base import ErpOperator
                return order
            """
        )
    )
    problems = layer_violations(rules, tmp_path, RULES_FORBIDDEN)
    assert problems == [
        "omni_erp/rules/bad.py:10 imports omni_erp.hooks.erp",
        "omni_erp/rules/bad.py:10 imports omni_erp.hooks.erp.ErpAdapter",
        "omni_erp/rules/bad.py:14 imports airflow.sdk",
        "omni_erp/rules/bad.py:14 imports airflow.sdk.Variable",
        "omni_erp/rules/bad.py:15 imports requests",
        "omni_erp/rules/bad.py:16 imports omni_erp.operators.base",
        "omni_erp/rules/bad.py:16 imports omni_erp.operators.base.ErpOperator",
        "omni_erp/rules/bad.py:6 imports sqlalchemy.sql",
        "omni_erp/rules/bad.py:7 imports omni_erp.ledger",
    ]
    # The same check over the good module alone finds nothing: it flags imports, not files.
    (rules / "bad.py").unlink()
    assert layer_violations(rules, tmp_path, RULES_FORBIDDEN) == []
