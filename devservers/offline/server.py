"""`create_offline_model_app` (the offline model as an ASGI app) and `OfflineModelServer`, which runs it.

The app is assembled here and only here: the routes of `devservers.offline.routes`, OpenAI-style answers
for every error, and the state (`stats`, `chunk_delay`) the handlers read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Route

from devservers.offline import routes
from devservers.offline.completions import MODEL_NAME
from devservers.offline.errors import http_error
from devservers.server_thread import ServerThread

__all__ = ["OfflineModelServer", "create_offline_model_app"]


def create_offline_model_app(*, chunk_delay: float = 0.0, context_chars: int | None = None) -> Starlette:
    """The offline model as an ASGI app. `chunk_delay` (seconds) paces streamed chunks for demos;
    `context_chars`: refuse a request whose messages and tools take more characters (`context_length_exceeded`,
    as a real model past its context window), None: no limit."""
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", routes.chat_completions, methods=["POST"]),
            Route("/v1/models", routes.list_models, methods=["GET"]),
            Route("/v1/models/{model:path}", routes.get_model, methods=["GET"]),
            Route("/v1/stats", routes.get_stats, methods=["GET"]),
            Route("/healthz", routes.healthz, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: http_error},
    )
    app.state.stats = routes.new_stats()
    app.state.chunk_delay = chunk_delay
    app.state.context_chars = context_chars
    return app


class OfflineModelServer(ServerThread):
    """The offline model on 127.0.0.1 in a background thread; point `openai` at `base_url`."""

    model = MODEL_NAME

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        chunk_delay: float = 0.0,
        context_chars: int | None = None,
    ) -> None:
        app = create_offline_model_app(chunk_delay=chunk_delay, context_chars=context_chars)
        super().__init__(app, host=host, port=port)

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @property
    def stats(self) -> Mapping[str, Any]:
        return self.app.state.stats

    def start(self, timeout: float = 15.0) -> OfflineModelServer:
        super().start(timeout)
        return self

    def __enter__(self) -> OfflineModelServer:
        return self.start()
