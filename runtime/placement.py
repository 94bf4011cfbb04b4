"""Where an agent lives: the host slot of a `(class, id)` name under a versioned placement, and the Ray
names of the runtime's actors.

Agents are spread over the hosts of a storage root by a consistent hash of their name (Lamping and Veach's
jump hash), so every process computes the same host for an agent without asking anyone, and going from N to
N+1 hosts moves about 1/(N+1) of the agents (going back moves the same ones back). The number of hosts is
a `Placement`: one record per root, kept by the root's placement keeper (`runtime.placement_keeper`) and
changed only through it, each change a new version.

A change is made in two versions, so that no agent is ever live in two hosts: first a *moving* placement
(`moving_from` = the old count), under which an agent whose slot differs between the two counts is served
by no host (its old host lets it hibernate; calls are refused with `AgentMovedError` and handles retry),
then, once every old host has let its moved agents go, the *settled* one, under which the new host serves.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def root_digest(storage_dir: Path) -> str:
    """A short stable digest of a storage root (actor names carry it: one set of actors per root)."""
    return hashlib.sha256(str(Path(storage_dir).resolve()).encode()).hexdigest()[:16]


def scheduler_name(storage_dir: Path) -> str:
    return f"_runtime/alarms/{root_digest(storage_dir)}"


def host_name(storage_dir: Path, slot: int) -> str:
    return f"_runtime/hosts/{root_digest(storage_dir)}/{slot}"


def runtime_dir(storage_dir: Path) -> Path:
    """The runtime's own files in a storage root (alarm index, placement, hosts' resident lists)."""
    return Path(storage_dir).resolve() / "_runtime"


PLACEMENT_FILE = "placement.json"
"""`{"hosts": N}` in the runtime folder: the first host count of a root that has no placement yet (the way
roots recorded it before placements had versions; tests use it to start a root with N hosts)."""

_MASK64 = (1 << 64) - 1


def slot_for(name: str, hosts: int) -> int:
    """The host slot of the agent named `name` ("Class/id") among `hosts` hosts (jump consistent hash:
    with one host more, an agent either stays or moves to the new one)."""
    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
    bucket, jump = -1, 0
    while jump < hosts:
        bucket = jump
        key = (key * 2862933555777941757 + 1) & _MASK64
        jump = int((bucket + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return bucket


@dataclass(frozen=True)
class Placement:
    """How many hosts a root's agents are spread over, at which version, and whether a move is under way."""

    version: int
    hosts: int
    moving_from: int | None = None
    """While hosts are being added or removed: the count being left (agents it places elsewhere wait)."""

    def owner(self, name: str) -> int:
        """The slot that serves `name` once any move is over (where handles send its calls)."""
        return slot_for(name, self.hosts)

    def serves(self, name: str, slot: int) -> bool:
        """Whether the host of `slot` may run `name` now: it owns it, and no move is taking it elsewhere."""
        if slot_for(name, self.hosts) != slot:
            return False
        return self.moving_from is None or slot_for(name, self.moving_from) == slot

    def slots(self) -> range:
        """Every slot that may hold live agents under this placement (both counts during a move)."""
        return range(max(self.hosts, self.moving_from or 0))

    def record(self) -> dict[str, Any]:
        return {"version": self.version, "hosts": self.hosts, "moving_from": self.moving_from}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Placement:
        hosts, version, moving_from = record.get("hosts"), record.get("version", 1), record.get("moving_from")
        if not isinstance(hosts, int) or hosts < 1 or not isinstance(version, int):
            raise ValueError(f"not a placement record: {record!r}")
        return cls(version, hosts, moving_from if isinstance(moving_from, int) else None)


def moved_fraction(names: list[str], before: int, after: int) -> float:
    """The share of `names` whose host changes when the count goes from `before` to `after`."""
    if not names:
        return 0.0
    return sum(slot_for(n, before) != slot_for(n, after) for n in names) / len(names)
