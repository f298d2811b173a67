"""docs/configuration.md lists exactly the NOFX_* variables the code reads, with their defaults.

A variable the code reads is a string constant that is a whole ``NOFX_*`` name anywhere in
``nofx/`` or ``celeryconfig.py``: what ``env.get(...)``, ``os.environ.get(...)`` and click's
``envvar=`` are given. Docstrings and messages that mention a name in passing do not count.
A default is the constant the code falls back to: ``_float(env, "NOFX_X", 5.0)``,
``os.environ.get("NOFX_X", "2")`` or ``env.get("NOFX_X") or "y"``. The doc's default cell
must start with that value in backticks.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CODE = [*sorted((ROOT / "nofx").rglob("*.py")), ROOT / "celeryconfig.py"]
DOC = ROOT / "docs" / "configuration.md"
NAME = re.compile(r"NOFX_[A-Z0-9_]+")
LIBRARY_VARIABLES = ["ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "PROMETHEUS_MULTIPROC_DIR"]


def _trees() -> list[tuple[Path, ast.Module]]:
    return [(path, ast.parse(path.read_text(), str(path))) for path in CODE]


def _name_in(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and NAME.fullmatch(node.value):
        return node.value
    return None


def nofx_names_in_code() -> set[str]:
    """Every NOFX_* variable the code reads."""
    return {name for _, tree in _trees() for node in ast.walk(tree) if (name := _name_in(node))}


def _module_constants(tree: ast.Module) -> dict[str, Any]:
    return {target.id: stmt.value.value for stmt in tree.body if isinstance(stmt, ast.Assign)
            and isinstance(stmt.value, ast.Constant) for target in stmt.targets
            if isinstance(target, ast.Name)}


def _defaults_in(tree: ast.Module) -> list[tuple[str, Any]]:
    constants = _module_constants(tree)

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        return constants.get(node.id) if isinstance(node, ast.Name) else None

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):  # helper(env, "NOFX_X", default) / get("NOFX_X", default)
            for arg, following in zip(node.args, node.args[1:]):
                if (name := _name_in(arg)) is not None:
                    found.append((name, value(following)))
        elif isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or):  # get("NOFX_X") or y
            first, *rest = node.values
            if (isinstance(first, ast.Call) and len(first.args) == 1 and len(rest) == 1
                    and (name := _name_in(first.args[0])) is not None):
                found.append((name, value(rest[0])))
    return [(name, default) for name, default in found if default not in (None, "")]


def code_defaults() -> list[tuple[str, Any]]:
    """(variable, default) for every constant default in the code."""
    return sorted({pair for _, tree in _trees() for pair in _defaults_in(tree)}, key=str)


def doc_rows() -> dict[str, list[str]]:
    """The doc's table rows by variable: variable, meaning, default, example."""
    rows: dict[str, list[str]] = {}
    for line in DOC.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        match = re.fullmatch(r"`([A-Z][A-Z0-9_]+)`", cells[0]) if line.startswith("|") else None
        if match:
            assert match.group(1) not in rows, f"{match.group(1)} has two rows in {DOC.name}"
            rows[match.group(1)] = cells
    return rows


def _same(documented: str, default: Any) -> bool:
    if isinstance(default, bool):
        return documented.lower() == str(default).lower()
    if isinstance(default, (int, float)):
        try:
            return float(documented) == float(default)
        except ValueError:
            return False
    return documented == str(default)


def test_every_nofx_variable_the_code_reads_is_in_the_configuration_doc() -> None:
    missing = nofx_names_in_code() - set(doc_rows())
    assert not missing, f"read by the code but not documented in {DOC.name}: {sorted(missing)}"


def test_every_nofx_variable_in_the_configuration_doc_is_read_by_the_code() -> None:
    documented = {name for name in doc_rows() if NAME.fullmatch(name)}
    unread = documented - nofx_names_in_code()
    assert not unread, f"documented in {DOC.name} but read by no code: {sorted(unread)}"


def test_the_configuration_doc_lists_the_variables_libraries_read() -> None:
    assert set(LIBRARY_VARIABLES) <= set(doc_rows())


def test_every_row_has_a_meaning_a_default_and_an_example() -> None:
    incomplete = [name for name, cells in doc_rows().items()
                  if len(cells) != 4 or not all(cells)]
    assert not incomplete, f"rows without 4 filled cells: {incomplete}"


@pytest.mark.parametrize(("name", "default"), code_defaults(), ids=lambda v: str(v))
def test_each_documented_default_is_the_one_the_code_falls_back_to(name: str, default: Any) -> None:
    cells = doc_rows().get(name)
    assert cells is not None, f"{name} is not documented"
    literal = re.match(r"`([^`]*)`", cells[2])
    assert literal, f"{name}: the default cell should start with `{default}`, it says {cells[2]!r}"
    assert _same(literal.group(1), default), (
        f"{name}: the doc says {literal.group(1)!r}, the code falls back to {default!r}")
