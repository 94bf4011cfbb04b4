"""README.md is a contract: its Python snippets run as they are, and its CLI table names every flag.

Each ```python block runs in its own process from a fresh folder: a block marked `<!-- file: NAME -->` is
written to that file (the agent of your own and its test-kit tests, which then run under pytest); a block
marked `<!-- sketch ... -->` is only compiled; every other block runs as a script (the one that talks to
`http://127.0.0.1:8000` with `agentrt serve` running, as its text says, runs in `tests/test_cli.py`
against the `agentrt serve` that test starts).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.isolated import REPO, SESSION_ONLY

README = (REPO / "README.md").read_text()
BLOCK = re.compile(r"(?:<!-- (?P<mark>[^>]*) -->\n)?```python\n(?P<code>.*?)```", re.S)
SERVED_URL = "http://127.0.0.1:8000"


@dataclass
class Snippet:
    code: str
    mark: str
    line: int

    @property
    def file(self) -> str | None:
        return self.mark.removeprefix("file:").strip() if self.mark.startswith("file:") else None


SNIPPETS = [Snippet(m["code"], m["mark"] or "", README[: m.start()].count("\n") + 1) for m in BLOCK.finditer(README)]
SCRIPTS = [s for s in SNIPPETS if not s.mark]


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(SESSION_ONLY)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def run(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"README line {args}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_the_readme_has_the_snippets_this_test_knows() -> None:
    assert len(SCRIPTS) == 3 and {s.file for s in SNIPPETS if s.file} == {
        "expenses.py",
        "conftest.py",
        "test_expenses.py",
    }
    for sketch in (s for s in SNIPPETS if s.mark.startswith("sketch")):
        compile(sketch.code, f"README.md:{sketch.line}", "exec")


@pytest.mark.slow
@pytest.mark.parametrize("snippet", [s for s in SCRIPTS if SERVED_URL not in s.code], ids=lambda s: f"line{s.line}")
def test_a_python_snippet_runs_as_it_is(snippet: Snippet, tmp_path: Path) -> None:
    (tmp_path / "snippet.py").write_text(snippet.code)
    proc = run([sys.executable, "snippet.py"], cwd=tmp_path)
    if "counter-data" in snippet.code:  # the runtime's: its agent and alarm in the root it chose
        assert proc.stdout.split() == ["5"]
        assert (tmp_path / "counter-data" / "Counter" / "c-1.sqlite3").is_file()
        assert not (tmp_path / ".data").exists()
    else:  # the chat thread's: the purchase, approved, done
        assert "Purchased 100 shares of MSFT" in proc.stdout


def run_the_client_snippet(api: str, folder: Path) -> None:
    """The README's client snippet against a running `agentrt serve` at `api` (it names port 8000; the
    service under test has its own port). `tests/test_cli.py` calls it while its `agentrt serve` runs,
    so the suite starts one service for both."""
    (snippet,) = [s for s in SCRIPTS if SERVED_URL in s.code]
    (folder / "snippet.py").write_text(snippet.code.replace(SERVED_URL, api))
    proc = run([sys.executable, "snippet.py"], cwd=folder)
    assert "MSFT is trading at" in proc.stdout


@pytest.mark.slow
def test_the_agent_of_your_own_passes_the_readme_tests_written_with_the_kit(tmp_path: Path) -> None:
    for snippet in SNIPPETS:
        if snippet.file:
            (tmp_path / snippet.file).write_text(snippet.code)
    proc = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_expenses.py"], cwd=tmp_path)
    assert "1 passed" in proc.stdout


def test_the_cli_table_lists_every_flag_of_every_command() -> None:
    import typer

    from agentrt.cli import app

    table = README[README.index("## CLI") : README.index("## Configuration")]
    rows = {m[1]: m[0] for m in re.finditer(r"^\| `agentrt (\w+)[^|]*\|.*$", table, re.M)}
    rows.update({m[1]: m[0] for m in re.finditer(r"^.* / `agentrt (\w+).*$", table, re.M)})  # `approve` / `deny`
    group = typer.main.get_command(app)
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        assert name in rows, f"agentrt {name} is not in the README's CLI table"
        for param in command.params:
            for flag in (o for o in param.opts if o.startswith("--") and o != "--help"):
                assert flag in rows[name], f"agentrt {name} {flag} is not in its README row"


def test_every_setting_the_product_reads_is_in_the_readme() -> None:
    """Each environment variable a settings class reads is named in the README (its configuration tables)."""
    from pydantic import AliasChoices

    from agentrt.ingress.settings import IngressSettings
    from agents.settings import ChatSettings
    from auth.settings import AuthSettings
    from demo.stocks import StockToolSettings
    from runtime.settings import RuntimeSettings

    missing = []
    for settings in (RuntimeSettings, ChatSettings, AuthSettings, IngressSettings, StockToolSettings):
        prefix = settings.model_config.get("env_prefix", "")
        for name, field in settings.model_fields.items():
            alias = field.validation_alias
            if isinstance(alias, AliasChoices):
                names = [choice for choice in alias.choices if isinstance(choice, str)]
            else:
                names = [alias if isinstance(alias, str) else (prefix + name).upper()]
            if not any(f"`{env}`" in README for env in names):
                missing.append(f"{settings.__name__}.{name} ({' or '.join(names)})")
    assert not missing, missing
