"""The house stays readable: one concept per module, short functions, imports that point down only.

Checked on every run so a change that breaks them fails here rather than in a review:

- every module says in its docstring the one concept it holds (an empty `__init__.py` holds none);
- a module may grow as long as its concept needs, but one over 800 lines is flagged: it is most likely
  two concepts by now (a cap on length alone cuts single concepts into pieces, which is worse);
- no function over 60 lines;
- the layers import only the layers below them (`runtime` knows nothing of chat or auth; `auth` nothing
  of tools or agents; the CIBA library in `tools` nothing of the stock demo; the dev servers nothing of
  agents; ...).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("runtime", "auth", "tools", "demo", "agents", "agentrt", "devservers", "examples", "bench", "tests")
MAX_MODULE_LINES = 800
MAX_FUNCTION_LINES = 60

# What each layer may import from this project (its own package always).
MAY_IMPORT = {
    "runtime": set(),
    "auth": {"runtime"},
    "tools": {"runtime", "auth"},
    "demo": {"runtime", "auth", "tools"},
    "agents": {"runtime", "auth", "tools", "demo"},
    "devservers": {"runtime", "auth", "tools", "demo"},
    "agentrt": {"runtime", "auth", "tools", "demo", "agents", "devservers"},
}
PROJECT = set(PACKAGES)


def modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (REPO / package).rglob("*.py"))


def test_every_module_states_its_concept() -> None:
    silent = [
        str(p.relative_to(REPO))
        for p in modules()
        if p.read_text().strip() and not (ast.get_docstring(ast.parse(p.read_text())) or "").strip()
    ]
    assert not silent, f"modules without a docstring naming their concept: {silent}"


def test_no_module_is_over_800_lines() -> None:
    long = {str(p.relative_to(REPO)): n for p in modules() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines (two concepts in one?): {long}"


def test_no_function_is_over_60_lines() -> None:
    long: dict[str, int] = {}
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(REPO)}:{node.name}"] = lines
    assert not long, long


@pytest.mark.parametrize("layer", sorted(MAY_IMPORT))
def test_imports_point_down(layer: str) -> None:
    upward: list[str] = []
    for path in sorted((REPO / layer).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in PROJECT and top != layer and top not in MAY_IMPORT[layer]:
                    upward.append(f"{path.relative_to(REPO)} imports {name}")
    assert not upward, upward
