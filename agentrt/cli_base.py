"""What the `agentrt` commands share: the Typer app, the consoles, the common options and small helpers."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console

from agentrt.client import AgentRuntimeClient, ApiError

app = typer.Typer(
    name="agentrt",
    help="Durable AI chat agents on Ray, with purchases approved on the user's device (CIBA).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

DEFAULT_URL = "http://127.0.0.1:8000"

UrlOption = Annotated[
    str, typer.Option("--url", envvar="AGENTRT_URL", help="Base URL of the agentrt HTTP API.", show_default=True)
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token", envvar="AGENTRT_TOKEN", help="Bearer token (default: sign in as --user on the dev server)."
    ),
]
UserOption = Annotated[str, typer.Option("--user", "-u", help="Demo user of the dev authorization server.")]
AuthzOption = Annotated[
    str | None,
    typer.Option(
        "--authz-url", envvar="AGENTRT_DEV_AUTHZ_URL", help="Dev authorization server (default: from /config)."
    ),
]


async def signed_in_client(url: str, token: str | None, user: str) -> AgentRuntimeClient:
    client = AgentRuntimeClient(url, token)
    if not token:
        try:
            await client.login(user)
        except BaseException:
            await client.aclose()
            raise
    return client


def run_command(coro: Any) -> Any:
    try:
        return asyncio.run(coro)
    except ApiError as exc:
        err_console.print(f"[red]Error {exc.status_code} {exc.error}: {exc.detail}[/red]")
        raise typer.Exit(1) from None
    except httpx.HTTPError as exc:
        err_console.print(f"[red]Cannot reach the server: {type(exc).__name__}: {exc}[/red]")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def format_duration(seconds: float) -> str:
    if seconds <= 0:
        return "expired"
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


def format_ago(timestamp: float | None) -> str:
    if not timestamp:
        return ""
    delta = time.time() - timestamp
    if delta < 60:
        return "just now"
    if delta < 3600:
        return f"{int(delta // 60)} min ago"
    if delta < 86400:
        return f"{int(delta // 3600)} h ago"
    return time.strftime("%Y-%m-%d", time.localtime(timestamp))
