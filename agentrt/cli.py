"""`agentrt`: run the chat service, talk to it, and play the demo story from a terminal.

    agentrt serve                      # local Ray + dev services + the HTTP API and web page
    agentrt demo                       # the story end to end: alice buys 100 MSFT after approving it
    agentrt chat THREAD "message"      # one turn (streamed); --wait follows it until approvals resolve
    agentrt threads                    # your threads
    agentrt phone | approve [ID] | deny [ID]   # the dev server's pending CIBA requests ("the phone")
    agentrt status | logs [THREAD]     # from a storage root's files: agents, waiting approvals; failures

Client commands talk to `--url` (default `$AGENTRT_URL` or http://127.0.0.1:8000) with `--token`
(`$AGENTRT_TOKEN`) or, against the dev authorization server, as the demo user `--user` (default alice).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from agentrt.cli_base import DEFAULT_URL, UserOption, app, console, err_console, run_command
from agentrt.cli_conversation import (
    approve,
    chat,
    ciba_requests,
    delete,
    deny,
    dev_authz_base,
    follow_until_resolved,
    phone,
    stop,
    stream_turn,
    threads,
    withdraw,
)
from agentrt.cli_operator import hosts, logs, status
from agentrt.client import AgentRuntimeClient, dev_login
from auth.issuer import is_loopback_host


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


BindOption = Annotated[
    str,
    typer.Option(
        "--bind",
        "--host",
        help="Interface the HTTP API listens on (the dev services always listen on 127.0.0.1). `--host` is its "
        "older name, kept working (a 'host' is otherwise the process agents live in: `agentrt hosts`).",
    ),
]
PortOption = Annotated[int, typer.Option(help="Port of the HTTP API (falls back to a free one if taken).")]
StrictPortOption = Annotated[bool, typer.Option(help="Fail instead of falling back when --port is taken.")]
StorageDirOption = Annotated[
    Path, typer.Option(envvar="AGENT_STORAGE_DIR", help="Where agents keep their SQLite files.")
]
NamespaceOption = Annotated[str, typer.Option(envvar="AGENT_NAMESPACE", help="Ray namespace of the agents.")]
AddressOption = Annotated[
    str | None, typer.Option(envvar="RAY_ADDRESS", help="Join this Ray cluster instead of starting a local one.")
]
NumCpusOption = Annotated[int | None, typer.Option(help="CPUs for the local Ray cluster (default: all).")]
CibaIntervalOption = Annotated[
    int | None, typer.Option(help="Dev server's CIBA polling interval in seconds (default: its own).")
]
AgentOption = Annotated[
    str | None,
    typer.Option(
        envvar="AGENTRT_AGENT_CLASS",
        help="Serve this thread agent (`module:Class`, a ThreadAgent subclass) instead of the demo's Chat.",
    ),
]
InsecureDevLoginOption = Annotated[
    bool,
    typer.Option(
        "--insecure-dev-login",
        help="Allow a non-loopback --bind with the dev authorization server (anyone who reaches it can "
        "sign in as a demo user).",
    ),
]


@app.command()
def serve(
    bind: BindOption = "127.0.0.1",
    port: PortOption = 8000,
    strict_port: StrictPortOption = False,
    storage_dir: StorageDirOption = Path("./.data"),
    namespace: NamespaceOption = "agents",
    address: AddressOption = None,
    num_cpus: NumCpusOption = None,
    ciba_interval: CibaIntervalOption = None,
    agent: AgentOption = None,
    verbose: VerboseOption = False,
    insecure_dev_login: InsecureDevLoginOption = False,
) -> None:
    """Run the chat service: local Ray, the dev services (unless configured otherwise) and the HTTP API.

    With no configuration everything is embedded: the dev authorization server (demo users alice and bob,
    an approval page playing the phone), the demo checkout API and the offline model. Set AUTH0_* (or
    AUTH_ISSUER), CHECKOUT_API_URL, OPENAI_* to use real services instead. Ctrl-C stops everything.
    """
    from agentrt.stack import Stack, StackOptions

    extra_env: dict[str, str] = {}
    if agent:  # the agents import it too: from the current folder, as here
        extra_env["AGENTRT_AGENT_CLASS"] = _checked_agent_class(agent)
        extra_env["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)
    if insecure_dev_login:  # a demo on a trusted network: the API answers whatever name it is reached by
        extra_env["AGENTRT_ALLOWED_HOSTS"] = "*"
    options = StackOptions(
        bind=bind,
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
    if stack.uses_dev_auth() and not is_loopback_host(bind) and not insecure_dev_login:
        err_console.print(
            f"[red]agentrt serve: --bind {bind} with the dev authorization server would hand out demo users' "
            "tokens to anyone who can reach it (/dev/login). Configure AUTH0_* (or AUTH_ISSUER) for a real "
            "identity provider, or pass --insecure-dev-login for a demo on a trusted network.[/red]"
        )
        raise typer.Exit(2)
    _run_until_stopped(stack, bind)


def _run_until_stopped(stack: Any, bind: str) -> None:
    """Start the stack, print where to go, and wait for Ctrl-C or SIGTERM; then stop it."""
    from agentrt.stack import StackError
    from runtime.failures import FailureFollower

    stop_signals: list[int] = []  # a plain list: a signal handler must not take a lock its thread may hold
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with console.status("Starting Ray, the dev services and the HTTP API…") as status:
            stack.log = lambda message: status.update(message[:1].upper() + message[1:] + "…")
            stack.start()
        for sig in previous:
            signal.signal(sig, lambda signum, _frame: stop_signals.append(signum))
        _print_urls(stack)
        if stack.authz is not None and not is_loopback_host(bind):
            console.print(
                f"[yellow]Warning: the API listens on {bind} while the dev authorization server is in use: anyone "
                "who can reach it can sign in as a demo user. Configure AUTH0_* for anything but a demo.[/yellow]"
            )
        failures = FailureFollower(stack.options.storage_dir)  # the agents' failures, shown as they happen
        console.print("Agents' failures show here (and in agentrt logs).", style="dim")
        while not stop_signals:  # (threading.Event.set from a handler deadlocked inside Event.wait)
            time.sleep(0.5)
            for failure in failures.new():
                err_console.print(Text("failure: " + failure.line(), style="red"))
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


# the conversation commands (agentrt/cli_conversation.py), then the operator's (agentrt/cli_operator.py), in
# the order `agentrt --help` lists them
for command in (threads, chat, stop, withdraw, delete, phone, approve, deny, status, logs, hosts):
    app.command()(command)
app.command("approvals", hidden=True, help="The older name of `agentrt phone`.")(phone)


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
        ok = run_command(_demo_story(url, user, message, manual, timeout, watch=stack is None))
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
        pending = await stream_turn(client, thread_id, message)
        if not pending:
            console.print("[red]The agent did not ask for an approval; nothing to approve.[/red]")
            return False
        interrupts = await client.interrupts(thread_id)
        binding = next((i.get("binding_message") for i in interrupts if i["tool_call_id"] in pending), None)
        follower = asyncio.ensure_future(follow_until_resolved(client, thread_id, set(pending), limit))
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
        pending = await ciba_requests(url, None, user, "pending")
        match = [r for r in pending if binding is None or r.get("binding_message") == binding]
        if match:
            await _decide_quietly(url, str(match[0]["id"]))
            return
        await asyncio.sleep(0.3)
    raise TimeoutError


async def _decide_quietly(url: str, request_id: str) -> None:
    base = await dev_authz_base(url, None)
    async with httpx.AsyncClient(timeout=15.0) as http:
        response = await http.post(f"{base}/dev/ciba/requests/{request_id}/approve")
        response.raise_for_status()


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    app()
