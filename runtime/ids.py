"""Agent identity: id validation and the cluster-wide actor name.

Ids are validated before any actor or file is made, because an id becomes both a Ray actor name and a
file name: a permissive id would let one thread's caller address another's storage.
"""

from __future__ import annotations

import re

AGENT_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


class InvalidAgentIdError(ValueError):
    """The id does not match `^[A-Za-z0-9_.-]{1,128}$` (or is `.`/`..`)."""


def validate_agent_id(agent_id: object) -> str:
    """Return `agent_id` if it is a valid agent id, else raise `InvalidAgentIdError` saying why."""
    if not isinstance(agent_id, str):
        raise InvalidAgentIdError(f"agent id must be a string, got {type(agent_id).__name__}")
    if not AGENT_ID_PATTERN.fullmatch(agent_id) or agent_id in {".", ".."}:
        shown = agent_id if len(agent_id) <= 40 else agent_id[:40] + "..."
        raise InvalidAgentIdError(
            f"invalid agent id {shown!r}: use 1-128 characters of letters, digits, '_', '.' and '-'"
        )
    return agent_id


def actor_name(class_name: str, agent_id: str) -> str:
    """The named-actor name of an agent: `"{Class}/{id}"`."""
    return f"{class_name}/{validate_agent_id(agent_id)}"
