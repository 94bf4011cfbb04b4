"""Agent classes by path: how the runtime re-creates an agent it knows only from a file or an index row."""

from __future__ import annotations

import importlib
from typing import Any

from runtime.agent import Agent


def import_agent_class(class_path: str) -> type[Agent]:
    """Import `module:QualName` (as recorded by `Agent.class_path()`)."""
    module_name, _, qualname = class_path.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    if not (isinstance(target, type) and issubclass(target, Agent)):
        raise TypeError(f"{class_path} is not an Agent subclass")
    return target
