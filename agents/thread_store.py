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

from agents.messages import ChatMessage, ToolCall, ToolRetry, tool_call_id_from_model
from agents.model_context import ContextBlock, thread_blocks
from runtime import AgentStorage
from runtime.read_cache import ReadCache

TURN_IN_PROGRESS = "_turn_in_progress"
"""The key (in the thread's key-value store) of the mark a turn leaves from its user's message to its final
answer: a crash in between finds it, and the turn is finished on restart (`AIChatAgent.recover_turn`)."""

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
    # A call resolved after the thread moved on is shown to the model where it resolved (see model_context).
    "ALTER TABLE tool_calls ADD COLUMN resolved_after_seq INTEGER",
    # The model's summary of the turns that no longer fit its context (see agents.compaction); the newest
    # row is the one in use; `through_seq` is the last message it covers.
    """
    CREATE TABLE context_summaries (
        through_seq INTEGER PRIMARY KEY,
        content TEXT NOT NULL,
        messages INTEGER NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX tool_calls_resolved_after ON tool_calls(resolved_after_seq);
    """,
    # A call to be run again (`ToolRetry`), apart from what it waits for (`interrupt`, which held it before).
    "ALTER TABLE tool_calls ADD COLUMN retry TEXT",
]

WINDOW_PAGE_ROWS = 64
"""Messages in the first page read while filling the model's window from the newest backwards (each next
page is twice as long)."""


