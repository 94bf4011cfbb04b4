"""The offline model, by its old address: the code lives in the `devservers.offline` package.

`agentrt.stack`, the tests and the benchmarks import `OfflineModelServer`, `MODEL_NAME` and `plan_reply`
from here; this module only re-exports, so those imports keep working. See `devservers.offline` for what
the model answers.
"""

from __future__ import annotations

from devservers.offline.completions import MODEL_NAME, OWNER
from devservers.offline.replies import (
    BUY_TOOL,
    PRICE_TOOL,
    WATCH_TOOL,
    WATCHLIST_TOOL,
    OfflineReply,
    OfflineToolCall,
    plan_reply,
)
from devservers.offline.server import OfflineModelServer, create_offline_model_app

__all__ = [
    "BUY_TOOL",
    "MODEL_NAME",
    "OWNER",
    "PRICE_TOOL",
    "WATCHLIST_TOOL",
    "WATCH_TOOL",
    "OfflineModelServer",
    "OfflineReply",
    "OfflineToolCall",
    "create_offline_model_app",
    "plan_reply",
]
