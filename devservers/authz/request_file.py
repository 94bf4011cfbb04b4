"""Keeping the dev authorization server's CIBA requests in a JSON file, so that a restart forgets none.

A request approved on the phone while the stack restarts must still be there, spent or not, when the
agent polls again. The file holds secrets (`auth_req_id`s), so it is written atomically and mode 0600;
an unreadable file is logged and ignored rather than stopping the server.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from devservers.authz.ciba_request import CIBARequest

__all__ = ["read_requests", "write_requests"]

logger = logging.getLogger("devservers.authz_server")  # the name the server has always logged under


def read_requests(path: Path | None) -> list[CIBARequest]:
    """The requests kept at `path` (their poll clocks reset); none if there is no file or it is unreadable."""
    if path is None or not path.exists():
        return []
    try:
        rows = json.loads(path.read_text())
        return [CIBARequest(**{**row, "last_poll": None}) for row in rows]
    except (OSError, ValueError, TypeError) as exc:
        logger.warning("could not read the kept CIBA requests (%s); starting without them", type(exc).__name__)
        return []


def write_requests(path: Path, requests: Iterable[CIBARequest]) -> None:
    """Replace the file at `path` with `requests` (atomically, readable by this user only)."""
    rows = [dataclasses.asdict(r) for r in requests]
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(rows, out)
    os.replace(temporary, path)
