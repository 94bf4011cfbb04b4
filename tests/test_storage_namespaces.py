"""Where an agent's files live: no valid id reaches another agent's files."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from agents.chat import Chat
from runtime import get_agent


@pytest.mark.parametrize("thread_id", ["X", "X.credentials", "credentials", "X.sqlite3", "credentials.X"])
def test_no_thread_id_reaches_another_threads_file(tmp_path: Path, thread_id: str) -> None:
    """Thread `X.credentials` once opened thread X's credential store; a thread's credentials now live in
    its own storage, and no valid id names another's file (ids hold no `/`)."""
    others = ["X", "X.credentials", "credentials", "X.sqlite3", "credentials.X"]
    theirs = {Chat.storage_path(tmp_path, other) for other in others if other != thread_id}
    assert Chat.storage_path(tmp_path, thread_id) not in theirs


async def test_a_purchase_never_takes_the_file_of_the_thread_named_like_its_old_credential_store(
    chat_world: Any, storage_dir: Path
) -> None:
    """Review hole 1: thread `N`'s first purchase used to move `Chat/N.credentials.sqlite3` (the agent file of
    another user's thread `N.credentials`) into its own credential folder, emptying that thread."""
    name = f"notes-{uuid.uuid4().hex[:8]}"
    bobs = get_agent(Chat, f"{name}.credentials", storage_dir=storage_dir)
    await bobs.send_message(chat_world.token("bob"), "hello")
    bobs_file = Chat.storage_path(storage_dir, f"{name}.credentials")
    assert bobs_file.exists()

    alices = get_agent(Chat, name, storage_dir=storage_dir)
    (tool,) = [m for m in await alices.send_message(chat_world.token("alice"), "buy 1 MSFT") if m.role == "tool"]
    assert tool.state == "pending-authorization"  # the credential store of `name` is open now

    assert bobs_file.exists()
    assert await credential_rows(Chat.storage_path(storage_dir, name)) == 1  # alice's request, in her file
    assert await credential_rows(bobs_file) == 0
    assert [m.content for m in await bobs.get_messages(chat_world.token("bob")) if m.role == "user"] == ["hello"]
    for request in chat_world.requests_for("alice"):  # the next tests expect alice's phone to hold only theirs
        chat_world.decide(request["id"], approve=False)


async def credential_rows(path: Path) -> int:
    """How many credential records (pending requests, approvals) an agent's file holds."""
    import aiosqlite

    async with aiosqlite.connect(f"file:{path}?mode=ro", uri=True) as db:
        try:
            cursor = await db.execute("SELECT COUNT(*) FROM _credentials")
        except aiosqlite.OperationalError:  # never used a credential: no table
            return 0
        return (await cursor.fetchone())[0]
