"""`shared.errors.first_line`: the one way a reason quoted from another library's error becomes part of ours."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pointad.shared.errors import first_line

PACKAGE = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("given", "expected"), [
    (ValueError("bad header\nline 2: more"), "bad header"),
    (ValueError("\n  indented first line  \nsecond"), "indented first line"),
    (ValueError(""), "ValueError"),        # nothing to quote: the type says what went wrong
    (OSError(), "OSError"),
    ("plain text\nignored", "plain text"),
    ("", ""),
])
def test_first_line_of_exceptions_and_texts(given, expected):
    assert first_line(given) == expected


def test_typed_first_line_names_the_type():
    assert first_line(ValueError("x\ny"), typed=True) == "ValueError: x"
    assert first_line(RecursionError(), typed=True) == "RecursionError"


def test_first_line_is_cut_at_the_limit_with_an_ellipsis():
    line = first_line(ValueError("x" * 500), limit=200)
    assert len(line) == 200 and line.endswith("...") and line.startswith("xxx")
    assert len(first_line(ValueError("x" * 500))) == 300
    assert first_line("x" * 200, limit=200) == "x" * 200


def test_no_module_writes_its_own_first_line():
    """Every `str(exc).splitlines()[0]` of the package goes through `first_line` (issue 23)."""
    found = []
    for path in sorted(PACKAGE.glob("[rtes]*/**/*.py")):
        if ".venv" in path.parts or "tests" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Call)
                    and isinstance(node.value.func, ast.Attribute) and node.value.func.attr == "splitlines"
                    and "exc" in ast.unparse(node.value.func.value)):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
            if isinstance(node, ast.FunctionDef) and node.name.endswith("first_line") and path.name != "errors.py":
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} def {node.name}")
    assert not found, found
