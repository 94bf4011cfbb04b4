"""`agentrt`: run the chat service, talk to it, and play the demo story from a terminal.

    agentrt serve                      # local Ray + dev services + the HTTP API and web page
    agentrt demo                       # the story end to end: alice buys 100 MSFT after approving it
    agentrt chat THREAD "message"      # one turn (streamed); --wait follows it until approvals resolve
    agentrt threads                    # your threads
    agentrt approvals | approve [ID] | deny [ID]   # the dev server's pending CIBA requests ("the phone")

Client commands talk to `--url` (default `$AGENTRT_URL` or http://127.0.0.1:8000) with `--token`
(`$AGENTRT_TOKEN`) or, against the dev authorization server, as the demo user `--user` (default alice).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from agentrt.client import AgentRuntimeClient, ApiError, dev_login
from auth.issuer import is_loopback_host

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


def _checked_agent_class(class_path: str) -> str:
    """`module:Class` if it names a ThreadAgent subclass importable from here (the current folder first, as
    `python -m` would), else exit 2 with what is wrong."""
    from agentrt.ingress.gateway import load_thread_agent_class

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        load_thread_agent_class(class_path)
    except TypeError as exc:
        err_console.print(f"[red]agentrt serve: {exc}[/red]")
        raise typer.Exit(2) from None
    return class_path


VerboseOption = Annotated[bool, typer.Option("--verbose", help="Also show Ray's own log lines here.")]

# ------------------------------------------------------------------------------------------------------
# serve


@app.command()
def serve(
    host: Annotated[
        str, typer.Option(help="Interface of the HTTP API (the dev services always listen on 127.0.0.1).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the HTTP API (falls back to a free one if taken).")] = 8000,
    strict_port: Annotated[bool, typer.Option(help="Fail instead of falling back when --port is taken.")] = False,
    storage_dir: Annotated[
        Path, typer.Option(envvar="AGENT_STORAGE_DIR", help="Where agents keep their SQLite files.")
    ] = Path("./.data"),
    namespace: Annotated[str, typer.Option(envvar="AGENT_NAMESPACE", help="Ray namespace of the agents.")] = "agents",
    address: Annotated[
        str | None, typer.Option(envvar="RAY_ADDRESS", help="Join this Ray cluster instead of starting a local one.")
    ] = None,
    num_cpus: Annotated[int | None, typer.Option(help="CPUs for the local Ray cluster (default: all).")] = None,
    ciba_interval: Annotated[
        int | None, typer.Option(help="Dev server's CIBA polling interval in seconds (default: its own).")
    ] = None,
    agent: Annotated[
        str | None,
        typer.Option(
            envvar="AGENTRT_AGENT_CLASS",
            help="Serve this thread agent (`module:Class`, a ThreadAgent subclass) instead of the demo's Chat.",
        ),
    ] = None,
    verbose: VerboseOption = False,
    insecure_dev_login: Annotated[
        bool,
        typer.Option(
            "--insecure-dev-login",
            help="Allow a non-loopback --host with the dev authorization server (anyone who reaches it can "
            "sign in as a demo user).",
        ),
    ] = False,
) -> None:
    """Run the chat service: local Ray, the dev services (unless configured otherwise) and the HTTP API.

    With no configuration everything is embedded: the dev authorization server (demo users alice and bob,
    an approval page playing the phone), the demo checkout API and the offline model. Set AUTH0_* (or
    AUTH_ISSUER), CHECKOUT_API_URL, OPENAI_* to use real services instead. Ctrl-C stops everything.
    """
    from agentrt.stack import Stack, StackError, StackOptions

    extra_env: dict[str, str] = {}
    if agent:  # the agents import it too: from the current folder, as here
        extra_env["AGENTRT_AGENT_CLASS"] = _checked_agent_class(agent)
        extra_env["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)
    options = StackOptions(
        host=host,
        port=port,
        strict_port=strict_port,
        storage_dir=storage_dir,
        namespace=namespace,
        ray_address=address,
        num_cpus=num_cpus,
        ciba_interval=ciba_interval,
        extra_env=extra_env,
        verbose=verbose,
    )
    stack = Stack(options)
    if stack.uses_dev_auth() and not is_loopback_host(host) and not insecure_dev_login:
        err_console.print(
            f"[red]agentrt serve: --host {host} with the dev authorization server would hand out demo users' "
            "tokens to anyone who can reach it (/dev/login). Configure AUTH0_* (or AUTH_ISSUER) for a real "
            "identity provider, or pass --insecure-dev-login for a demo on a trusted network.[/red]"
        )
        raise typer.Exit(2)
    stop = threading.Event()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with console.status("Starting Ray, the dev services and the HTTP API…") as status:
            stack.log = lambda message: status.update(message[:1].upper() + message[1:] + "…")
            stack.start()
        for sig in previous:
            signal.signal(sig, lambda *_: stop.set())
        _print_urls(stack)
        if stack.authz is not None and not is_loopback_host(host):
            console.print(
                f"[yellow]Warning: the API listens on {host} while the dev authorization server is in use: anyone "
                "who can reach it can sign in as a demo user. Configure AUTH0_* for anything but a demo.[/yellow]"
            )
        while not stop.wait(0.5):
            pass
        console.print("\nStopping…")
    except KeyboardInterrupt:
        console.print("\nInterrupted while starting; stopping…")
    except StackError as exc:
        err_console.print(f"[red]agentrt serve: {exc}[/red]")
        stack.stop()
        raise typer.Exit(1) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    stack.stop()
    console.print("Stopped.")


def _print_urls(stack: Any) -> None:
    urls = stack.urls
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("Chat page", urls.chat_page)
    if urls.approvals:
        table.add_row("Approval page", urls.approvals)
    table.add_row("API docs", urls.docs)
    table.add_row("HTTP API", urls.api)
    services = []
    if stack.authz is not None:
        services.append(f"dev authorization server {urls.authz} (demo users: alice, bob)")
    if stack.checkout is not None:
        services.append(f"demo checkout API {urls.checkout}")
    if stack.model is not None:
        services.append(f"offline model {urls.model}")
    body = Table.grid()
    body.add_row(table)
    if services:
        body.add_row(Text("\nEmbedded: " + "; ".join(services), style="dim"))
    body.add_row(Text(f"Agents' files: {stack.agent_env.get('AGENT_STORAGE_DIR')}", style="dim"))
    console.print(Panel(body, title="agentrt is running", subtitle="Ctrl-C to stop", expand=False))
    console.print(f"Try: agentrt demo --url {urls.api}", style="dim")


# ------------------------------------------------------------------------------------------------------
# client commands


async def _client(url: str, token: str | None, user: str) -> AgentRuntimeClient:
    client = AgentRuntimeClient(url, token)
    if not token:
        try:
            await client.login(user)
        except BaseException:
            await client.aclose()
            raise
    return client


def _run(coro: Any) -> Any:
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


@app.command()
def threads(url: UrlOption = DEFAULT_URL, token: TokenOption = None, user: UserOption = "alice") -> None:
    """List your threads, most recently active first."""

    async def main() -> None:
        async with await _client(url, token, user) as client:
            rows = await client.threads()
        if not rows:
            console.print('No threads yet. Start one: agentrt chat my-thread "what is MSFT trading at?"')
            return
        table = Table("thread", "title", "last active")
        for row in rows:
            table.add_row(row["thread_id"], row.get("title") or "", _ago(row.get("last_active_at")))
        console.print(table)

    _run(main())


@app.command()
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
        async with await _client(url, token, user) as client:
            pending = await _stream_turn(client, thread, message)
            if pending and wait:
                config = await client.config()
                if config.get("approvals_url"):
                    console.print(f"Approve it on {config['approvals_url']} (or: agentrt approve)", style="dim")
                await _follow_until_resolved(client, thread, pending, timeout)

    _run(main())


async def _stream_turn(client: AgentRuntimeClient, thread: str, message: str) -> set[str]:
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
            _print_interrupt(data)
        elif event.event == "tool_result":
            pending.discard(data.get("tool_call_id", ""))
            _print_tool_result(data)
        elif event.event == "failed":
            raise ApiError(
                int(event.data.get("status", 500)), event.data.get("error", "failed"), event.data.get("detail")
            )
    if streaming:
        console.print()
    return pending


def _print_tool_result(data: dict[str, Any]) -> None:
    console.print(Text("tool  ", style="bold green") + Text(f"{data.get('tool_name')}: {data.get('result')}"))


def _print_interrupt(data: dict[str, Any]) -> None:
    if data.get("kind") == "confirmation":
        console.print(Text("wait  ", style="bold yellow") + Text(f"{data.get('tool_name')} needs your confirmation"))
        return
    expires = data.get("expires_at")
    left = f" (expires in {_duration(expires - time.time())})" if isinstance(expires, int | float) else ""
    binding = data.get("binding_message") or data.get("tool_name") or "a request"
    console.print(Text("wait  ", style="bold yellow") + Text(f"approval requested on your device: {binding!r}{left}"))


async def _follow_until_resolved(
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
                _print_tool_result(data)
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


@app.command()
def approvals(
    user: UserOption = "alice",
    url: UrlOption = DEFAULT_URL,
    authz_url: AuthzOption = None,
    all_statuses: Annotated[bool, typer.Option("--all", help="Include decided and expired requests.")] = False,
) -> None:
    """List the CIBA requests waiting on the user's "phone" (the dev authorization server)."""

    async def main() -> None:
        rows = await _ciba_requests(url, authz_url, user, None if all_statuses else "pending")
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
                _duration((row.get("expires_at") or 0) - time.time()),
                str(row["id"]),
            )
        console.print(table)

    _run(main())


