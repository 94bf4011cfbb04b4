"""The process's storage root: the folder (and Ray namespace) a process's agents live in.

`runtime.init(storage_dir=...)` sets it for a driver, and a host sets it to the root it serves, so that
`get_agent(Cls, id)` without `storage_dir=` reaches the same root everywhere in that process: a script's
agents, their files and their alarms never split between the folder it chose and the default one.
"""

from __future__ import annotations

from pathlib import Path

from runtime.settings import runtime_settings

_process_root: tuple[Path, str] | None = None
"""The storage root and namespace `runtime.init` was given (or this host process serves): what every handle
of this process uses unless told otherwise. One root per process, so that a script's agents, their files
and their alarms never split between the folder it chose and the default one."""


def use_storage_root(storage_dir: str | Path | None, namespace: str | None) -> tuple[Path, str]:
    """Make `storage_dir` (default: `AGENT_STORAGE_DIR`, else `./.data`) and `namespace` this process's
    storage root and namespace; returns them resolved."""
    global _process_root
    _process_root = None
    _process_root = (resolve_storage_dir(storage_dir), resolve_namespace(namespace))
    return _process_root


def resolve_storage_dir(storage_dir: str | Path | None) -> Path:
    """`storage_dir` if given, else the process's storage root, else the settings' (`AGENT_STORAGE_DIR`)."""
    if storage_dir:
        return Path(storage_dir).resolve()
    if _process_root is not None:
        return _process_root[0]
    return Path(runtime_settings().storage_dir).resolve()


def resolve_namespace(namespace: str | None) -> str:
    """`namespace` if given, else the process's, else the settings' (`AGENT_NAMESPACE`)."""
    if namespace:
        return namespace
    if _process_root is not None:
        return _process_root[1]
    return runtime_settings().namespace
