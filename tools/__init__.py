"""Tools an agent offers its model, and the CIBA wrapper that makes one wait for the user's approval.

Everything an agent author needs, from one import (`from tools import Tool, ToolError, get_ciba_credentials`):

- `Tool` / `tool`: a named (async) function whose parameters come from its type hints or a pydantic model;
- `ToolError` (the model reads its message), `TransientToolError` (run again later),
  `OutcomeUnknownError` (the side effect may have happened: never report it failed);
  `ToolContext` / `current_tool_context()`: which tool call, thread and owner this run is for;
- `get_ciba_credentials()` -> `CIBACredentials` | None: the approved token of the call now running;
- `fit_binding_message(text)`: any text made into a binding message the provider accepts;
  `validate_binding_message(text)` raises `InvalidBindingMessage` for one it would refuse;
- the interrupts a wrapped tool raises while it waits (`AsyncAuthorizationInterrupt` and its kinds), for
  an `on_unauthorized` callback that words the outcome itself.

`ThreadAgent.with_async_user_confirmation(tool, ...)` (in `agents`) wraps a tool with the deployment's CIBA
client and the thread's credential store; `with_async_user_confirmation` here is the same wrapper with
every part given explicitly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from tools.base import (
        OutcomeUnknownError,
        Tool,
        ToolContext,
        ToolError,
        TransientToolError,
        current_tool_context,
        tool,
    )
    from tools.ciba.confirmation import AsyncUserConfirmationTool, with_async_user_confirmation
    from tools.ciba.credentials_context import (
        CIBACredentials,
        get_async_authorization_credentials,
        get_ciba_credentials,
    )
    from tools.ciba.interrupts import (
        AccessDeniedInterrupt,
        AsyncAuthorizationInterrupt,
        AuthorizationPendingInterrupt,
        AuthorizationPollingInterrupt,
        AuthorizationRequestExpiredInterrupt,
        AuthorizationRequestFailedInterrupt,
        InvalidGrantInterrupt,
        UserDoesNotHavePushNotificationsInterrupt,
    )
    from tools.ciba.types import InvalidBindingMessage, fit_binding_message, validate_binding_message

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "AccessDeniedInterrupt": "tools.ciba.interrupts",
        "AsyncAuthorizationInterrupt": "tools.ciba.interrupts",
        "AsyncUserConfirmationTool": "tools.ciba.confirmation",
        "AuthorizationPendingInterrupt": "tools.ciba.interrupts",
        "AuthorizationPollingInterrupt": "tools.ciba.interrupts",
        "AuthorizationRequestExpiredInterrupt": "tools.ciba.interrupts",
        "AuthorizationRequestFailedInterrupt": "tools.ciba.interrupts",
        "CIBACredentials": "tools.ciba.credentials_context",
        "InvalidBindingMessage": "tools.ciba.types",
        "InvalidGrantInterrupt": "tools.ciba.interrupts",
        "OutcomeUnknownError": "tools.base",
        "Tool": "tools.base",
        "ToolContext": "tools.base",
        "ToolError": "tools.base",
        "TransientToolError": "tools.base",
        "UserDoesNotHavePushNotificationsInterrupt": "tools.ciba.interrupts",
        "current_tool_context": "tools.base",
        "fit_binding_message": "tools.ciba.types",
        "get_async_authorization_credentials": "tools.ciba.credentials_context",
        "get_ciba_credentials": "tools.ciba.credentials_context",
        "tool": "tools.base",
        "validate_binding_message": "tools.ciba.types",
        "with_async_user_confirmation": "tools.ciba.confirmation",
    },
)

__all__ = [
    "AccessDeniedInterrupt",
    "AsyncAuthorizationInterrupt",
    "AsyncUserConfirmationTool",
    "AuthorizationPendingInterrupt",
    "AuthorizationPollingInterrupt",
    "AuthorizationRequestExpiredInterrupt",
    "AuthorizationRequestFailedInterrupt",
    "CIBACredentials",
    "InvalidBindingMessage",
    "InvalidGrantInterrupt",
    "OutcomeUnknownError",
    "Tool",
    "ToolContext",
    "ToolError",
    "TransientToolError",
    "UserDoesNotHavePushNotificationsInterrupt",
    "current_tool_context",
    "fit_binding_message",
    "get_async_authorization_credentials",
    "get_ciba_credentials",
    "tool",
    "validate_binding_message",
    "with_async_user_confirmation",
]
