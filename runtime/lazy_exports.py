"""Public names of a package, imported on first use (PEP 562), so that importing one small module of the
package (`agents.status` for `agentrt status`) does not import all of it (the model SDK, Ray Serve).

    __getattr__, __dir__ = lazy_exports(__name__, {"ThreadAgent": "agents.thread_agent", ...})

Type checkers read the same names from an `if TYPE_CHECKING:` block of real imports beside it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, where: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The package's `__getattr__` and `__dir__`: `where` maps each public name to the module defining it."""

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)  # found directly from now on
        return value

    def __dir__() -> list[str]:
        return sorted(where)

    return __getattr__, __dir__