@app.command()
def approve(
    request_id: Annotated[str | None, typer.Argument(help="Request id (default: the only pending one).")] = None,
    user: UserOption = "alice",
    url: UrlOption = DEFAULT_URL,
    authz_url: AuthzOption = None,
) -> None:
    """Approve a pending CIBA request, as the user would on their phone."""
    _run(_decide(request_id, True, user, url, authz_url))


@app.command()
def deny(
    request_id: Annotated[str | None, typer.Argument(help="Request id (default: the only pending one).")] = None,
    user: UserOption = "alice",
    url: UrlOption = DEFAULT_URL,
    authz_url: AuthzOption = None,
) -> None:
    """Deny a pending CIBA request, as the user would on their phone."""
    _run(_decide(request_id, False, user, url, authz_url))


async def _dev_authz_base(url: str, authz_url: str | None) -> str:
    if authz_url:
        return authz_url.rstrip("/")
    async with httpx.AsyncClient(timeout=15.0) as http:
        response = await http.get(url.rstrip("/") + "/config")
        response.raise_for_status()
        dev = response.json().get("dev_authz_url")
    if not dev:
        raise ApiError(404, "no_dev_server", "this server uses a real authorization server: approve on your device")
    return str(dev).rstrip("/")


async def _ciba_requests(url: str, authz_url: str | None, user: str, status: str | None) -> list[dict[str, Any]]:
    base = await _dev_authz_base(url, authz_url)
    params = {"user": user, **({"status": status} if status else {})}
    async with httpx.AsyncClient(timeout=15.0) as http:
        response = await http.get(f"{base}/dev/ciba/requests", params=params)
        response.raise_for_status()
        return list(response.json())


