"""Review: errors you can see. A tool that raises shows to the user only as "Error: <tool> failed
(<Type>)"; its exception and message (never a token) appear in the terminal of `agentrt serve` as it
happens, and `agentrt logs THREAD` shows the thread's recent failures from the storage root's files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from runtime.failures import FailureFollower, read_failures, record_failure, scrub
from tests.serve_process import served
from tests.test_cli import clean_env, run_cli
from tests.waiting import eventually

AGENT = "tests.expense_agent:ExpenseAgent"


def tool_results(messages: list[dict[str, Any]]) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "tool"]


@pytest.mark.slow
async def test_a_tool_failure_shows_in_the_serve_terminal_and_in_agentrt_logs_without_its_token(
    tmp_path: Path,
) -> None:
    with served(tmp_path, "--agent", AGENT, "--ciba-interval", "1") as (api, output):
        async with httpx.AsyncClient(base_url=api, timeout=60) as anonymous:
            config = (await anonymous.get("/config")).json()
            token = (await anonymous.post("/dev/login", json={"username": "alice"})).json()["access_token"]
        async with (
            httpx.AsyncClient(base_url=api, timeout=60, headers={"Authorization": f"Bearer {token}"}) as http,
            httpx.AsyncClient(base_url=config["dev_authz_url"], timeout=30) as phone,
        ):
            sent = await http.post("/threads/exp/messages", json={"content": "/list_expenses"})
            assert tool_results(sent.json()["messages"]) == ["Error: list_expenses failed (KeyError)"]
            output.wait_for(r"failure: .* ExpenseAgent/exp tool:list_expenses: KeyError: 'items'", timeout=30)

            broken = '/submit_expense {"amount": 12.5, "merchant": "Broken"}'
            assert (await http.post("/threads/exp/messages", json={"content": broken})).status_code == 200

            async def the_request() -> dict[str, Any] | None:
                rows = (await phone.get("/dev/ciba/requests", params={"user": "alice", "status": "pending"})).json()
                return next((r for r in rows if r["binding_message"] == "Expense 12.50 at Broken"), None)

            request = await eventually(the_request, timeout=30, what="the expense's CIBA request")
            assert (await phone.post(f"/dev/ciba/requests/{request['id']}/approve")).status_code == 200
            output.wait_for(r"ExpenseAgent/exp tool:submit_expense: RuntimeError: expenses API said 401", timeout=60)

            async def reported() -> list[str] | None:
                results = tool_results((await http.get("/threads/exp/messages")).json()["messages"])
                return results if "Error: submit_expense failed (RuntimeError)" in results else None

            await eventually(reported, timeout=30, what="the failed submission reported to the user")
        logs = run_cli(["logs", "exp", "--storage-dir", str(tmp_path / "data")], clean_env(tmp_path), timeout=60)
    assert logs.returncode == 0, logs.stderr
    assert "tool:list_expenses: KeyError: 'items'" in logs.stdout
    assert "tool:submit_expense: RuntimeError: expenses API said 401 to Authorization: ***" in logs.stdout
    for text in (output.text, logs.stdout, (tmp_path / "data" / "_runtime" / "failures.jsonl").read_text()):
        assert "eyJ" not in text and token not in text  # no JWT at all: neither the approved one nor alice's


def test_the_journal_scrubs_credentials_rotates_and_is_followed_across_the_rotation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (
        scrub("client_secret=s3cr3t&x=1 Bearer abc.def sk-0123456789abcdef")
        == "client_secret=***&x=1 Bearer *** sk-***"
    )
    follower = FailureFollower(tmp_path)
    record_failure(tmp_path, "Chat/t-1", "tool:buy_stock", KeyError("ticker"))
    assert [f.line().split(" ", 2)[2] for f in follower.new()] == ["Chat/t-1 tool:buy_stock: KeyError: 'ticker'"]
    assert follower.new() == []
    monkeypatch.setattr("runtime.failures.MAX_JOURNAL_BYTES", 700)
    for i in range(8):
        record_failure(tmp_path, f"Chat/t-{i}", "model", RuntimeError("x" * 100))
    assert (tmp_path / "_runtime" / "failures.1.jsonl").exists()
    assert len(read_failures(tmp_path, limit=0)) >= 3  # the current file and the one rotated out
    assert [f.agent for f in read_failures(tmp_path, agent="t-7")] == ["Chat/t-7"]
    assert (tmp_path / "_runtime" / "failures.jsonl").stat().st_mode & 0o077 == 0
    assert follower.new()[-1].agent == "Chat/t-7"  # followed into the new file


def test_an_unexpected_error_in_the_http_ingress_answers_a_json_500_and_lands_in_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in a route (a stand-in route raises here: no real route is known to raise) is answered
    `{"error": "internal_error"}` and journaled, scrubbed, where `agentrt logs` reads it."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from agentrt.ingress.errors import install_error_handlers
    from runtime.settings import runtime_settings

    monkeypatch.setenv("AGENT_STORAGE_DIR", str(tmp_path))
    runtime_settings.cache_clear()
    api = FastAPI()
    install_error_handlers(api)

    @api.get("/boom")
    async def boom() -> None:
        raise RuntimeError("database said no; password=hunter2")

    try:
        answer = TestClient(api, raise_server_exceptions=False).get("/boom")
    finally:
        runtime_settings.cache_clear()  # later tests read this process's own settings again
    assert answer.status_code == 500 and answer.json() == {"error": "internal_error", "detail": "the request failed"}
    [failure] = read_failures(tmp_path)
    assert (failure.agent, failure.during, failure.error) == ("ingress", "GET /boom", "RuntimeError")
    assert "hunter2" not in failure.message and "database said no" in failure.message
