"""The `agentrt` CLI as a user runs it: `agentrt serve` in a subprocess with no configuration (its own local
Ray, the embedded dev services), answering on the URLs it prints; `agentrt demo` against it completes the
story; the client commands work; SIGINT stops everything and exits 0."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from devservers.server_thread import free_port
from tests.test_readme import run_the_client_snippet

pytestmark = pytest.mark.slow

CONFIG_PREFIXES = ("AUTH0_", "AUTH_ISSUER", "OPENAI_", "CHECKOUT_", "AGENT_", "AGENTRT_", "RAY_ADDRESS", "CHAT_")


RAY_NOISE = re.compile(
    r"Token authentication is enabled|\((?:raylet|ServeReplica|ServeController|pid=)|graceful_shutdown"
    r"|^(?:INFO|WARNING) \d{4}-\d\d-\d\d .* (?:serve|ray)",
    re.M,
)
"""Lines Ray itself prints (notices, forwarded worker output, Serve's start-up chatter)."""


def agentrt_command() -> list[str]:
    script = shutil.which("agentrt")
    return [script] if script else [sys.executable, "-m", "agentrt.cli"]


def clean_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a user who configured nothing (so everything is embedded)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(CONFIG_PREFIXES)}
    env.update(COLUMNS="200", TERM="dumb", NO_COLOR="1", PYTHONUNBUFFERED="1", HOME=str(tmp_path))
    return env


class Output:
    """A subprocess's merged output, collected by a thread, searchable with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._pump, args=(proc,), daemon=True)
        self._thread.start()

    def _pump(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        with self._changed:
            while True:
                match = regex.search(self.text)
                if match:
                    return match
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no {pattern!r} within {timeout}s; output so far:\n{self.text}")
                self._changed.wait(min(remaining, 0.5))


def run_cli(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        agentrt_command() + args, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_serve_prints_working_urls_runs_the_demo_and_stops_cleanly_on_sigint(tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    port = free_port()
    command = agentrt_command() + [
        "serve",
        "--port",
        str(port),
        "--storage-dir",
        str(tmp_path / "data"),
        "--num-cpus",
        "2",
        "--ciba-interval",
        "1",
    ]
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    output = Output(proc)
    try:
        api = _printed_urls_work(output, port)
        demo = run_cli(["demo", "--url", api], env, timeout=120)
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert "approval requested" in demo.stdout
        assert re.search(r"Purchased 100 shares of MSFT", demo.stdout), demo.stdout
        _conversation_commands_work(api, env)
        run_the_client_snippet(api, tmp_path)

        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=60) == 0, output.text
        output.wait_for(r"Stopped\.", 5)
        with pytest.raises(httpx.HTTPError):
            httpx.get(api + "/healthz", timeout=2)
        # only its own lines: Ray's stay in Ray's log files (`--verbose` shows them)
        for text in (output.text, demo.stdout + demo.stderr):
            assert not RAY_NOISE.search(text), RAY_NOISE.search(text)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def _printed_urls_work(output: Output, port: int) -> str:
    """`agentrt serve` prints its URLs within a minute, each answers, and no secret is printed; the API's."""
    started = time.monotonic()
    output.wait_for(r"Ctrl-C to stop", timeout=60)
    chat_page = output.wait_for(r"Chat page\s+(http://127\.0\.0\.1:\d+/)", 1).group(1)
    approvals = output.wait_for(r"Approval page\s+(http://127\.0\.0\.1:\d+/\S*)", 1).group(1)
    docs = output.wait_for(r"API docs\s+(http://127\.0\.0\.1:\d+/docs)", 1).group(1)
    api = chat_page.rstrip("/")
    assert api == f"http://127.0.0.1:{port}"
    for url in (chat_page, approvals, docs):
        response = httpx.get(url, timeout=10)
        assert response.status_code == 200, (url, response.status_code)
        assert "text/html" in response.headers["content-type"]
    assert httpx.get(api + "/healthz", timeout=10).json()["ok"] is True
    assert time.monotonic() - started < 60
    # secrets are never printed
    assert not re.search(r"\b[0-9a-f]{64}\b", output.text), "a key was printed"
    return str(api)


def _conversation_commands_work(api: str, env: dict[str, str]) -> None:
    """threads, chat, approvals and deny against the running service; bob is refused alice's thread."""
    listed = run_cli(["threads", "--url", api, "--user", "alice"], env, timeout=30)
    assert listed.returncode == 0, listed.stderr
    assert "buy 100 shares of MSFT" in listed.stdout

    said = run_cli(["chat", "cli-thread-1", "what is AAPL trading at?", "--url", api], env, timeout=60)
    assert said.returncode == 0, said.stderr
    assert "AAPL" in said.stdout.split("you  ")[-1]

    asked = run_cli(["chat", "cli-thread-2", "buy 3 shares of NVDA", "--url", api], env, timeout=60)
    assert asked.returncode == 0 and "Buy 3 NVDA" in asked.stdout, asked.stdout + asked.stderr
    pending = run_cli(["approvals", "--url", api], env, timeout=30)
    assert "Buy 3 NVDA" in pending.stdout, pending.stdout + pending.stderr
    denied = run_cli(["deny", "--url", api], env, timeout=30)
    assert denied.returncode == 0 and "Denied request" in denied.stdout, denied.stdout + denied.stderr

    asked = run_cli(["chat", "cli-thread-3", "buy 2 shares of IBM", "--url", api], env, timeout=60)
    assert "Buy 2 IBM" in asked.stdout, asked.stdout + asked.stderr
    withdrawn = run_cli(["withdraw", "cli-thread-3", "--url", api], env, timeout=60)
    assert withdrawn.returncode == 0 and "Withdrew call" in withdrawn.stdout, withdrawn.stdout + withdrawn.stderr
    nothing = run_cli(["stop", "cli-thread-3", "--url", api], env, timeout=30)
    assert "Nothing was running" in nothing.stdout, nothing.stdout + nothing.stderr
    deleted = run_cli(["delete", "cli-thread-3", "--yes", "--url", api], env, timeout=30)
    assert deleted.returncode == 0 and "Deleted cli-thread-3" in deleted.stdout, deleted.stdout + deleted.stderr
    assert "cli-thread-3" not in run_cli(["threads", "--url", api], env, timeout=30).stdout

    bob = run_cli(["chat", "cli-thread-1", "hello", "--url", api, "--user", "bob"], env, timeout=60)
    assert bob.returncode == 1 and "403 not_owner" in bob.stderr, bob.stdout + bob.stderr