async def _decide(request_id: str | None, approved: bool, user: str, url: str, authz_url: str | None) -> None:
    base = await _dev_authz_base(url, authz_url)
    if request_id is None:
        pending = await _ciba_requests(url, base, user, "pending")
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


# ------------------------------------------------------------------------------------------------------
# demo


@app.command()
def demo(
    url: Annotated[
        str | None,
        typer.Option("--url", envvar="AGENTRT_URL", help="Use this running server (default: the one on :8000 if up)."),
    ] = None,
    embedded: Annotated[bool, typer.Option(help="Start a private embedded stack even if a server is running.")] = False,
    manual: Annotated[bool, typer.Option(help="Wait for you to approve on the approval page.")] = False,
    user: UserOption = "alice",
    message: Annotated[str, typer.Option(help="What alice asks.")] = "buy 100 shares of MSFT",
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 180.0,
    storage_dir: Annotated[Path | None, typer.Option(help="With an embedded stack: the agents' files.")] = None,
    verbose: VerboseOption = False,
) -> None:
    """The story end to end: sign in, ask to buy stock, approve on the "phone", see the purchase complete."""
    stack = None
    if url is None and not embedded and _is_agentrt(DEFAULT_URL):
        url = DEFAULT_URL
    try:
        if url is None:
            import tempfile

            from agentrt.stack import Stack, StackOptions

            storage = storage_dir or Path(tempfile.mkdtemp(prefix="agentrt-demo-"))
            stack = Stack(
                StackOptions(
                    port=0,
                    authz_port=None,
                    checkout_port=None,
                    model_port=None,
                    storage_dir=storage,
                    verbose=verbose,
                )
            )
            with console.status("Starting an embedded stack (Ray, dev services, HTTP API)…"):
                stack.start()
            url = stack.urls.api
            console.print(f"Embedded stack on {url}", style="dim")
        else:
            console.print(f"Using the server at {url}", style="dim")
        ok = _run(_demo_story(url, user, message, manual, timeout, watch=stack is None))
    finally:
        if stack is not None:
            with console.status("Stopping the embedded stack…"):
                stack.stop()
    if not ok:
        raise typer.Exit(1)


