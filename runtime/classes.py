"""Agent classes by path: how the runtime re-creates an agent it knows only from a file or an index row.

A class defined in a script (`__main__`) or inside a function cannot be imported by path in another
process; such a class travels by value instead (Ray pickles it): handles and `runtime.init()` register it
with the alarm scheduler, which then wakes its agents with it (`is_script_class`).
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from runtime.agent import Agent

logger = logging.getLogger("runtime")


def import_agent_class(class_path: str) -> type[Agent]:
    """Import `module:QualName` (as recorded by `Agent.class_path()`)."""
    module_name, _, qualname = class_path.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    if not (isinstance(target, type) and issubclass(target, Agent)):
        raise TypeError(f"{class_path} is not an Agent subclass")
    return target


def is_script_class(cls: type) -> bool:
    """Defined where no other process can import it from: a script run as `__main__`, or a function."""
    return cls.__module__ == "__main__" or "<locals>" in cls.__qualname__


def script_agent_classes() -> list[type[Agent]]:
    """Every `Agent` subclass this process defined in a script (or a function), for `runtime.init()` to
    register: after a full restart, the script running again is what lets the alarms of its agents fire."""
    found: list[type[Agent]] = []
    pending = list(Agent.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if is_script_class(cls) and cls not in found:
            found.append(cls)
    return found


def import_modules(modules: list[str]) -> None:
    """Import the agent code of `modules` ahead of use (`runtime.registry.start_runtime`'s `preload`); a
    module that fails is logged: its agents load it, and report the error, when they are called."""
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:
            logger.warning("preloading %s failed (%s: %s)", module, type(exc).__name__, exc)
