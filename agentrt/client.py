"""A small async Python client for the HTTP API, for scripts outside the cluster.

    async with AgentRuntimeClient("http://127.0.0.1:8000", token) as client:
        thread = await client.create_thread()
        messages = await client.send_message(thread["thread_id"], "buy 10 shares of MSFT")
        async for event in client.events(thread["thread_id"]):
            print(event.event, event.data)

Errors come back as `ApiError` with the HTTP status and the API's `error` code. `dev_login(base_url,
"alice")` gets a demo token from the dev authorization server the ingress is configured with.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_sse import EventSource


class ApiError(Exception):
    """The API answered with an error: `status_code`, `error` (a stable code) and `detail`."""

    def __init__(self, status_code: int, error: str, detail: Any, retry_after: float | None = None) -> None:
        super().__init__(f"{status_code} {error}: {detail}")
        self.status_code = status_code
        self.error = error
        self.detail = detail
        self.retry_after = retry_after
        """Seconds the server asked to wait before retrying (`Retry-After`), if it said."""


@dataclass
class ServerEvent:
    """One server-sent event: its `event` name, JSON `data` and `id` (`<epoch>:<seq>` for thread events)."""

    event: str
    data: Any
    id: str | None = None
    raw: str = field(default="", repr=False)


async def iter_sse(response: httpx.Response) -> AsyncIterator[ServerEvent]:
    """Parse a `text/event-stream` response (httpx-sse; comments such as keep-alive pings are skipped)."""
    async for sse in EventSource(response).aiter_sse():
        if not sse.data:
            continue
        try:
            data: Any = json.loads(sse.data)
        except ValueError:
            data = sse.data
        yield ServerEvent(event=sse.event or "message", data=data, id=sse.id or None, raw=sse.data)


def _raise_for(response: httpx.Response, body: bytes | None = None) -> None:
    if response.status_code < 400:
        return
    try:
        payload = json.loads(body if body is not None else response.content)
    except ValueError:
        payload = None
    try:
        retry_after: float | None = float(response.headers["retry-after"])
    except (KeyError, ValueError):
        retry_after = None
    if isinstance(payload, dict) and "error" in payload:
        raise ApiError(response.status_code, str(payload["error"]), payload.get("detail"), retry_after)
    raise ApiError(response.status_code, "http_error", response.reason_phrase)


class AgentRuntimeClient:
    """The HTTP API of an `agentrt` ingress, for one user (their bearer token)."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 120.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, transport=transport)

    async def __aenter__(self) -> AgentRuntimeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        headers.update(extra or {})
        return headers

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._http.request(method, path, headers=self._headers(), **kwargs)
        _raise_for(response)
        return response.json() if response.content else None

    # -- service -------------------------------------------------------------------------------------
    async def healthz(self) -> dict[str, Any]:
        return await self._request("GET", "/healthz")

    async def config(self) -> dict[str, Any]:
        """What the ingress tells its web page: issuer, dev login URL, approval page URL."""
        return await self._request("GET", "/config")

    async def login(self, username: str) -> str:
        """Sign in as a demo user through the dev authorization server; keeps and returns the token."""
        self.token = await dev_login(self.base_url, username, client=self._http)
        return self.token

    # -- threads -------------------------------------------------------------------------------------
    async def create_thread(self, thread_id: str | None = None) -> dict[str, Any]:
        """Create a thread (or open one of yours by id): `{thread_id, owner, created, created_at, ...}`."""
        return await self._request("POST", "/threads", json={"thread_id": thread_id} if thread_id else {})

    async def threads(self, limit: int = 100) -> list[dict[str, Any]]:
        """Your threads, most recently active first."""
        return (await self._request("GET", "/threads", params={"limit": limit}))["threads"]

    async def describe(self, thread_id: str) -> dict[str, Any]:
        return await self._request("GET", f"/threads/{thread_id}")

    async def send_message(
        self, thread_id: str, content: str, *, message_id: str | None = None, retry_for: float = 60.0
    ) -> list[dict[str, Any]]:
        """Run one turn; returns the new messages (a purchase ends the turn pending approval).

        The message carries an id (`message_id`, or a new one) and is sent again with it after a 503 or a
        lost answer, for up to `retry_for` seconds: the thread stores and answers it once whatever happens."""
        body = {"content": content, "message_id": message_id or f"msg-{uuid.uuid4().hex}"}
        deadline = time.monotonic() + retry_for
        while True:
            try:
                return (await self._request("POST", f"/threads/{thread_id}/messages", json=body))["messages"]
            except ApiError as exc:
                if exc.status_code != 503 or time.monotonic() > deadline:
                    raise
                pause = exc.retry_after or 1.0
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                pause = 1.0
            await asyncio.sleep(max(0.0, min(pause, deadline - time.monotonic())))

    async def stream_message(self, thread_id: str, content: str) -> AsyncIterator[ServerEvent]:
        """Run one turn, yielding its events (`token`, `message`, `interrupt`, ...) then `done` or `failed`."""
        headers = self._headers({"Accept": "text/event-stream"})
        async with self._http.stream(
            "POST", f"/threads/{thread_id}/messages", json={"content": content}, headers=headers
        ) as response:
            if response.status_code >= 400:
                _raise_for(response, await response.aread())
            async for event in iter_sse(response):
                yield event

    async def messages(self, thread_id: str) -> list[dict[str, Any]]:
        return (await self._request("GET", f"/threads/{thread_id}/messages"))["messages"]

    async def interrupts(self, thread_id: str) -> list[dict[str, Any]]:
        """Tool calls waiting for the user (`kind` "async-authorization" or "confirmation")."""
        return (await self._request("GET", f"/threads/{thread_id}/interrupts"))["interrupts"]

    async def submit_tool_result(self, thread_id: str, tool_call_id: str, approved: bool) -> list[dict[str, Any]]:
        """Approve or deny an in-chat confirmation; returns the messages the continued turn added."""
        body = {"tool_call_id": tool_call_id, "approved": approved}
        return (await self._request("POST", f"/threads/{thread_id}/tool-results", json=body))["messages"]

    async def stop(self, thread_id: str) -> bool:
        """Stop the answer under way in the thread (its words so far are kept); whether one was running."""
        return bool((await self._request("POST", f"/threads/{thread_id}/stop"))["stopped"])

    async def withdraw_approval(self, thread_id: str, tool_call_id: str) -> list[dict[str, Any]]:
        """Withdraw a call waiting for approval on the user's device; returns the messages of the answer."""
        return (await self._request("DELETE", f"/threads/{thread_id}/interrupts/{tool_call_id}"))["messages"]

    async def delete_thread(self, thread_id: str) -> None:
        """Delete the thread, everything it stored, and its pending approvals (withdrawn first)."""
        await self._request("DELETE", f"/threads/{thread_id}")

    async def events(
        self,
        thread_id: str,
        *,
        after: int | None = None,
        epoch: str | None = None,
        reconnect: bool = True,
        retry_seconds: float = 1.0,
    ) -> AsyncIterator[ServerEvent]:
        """The thread's live events (`ready` first, then `token`, `message`, `tool_result`, ...).

        Reconnects after a dropped connection with `Last-Event-ID`, so nothing is missed; a `reset` event
        means the agent restarted or events were lost: re-read `messages()`. Errors (401/403/...) raise.
        """
        last_id = f"{epoch}:{after}" if after is not None and epoch else None
        params = {"after": after} if after is not None and not epoch else None
        while True:
            headers = self._headers({"Accept": "text/event-stream"})
            if last_id:
                headers["Last-Event-ID"] = last_id
            try:
                async with self._http.stream(
                    "GET",
                    f"/threads/{thread_id}/events",
                    headers=headers,
                    params=params,
                    timeout=httpx.Timeout(connect=10.0, read=90.0, write=10.0, pool=10.0),
                ) as response:
                    if response.status_code >= 400:
                        _raise_for(response, await response.aread())
                    async for event in iter_sse(response):
                        if event.id:
                            last_id = event.id
                        yield event
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.ReadTimeout, httpx.ConnectError):
                if not reconnect:
                    raise
            else:
                if not reconnect:
                    return
            params = None
            await asyncio.sleep(retry_seconds)


async def dev_login(base_url: str, username: str, *, client: httpx.AsyncClient | None = None) -> str:
    """A demo user's token from the dev authorization server named by the ingress's `/config`."""
    own = client is None
    http = client or httpx.AsyncClient(timeout=30.0)
    try:
        response = await http.get(base_url.rstrip("/") + "/config")
        _raise_for(response)
        login_url = response.json().get("dev_login_url")
        if not login_url:
            raise ApiError(404, "no_dev_login", "this server has no dev authorization server; pass a token")
        response = await http.post(login_url, json={"username": username})
        _raise_for(response)
        return str(response.json()["access_token"])
    finally:
        if own:
            await http.aclose()
