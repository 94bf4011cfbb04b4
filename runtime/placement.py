"""Where an agent lives: the host slot of a `(class, id)` name and the Ray names of the runtime's actors.

Agents are spread over a fixed number of host processes per storage root by a hash of their name, so every
process in the cluster computes the same host for an agent without asking anyone: that is what keeps one
live instance per id. The number of hosts is written into the storage root the first time it is used
(`_runtime/placement.json`), and from then on read from there, so two processes configured differently can
never place the same agent in two hosts. To change it, stop the service and delete that file.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

from runtime.private_files import private_dir

PLACEMENT_FILE = "placement.json"


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


@lru_cache(maxsize=256)
def host_count(storage_dir: Path, configured: int) -> int:
    """The number of hosts of this storage root: the recorded one, or `configured` (then recorded)."""
    path = runtime_dir(storage_dir) / PLACEMENT_FILE
    try:
        return _read_hosts(path)
    except FileNotFoundError:
        pass
    private_dir(path.parent)
    temporary = path.with_name(f".{PLACEMENT_FILE}.{os.getpid()}")
    temporary.write_text(json.dumps({"hosts": configured}))
    try:
        os.link(temporary, path)  # atomic create-if-absent: the first process to get here decides
    except FileExistsError:
        pass
    finally:
        temporary.unlink(missing_ok=True)
    return _read_hosts(path)


def _read_hosts(path: Path) -> int:
    hosts = json.loads(path.read_text()).get("hosts")
    if not isinstance(hosts, int) or hosts < 1:
        raise ValueError(f"{path}: 'hosts' must be a positive integer")
    return hosts


def slot_for(name: str, hosts: int) -> int:
    """The host slot of the agent named `name` ("Class/id") among `hosts` hosts."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") % hosts
