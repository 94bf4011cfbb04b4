"""The AI SDK as a frontend team uses it: the real `ai` npm package (pinned in `tests/js/package.json`) drives
the server through `DefaultChatTransport`, `readUIMessageStream` and the `Chat` class `useChat` wraps
(`tests/js/chat_client.mjs`, Debian's Node). Text streams; a purchase shows as waiting on the phone with
its binding message and the same chat receives the output and the answer once approved; a reloaded page
resumes the waiting reply; in-chat confirmations go through `approval-requested`; the stored history passes
`validateUIMessages` and equals what the stream built. Real Ray, Serve, dev authorization server, checkout
API and offline model; no mocks. Bad input over HTTP gets clear 4xx JSON errors."""

from __future__ import annotations

import asyncio
import json
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.chat_world import deny_left_on_the_phone
from tests.http_fixtures import HttpApi, assert_error, ensure_http_api, new_id
from tests.isolated import REPO
from tests.waiting import eventually

pytestmark = pytest.mark.slow

JS = REPO / "tests" / "js"
CLIENT = JS / "chat_client.mjs"


def install_js_clients() -> None:
    """`npm ci` in tests/js unless its packages are there (`scripts/test.sh` installs them first)."""
    if (JS / "node_modules" / "ai" / "package.json").is_file():
        return
    npm = shutil.which("npm")
    assert npm, "npm is needed (Debian's nodejs and npm; scripts/test.sh installs them)"
    subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--silent"], cwd=JS, check=True, timeout=300)


