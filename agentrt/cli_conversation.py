"""The conversation commands of `agentrt` (registered on the app by `agentrt.cli`): your threads, one turn
in a thread (streamed, optionally followed until its approvals resolve), and the approvals waiting on the
dev authorization server ("the phone"), approved or denied from the terminal."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

import httpx
import typer
from rich.table import Table
from rich.text import Text

from agentrt.cli_base import (
    DEFAULT_URL,
    AuthzOption,
    TokenOption,
    UrlOption,
    UserOption,
    console,
    format_ago,
    format_duration,
    run_command,
    signed_in_client,
)
from agentrt.client import AgentRuntimeClient, ApiError


def threads(url: UrlOption = DEFAULT_URL, token: TokenOption = None, user: UserOption = "alice") -> None:
    """List your threads, most recently active first."""

    async def main() -> None:
        async with await signed_in_client(url, token, user) as client:
            rows = await client.threads()
        if not rows:
            console.print('No threads yet. Start one: agentrt chat my-thread "what is MSFT trading at?"')
            return
        table = Table("thread", "title", "last active")
        for row in rows:
            table.add_row(row["thread_id"], row.get("title") or "", format_ago(row.get("last_active_at")))
        console.print(table)

    run_command(main())


def chat(
    thread: Annotated[str, typer.Argument(help="Thread id (a new id creates a thread you own).")],
    message: Annotated[str, typer.Argument(help="What to say.")],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    user: UserOption = "alice",
    wait: Annotated[bool, typer.Option(help="Keep following the thread until pending approvals resolve.")] = False,
    timeout: Annotated[float, typer.Option(help="With --wait: give up after this many seconds.")] = 300.0,
) -> None:
    """Send one message and stream the agent's answer."""

    async def main() -> None:
        async with await signed_in_client(url, token, user) as client:
            pending = await stream_turn(client, thread, message)
            if pending and wait:
                config = await client.config()
                if config.get("approvals_url"):
                    console.print(f"Approve it on {config['approvals_url']} (or: agentrt approve)", style="dim")
                await follow_until_resolved(client, thread, pending, timeout)

    run_command(main())


async def stream_turn(client: AgentRuntimeClient, thread: str, message: str) -> set[str]:
    """Run a turn, printing the reply as it streams; return the tool call ids left waiting for approval."""
    console.print(Text("you  ", style="bold cyan") + Text(message))
    pending: set[str] = set()
    streaming = False
    async for event in client.stream_message(thread, message):
        data = event.data.get("data", {}) if isinstance(event.data, dict) else {}
        if event.event == "token":
            if not streaming:
                console.print(Text("agent ", style="bold magenta"), end="")
                streaming = True
            console.print(data.get("text", ""), end="", soft_wrap=True)
        elif event.event == "message" and data.get("message", {}).get("role") == "assistant":
            if streaming:
                console.print()
                streaming = False
        elif event.event == "interrupt":
            pending.add(data.get("tool_call_id", ""))
            print_interrupt(data)
        elif event.event == "tool_result":
            pending.discard(data.get("tool_call_id", ""))
            print_tool_result(data)
        elif event.event == "failed":
            raise ApiError(
                int(event.data.get("status", 500)), event.data.get("error", "failed"), event.data.get("detail")
            )
    if streaming:
        console.print()
    return pending


def print_tool_result(data: dict[str, Any]) -> None:
    console.print(Text("tool  ", style="bold green") + Text(f"{data.get('tool_name')}: {data.get('result')}"))


def print_interrupt(data: dict[str, Any]) -> None:
    if data.get("kind") == "confirmation":
        console.print(Text("wait  ", style="bold yellow") + Text(f"{data.get('tool_name')} needs your confirmation"))
        return
    expires = data.get("expires_at")
    left = f" (expires in {format_duration(expires - time.time())})" if isinstance(expires, int | float) else ""
    binding = data.get("binding_message") or data.get("tool_name") or "a request"
    console.print(Text("wait  ", style="bold yellow") + Text(f"approval requested on your device: {binding!r}{left}"))


async def follow_until_resolved(
    client: AgentRuntimeClient, thread: str, pending: set[str], limit: float
) -> list[dict[str, Any]]:
    """Follow the thread's events until the pending calls have results and the agent answered."""
    results: list[dict[str, Any]] = []
    final: str | None = None

    async def follow() -> None:
        nonlocal final
        async for event in client.events(thread):
            data = event.data.get("data", {}) if isinstance(event.data, dict) else {}
            if event.event == "tool_result" and data.get("tool_call_id") in pending:
                pending.discard(data["tool_call_id"])
                results.append(data)
                print_tool_result(data)
            elif event.event == "message" and not pending:
                message = data.get("message", {})
                if message.get("role") == "assistant" and message.get("content"):
                    final = message["content"]
                    console.print(Text("agent ", style="bold magenta") + Text(final))
                    return
            elif event.event == "reset":
                await _check_messages()
                if final is not None:
                    return

    async def _check_messages() -> None:
        nonlocal final
        messages = await client.messages(thread)
        calls = {m["tool_call_id"]: m for m in messages if m["role"] == "tool"}
        if all(calls.get(c, {}).get("state") == "result" for c in pending):
            pending.clear()
            final = next((m["content"] for m in reversed(messages) if m["role"] == "assistant" and m["content"]), "")

    await asyncio.wait_for(follow(), limit)
    return results


ThreadArgument = Annotated[str, typer.Argument(help="Thread id.")]