def _is_agentrt(url: str) -> bool:
    try:
        response = httpx.get(url + "/healthz", timeout=1.0)
        return response.status_code == 200 and "replica" in response.json()
    except (httpx.HTTPError, ValueError):
        return False


async def _demo_story(url: str, user: str, message: str, manual: bool, limit: float, watch: bool) -> bool:
    deadline = time.monotonic() + limit
    token = await dev_login(url, user)
    async with AgentRuntimeClient(url, token) as client:
        config = await client.config()
        thread = await client.create_thread()
        thread_id = thread["thread_id"]
        console.rule("ray-agent-runtime demo")
        console.print(f"1. Signed in as [bold]{user}[/bold] ({thread['owner']})")
        console.print(f"2. New thread [bold]{thread_id}[/bold]")
        if watch:
            console.print(f"   watch it live: {url}/#thread={thread_id} (signed in as {user})", style="dim")
        console.print("3. Asking the agent:")
        pending = await _stream_turn(client, thread_id, message)
        if not pending:
            console.print("[red]The agent did not ask for an approval; nothing to approve.[/red]")
            return False
        interrupts = await client.interrupts(thread_id)
        binding = next((i.get("binding_message") for i in interrupts if i["tool_call_id"] in pending), None)
        follower = asyncio.ensure_future(_follow_until_resolved(client, thread_id, set(pending), limit))
        try:
            if manual:
                console.print(f"4. Approve [bold]{binding!r}[/bold] on {config.get('approvals_url') or 'your device'}")
            else:
                console.print(f'4. Approving [bold]{binding!r}[/bold] on {user}\'s "phone" (the dev approval API)')
            with console.status(f"Waiting for {user}'s approval of {binding!r}…", spinner="dots"):
                if not manual:
                    await _approve_when_visible(url, user, binding, deadline)
                await asyncio.wait_for(asyncio.shield(follower), max(1.0, deadline - time.monotonic()))
        except TimeoutError:
            console.print("[red]Timed out waiting for the purchase to complete.[/red]")
            return False
        finally:
            if not follower.done():
                follower.cancel()
        messages = await client.messages(thread_id)
        final = next((m["content"] for m in reversed(messages) if m["role"] == "assistant" and m["content"]), "")
        console.print(f"5. Done. The agent's last message: [bold green]{final}[/bold green]")
        console.rule()
        return "purchased" in final.lower()


async def _approve_when_visible(url: str, user: str, binding: str | None, deadline: float) -> None:
    while time.monotonic() < deadline:
        pending = await _ciba_requests(url, None, user, "pending")
        match = [r for r in pending if binding is None or r.get("binding_message") == binding]
        if match:
            await _decide_quietly(url, str(match[0]["id"]))
            return
        await asyncio.sleep(0.3)
    raise TimeoutError


async def _decide_quietly(url: str, request_id: str) -> None:
    base = await _dev_authz_base(url, None)
    async with httpx.AsyncClient(timeout=15.0) as http:
        response = await http.post(f"{base}/dev/ciba/requests/{request_id}/approve")
        response.raise_for_status()


# ------------------------------------------------------------------------------------------------------
# helpers


def _duration(seconds: float) -> str:
    if seconds <= 0:
        return "expired"
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


def _ago(timestamp: float | None) -> str:
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


@app.command()
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


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    app()
