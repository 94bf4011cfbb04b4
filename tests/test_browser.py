"""The web page in a real browser: Debian's Chromium, headless, driven by Playwright's Python package.

Sign in as alice, send "buy 10 shares of MSFT", see the pending approval card (binding message, countdown,
link to the approval page), approve it on the dev approval page in a second tab, and watch the purchase
message appear in the first tab without reloading (pushed by the thread's event stream).

Needs `apt-get install -y chromium` and `pip install playwright` (never `playwright install`: the browser
is the system's). Skips, saying so, only when /usr/bin/chromium is absent.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devservers.server_thread import free_port
from tests.chat_world import deny_left_on_the_phone
from tests.http_fixtures import HttpApi, ensure_http_api

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="browser test needs Debian's Chromium: apt-get install -y chromium"
    ),
]


@pytest.fixture(scope="module")
def http_api(chat_world: Any) -> HttpApi:
    return ensure_http_api(chat_world)


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def test_buy_stock_approve_in_a_second_tab_and_see_the_purchase_live(http_api: HttpApi, browser: Any) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=30_000)
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 1280, "height": 820})
    context.set_default_timeout(30_000)
    page_errors: list[str] = []
    chat = context.new_page()
    chat.on("pageerror", lambda error: page_errors.append(str(error)))
    chat.on("console", lambda message: message.type == "error" and page_errors.append(message.text))
    try:
        thread_id = _sign_in_as_alice(chat, http_api)
        _buy_and_approve_on_the_phone(chat, context, http_api)
        assert chat.locator("#thread-id").inner_text() == thread_id
        _confirm_and_deny_in_the_chat(chat)
        _withdraw_a_purchase(chat, http_api)
        _sign_in_with_a_token_as_bob(chat, http_api, thread_id)
        assert not page_errors, page_errors
    finally:
        context.close()


def _sign_in_as_alice(chat: Any, http_api: HttpApi) -> str:
    """The demo login: the chat opens on a fresh thread, its events stream live. Returns the thread id."""
    from playwright.sync_api import expect

    chat.goto(http_api.url + "/")
    chat.locator("#login-alice").click()
    expect(chat.locator("#app")).to_be_visible()
    expect(chat.locator("#user-chip")).to_contain_text("alice")
    expect(chat.locator("#thread-id")).not_to_be_empty()
    thread_id = chat.locator("#thread-id").inner_text()
    expect(chat.locator("#live-status")).to_have_class(re.compile(r"\blive\b"))
    return str(thread_id)


def _buy_and_approve_on_the_phone(chat: Any, context: Any, http_api: HttpApi) -> None:
    """Ask to buy, see the approval card, approve in a second tab (the phone), see the purchase arrive."""
    from playwright.sync_api import expect

    chat.locator("#message-input").fill("buy 10 shares of MSFT")
    chat.locator("#message-input").press("Enter")
    expect(chat.locator(".msg.user").last).to_have_text("buy 10 shares of MSFT")

    card = chat.locator(".approval-card")
    expect(card).to_be_visible()
    expect(card.locator(".binding")).to_have_text("Buy 10 MSFT")
    expect(card.locator(".countdown")).to_have_text(re.compile(r"expires in \d+:\d\d"))
    link = card.locator("a.approval-link")
    expect(link).to_be_visible()
    approvals_url = link.get_attribute("href")
    assert approvals_url and approvals_url.startswith(http_api.world.authz.url)
    assert http_api.token("alice") not in chat.url  # the token never travels in a URL
    chat.screenshot(path=str(ARTIFACTS / "browser-1-pending-approval.png"))

    phone = context.new_page()
    phone.goto(approvals_url)
    request = phone.locator("[data-request-id], li, article, tr, form, .request").filter(has_text="Buy 10 MSFT")
    request.get_by_role("button", name=re.compile(r"^\s*approve", re.I)).first.click()
    phone.screenshot(path=str(ARTIFACTS / "browser-2-approval-page.png"))

    chat.bring_to_front()
    result = chat.locator(".result-card.ok[data-tool-call-id]").filter(has_text="Purchased 10 shares of MSFT")
    expect(result).to_be_visible(timeout=45_000)
    expect(chat.locator(".approval-card")).to_have_count(0)
    expect(chat.locator(".msg.assistant").filter(has_text="Purchased")).to_be_visible()
    chat.screenshot(path=str(ARTIFACTS / "browser-3-purchased.png"), full_page=True)


def _confirm_and_deny_in_the_chat(chat: Any) -> None:
    """An in-chat confirmation: the watchlist asks here, in the chat, not on the phone."""
    from playwright.sync_api import expect

    chat.locator("#message-input").fill("watch NVDA")
    chat.locator("#message-input").press("Enter")
    confirm = chat.locator(".approval-card")
    expect(confirm).to_be_visible()
    chat.screenshot(path=str(ARTIFACTS / "browser-4-confirm-in-chat.png"))
    confirm.get_by_role("button", name="Approve").click()
    expect(chat.locator(".msg.assistant").filter(has_text="Added NVDA to your watchlist")).to_be_visible()
    expect(chat.locator(".approval-card")).to_have_count(0)
    chat.locator("#message-input").fill("watch TSLA")
    chat.locator("#message-input").press("Enter")
    chat.locator(".approval-card").get_by_role("button", name="Deny").click()
    expect(chat.locator(".msg.assistant").filter(has_text="did not add it")).to_be_visible()
    expect(chat.locator(".approval-card")).to_have_count(0)


def _withdraw_a_purchase(chat: Any, http_api: HttpApi) -> None:
    """The approval card's Withdraw: the purchase ends cancelled, the card goes. (The request stays on the
    phone, which CIBA cannot take back: the phone denies it, for the tests that follow.)"""
    from playwright.sync_api import expect

    chat.locator("#message-input").fill("buy 2 shares of IBM")
    chat.locator("#message-input").press("Enter")
    card = chat.locator(".approval-card").filter(has_text="Buy 2 IBM")
    card.get_by_role("button", name="Withdraw").click()
    expect(chat.locator("[data-tool-call-id]").filter(has_text="Cancelled by the user")).to_be_visible()
    expect(chat.locator(".approval-card")).to_have_count(0)
    deny_left_on_the_phone(http_api.world, "Buy 2 IBM")


def _sign_in_with_a_token_as_bob(chat: Any, http_api: HttpApi, alice_thread: str) -> None:
    """Signing in with a pasted token works too, and bob does not see alice's thread."""
    from playwright.sync_api import expect

    chat.locator("#sign-out").click()
    expect(chat.locator("#signin")).to_be_visible()
    chat.locator("#token-signin summary").click()
    chat.locator("#token-input").fill(http_api.token("bob"))
    chat.get_by_role("button", name="Sign in with token").click()
    expect(chat.locator("#user-chip")).to_contain_text("bob")
    expect(chat.locator("#thread-id")).not_to_be_empty()
    expect(chat.locator(f'#threads [data-thread-id="{alice_thread}"]')).to_have_count(0)