def stop(
    thread: ThreadArgument, url: UrlOption = DEFAULT_URL, token: TokenOption = None, user: UserOption = "alice"
) -> None:
    """Stop the answer under way in a thread (its words so far are kept; a running tool finishes)."""

    async def main() -> None:
        async with await signed_in_client(url, token, user) as client:
            stopped = await client.stop(thread)
        console.print("Stopped the answer under way." if stopped else "Nothing was running in that thread.")

    run_command(main())


def withdraw(
    thread: ThreadArgument,
    tool_call: Annotated[str | None, typer.Argument(help="The waiting call's id (default: the only one).")] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    user: UserOption = "alice",
) -> None:
    """Withdraw a purchase waiting for your approval on your device (approving it later buys nothing)."""

    async def main() -> None:
        async with await signed_in_client(url, token, user) as client:
            call_id = tool_call or await _only_waiting_call(client, thread)
            answer = await client.withdraw_approval(thread, call_id)
        console.print(f"Withdrew {call_id}.")
        said = [m["content"] for m in answer if m["role"] == "assistant" and m.get("content")]
        if said:
            console.print(Text("agent  ", style="bold") + Text(said[-1]))

    run_command(main())


async def _only_waiting_call(client: AgentRuntimeClient, thread: str) -> str:
    waiting = [p for p in await client.interrupts(thread) if p["kind"] == "async-authorization"]
    if len(waiting) != 1:
        raise typer.BadParameter(
            f"{len(waiting)} calls wait for approval in {thread}: name one", param_hint="TOOL_CALL"
        )
    return str(waiting[0]["tool_call_id"])


def delete(
    thread: ThreadArgument,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    user: UserOption = "alice",
) -> None:
    """Delete a thread and everything it stored (its waiting approvals are withdrawn first)."""
    if not yes and not typer.confirm(f"Delete thread {thread} and everything in it?"):
        raise typer.Exit(1)

    async def main() -> None:
        async with await signed_in_client(url, token, user) as client:
            await client.delete_thread(thread)
        console.print(f"Deleted {thread}.")

    run_command(main())


def phone(
    user: UserOption = "alice",
    url: UrlOption = DEFAULT_URL,
    authz_url: AuthzOption = None,
    all_statuses: Annotated[bool, typer.Option("--all", help="Include decided and expired requests.")] = False,
) -> None:
    """List the CIBA requests waiting on the user's "phone" (the dev authorization server)."""
    # (the tool calls that wait for these are a thread's approvals: `agentrt chat --wait`, `agentrt withdraw`)

    async def main() -> None:
        rows = await ciba_requests(url, authz_url, user, None if all_statuses else "pending")
        if not rows:
            console.print(f"No {'' if all_statuses else 'pending '}approval requests for {user}.")
            return
        table = Table("binding message", "scope", "status", "expires in")
        table.add_column("id", no_wrap=True)
        for row in rows:
            table.add_row(
                row.get("binding_message") or "",
                row.get("scope") or "",
                row.get("status") or "",
                format_duration((row.get("expires_at") or 0) - time.time()),
                str(row["id"]),
            )
        console.print(table)

    run_command(main())


def approve(
    request_id: Annotated[str | None, typer.Argument(help="Request id (default: the only pending one).")] = None,
    user: UserOption = "alice",
    url: UrlOption = DEFAULT_URL,
    authz_url: AuthzOption = None,
) -> None:
    """Approve a pending CIBA request, as the user would on their phone."""
    run_command(decide_request(request_id, True, user, url, authz_url))


def deny(
    request_id: Annotated[str | None, typer.Argument(help="Request id (default: the only pending one).")] = None,
    user: UserOption = "alice",
    url: UrlOption = DEFAULT_URL,
    authz_url: AuthzOption = None,
) -> None:
    """Deny a pending CIBA request, as the user would on their phone."""
    run_command(decide_request(request_id, False, user, url, authz_url))


async def dev_authz_base(url: str, authz_url: str | None) -> str:
    if authz_url:
        return authz_url.rstrip("/")
    async with httpx.AsyncClient(timeout=15.0) as http:
        response = await http.get(url.rstrip("/") + "/config")
        response.raise_for_status()
        dev = response.json().get("dev_authz_url")
    if not dev:
        raise ApiError(404, "no_dev_server", "this server uses a real authorization server: approve on your device")
    return str(dev).rstrip("/")


async def ciba_requests(url: str, authz_url: str | None, user: str, status: str | None) -> list[dict[str, Any]]:
    base = await dev_authz_base(url, authz_url)
    params = {"user": user, **({"status": status} if status else {})}
    async with httpx.AsyncClient(timeout=15.0) as http:
        response = await http.get(f"{base}/dev/ciba/requests", params=params)
        response.raise_for_status()
        return list(response.json())


async def decide_request(request_id: str | None, approved: bool, user: str, url: str, authz_url: str | None) -> None:
    base = await dev_authz_base(url, authz_url)
    if request_id is None:
        pending = await ciba_requests(url, base, user, "pending")
        if len(pending) != 1:
            listing = ", ".join(f"{r['id']} ({r.get('binding_message')})" for r in pending) or "none"
            raise ApiError(409, "ambiguous", f"{len(pending)} pending requests for {user}: {listing}; pass an id")
        request_id = str(pending[0]["id"])
    action = "approve" if approved else "deny"
    async with httpx.AsyncClient(timeout=15.0) as http:
        response = await http.post(f"{base}/dev/ciba/requests/{request_id}/{action}")
    if response.status_code >= 400:
        raise ApiError(response.status_code, "ciba_request", response.text[:200])
    console.print(f"{'Approved' if approved else 'Denied'} request {request_id}.")
