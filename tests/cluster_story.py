"""Several users chatting and buying over HTTP while a node dies (for `tests/node_loss_scenario.py`).

Each user has a thread of their own: one purchase that waits for approval on their phone, and a stream
of questions (turns) sent as a real client sends them: with its own `message_id`, resent with the same id
after a 503 (waiting its `Retry-After`) or a lost answer. `Story.check` then says, from what the users
were answered and what the threads hold: every acknowledged message stored once, no tool call left
unfinished, and every 5xx a documented 503 with `Retry-After`.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

USERS = ("alice", "bob", "carol")


@dataclass
class Story:
    api: str
    tokens: dict[str, str]
    acknowledged: dict[str, list[str]] = field(default_factory=dict)
    statuses: Counter[int] = field(default_factory=Counter)
    undocumented_5xx: list[str] = field(default_factory=list)
    lost_answers: int = 0
    in_flight: int = 0
    """Messages sent and not yet answered (the scenario notes how many when the node dies)."""

    def thread(self, user: str) -> str:
        return f"story-{user}"

    def client(self, user: str) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.tokens[user]}"}
        return httpx.AsyncClient(base_url=self.api, headers=headers, timeout=60.0)

    async def send(self, http: httpx.AsyncClient, user: str, content: str, message_id: str) -> None:
        """Until acknowledged, resending with the same id (the deadline from now: a node may be dying)."""
        deadline = time.monotonic() + 180.0
        while time.monotonic() < deadline:
            self.in_flight += 1
            try:
                response = await http.post(
                    f"/threads/{self.thread(user)}/messages", json={"content": content, "message_id": message_id}
                )
            except httpx.HTTPError:
                self.lost_answers += 1
                await asyncio.sleep(1.0)
                continue
            finally:
                self.in_flight -= 1
            self.statuses[response.status_code] += 1
            if response.status_code == 200:
                self.acknowledged.setdefault(user, []).append(message_id)
                return
            retry_after = response.headers.get("retry-after")
            if response.status_code >= 500 and (response.status_code != 503 or not retry_after):
                self.undocumented_5xx.append(f"{response.status_code} {response.text[:200]}")
            if response.status_code < 500 and response.status_code != 429:
                raise RuntimeError(f"{user}: {message_id} refused: {response.status_code} {response.text[:200]}")
            await asyncio.sleep(min(float(retry_after or 1), 5.0))
        raise TimeoutError(f"{user}: {message_id} was never acknowledged")

    async def open_and_buy(self) -> None:
        """Each user opens a thread and asks to buy: the purchase waits for their approval."""

        async def one(user: str) -> None:
            async with self.client(user) as http:
                (await http.post("/threads", json={"thread_id": self.thread(user)})).raise_for_status()
                await self.send(http, user, "Buy 2 shares of NVDA", f"{user}-buy")

        await asyncio.gather(*(one(user) for user in USERS))

    async def chatter(self, stop: asyncio.Event) -> None:
        """Each user asks question after question until `stop` (turns are running when the node dies)."""

        async def one(user: str) -> None:
            async with self.client(user) as http:
                n = 0
                while not stop.is_set():
                    n += 1
                    await self.send(http, user, f"what is MSFT trading at? ({n})", f"{user}-q{n}")

        await asyncio.gather(*(one(user) for user in USERS))

    async def check(self) -> dict[str, Any]:
        """What the threads hold against what the users were told."""
        stored_twice, missing, unfinished = [], [], []
        for user in USERS:
            async with self.client(user) as http:
                response = await http.get(f"/threads/{self.thread(user)}/messages")
                response.raise_for_status()
            messages = response.json()["messages"]
            ids = Counter(m["id"] for m in messages if m["role"] == "user")
            stored_twice += [i for i, n in ids.items() if n > 1]
            missing += [i for i in self.acknowledged.get(user, []) if ids[i] != 1]
            calls = {c["id"] for m in messages if m["role"] == "assistant" for c in m.get("tool_calls") or []}
            finished = {m["tool_call_id"] for m in messages if m["role"] == "tool" and m["state"] == "result"}
            unfinished += [f"{user}: {call}" for call in sorted(calls - finished)]
        return {
            "acknowledged": sum(len(v) for v in self.acknowledged.values()),
            "stored_twice": stored_twice,
            "acknowledged_but_missing": missing,
            "unfinished_tool_calls": unfinished,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "undocumented_5xx": self.undocumented_5xx,
            "lost_answers": self.lost_answers,
        }
