"""What the soak benchmark checks afterwards (see `bench/soak_bench.py`): what the users and their phones
did and every answer they got (`Ledger`, `Traffic`), against the threads' own files, the checkout's
database and the dev authorization server (`Checks`): nothing lost, doubled or stuck.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

NON_TERMINAL = ("call", "running", "pending-authorization")
WASTED_APPROVAL = "The authorization request is invalid or was already used"


@dataclass
class Ledger:
    """What the users and their phones did, to check the files against."""

    sent: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    acknowledged: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    decisions: dict[str, dict[str, Any]] = field(default_factory=dict)
    stall_windows: list[tuple[float, float]] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)


@dataclass
class Traffic:
    """Every answer the users got: latency per route, statuses, and each 5xx with when it came."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: Counter[str] = field(default_factory=Counter)
    server_errors: list[dict[str, Any]] = field(default_factory=list)
    lost_answers: Counter[str] = field(default_factory=Counter)
    refused: list[str] = field(default_factory=list)
    """Messages refused with a 4xx: none is expected (every message and token is valid)."""

    def record(self, route: str, response: httpx.Response, seconds: float) -> None:
        self.latencies[route].append(seconds)
        self.statuses[f"{route} {response.status_code}"] += 1
        if response.status_code >= 500:
            self.server_errors.append(
                {
                    "at": time.monotonic(),
                    "route": route,
                    "status": response.status_code,
                    "retry_after": response.headers.get("retry-after"),
                    "body": response.text[:200],
                }
            )


def read_rows(path: Path, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """Rows of a SQLite file, read-only (a thread's file stays its agent's); none if it does not exist."""
    if not path.exists():
        return []
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as db:
        return db.execute(sql, params).fetchall()


class Checks:
    """The invariants, each a list of what breaks it (empty: it holds), read from the files and services
    the soak leaves behind. `subjects` (thread id -> its owner's `sub`) and `memory` fill in during the run."""

    def __init__(
        self,
        ledger: Ledger,
        traffic: Traffic,
        storage: Path,
        authz_url: str,
        subjects: dict[str, str],
        memory: dict[str, float],
    ) -> None:
        self.ledger = ledger
        self.traffic = traffic
        self.storage = storage
        self.authz_url = authz_url
        self.subjects = subjects
        self.memory = memory

    def violations(self) -> dict[str, Any]:
        """Every invariant by name, with what breaks it."""
        return {
            "messages": self.check_messages(),
            "orders": self.check_orders(),
            "stuck_calls": self.unfinished_calls(),
            "server_errors": self.check_server_errors(),
            "refused_messages": self.traffic.refused,
            "memory": self.check_memory(),
        }

    def thread_files(self) -> dict[str, Path]:
        """Each thread the users wrote to, and its own file."""
        from agents.chat import Chat

        return {thread: Chat.storage_path(self.storage, thread) for thread in self.ledger.sent}

    def unfinished_calls(self) -> dict[str, list[tuple[str, str]]]:
        """Per thread, the tool calls left in a non-terminal state."""
        stuck: dict[str, list[tuple[str, str]]] = {}
        for thread, path in self.thread_files().items():
            rows = read_rows(path, "SELECT id, state FROM tool_calls WHERE state IN (?, ?, ?)", NON_TERMINAL)
            if rows:
                stuck[thread] = [(r[0], r[1]) for r in rows]
        return stuck

    def check_messages(self) -> list[str]:
        """Every acknowledged message stored exactly once, and nothing stored that was not sent."""
        problems = []
        for thread, path in self.thread_files().items():
            stored = Counter(r[0] for r in read_rows(path, "SELECT id FROM messages WHERE role = 'user'", ()))
            for message_id, times in stored.items():
                if times != 1 or message_id not in self.ledger.sent[thread]:
                    problems.append(
                        f"{thread}: {message_id} stored {times}x (sent: {message_id in self.ledger.sent[thread]})"
                    )
            for message_id in self.ledger.acknowledged[thread] - set(stored):
                problems.append(f"{thread}: acknowledged {message_id} is not stored")
        return problems

    def requests(self) -> list[dict[str, Any]]:
        """Every CIBA request the dev authorization server has had, whatever its state."""
        return httpx.get(f"{self.authz_url}/dev/ciba/requests", timeout=30).json()

    def orphans(self) -> dict[str, int]:
        """Approved requests no agent collected: sent again after a timeout (the first copy was orphaned)."""
        collected = Counter(r["status"] for r in self.requests() if not r["finished"])
        return dict(collected)

    def purchases(self) -> tuple[Counter[str], list[str]]:
        """Per user, the purchases the threads record as made; and the calls whose approval was wasted."""
        made: Counter[str] = Counter()
        wasted: list[str] = []
        sql = "SELECT id, result FROM tool_calls WHERE name = 'buy_stock' AND state = 'result'"
        for thread, path in self.thread_files().items():
            for call_id, result in read_rows(path, sql, ()):
                if (result or "").startswith("Purchased"):
                    made[self.subjects[thread]] += 1
                elif (result or "").startswith(WASTED_APPROVAL):
                    wasted.append(f"{thread}: {call_id}: {result}")
        return made, wasted

    def orders(self) -> Counter[str]:
        """Orders per user, from the checkout's own database."""
        rows = read_rows(self.storage / "checkout-orders.sqlite3", "SELECT subject FROM orders", ())
        return Counter(r[0] for r in rows)

    def check_orders(self) -> list[str]:
        """Orders == purchases the threads made, per user (none twice, none lost), and no approval wasted."""
        made, wasted = self.purchases()
        orders = self.orders()
        mismatches = [
            f"{sub}: {orders[sub]} orders for {made[sub]} purchases"
            for sub in sorted(set(made) | set(orders))
            if orders[sub] != made[sub]
        ]
        return mismatches + wasted

    def approvals_lost_on_the_way(self) -> int:
        """Approvals whose tokens went to a poll that never got its answer (a host killed mid-poll): the
        agent asked the user again. Approved-and-collected requests beyond the orders."""
        collected = sum(1 for r in self.requests() if r["status"] == "approved" and r["finished"])
        return max(0, collected - sum(self.orders().values()))

    def check_server_errors(self) -> list[dict[str, Any]]:
        """The 5xx answers, except the 503s with `Retry-After` the stall explains."""

        def during_stall(at: float) -> bool:
            # and until the hosts have the issuer's keys again (their refetches back off, up to ~30 s)
            return any(begin <= at <= until + 30.0 for begin, until in self.ledger.stall_windows)

        unexplained = [
            error
            for error in self.traffic.server_errors
            if not (error["status"] == 503 and error["retry_after"] and during_stall(error["at"]))
        ]
        if unexplained:  # what the agents' failure journal says, so that a red run can be explained
            from runtime.failures import read_failures

            unexplained.append({"failure_journal": [f.line() for f in read_failures(self.storage, limit=10)]})
        return unexplained

    def check_memory(self) -> str:
        """The Ray workers' memory at the end within 10% of its value after warm-up."""
        warm, end = self.memory.get("after_warmup_mib"), self.memory.get("end_mib")
        if warm and end and end > warm * 1.10:
            return f"memory grew from {warm} MiB after warm-up to {end} MiB"
        return ""
