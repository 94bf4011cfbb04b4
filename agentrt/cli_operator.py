"""The operator's commands: what the files of a storage root say, with no Ray and no agent woken.

`agentrt status` (live and sleeping agents, approvals waiting, parked schedules) and `agentrt logs` (the
agents' recent failures, from the root's failure journal: `runtime.failures`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from agentrt.cli_base import console, err_console


def status(
    storage_dir: Annotated[
        Path, typer.Option(envvar="AGENT_STORAGE_DIR", help="The agents' storage root (AGENT_STORAGE_DIR).")
    ] = Path("./.data"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Live and sleeping agents, approvals waiting for their user, parked schedules: from the files."""
    import json

    from agentrt.status_report import collect, render

    if not storage_dir.is_dir():
        console.print(f"[red]no storage root at {storage_dir}[/]")
        raise typer.Exit(2)
    report = collect(storage_dir)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        render(report, console)


def logs(
    agent: Annotated[
        str | None, typer.Argument(help="Only this agent's: a thread id, or Class/id (e.g. Chat/t-1).")
    ] = None,
    storage_dir: Annotated[
        Path, typer.Option(envvar="AGENT_STORAGE_DIR", help="The agents' storage root (AGENT_STORAGE_DIR).")
    ] = Path("./.data"),
    limit: Annotated[int, typer.Option(min=1, help="How many of the most recent to show.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print them as JSON lines.")] = False,
) -> None:
    """The agents' recent failures (a tool or turn that raised, a failed model call), from the files.

    Each line says when, which agent, during what, the exception and its message (credentials scrubbed).
    """
    import json
    from dataclasses import asdict

    from runtime.failures import read_failures

    if not storage_dir.is_dir():
        err_console.print(f"[red]no storage root at {storage_dir}[/]")
        raise typer.Exit(2)
    found = read_failures(storage_dir, agent=agent, limit=limit)
    for failure in found:
        if as_json:
            print(json.dumps(asdict(failure)))
        else:
            console.print(Text(failure.line()))
    if not found and not as_json:
        console.print(f"No failures recorded{' for ' + agent if agent else ''} in {storage_dir}.", style="dim")
