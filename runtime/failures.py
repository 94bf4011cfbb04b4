"""The failure journal of a storage root: what went wrong inside its agents, where the people running them
can read it.

An exception inside an agent (a turn or a schedule callback that raised, a tool that crashed) is answered
to its caller briefly ("Error: list_expenses failed (KeyError)"), and its traceback lands in the log file
of whichever Ray worker hosted the agent: hard to find. So every such failure is also appended, as one
JSON line, to `<root>/_runtime/failures.jsonl`: when, which agent, during what, the exception's type and
its message. `agentrt serve` prints each new line in its terminal, and `agentrt logs [AGENT]` shows the
recent ones from the file (no Ray needed).

A failure's message is scrubbed before it is written: bearer tokens, JWTs and `secret=`/`token=`-style
values are replaced by `***`, and it is cut to `MAX_MESSAGE_CHARS`. Errors a turn raises to answer its caller's
mistake (any exception with a 4xx `status_code`: a bad token, a stranger's thread) are not failures and are
not journaled (`is_callers_mistake`). The file is private (0600), grows to `MAX_JOURNAL_BYTES` and then
rotates once (`.1`). Appends are single `write` calls under an advisory lock, so hosts of one machine never
interleave lines. (A root shared by several machines belongs in PostgreSQL: `AGENT_STORAGE_URL`.)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from runtime.placement import runtime_dir
from runtime.private_files import private_file

logger = logging.getLogger("runtime.failures")

MAX_MESSAGE_CHARS = 500
MAX_JOURNAL_BYTES = 1 << 20
JOURNAL_NAME = "failures.jsonl"

_SECRETS = [
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 ***"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), "sk-***"),  # an OpenAI-style API key
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*\.?[A-Za-z0-9_-]*"), "***"),  # a JWT or JWS
    (
        re.compile(
            r"(?i)\b([\w-]*(?:secret|token|password|passwd|api[_-]?key|authorization|assertion)[\w-]*)"
            r"(\"?\s*[=:]\s*\"?)([^\s\"',;&}]+)"
        ),
        r"\1\2***",
    ),
]


def scrub(text: str) -> str:
    """`text` without anything that looks like a credential, cut to `MAX_MESSAGE_CHARS`."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 1] + "\u2026"


@dataclass(frozen=True)
class Failure:
    """One journaled failure: `agent` is `Class/id`, `during` what it was doing (`tool:NAME`,
    `schedule:CALLBACK`, a method's name, `model`)."""

    at: float
    agent: str
    during: str
    error: str
    message: str

    def line(self) -> str:
        """How a terminal shows it."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.at))
        return f"{stamp} {self.agent} {self.during}: {self.error}" + (f": {self.message}" if self.message else "")


def journal_path(storage_dir: str | Path) -> Path:
    return runtime_dir(Path(storage_dir)) / JOURNAL_NAME


def is_callers_mistake(error: BaseException) -> bool:
    """An error that answers the caller (a 4xx `status_code`), not a failure of the agent."""
    status = getattr(error, "status_code", None)
    return isinstance(status, int) and 400 <= status < 500


def record_failure(storage_dir: str | Path, agent: str, during: str, error: BaseException) -> Failure:
    """Append `error` to the root's journal (see the module docstring). Never raises: a journal that cannot
    be written is logged, and the agent goes on."""
    failure = Failure(time.time(), agent, during, type(error).__name__, scrub(str(error)))
    try:
        _append(journal_path(storage_dir), json.dumps(asdict(failure)) + "\n")
    except OSError as exc:
        logger.warning("cannot write the failure journal of %s: %s", storage_dir, exc)
    return failure


def _append(path: Path, line: str) -> None:
    private_file(path)
    with open(path, "a", encoding="utf-8") as journal:
        fcntl.flock(journal, fcntl.LOCK_EX)
        try:
            if 0 < journal.tell() and journal.tell() + len(line) > MAX_JOURNAL_BYTES:
                os.replace(path, path.with_suffix(".1.jsonl"))  # the full file becomes the old one
                with open(private_file(path), "a", encoding="utf-8") as fresh:
                    fresh.write(line)
            else:
                journal.write(line)
        finally:
            fcntl.flock(journal, fcntl.LOCK_UN)


def _parse(lines: list[str]) -> list[Failure]:
    found = []
    for text in lines:
        with contextlib.suppress(ValueError, TypeError):
            found.append(Failure(**json.loads(text)))
    return found


def read_failures(storage_dir: str | Path, *, agent: str | None = None, limit: int = 50) -> list[Failure]:
    """The root's most recent failures (of `agent` only, `Class/id` or a bare id, if given), oldest first."""
    path = journal_path(storage_dir)
    lines: list[str] = []
    for each in (path.with_suffix(".1.jsonl"), path):
        with contextlib.suppress(FileNotFoundError):
            lines += each.read_text(encoding="utf-8").splitlines()
    failures = _parse(lines)
    if agent:
        failures = [f for f in failures if f.agent == agent or f.agent.split("/", 1)[-1] == agent]
    return failures[-limit:] if limit > 0 else failures


class FailureFollower:
    """Reads the failures appended to a root's journal since it was made (like `tail -f`), rotation
    included; `new()` never blocks."""

    def __init__(self, storage_dir: str | Path) -> None:
        self.path = journal_path(storage_dir)
        self._inode, self._offset = self._where()

    def _where(self) -> tuple[int | None, int]:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None, 0
        return stat.st_ino, stat.st_size

    def new(self) -> list[Failure]:
        inode, size = self._where()
        if inode is None:
            return []
        if inode != self._inode or size < self._offset:  # rotated (or replaced): the new file from its start
            self._inode, self._offset = inode, 0
        if size == self._offset:
            return []
        with open(self.path, "rb") as journal:
            journal.seek(self._offset)
            chunk = journal.read()
        end = chunk.rfind(b"\n") + 1  # what follows is a line still being written: read on the next call
        self._offset += end
        return _parse(chunk[:end].decode("utf-8", "replace").splitlines())


__all__ = [
    "Failure",
    "FailureFollower",
    "journal_path",
    "read_failures",
    "record_failure",
    "scrub",
]
