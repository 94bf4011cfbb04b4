"""The chat side of `agentrt status`: tool calls waiting for their user, read from the threads' files (or
the database).

A call waits in `pending-authorization` (a CIBA request on the user's device) or `awaiting-confirmation`
(an answer in the chat). Read-only, without waking a thread (see `runtime.status`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agents.messages import WAITING_FOR_USER
from runtime.status import AgentRef, agent_rows


@dataclass(frozen=True)
class WaitingToolCall:
    """A tool call of a sleeping or live thread waiting for its user (not `agents.messages.PendingApproval`,
    the API's view of one thread's waiting calls: this is the operator's, across every thread)."""

    thread: AgentRef
    tool_call_id: str
    tool_name: str
    state: str
    since: float


def waiting_tool_calls(storage_dir: Path) -> list[WaitingToolCall]:
    """Every waiting tool call of every thread, oldest first."""
    columns = ["id", "name", "state", "created_at"]
    found = [
        WaitingToolCall(ref, r["id"], r["name"], r["state"], r["created_at"])
        for ref, r in agent_rows(storage_dir, "tool_calls", columns, "state IN (?, ?)", WAITING_FOR_USER)
    ]
    return sorted(found, key=lambda p: p.since)
