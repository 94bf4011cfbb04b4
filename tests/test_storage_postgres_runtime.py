"""The runtime with `AGENT_STORAGE_URL` naming a real PostgreSQL: agents keep their data in the database
(no SQLite file of theirs anywhere), transactions stay atomic, an alarm wakes a sleeping agent, a
SIGKILLed host loses nothing acknowledged, an agent never created stays not found, and with the runtime's
alarm scheduler lost for good another scheduler on the same database wakes every sleeping agent once. A malformed or
unreachable URL is refused at start-up naming the setting, without the password; while the database is
down calls fail as `StorageUnavailableError` with nothing written, and work again by themselves after."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.storage_choice import StorageConfigError, check_storage, redacted_url, storage_url
from tests.isolated import run_isolated
from tests.postgres import PostgresServer


@pytest.mark.slow
def test_agents_live_in_postgres_through_sleep_alarms_and_a_killed_host(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    root, server = str(tmp_path / "root"), postgres.to_json()
    url = postgres.new_database(f"runtime_{tmp_path.name[-8:].lower().replace('-', '_')}_{os.getpid()}")
    proc = run_isolated("tests/postgres_runtime_scenario.py", url, root, server, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["sequences"] == [[0], [0, 1], [0, 1, 2]]
    assert seen["labels"] == ["counter 0", "counter 1", "counter 2"]
    assert seen["events_after_failed_transaction"] == []
    assert seen["fires"] == [{"n": 1}]
    assert seen["after_kill"] == [0, 1, 2] and seen["starts_after_kill"] >= 2
    assert seen["not_found"] is True
    assert seen["sqlite_files"] == []  # the agents' data is in the database only
    rows = postgres.psql(
        "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'agents_quickcounter_%'", url.rsplit("/")[-1]
    )
    assert rows == "1"  # one schema for the class, whatever the number of agents
    assert seen["during_outage"] == ["StorageUnavailableError", "StorageUnavailableError"]
    assert seen["first_read_after_restart"] == [], seen["first_read_after_restart"]  # no failed read after it
    assert seen["after_outage"] == [2, "asleep"]  # the append during the outage wrote nothing
    assert seen["sequence_after_outage"] == [0, 9]
    assert seen["sleeper_fires"] == [[{"sleeper": i}] for i in range(5)]  # each once, the scheduler lost
    assert seen["woken_by_the_other"] >= 5

    # the operator's view, from the database alone (one query per class), with the password kept out
    env = {**os.environ, "AGENT_STORAGE_URL": url}
    status = subprocess.run(
        [sys.executable, "-m", "agentrt.cli", "status", "--storage-dir", root, "--json"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["read_from"].startswith("the database (postgresql://") and "indexed queries" in report["read_from"]
    assert report["agents_on_file"] == 9  # pg-0..2, pg-asleep, sleeper-0..4 (never-made was never created)
    due = {a["agent_id"]: a for a in report["sleeping_with_due_alarm"] + [a for a in report.get("parked_alarms", [])]}
    assert "pg-1" in due and due["pg-1"]["class_path"].endswith(":QuickCounter")
    (failed,) = report["parked_schedules"]
    assert failed["agent"] == {"class_name": "QuickCounter", "agent_id": "pg-2"}
    assert failed["callback"] == "always_fails" and "callback failure" in failed["last_error"]


def test_a_malformed_or_unreachable_url_is_refused_naming_the_setting_without_its_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from runtime.settings import runtime_settings

    for url, expected in [
        ("mysql://u:hunter2@db/x", "must be postgresql://"),
        ("postgresql://u:hunter2@db:notaport/x", "not a valid URL"),
        ("postgresql://u:hunter2@127.0.0.1:1/x", "cannot be used"),
    ]:
        monkeypatch.setenv("AGENT_STORAGE_URL", url)
        runtime_settings.cache_clear()
        try:
            with pytest.raises(StorageConfigError, match=expected) as caught:
                storage_url()
                check_storage()
            assert "hunter2" not in str(caught.value) and "AGENT_STORAGE_URL" in str(caught.value)
            assert "hunter2" not in repr(runtime_settings().model_copy(update={}))
        finally:
            runtime_settings.cache_clear()  # no later test may see these settings
    assert redacted_url("postgresql://u:hunter2@db:5432/x") == "postgresql://u:***@db:5432/x"