@pytest.fixture(scope="module")
def http_api(chat_world: Any) -> HttpApi:
    install_js_clients()
    return ensure_http_api(chat_world)


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def run_client(api: HttpApi, scenario: str, thread_id: str, *args: str, user: str = "alice") -> dict[str, Any]:
    """One scenario of the JS client to its end; what it printed, merged (its last line wins)."""
    proc = subprocess.run(
        ["node", str(CLIENT), scenario, api.url, api.token(user), thread_id, *args],
        cwd=JS,
        capture_output=True,
        text=True,
        timeout=150,
    )
    printed = _lines(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    merged: dict[str, Any] = {}
    for line in printed:
        merged.update(line)
    return merged


class RunningClient:
    """A JS client scenario running in the background (a page left open); its lines read as they come."""

    def __init__(self, api: HttpApi, scenario: str, thread_id: str, *args: str) -> None:
        command = ["node", str(CLIENT), scenario, api.url, api.token("alice"), thread_id, *args]
        self.proc = subprocess.Popen(command, cwd=JS, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.printed: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    async def wait_for(self, key: str, within: float = 60) -> dict[str, Any]:
        """The first line the client prints with `key`, waiting up to `within` seconds."""
        deadline = time.monotonic() + within
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = await asyncio.to_thread(self.lines.get, True, min(remaining, 1.0))
            except queue.Empty:
                continue
            if line is None:
                break
            self.printed.append(line)
            if line.startswith("{") and key in (printed := json.loads(line)):
                return printed
        self.close()
        raise AssertionError(f"no {key!r} from the client within {within}s: {''.join(self.printed)[-3000:]}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


async def approve_on_the_phone(api: HttpApi, binding_message: str, since: float, approve: bool = True) -> None:
    def request() -> list[dict[str, Any]]:
        return [
            r
            for r in api.world.requests_for("alice")
            if r["binding_message"] == binding_message and r["created_at"] >= since - 1
        ]

    (found,) = await eventually(request, what=f"alice's request {binding_message!r}")
    api.world.decide(found["id"], approve=approve)


def parts_of_type(message: dict[str, Any], prefix: str) -> list[dict[str, Any]]:
    return [part for part in message["parts"] if part["type"].startswith(prefix)]


def text_of(message: dict[str, Any]) -> str:
    return " ".join(part["text"] for part in message["parts"] if part["type"] == "text")


def test_text_streams_through_the_transport_and_the_history_validates(http_api: HttpApi) -> None:
    thread_id = new_id()
    said = run_client(http_api, "stream", thread_id, "what is AAPL trading at?")
    final = said["final"]
    assert final["id"] == said["user"] + "-reply"
    (tool,) = parts_of_type(final, "tool-get_stock_price")
    assert tool["state"] == "output-available" and tool["input"] == {"ticker": "AAPL"}
    assert "AAPL is trading at" in text_of(final)

    history = run_client(http_api, "history", thread_id)["history"]  # through validateUIMessages
    assert [m["role"] for m in history] == ["user", "assistant"]
    assert history[0]["id"] == said["user"] and history[1] == final


async def test_a_purchase_waits_on_the_phone_and_the_same_chat_receives_the_result(http_api: HttpApi) -> None:
    """The CIBA story with a stock `Chat`: the call shows as waiting, with the binding message, its expiry
    and where to approve; a message sent meanwhile (another tab) works and stays out of this reply; the
    approval on the phone brings the output and the answer into the same chat, with nothing sent again."""
    thread_id, orders_before, started = new_id(), http_api.world.orders(), time.time()
    page = RunningClient(http_api, "chat", thread_id, "buy 11 shares of MSFT")
    try:
        pending = await page.wait_for("pending")
        assert pending["status"] == "streaming"
        assert pending["pending"]["bindingMessage"] == "Buy 11 MSFT"
        assert pending["pending"]["approvalUrl"].endswith("/approvals")
        assert pending["pending"]["expiresAt"] > time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        assert pending["tool"]["type"] == "tool-buy_stock" and pending["tool"]["state"] == "input-available"

        other_tab = run_client(http_api, "stream", thread_id, "what is AAPL trading at?")
        assert "AAPL is trading at" in text_of(other_tab["final"])
        assert http_api.world.orders() == orders_before

        await approve_on_the_phone(http_api, "Buy 11 MSFT", started)
        final = await page.wait_for("final")
    finally:
        page.close()
    assert final["status"] == "ready"
    (tool,) = parts_of_type(final["final"], "tool-buy_stock")
    assert tool["state"] == "output-available" and tool["output"].startswith("Purchased 11 shares of MSFT")
    (approval,) = parts_of_type(final["final"], "data-approval")
    assert approval["data"]["status"] == "done"
    assert "Done: Purchased 11 shares of MSFT" in text_of(final["final"])
    assert "AAPL" not in text_of(final["final"])  # the other tab's turn is its own reply
    assert http_api.world.orders() == orders_before + 1

    history = run_client(http_api, "history", thread_id)["history"]
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
    assert history[1] == final["final"]  # what the stream built is what the thread stores


async def test_a_reloaded_page_resumes_the_waiting_reply(http_api: HttpApi) -> None:
    """The page that asked is closed while the purchase waits; a new one resumes (`resumeStream`, what
    `useChat({resume: true})` calls on mount), sees it waiting and then receives the result."""
    thread_id, started = new_id(), time.time()
    first = RunningClient(http_api, "chat", thread_id, "buy 13 shares of NVDA")
    try:
        await first.wait_for("pending")
    finally:
        first.close()  # the tab is closed: the reply waits on in the thread

    page = RunningClient(http_api, "resume", thread_id)
    try:
        assert (await page.wait_for("pending"))["pending"]["bindingMessage"] == "Buy 13 NVDA"
        await approve_on_the_phone(http_api, "Buy 13 NVDA", started)
        final = (await page.wait_for("final"))["final"]
    finally:
        page.close()
    (tool,) = parts_of_type(final, "tool-buy_stock")
    assert tool["output"].startswith("Purchased 13 shares of NVDA")
    assert "Done: Purchased 13 shares of NVDA" in text_of(final)

    async with http_api.client() as client:  # nothing runs now: 204, and a page that resumes stays as it is
        nothing = await client.get(f"/api/chat/{thread_id}/stream", headers=http_api.headers("alice"))
    assert nothing.status_code == 204
    again = run_client(http_api, "resume", thread_id)
    assert again["status"] == "ready" and again["final"] == final


async def test_a_withdrawn_purchase_ends_the_waiting_reply_in_the_same_chat(http_api: HttpApi) -> None:
    """Withdrawn over HTTP while the page waits: its open stream gets the cancellation and the answer."""
    thread_id, orders_before = new_id(), http_api.world.orders()
    page = RunningClient(http_api, "chat", thread_id, "buy 15 shares of ORCL")
    try:
        pending = await page.wait_for("pending")
        async with http_api.client() as client:
            call = pending["pending"]["toolCallId"]
            withdrawn = await client.delete(
                f"/threads/{thread_id}/interrupts/{call}", headers=http_api.headers("alice")
            )
        assert withdrawn.status_code == 200, withdrawn.text
        final = (await page.wait_for("final"))["final"]
    finally:
        page.close()
    (tool,) = parts_of_type(final, "tool-buy_stock")
    assert tool["state"] == "output-available" and tool["output"].startswith("Cancelled by the user")
    (approval,) = parts_of_type(final, "data-approval")
    assert approval["data"]["status"] == "done"
    assert deny_left_on_the_phone(http_api.world, "Buy 15 ORCL") == 1  # (CIBA cannot take it back)
    assert http_api.world.orders() == orders_before


def test_in_chat_confirmations_use_the_ai_sdks_tool_approval(http_api: HttpApi) -> None:
    thread_id = new_id()
    approved = run_client(http_api, "confirm", thread_id, "add NVDA to my watchlist", "yes")
    assert approved["asked"]["approval"]["id"] == "approval-" + approved["asked"]["toolCallId"]
    (tool,) = parts_of_type(approved["final"], "tool-watch_stock")
    assert tool["state"] == "output-available" and tool["approval"]["approved"] is True
    assert tool["output"] == "Added NVDA to your watchlist"

    denied = run_client(http_api, "confirm", thread_id, "add TSLA to my watchlist", "no")
    (tool,) = parts_of_type(denied["final"], "tool-watch_stock")
    assert tool["state"] == "output-denied" and tool["approval"]["approved"] is False
    assert "did not add" in text_of(denied["final"])

    history = run_client(http_api, "history", thread_id)["history"]
    assert history[1] == approved["final"] and history[3] == denied["final"]


async def test_bad_requests_get_clear_errors_and_change_nothing(http_api: HttpApi) -> None:
    thread_id = new_id()
    asked = run_client(http_api, "confirm", thread_id, "add IBM to my watchlist", "yes")["asked"]
    call_id, reply = asked["toolCallId"], asked  # answered: a replay must be refused
    other = new_id()
    waiting = run_client(http_api, "stream", other, "add AAPL to my watchlist")["final"]
    (waiting_tool,) = parts_of_type(waiting, "tool-watch_stock")

    def answer(thread: str, tool_call_id: str, approval_id: str, approved: Any = True) -> dict[str, Any]:
        part = {
            "type": "tool-watch_stock",
            "toolCallId": tool_call_id,
            "state": "approval-responded",
            "input": {},
            "approval": {"id": approval_id, "approved": approved},
        }
        return {"id": thread, "messages": [{"id": "r-reply", "role": "assistant", "parts": [part]}]}

    async with http_api.client() as client:
        alice, bob = http_api.headers("alice"), http_api.headers("bob")
        post = lambda body, headers=alice: client.post("/api/chat", json=body, headers=headers)  # noqa: E731
        user_message = {"id": "m1", "role": "user", "parts": [{"type": "text", "text": "hi"}]}

        assert_error(await client.post("/api/chat", json={"id": thread_id, "messages": [user_message]}), 401)
        assert_error(await post({"id": thread_id}), 422)
        assert_error(await post({"id": thread_id, "messages": []}), 422)
        assert_error(await post({"id": thread_id, "messages": [{"role": "user"}]}), 422)
        assert_error(await post({"id": "../x", "messages": [user_message]}), 422, "invalid_thread_id")
        empty = {**user_message, "parts": [{"type": "text", "text": "  "}]}
        assert_error(await post({"id": thread_id, "messages": [empty]}), 422)
        regenerate = {"id": thread_id, "messages": [user_message], "trigger": "regenerate-message"}
        assert_error(await post(regenerate), 422, "unsupported_trigger")
        assert_error(await post({"id": thread_id, "messages": [user_message]}, bob), 403, "not_owner")
        # approvals: forged id, replayed, another thread's call, not a boolean
        assert_error(await post(answer(other, waiting_tool["toolCallId"], "approval-x")), 422, "invalid_approval")
        assert_error(await post(answer(other, waiting_tool["toolCallId"], "forged")), 422, "invalid_approval")
        approval = "approval-" + waiting_tool["toolCallId"]
        assert_error(await post(answer(other, waiting_tool["toolCallId"], approval, "yes")), 422)
        assert_error(await post(answer(thread_id, call_id, reply["approval"]["id"])), 409, "tool_call_not_awaiting")
        assert_error(await post(answer(thread_id, waiting_tool["toolCallId"], approval)), 409)
        assert_error(await post(answer(other, waiting_tool["toolCallId"], approval), bob), 403, "not_owner")
        # the other routes
        assert_error(await client.get(f"/api/chat/{new_id()}/stream", headers=alice), 404, "thread_not_found")
        assert_error(await client.get(f"/api/chat/{other}/messages", headers=bob), 403, "not_owner")
        assert_error(await client.get(f"/api/chat/{other}/stream", headers=bob), 403, "not_owner")

        # nothing changed: the other thread's call still waits for its answer
        pending = (await client.get(f"/threads/{other}/interrupts", headers=alice)).json()["interrupts"]
        assert [p["tool_call_id"] for p in pending] == [waiting_tool["toolCallId"]]
        listed = await client.get(f"/api/chat/{other}/messages", headers=alice)
        assert httpx.codes.is_success(listed.status_code)
        (still,) = parts_of_type(listed.json()["messages"][-1], "tool-watch_stock")
        assert still["state"] == "approval-requested"
        for thread in (thread_id, other):  # alice's newest threads are what her web page opens next
            assert (await client.delete(f"/threads/{thread}", headers=alice)).status_code == 204


def test_the_client_is_pinned() -> None:
    """The versions the tests run are the ones `package.json` names (a drift would test another client)."""
    wanted = json.loads((JS / "package.json").read_text())["dependencies"]["ai"]
    install_js_clients()
    installed = json.loads((JS / "node_modules" / "ai" / "package.json").read_text())["version"]
    assert installed == wanted
    assert Path(JS / "package-lock.json").is_file()