class ThreadStore:
    """Typed access to one thread's `messages` and `tool_calls` tables."""

    def __init__(self, storage: AgentStorage) -> None:
        self.storage = storage
        self._whole_thread: ReadCache[list[ChatMessage]] = ReadCache(storage)
        self._window_blocks: dict[int, ContextBlock] = {}
        """The blocks of the model's last window by seq: a turn rebuilds only what is new or changed (a
        block changes only when one of its calls does: `_forget_block_of`)."""
        self._block_of_call: dict[str, int] = {}
        self._known: list[int] = []
        """The seqs of the messages from the oldest the window read to the newest, in order."""
        self._known_after: int | None = None
        """`_known` holds every message after this seq (a read found nothing older), if it is known."""
        self._summary: tuple[int, str] | None = None
        self._summary_read = False
        """Whether `_summary` holds the file's newest summary (only `add_summary` writes one)."""

    # -- messages ------------------------------------------------------------------------------------
    async def add_message(
        self, role: str, content: str | None, message_id: str | None = None, *, tx: Any = None
    ) -> ChatMessage:
        """Append a message; `message_id`: the sender's own id for it (else a new one); `tx`: inside that
        transaction (else its own)."""
        message_id, now = message_id or uuid.uuid4().hex, time.time()
        await (tx or self.storage).execute(
            "INSERT INTO messages(id, role, content, created_at) VALUES (?, ?, ?, ?)",
            (message_id, role, content, now),
        )
        return ChatMessage(id=message_id, role=role, content=content, created_at=now)  # type: ignore[arg-type]

    async def add_assistant(
        self,
        content: str,
        raw_calls: list[dict[str, str]],
        *,
        metadata: dict[str, Any] | None = None,
        ending_turn: bool = False,
    ) -> ChatMessage:
        """The assistant message (with its `metadata`) and its tool calls (state `call`), in one transaction;
        `ending_turn`: it is a turn's final answer, and the turn's in-progress mark goes in the same one."""
        message_id, now = uuid.uuid4().hex, time.time()
        calls: list[ToolCall] = []
        async with self.storage.transaction() as tx:
            if ending_turn:
                await tx.delete(TURN_IN_PROGRESS)
            await tx.execute(
                "INSERT INTO messages(id, role, content, created_at, metadata) VALUES (?, 'assistant', ?, ?, ?)",
                (message_id, content or None, now, json.dumps(metadata or {})),
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
            id=message_id,
            role="assistant",
            content=content or None,
            tool_calls=calls or None,
            created_at=now,
            metadata=metadata or {},
        )

    async def last_activity(self) -> float | None:
        """When the thread's newest message was written (None: it has none)."""
        row = await self.storage.fetchone("SELECT MAX(created_at) AS at FROM messages")
        return float(row["at"]) if row and row["at"] is not None else None

    async def before_turn(self, message_id: str | None) -> tuple[int, tuple[int, str, str | None] | None]:
        """(the last seq, (seq, role, content) of the message with this id if the thread has it) in one read:
        what a turn looks up before it starts (a message sent again is its turn replayed)."""
        if message_id is None:
            return await self.last_seq(), None
        row = await self.storage.fetchone(
            "SELECT (SELECT COALESCE(MAX(seq), 0) FROM messages) AS last_seq, m.seq, m.role, m.content "
            "FROM (SELECT 1) AS one LEFT JOIN messages AS m ON m.id = ?",
            (message_id,),
        )
        assert row is not None  # one row always: the left join keeps it
        seen = None if row["seq"] is None else (int(row["seq"]), str(row["role"]), row["content"])
        return int(row["last_seq"]), seen

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

    async def blocks_newest_first(self, after_seq: int, enough: int) -> list[ContextBlock]:
        """The blocks of the messages after `after_seq` (see `agents.model_context`), newest first, until they
        add up to `enough` characters: a turn reads what its window needs, not the whole thread.

        The activation is its file's only writer and messages are only ever appended, so after the first
        window of an activation (read a page at a time, from the newest backwards) a turn reads only the
        messages newer than the newest it knows, and the rows of blocks a changed call made stale
        (`_forget_block_of`); the rest of the window comes from what it kept."""
        if self._known:
            newer = await self._message_rows("seq > ? ORDER BY seq", (self._known[-1],))
            self._known.extend(row[0] for row in newer)
            fresh = {row[0] for row in newer}
            stale = [q for q in self._known if q > after_seq and q not in self._window_blocks and q not in fresh]
            await self._cached_blocks_of(newer + await self._message_rows_at(stale))
        blocks: list[ContextBlock] = []
        total = 0
        for seq in reversed(self._known):
            if seq <= after_seq or total >= enough:
                break
            blocks.append(self._window_blocks[seq])
            total += blocks[-1].size
        before, page_rows = (self._known[0] if self._known else 2**62), WINDOW_PAGE_ROWS
        while total < enough and not (self._known_after is not None and self._known_after <= after_seq):
            rows = await self._message_rows(
                "seq > ? AND seq < ? ORDER BY seq DESC LIMIT ?", (after_seq, before, page_rows)
            )
            if len(rows) < page_rows:  # the thread's start (or the summary's end) is reached: no more to read
                self._known_after = after_seq
            if not rows:
                break
            page = await self._cached_blocks_of(rows)
            self._known[:0] = [block.seq for block in page]
            blocks.extend(reversed(page))
            total += sum(block.size for block in page)
            before, page_rows = rows[-1][0], page_rows * 2  # a long window in a few reads
        if blocks:  # what is older than this window will not be asked for again
            self._keep_from(blocks[-1].seq)
        return blocks

    def _keep_from(self, oldest: int) -> None:
        self._window_blocks = {seq: b for seq, b in self._window_blocks.items() if seq >= oldest}
        self._block_of_call = {c: seq for c, seq in self._block_of_call.items() if seq >= oldest}
        if self._known and self._known[0] < oldest:
            self._known = [seq for seq in self._known if seq >= oldest]
            self._known_after = None  # what is older is no longer known

    async def _message_rows(self, where: str, params: tuple[Any, ...]) -> list[tuple[int, str, str, str | None]]:
        rows = await self.storage.fetchall(f"SELECT seq, id, role, content FROM messages WHERE {where}", params)
        return [(int(r["seq"]), r["id"], r["role"], r["content"]) for r in rows]

    async def _message_rows_at(self, seqs: list[int]) -> list[tuple[int, str, str, str | None]]:
        rows: list[tuple[int, str, str, str | None]] = []
        for start in range(0, len(seqs), 500):  # within SQLite's limit on a statement's parameters
            part = seqs[start : start + 500]
            rows += await self._message_rows(f"seq IN ({','.join('?' * len(part))})", tuple(part))
        return rows

    async def _cached_blocks_of(self, rows: list[tuple[int, str, str, str | None]]) -> list[ContextBlock]:
        """`_blocks_of` (in seq order), built only for the rows whose block is not kept from an earlier window."""
        missing = [row for row in rows if row[0] not in self._window_blocks]
        if missing:
            for block in await self._blocks_of(missing):
                self._window_blocks[block.seq] = block
                for message in block.messages:
                    if message["role"] == "tool":
                        self._block_of_call[str(message["tool_call_id"])] = block.seq
        return [self._window_blocks[seq] for seq in sorted(row[0] for row in rows)]

    def _forget_block_of(self, tool_call_id: str, *seqs: int | None) -> None:
        """A call changed: its block (and the block at any of `seqs`) is built again when next needed."""
        for seq in (self._block_of_call.pop(tool_call_id, None), *seqs):
            if seq is not None:
                self._window_blocks.pop(seq, None)

    async def blocks_oldest_first(self, after_seq: int, before_seq: int, enough: int) -> list[ContextBlock]:
        """The blocks of the messages in (`after_seq`, `before_seq`), oldest first, until they add up to
        `enough` characters (at least one block, if there is any)."""
        blocks: list[ContextBlock] = []
        total = 0
        while total < enough:
            rows = await self.storage.fetchall(
                "SELECT seq, id, role, content FROM messages WHERE seq > ? AND seq < ? ORDER BY seq LIMIT ?",
                (after_seq, before_seq, WINDOW_PAGE_ROWS),
            )
            if not rows:
                break
            for block in await self._blocks_of([(int(r["seq"]), r["id"], r["role"], r["content"]) for r in rows]):
                if blocks and total + block.size > enough:
                    return blocks
                blocks.append(block)
                total += block.size
            after_seq = int(rows[-1]["seq"])
        return blocks

    async def _blocks_of(self, rows: list[tuple[int, str, str, str | None]]) -> list[ContextBlock]:
        """`rows` as blocks, with their messages' calls and the calls that resolved late at their seqs."""
        ids = [row[1] for row in rows]
        seqs = [row[0] for row in rows]
        placeholders = ",".join("?" * len(ids))
        call_rows = await self.storage.fetchall(
            f"SELECT * FROM tool_calls WHERE message_id IN ({placeholders}) "
            "OR (resolved_after_seq BETWEEN ? AND ? AND state = 'result')",
            (*ids, min(seqs), max(seqs)),
        )
        return thread_blocks(rows, [_call_from_row(row) for row in call_rows])

    async def unfinished_calls_before(self, seq: int) -> list[ToolCall]:
        """The calls not yet resolved that were made by a message older than `seq` (the model's window
        starts at `seq`, so it would not see that they wait)."""
        rows = await self.storage.fetchall(
            "SELECT tool_calls.* FROM tool_calls JOIN messages ON messages.id = tool_calls.message_id "
            "WHERE tool_calls.state != 'result' AND messages.seq < ? ORDER BY messages.seq, tool_calls.position",
            (seq,),
        )
        return [_call_from_row(row) for row in rows]

    async def content_chars_between(self, after_seq: int, before_seq: int) -> int:
        """The characters of the messages' text in (`after_seq`, `before_seq`) (a cheap size of a span)."""
        row = await self.storage.fetchone(
            "SELECT COALESCE(SUM(LENGTH(COALESCE(content, '')) + 16), 0) AS n FROM messages WHERE seq > ? AND seq < ?",
            (after_seq, before_seq),
        )
        return int(row["n"]) if row else 0

    # -- the summary of what no longer fits ----------------------------------------------------------
    async def summary_in_use(self) -> tuple[int, str] | None:
        """(the last message it covers, its text) of the newest summary, if the thread has one (read once
        per activation: only `add_summary` writes one)."""
        if not self._summary_read:
            row = await self.storage.fetchone(
                "SELECT through_seq, content FROM context_summaries ORDER BY through_seq DESC LIMIT 1"
            )
            self._summary = None if row is None else (int(row["through_seq"]), str(row["content"]))
            self._summary_read = True
        return self._summary

    async def add_summary(self, through_seq: int, content: str, messages: int) -> bool:
        """Store a summary covering the thread up to `through_seq`; False (nothing written) if one that
        covers as much or more is already there (a compaction run twice writes once)."""
        async with self.storage.transaction() as tx:
            row = await tx.fetchone("SELECT MAX(through_seq) AS last FROM context_summaries")
            if row is not None and row["last"] is not None and int(row["last"]) >= through_seq:
                return False
            await tx.execute(
                "INSERT INTO context_summaries(through_seq, content, messages, created_at) VALUES (?, ?, ?, ?)",
                (through_seq, content, messages, time.time()),
            )
        self._summary, self._summary_read = (through_seq, content), True
        return True

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
    async def tool_call(self, tool_call_id: str) -> ToolCall | None:
        row = await self.storage.fetchone("SELECT * FROM tool_calls WHERE id = ?", (tool_call_id,))
        return None if row is None else _call_from_row(row)

    async def calls(self, *states: str) -> list[ToolCall]:
        """The calls in any of `states` (every call if none is given), oldest first."""
        where, params = "", tuple(states)
        if states:
            where = f" WHERE state IN ({','.join('?' * len(states))})"
        rows = await self.storage.fetchall(f"SELECT * FROM tool_calls{where} ORDER BY created_at, position", params)
        return [_call_from_row(row) for row in rows]

    async def set_call_state(
        self,
        tool_call_id: str,
        state: str,
        *,
        interrupt: dict[str, Any] | None = None,
        retry: ToolRetry | None = None,
    ) -> None:
        """A new state (and, if given, the interrupt, or the run to come, that goes with it)."""
        try:
            await self.storage.execute(
                "UPDATE tool_calls SET state = ?, interrupt = COALESCE(?, interrupt), retry = COALESCE(?, retry), "
                "updated_at = ? WHERE id = ?",
                (
                    state,
                    json.dumps(interrupt) if interrupt is not None else None,
                    retry.model_dump_json() if retry is not None else None,
                    time.time(),
                    tool_call_id,
                ),
            )
        finally:
            self._forget_block_of(tool_call_id)

    async def finish_call(self, call: ToolCall, result: str, *, interrupt: dict[str, Any] | None = None) -> None:
        """Record the result (and, if given, the interrupt details that go with it); a call resolved after the
        thread moved on remembers where it arrived."""
        arrived_at: int | None = None
        try:
            async with self.storage.transaction() as tx:
                row = await tx.fetchone(
                    "SELECT (SELECT MAX(seq) FROM messages) AS last_seq, "
                    "(SELECT seq FROM messages WHERE id = ?) AS call_seq",
                    (call.message_id,),
                )
                late = row is not None and row["last_seq"] is not None and row["last_seq"] > (row["call_seq"] or 0)
                arrived_at = row["last_seq"] if late else None
                await tx.execute(
                    "UPDATE tool_calls SET state = 'result', result = ?, updated_at = ?, resolved_after_seq = ?, "
                    "interrupt = COALESCE(?, interrupt) WHERE id = ?",
                    (result, time.time(), arrived_at, json.dumps(interrupt) if interrupt else None, call.id),
                )
        finally:
            self._forget_block_of(call.id, arrived_at)


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
    interrupt = json.loads(row["interrupt"]) if row["interrupt"] else None
    retry = ToolRetry.model_validate_json(row["retry"]) if row["retry"] else None
    if retry is None and isinstance(interrupt, dict) and interrupt.get("retrying"):  # a row from before `retry`
        retry, interrupt = ToolRetry.model_validate(interrupt), None
    return ToolCall(
        id=row["id"],
        message_id=row["message_id"],
        name=row["name"],
        arguments=row["arguments"],
        state=row["state"],
        result=row["result"],
        interrupt=interrupt,
        retry=retry,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        position=row["position"],
        resolved_after_seq=row["resolved_after_seq"],
    )
