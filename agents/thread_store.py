"""`ThreadStore`: a chat thread's messages and tool calls in the agent's SQLite file, behind typed methods.

The agent (`AIChatAgent`) and its mixins go through these methods only; the SQL lives here. A tool call's
state goes `call` -> `running` -> `result`, or waits as `pending-authorization` (CIBA) or
`awaiting-confirmation` (in the chat). Writes that belong together (an assistant message and its calls; a
result and the seq it arrived at) are one transaction.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from agents.messages import ChatMessage, ToolCall, tool_call_id_from_model
from runtime import AgentStorage
from runtime.read_cache import ReadCache

CHAT_MIGRATIONS = [
    """
    CREATE TABLE messages (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        role TEXT NOT NULL,
        content TEXT,
        created_at REAL NOT NULL,
        metadata TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE tool_calls (
        id TEXT PRIMARY KEY,
        message_id TEXT NOT NULL REFERENCES messages(id),
        position INTEGER NOT NULL,
        name TEXT NOT NULL,
        arguments TEXT NOT NULL,
        state TEXT NOT NULL,
        result TEXT,
        interrupt TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX tool_calls_state ON tool_calls(state);
    """,
    # A call resolved after the thread moved on is shown to the model where it resolved (see _llm_context).
    "ALTER TABLE tool_calls ADD COLUMN resolved_after_seq INTEGER",
]


class ThreadStore:
    """Typed access to one thread's `messages` and `tool_calls` tables."""

    def __init__(self, storage: AgentStorage) -> None:
        self.storage = storage
        self._whole_thread: ReadCache[list[ChatMessage]] = ReadCache(storage)

    # -- messages ------------------------------------------------------------------------------------
    async def add_message(self, role: str, content: str | None, message_id: str | None = None) -> ChatMessage:
        """Append a message; `message_id`: the sender's own id for it (else a new one)."""
        message_id, now = message_id or uuid.uuid4().hex, time.time()
        await self.storage.execute(
            "INSERT INTO messages(id, role, content, created_at) VALUES (?, ?, ?, ?)",
            (message_id, role, content, now),
        )
        return ChatMessage(id=message_id, role=role, content=content, created_at=now)  # type: ignore[arg-type]

    async def add_assistant(self, content: str, raw_calls: list[dict[str, str]]) -> ChatMessage:
        """The assistant message and its tool calls (state `call`), in one transaction."""
        message_id, now = uuid.uuid4().hex, time.time()
        calls: list[ToolCall] = []
        async with self.storage.transaction() as tx:
            await tx.execute(
                "INSERT INTO messages(id, role, content, created_at) VALUES (?, 'assistant', ?, ?)",
                (message_id, content or None, now),
            )
            for position, raw in enumerate(raw_calls):
                call = ToolCall(
                    id=await _unique_call_id(tx, tool_call_id_from_model(raw.get("id"))),
                    message_id=message_id,
                    name=raw.get("name", ""),
                    arguments=raw.get("arguments") or "{}",
                    created_at=now,
                    updated_at=now,
                    position=position,
                )
                await tx.execute(
                    "INSERT INTO tool_calls(id, message_id, position, name, arguments, state, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, 'call', ?, ?)",
                    (call.id, message_id, position, call.name, call.arguments, now, now),
                )
                calls.append(call)
        return ChatMessage(
            id=message_id, role="assistant", content=content or None, tool_calls=calls or None, created_at=now
        )

    async def message_by_id(self, message_id: str) -> tuple[int, str, str | None] | None:
        """(seq, role, content) of the message with this id, if the thread has it."""
        row = await self.storage.fetchone("SELECT seq, role, content FROM messages WHERE id = ?", (message_id,))
        return None if row is None else (int(row["seq"]), str(row["role"]), row["content"])

    async def last_seq(self) -> int:
        row = await self.storage.fetchone("SELECT COALESCE(MAX(seq), 0) AS seq FROM messages")
        return int(row["seq"]) if row else 0

    async def last_role(self) -> str | None:
        row = await self.storage.fetchone("SELECT role FROM messages ORDER BY seq DESC LIMIT 1")
        return None if row is None else str(row["role"])

    async def summary(self) -> tuple[int, float | None]:
        """(how many messages, when the last was written)."""
        row = await self.storage.fetchone("SELECT COUNT(*) AS n, MAX(created_at) AS last FROM messages")
        return (int(row["n"]), row["last"]) if row else (0, None)

    async def history(self) -> list[tuple[int, str, str, str | None]]:
        """Every message as (seq, id, role, content), in order (what the model's context is built from)."""
        rows = await self.storage.fetchall("SELECT seq, id, role, content FROM messages ORDER BY seq")
        return [(int(r["seq"]), r["id"], r["role"], r["content"]) for r in rows]

    async def messages_after(self, seq: int) -> list[ChatMessage]:
        """Messages after `seq` in order, each assistant message followed by its calls' results (the whole
        thread, `seq` 0, is read once between writes: `ReadCache`)."""
        if seq <= 0:
            return list(await self._whole_thread.get(lambda: self._read_messages_after(0)))
        return await self._read_messages_after(seq)

    async def _read_messages_after(self, seq: int) -> list[ChatMessage]:
        rows = await self.storage.fetchall("SELECT * FROM messages WHERE seq > ? ORDER BY seq", (seq,))
        if not rows:
            return []
        ids = [row["id"] for row in rows]
        placeholders = ",".join("?" * len(ids))
        call_rows = await self.storage.fetchall(
            f"SELECT * FROM tool_calls WHERE message_id IN ({placeholders}) ORDER BY position", ids
        )
        calls_by_message: dict[str, list[ToolCall]] = {}
        for call_row in call_rows:
            call = _call_from_row(call_row)
            calls_by_message.setdefault(call.message_id, []).append(call)
        messages: list[ChatMessage] = []
        for row in rows:
            calls = calls_by_message.get(row["id"])
            messages.append(
                ChatMessage(
                    id=row["id"],
                    role=row["role"],
                    content=row["content"],
                    tool_calls=calls,
                    created_at=row["created_at"],
                    metadata=json.loads(row["metadata"] or "{}"),
                )
            )
            messages.extend(_result_message(call) for call in calls or [])
        return messages

    # -- tool calls ----------------------------------------------------------------------------------
    async def call(self, tool_call_id: str) -> ToolCall | None:
        row = await self.storage.fetchone("SELECT * FROM tool_calls WHERE id = ?", (tool_call_id,))
        return None if row is None else _call_from_row(row)

    async def calls(self, *states: str) -> list[ToolCall]:
        """The calls in any of `states` (every call if none is given), oldest first."""
        where, params = "", tuple(states)
        if states:
            where = f" WHERE state IN ({','.join('?' * len(states))})"
        rows = await self.storage.fetchall(f"SELECT * FROM tool_calls{where} ORDER BY created_at, position", params)
        return [_call_from_row(row) for row in rows]

    async def set_call_state(self, tool_call_id: str, state: str, *, interrupt: dict[str, Any] | None = None) -> None:
        """A new state (and, if given, the interrupt or retry details that go with it)."""
        await self.storage.execute(
            "UPDATE tool_calls SET state = ?, interrupt = COALESCE(?, interrupt), updated_at = ? WHERE id = ?",
            (state, json.dumps(interrupt) if interrupt is not None else None, time.time(), tool_call_id),
        )

    async def finish_call(self, call: ToolCall, result: str) -> None:
        """Record the result; a call resolved after the thread moved on remembers where it arrived."""
        async with self.storage.transaction() as tx:
            row = await tx.fetchone(
                "SELECT (SELECT MAX(seq) FROM messages) AS last_seq, "
                "(SELECT seq FROM messages WHERE id = ?) AS call_seq",
                (call.message_id,),
            )
            late = row is not None and row["last_seq"] is not None and row["last_seq"] > (row["call_seq"] or 0)
            await tx.execute(
                "UPDATE tool_calls SET state = 'result', result = ?, updated_at = ?, resolved_after_seq = ? "
                "WHERE id = ?",
                (result, time.time(), row["last_seq"] if late else None, call.id),
            )


async def _unique_call_id(tx: Any, wanted: str) -> str:
    """Models may reuse tool call ids across messages; ours key durable state, so keep them unique."""
    candidate = wanted
    suffix = 1
    while await tx.fetchone("SELECT 1 FROM tool_calls WHERE id = ?", (candidate,)) is not None:
        suffix += 1
        candidate = f"{wanted[:118]}-{suffix}"
    return candidate


def _result_message(call: ToolCall) -> ChatMessage:
    return ChatMessage(
        id=f"{call.id}:result",
        role="tool",
        content=call.result,
        tool_call_id=call.id,
        name=call.name,
        state=call.state,  # type: ignore[arg-type]
        created_at=call.updated_at,
    )


def _call_from_row(row: Any) -> ToolCall:
    return ToolCall(
        id=row["id"],
        message_id=row["message_id"],
        name=row["name"],
        arguments=row["arguments"],
        state=row["state"],
        result=row["result"],
        interrupt=json.loads(row["interrupt"]) if row["interrupt"] else None,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        position=row["position"],
        resolved_after_seq=row["resolved_after_seq"],
    )
