"""Chat threads as durable agents: the product's `Chat`, and `ThreadAgent` to build an agent of your own.

    from agents import ThreadAgent
    from tools import Tool, ToolError, get_ciba_credentials

- `ThreadAgent`: a chat thread owned by its creator (every call carries the caller's JWT), whose tools
  wrapped with `self.with_async_user_confirmation(...)` wait for the owner's approval on their device;
  override `build_tools()`. `Chat` is one, with the demo's stock tools.
- Its parts, for a different composition: `AIChatAgent` (messages and the model's tool loop), `AuthAgent`
  (verifies the caller's JWT), `OwnedAgent` (only the owner may use the thread),
  `AsyncUserConfirmationResumer` (durable alarms that resume an interrupted tool).
- The typed errors a caller of a thread handles (they cross Ray unchanged; the HTTP API maps each to its
  status): `ChatError` and its kinds.
- The records a thread gives back: `ChatMessage`, `ToolCall`, `PendingApproval`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from agents.ai_chat_agent import AIChatAgent
    from agents.auth_agent import AuthAgent
    from agents.chat import Chat
    from agents.errors import (
        AuthUnavailableError,
        ChatError,
        InvalidMessageError,
        MessageIdReusedError,
        NotOwnerError,
        ThreadQuotaExceededError,
        ToolCallNotAwaitingError,
        UnauthenticatedError,
        UnknownToolCallError,
    )
    from agents.messages import ChatMessage, PendingApproval, ToolCall
    from agents.owned_agent import OwnedAgent
    from agents.resumer import AsyncUserConfirmationResumer
    from agents.thread_agent import ThreadAgent

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "AIChatAgent": "agents.ai_chat_agent",
        "AsyncUserConfirmationResumer": "agents.resumer",
        "AuthAgent": "agents.auth_agent",
        "AuthUnavailableError": "agents.errors",
        "Chat": "agents.chat",
        "ChatError": "agents.errors",
        "ChatMessage": "agents.messages",
        "InvalidMessageError": "agents.errors",
        "MessageIdReusedError": "agents.errors",
        "NotOwnerError": "agents.errors",
        "OwnedAgent": "agents.owned_agent",
        "PendingApproval": "agents.messages",
        "ThreadAgent": "agents.thread_agent",
        "ThreadQuotaExceededError": "agents.errors",
        "ToolCall": "agents.messages",
        "ToolCallNotAwaitingError": "agents.errors",
        "UnauthenticatedError": "agents.errors",
        "UnknownToolCallError": "agents.errors",
    },
)

__all__ = [
    "AIChatAgent",
    "AsyncUserConfirmationResumer",
    "AuthAgent",
    "AuthUnavailableError",
    "Chat",
    "ChatError",
    "ChatMessage",
    "InvalidMessageError",
    "MessageIdReusedError",
    "NotOwnerError",
    "OwnedAgent",
    "PendingApproval",
    "ThreadAgent",
    "ThreadQuotaExceededError",
    "ToolCall",
    "ToolCallNotAwaitingError",
    "UnauthenticatedError",
    "UnknownToolCallError",
]
