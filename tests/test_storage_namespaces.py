"""Where an agent's files live: no valid id reaches another agent's files."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.parametrize("thread_id", ["X", "X.credentials", "credentials", "X.sqlite3", "credentials.X"])
def test_no_thread_id_reaches_another_threads_credential_file(tmp_path: Path, thread_id: str) -> None:
    """Thread `X.credentials` once opened thread X's credential store; every agent file and credential file
    now lives where no other id's can (credentials in their own folder, ids hold no `/`)."""
    from agents.chat import Chat

    others = ["X", "X.credentials", "credentials", "X.sqlite3", "credentials.X"]
    theirs = {Chat.storage_path(tmp_path, other) for other in others}
    theirs |= {Chat.credential_store_path(tmp_path, other) for other in others if other != thread_id}
    assert Chat.credential_store_path(tmp_path, thread_id) not in theirs


def test_a_credential_file_from_the_old_place_is_moved_with_its_wal(tmp_path: Path) -> None:
    """A purchase pending across the upgrade keeps its request: the store moves to its new folder."""
    from agents.thread_agent import _adopt_legacy_file

    legacy = tmp_path / "Chat" / "t1.credentials.sqlite3"
    legacy.parent.mkdir()
    legacy.write_bytes(b"main")
    legacy.with_name(legacy.name + "-wal").write_bytes(b"wal")
    target = tmp_path / "Chat" / "credentials" / "t1.sqlite3"
    _adopt_legacy_file(legacy, target)
    assert target.read_bytes() == b"main" and target.with_name("t1.sqlite3-wal").read_bytes() == b"wal"
    assert not legacy.exists()
    legacy.write_bytes(b"stale")  # once moved, never again (the new file wins)
    _adopt_legacy_file(legacy, target)
    assert target.read_bytes() == b"main"
