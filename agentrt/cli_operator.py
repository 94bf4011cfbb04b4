"""The operator's commands.

`agentrt status` (live and sleeping agents, approvals waiting, parked schedules) and `agentrt logs` (the
agents' recent failures, from the root's failure journal: `runtime.failures`) read the storage root, with no
Ray and no agent woken. `agentrt hosts` connects to the running Ray cluster: how many host processes the
agents are spread over, and `--set N` to change that on the running system (`runtime.set_host_count`).
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


def hosts(
    set_to: Annotated[
        int | None,
        typer.Option("--set", min=1, max=1024, help="Spread the agents over this many hosts, on the running system."),
    ] = None,
    storage_dir: Annotated[
        Path, typer.Option(envvar="AGENT_STORAGE_DIR", help="The agents' storage root (AGENT_STORAGE_DIR).")
    ] = Path("./.data"),
    namespace: Annotated[str, typer.Option(envvar="AGENT_NAMESPACE", help="Ray namespace of the agents.")] = "agents",
    address: Annotated[str, typer.Option(envvar="RAY_ADDRESS", help="The running Ray cluster.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """How many host processes the agents are spread over, and what each has live; `--set N` changes the
    count with no stop: about 1/(N+1) of the agents move when one host is added, each after its turn in
    flight, and calls meanwhile wait and go on by themselves."""
    import json

    import ray

    from runtime.registry import host_report, set_host_count

    try:
        ray.init(address=address, namespace=namespace, logging_level="ERROR", log_to_driver=False)
    except ConnectionError:
        err_console.print(f"[red]no Ray cluster is running at {address!r}[/] (start the service first)")
        raise typer.Exit(2) from None
    try:
        moved = set_host_count(set_to, storage_dir=storage_dir, namespace=namespace) if set_to else None
        report = {"moved": moved, **host_report(storage_dir=storage_dir, namespace=namespace)}
    finally:
        ray.shutdown()
    if as_json:
        print(json.dumps(report, indent=2))
        return
    if moved is not None:
        console.print(
            f"Spread over {moved['hosts']} hosts (were {moved['from']}): {moved['released']} live agents "
            f"moved in {moved['seconds']} s."
        )
    placement = report["placement"]
    console.print(f"{placement['hosts']} hosts (placement version {placement['version']})")
    for host in report["hosts"]:
        console.print(f"  host {host['slot']}: {host['live']} live agents, node {host['node_id'][:12]}")
