"""Checking a sleeping thread's CIBA request without waking it: the alarm probe and its hand-off.

In ping mode the provider's ping wakes a thread when its user decides; the checks on a timer are only a
safety net for a lost ping, and almost all of them find the request still pending. So a thread going to
sleep with a request pending gives its alarm a probe (`runtime.alarm_probes`), and the scheduler runs
`check_sleeping_request` in place of waking the thread: one token poll, no activation.

- **Still pending** (or `slow_down`): the alarm moves to the next check time, and the thread sleeps on.
- **Any answer** (approved, denied, expired, invalid grant): the token endpoint gives an approval only
  once, so the answer is kept, sealed with the deployment's encryption key, in the root's shared
  hand-off store **before** the thread is woken; the thread's check takes it from there instead of
  polling (`CibaHandoff.claim`), stores it as its own poll's answer, then settles the hand-off.
- **Anything unexpected** (a provider outage, another client configuration): the thread is woken and
  its own check decides, as without a probe.

The thread and the probe never poll the same request at once: each claims the request in the hand-off
store first (one row per call, with a lease), and whoever finds it claimed waits for the lease. A claim
left behind by a poll that never came back (the scheduler died mid-request) may have cost the approval
with its answer: the thread then treats it as an answer lost, as it treats its own (`CibaFlow._check`).
Nothing secret is stored in the clear: the probe's payload (its `auth_req_id`) and the answers are sealed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from auth.settings import auth_settings
from runtime.storage_api import StorageAPI
from runtime.storage_choice import shared_storage
from tools.ciba import metrics
from tools.ciba.credential_store import CredentialSealer
from tools.ciba.options import ping_check_gap
from tools.ciba.types import (
    AccessDenied,
    Approved,
    CIBAError,
    CIBATransientError,
    ExpiredToken,
    InvalidGrant,
    Pending,
    SlowDown,
    TokenSet,
)

PROBER = "tools.ciba.probe:check_sleeping_request"
"""The `AlarmProbe.prober` of a pending CIBA request."""

HANDOFF_NAME = "ciba-handoff"
HANDOFF_MIGRATIONS = [
    """
    CREATE TABLE claims (
        call_key TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        holder TEXT NOT NULL,
        answer BLOB,
        lease_until REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX claims_by_age ON claims (updated_at);
    """
]
FORGOTTEN_AFTER_SECONDS = 2 * 86400.0
"""A claim nobody settled (its call ended some other way) is dropped after this long..."""
PURGE_EVERY_SECONDS = 60.0
"""... by the first claim of each minute in each process."""

_PAYLOAD_NAMESPACE = "ciba-probe"
_ANSWER_NAMESPACE = "ciba-handoff"

Answer = Approved | AccessDenied | ExpiredToken | InvalidGrant
"""The poll outcomes a probe hands over: every one but "not yet"."""

Holder = Literal["thread", "probe"]
"""Who claims a request for a poll: the thread's own check, or the scheduler's probe."""


class ProbeRequest(BaseModel):
    """What a probe needs to poll one request (sealed into the alarm's payload)."""

    handoff_key: str
    auth_req_id: str
    expires_at: float
    requested_at: float
    interval: int
    ping_fallback: float | None = None
    issuer: str
    client_id: str


@dataclass(frozen=True)
class Claim:
    """What `CibaHandoff.claim` found: `claimed` (poll now; `lost_before`: an earlier poll's answer may
    have been lost), `busy` (another poll runs until `until`), `answered` (`answer`: the probe's), or
    `lost` (a poll that never came back; only when the claimant does not take those over)."""

    kind: Literal["claimed", "busy", "answered", "lost"]
    answer: Answer | None = None
    until: float | None = None
    lost_before: bool = False


class CibaHandoff:
    """The root's shared claims on pending requests (one per process and root: `ciba_handoff`)."""

    def __init__(self, storage_dir: Path, sealer: CredentialSealer) -> None:
        self.storage = shared_storage(HANDOFF_NAME, Path(storage_dir) / f"{HANDOFF_NAME}.sqlite3")
        self._sealer = sealer
        self._open = False
        self._opening = asyncio.Lock()
        self._next_purge = 0.0

    def __repr__(self) -> str:
        return "CibaHandoff()"

    async def _ready(self) -> StorageAPI:
        async with self._opening:  # the first checks of a fresh process come at once (`ApprovalSlots`)
            if not self._open:
                await self.storage.open()
                await self.storage.migrate("tools.CibaHandoff", HANDOFF_MIGRATIONS)
                self._open = True
        return self.storage

    async def claim(self, call_key: str, *, lease: float, by: Holder) -> Claim:
        """Claim the request of `call_key` for one poll of `lease` seconds at most, `by` the thread or a
        probe, or say why not. A probe's poll in flight holds the thread off; the thread's holds a probe
        off; but the thread takes over a claim of its own at once (a poll of a process that died: only one
        activation of a thread checks at a time), and a claim whose poll never came back, warned
        (`lost_before`). A probe takes over nothing: it wakes the thread (`lost`)."""
        storage = await self._ready()
        now = time.time()
        async with storage.transaction() as tx:
            if now >= self._next_purge:
                await tx.execute("DELETE FROM claims WHERE updated_at < ?", (now - FORGOTTEN_AFTER_SECONDS,))
                self._next_purge = now + PURGE_EVERY_SECONDS
            row = await tx.fetchone(
                "SELECT state, holder, answer, lease_until FROM claims WHERE call_key = ?", (call_key,)
            )
            if row is not None and row["state"] == "answered":
                answer = self._sealer.open(_ANSWER_NAMESPACE, call_key, bytes(row["answer"]))
                return Claim("answered", answer=_answer_from(answer) if answer is not None else InvalidGrant())
            held = row is not None and float(row["lease_until"]) > now
            if held and (by == "probe" or row["holder"] == "probe"):
                return Claim("busy", until=float(row["lease_until"]))
            if row is not None and by == "probe":
                return Claim("lost")
            await tx.execute(
                "INSERT INTO claims (call_key, state, holder, answer, lease_until, updated_at) "
                "VALUES (?, 'polling', ?, NULL, ?, ?) ON CONFLICT (call_key) DO UPDATE SET state = 'polling', "
                "holder = excluded.holder, answer = NULL, lease_until = excluded.lease_until, "
                "updated_at = excluded.updated_at",
                (call_key, by, now + lease, now),
            )
            return Claim("claimed", lost_before=row is not None)

    async def answer(self, call_key: str, answer: Answer) -> None:
        """Keep the answer of a claimed poll until the thread settles it (sealed: it may carry tokens)."""
        storage = await self._ready()
        sealed = self._sealer.seal(_ANSWER_NAMESPACE, call_key, _answer_to(answer))
        await storage.execute(
            "UPDATE claims SET state = 'answered', answer = ?, updated_at = ? WHERE call_key = ?",
            (sealed, time.time(), call_key),
        )

    async def lost(self, call_key: str) -> None:
        """The claimant's poll failed on the way and its answer may be lost: the claim ends now (not when
        its lease runs out), and whoever claims next is told (`Claim.lost_before`)."""
        storage = await self._ready()
        await storage.execute(
            "UPDATE claims SET lease_until = 0, updated_at = ? WHERE call_key = ? AND state = 'polling'",
            (time.time(), call_key),
        )

    async def settle(self, call_key: str) -> None:
        """The poll's answer is dealt with (stored by the thread, or "not yet"): the claim goes."""
        storage = await self._ready()
        await storage.execute("DELETE FROM claims WHERE call_key = ?", (call_key,))


_handoffs: dict[str, CibaHandoff] = {}


def ciba_handoff(storage_dir: Path) -> CibaHandoff:
    """This process's hand-off store of `storage_dir` (sealed with `AUTH0_SESSION_ENCRYPTION_KEY`)."""
    key = str(Path(storage_dir).resolve())
    found = _handoffs.get(key)
    if found is None:
        found = _handoffs[key] = CibaHandoff(Path(key), _deployment_sealer())
    return found


@functools.lru_cache(maxsize=4)
def _sealer(key: str) -> CredentialSealer:
    return CredentialSealer(key)


def _deployment_sealer() -> CredentialSealer:
    """The sealer of `AUTH0_SESSION_ENCRYPTION_KEY` (its key derived once per process, not per probe)."""
    return _sealer(auth_settings().require_encryption_key().get_secret_value())


def seal_request(request: ProbeRequest) -> str:
    """The probe's payload: `request` sealed (it holds the `auth_req_id`), as text."""
    return _deployment_sealer().seal(_PAYLOAD_NAMESPACE, "request", request.model_dump(mode="json")).hex()


def _open_request(payload: str) -> ProbeRequest | None:
    try:
        data = _deployment_sealer().open(_PAYLOAD_NAMESPACE, "request", bytes.fromhex(payload))
        return ProbeRequest.model_validate(data) if data is not None else None
    except (ValueError, ValidationError):
        return None


async def check_sleeping_request(payload: str, storage_dir: Path) -> float | None:
    """The prober: poll the sleeping thread's request once; when to look again if it is still pending,
    else None (wake the thread), with any answer kept in the hand-off first."""
    from tools.ciba.client import CIBAClient

    request = _open_request(payload)
    if request is None:
        return None
    client = CIBAClient.shared(auth_settings())
    if (client.issuer.rstrip("/"), client.client_id) != (request.issuer.rstrip("/"), request.client_id):
        return None  # the thread's tool uses another client: its own check polls
    if time.time() >= request.expires_at:
        return None  # the thread's check ends it (a last poll, then "expired")
    handoff = ciba_handoff(storage_dir)
    claim = await handoff.claim(request.handoff_key, lease=client.max_request_seconds + 5.0, by="probe")
    if claim.kind == "busy":
        return claim.until  # the thread polls right now: it is awake, and its own check re-arms the alarm
    if claim.kind != "claimed":
        return None
    metrics.CIBA_POLLS.inc(tool="probe")
    try:
        result = await client.poll(request.auth_req_id, interval=request.interval)
    except CIBATransientError as exc:
        if exc.maybe_sent:
            await handoff.lost(request.handoff_key)  # the thread, woken, treats the answer as maybe lost
            return None
        await handoff.settle(request.handoff_key)
        return time.time() + max(float(request.interval), exc.retry_after or 0.0, 30.0)
    except CIBAError:
        await handoff.settle(request.handoff_key)
        return None
    except BaseException:  # cut off (the scheduler's time limit) or unexpected: the thread takes over now
        await handoff.lost(request.handoff_key)
        raise
    after = time.time()
    if isinstance(result, Pending | SlowDown):
        await handoff.settle(request.handoff_key)
        if isinstance(result, SlowDown):
            return min(after + result.wait, request.expires_at)
        lifetime = request.expires_at - request.requested_at
        return min(after + ping_check_gap(result.interval, lifetime, request.ping_fallback), request.expires_at)
    await handoff.answer(request.handoff_key, result)
    return None


def _answer_to(answer: Answer) -> dict[str, Any]:
    if isinstance(answer, Approved):
        return {"kind": "approved", "tokens": dataclasses.asdict(answer.tokens)}
    kind = {AccessDenied: "access_denied", ExpiredToken: "expired_token", InvalidGrant: "invalid_grant"}
    return {"kind": kind[type(answer)], "description": answer.description}


def _answer_from(data: dict[str, Any]) -> Answer:
    kind = data.get("kind")
    if kind == "approved":
        return Approved(TokenSet(**data["tokens"]))
    made = {"access_denied": AccessDenied, "expired_token": ExpiredToken}.get(str(kind), InvalidGrant)
    return made(description=data.get("description"))
