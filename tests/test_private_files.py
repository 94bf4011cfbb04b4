"""Review hole 10: what the runtime writes is its owner's alone, and a model cannot forge log lines or
paths with the tool call ids it chooses."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from agents.messages import MESSAGE_ID_PATTERN
from agents.thread_store import CHAT_MIGRATIONS, ThreadStore
from runtime import get_agent
from runtime.storage import AgentStorage
from tests.agents_under_test import Counter
from tools.ciba.credential_store import SQLiteCredentialStore


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_an_agents_file_and_its_folders_are_private(storage_dir: Path) -> None:
    os.rmdir(storage_dir)  # let the runtime create the root, as `agentrt serve` does on a fresh machine
    counter = get_agent(Counter, "private-1", storage_dir=storage_dir)
    await counter.put("k", "v")
    path = Counter.storage_path(storage_dir, "private-1")
    assert mode(path) == 0o600
    assert mode(path.with_name(path.name + "-wal")) == 0o600
    assert mode(path.parent) == 0o700 and mode(storage_dir) == 0o700
    assert mode(storage_dir / "_runtime") == 0o700


async def test_a_credential_store_is_private_and_an_old_readable_file_is_narrowed(tmp_path: Path) -> None:
    path = tmp_path / "Chat" / "credentials" / "t.sqlite3"
    store = SQLiteCredentialStore(path, "k" * 32)
    await store.put("ns", "key", {"token": "secret"})
    assert mode(path) == 0o600 and mode(path.parent) == 0o700 and mode(path.parent.parent) == 0o700
    await store.close()
    path.chmod(0o644)  # as an earlier version left it
    reopened = SQLiteCredentialStore(path, "k" * 32)
    assert await reopened.get("ns", "key") == {"token": "secret"}
    assert mode(path) == 0o600
    await reopened.close()


@pytest.mark.parametrize("forged", ["call_1\n2026-12-05 CRITICAL forged line", "../../x", "", "a" * 300, None, 7])
async def test_a_tool_call_id_the_model_chose_is_used_only_if_it_is_safe(tmp_path: Path, forged: object) -> None:
    storage = await AgentStorage(tmp_path / "t.sqlite3").open()
    await storage.migrate("agents.AIChatAgent", CHAT_MIGRATIONS)
    store = ThreadStore(storage)
    message = await store.add_assistant("", [{"id": forged, "name": "buy_stock", "arguments": "{}"}])
    (call,) = message.tool_calls or []
    assert MESSAGE_ID_PATTERN.fullmatch(call.id) and call.id != forged
    kept = await store.add_assistant("", [{"id": "call_ok-1", "name": "buy_stock", "arguments": "{}"}])
    assert [c.id for c in kept.tool_calls or []] == ["call_ok-1"]
    await storage.close()