AI_SDK_EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "ai_sdk_chat"


def built_ai_sdk_example() -> Path:
    """The example page, installed and bundled with esbuild (`scripts/test.sh` does it first)."""
    if not (AI_SDK_EXAMPLE / "dist" / "app.js").is_file():
        npm = shutil.which("npm")
        assert npm, "npm is needed (Debian's nodejs and npm; scripts/test.sh installs them)"
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--silent"], cwd=AI_SDK_EXAMPLE, check=True, timeout=300)
        subprocess.run([npm, "run", "build", "--silent"], cwd=AI_SDK_EXAMPLE, check=True, timeout=120)
    return AI_SDK_EXAMPLE


@pytest.fixture
def ai_sdk_page(http_api: HttpApi) -> Iterator[str]:
    """The example's own server (its page, and a proxy to the API under test) on a free port."""
    folder, port = built_ai_sdk_example(), free_port()
    env = {**os.environ, "AGENTRT_URL": http_api.url, "PORT": str(port)}
    server = subprocess.Popen(["node", "serve.mjs"], cwd=folder, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and "AI SDK chat on" in server.stdout.readline()
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.kill()
        server.wait(timeout=10)


def test_a_use_chat_page_buys_after_the_approval_and_confirms_in_the_chat(
    http_api: HttpApi, browser: Any, ai_sdk_page: str
) -> None:
    """The page built on `useChat` (examples/ai_sdk_chat) with no transport code of its own: the purchase
    shows as waiting on the phone, the approval there brings the result and the answer into the page; an
    in-chat confirmation is answered with the AI SDK's tool approval."""
    from playwright.sync_api import expect

    expect.set_options(timeout=30_000)
    context = browser.new_context()
    page_errors: list[str] = []
    page = context.new_page()
    page.on("pageerror", lambda error: page_errors.append(str(error)))
    try:
        page.goto(ai_sdk_page + "?user=alice")
        expect(page.locator("#thread-id")).not_to_be_empty()
        orders_before = http_api.world.orders()
        page.locator("#message-input").fill("buy 12 shares of MSFT")
        page.locator("#message-input").press("Enter")
        card = page.locator(".approval-card.pending")
        expect(card).to_contain_text("Buy 12 MSFT")
        expect(card.locator("a")).to_have_attribute("href", re.compile(r"/approvals$"))
        expect(page.locator("#status")).to_have_text("streaming")  # the reply waits, its stream open

        (request,) = [r for r in http_api.world.requests_for("alice") if r["binding_message"] == "Buy 12 MSFT"]
        http_api.world.decide(request["id"], approve=True)  # on the phone
        expect(page.locator('.tool.output-available[data-tool="buy_stock"]')).to_contain_text(
            "Purchased 12 shares of MSFT"
        )
        expect(page.locator(".message.assistant").last).to_contain_text("Done: Purchased 12 shares of MSFT")
        expect(page.locator("#status")).to_have_text("ready")
        assert http_api.world.orders() == orders_before + 1

        page.locator("#message-input").fill("add NVDA to my watchlist")
        page.locator("#message-input").press("Enter")
        page.locator('.confirm[data-tool="watch_stock"] .approve').click()
        expect(page.locator('.tool.output-available[data-tool="watch_stock"]')).to_contain_text(
            "Added NVDA to your watchlist"
        )
        page.reload()  # the stored history, as useChat's initial messages
        expect(page.locator('.tool.output-available[data-tool="buy_stock"]')).to_contain_text("Purchased 12")
        assert not page_errors, page_errors
    finally:
        context.close()
