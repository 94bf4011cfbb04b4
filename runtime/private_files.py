"""Files only their owner may read: the agents' databases, credential stores and the runtime's own files.

An agent's file holds its conversation and a credential store holds approved tokens (encrypted, but still
nobody else's business), so on a machine shared with other users, folders are made 0700 and files 0600
when this code creates them, and an older file found readable by others is narrowed on open. SQLite
gives its `-wal` and `-shm` files the permissions of the database file.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def private_dir(path: str | os.PathLike[str]) -> Path:
    """`path` and its missing parents, created 0700 (the umask cannot widen that)."""
    folder = Path(path)
    missing = []
    while not folder.exists():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    for each in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process made it meanwhile
            each.mkdir(mode=PRIVATE_DIR_MODE)
    return Path(path)


def private_file(path: str | os.PathLike[str]) -> Path:
    """`path` created empty with mode 0600 if absent (its folders 0700), or narrowed to 0600 if others could
    read it. Call it before SQLite opens the file, so the database never exists with wider permissions."""
    file = Path(path)
    private_dir(file.parent)
    try:
        fd = os.open(file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, PRIVATE_FILE_MODE)
        os.close(fd)
    except FileExistsError:
        with contextlib.suppress(OSError):  # not ours to change (another user's file): leave it
            if file.stat().st_mode & 0o077:
                file.chmod(PRIVATE_FILE_MODE)
    return file


__all__ = ["PRIVATE_DIR_MODE", "PRIVATE_FILE_MODE", "private_dir", "private_file"]
