"""What the chat mixins need of the agent they are mixed into: `ChatAgentContract`, a `Protocol`.

`AuthAgent`, `OwnedAgent` and `AsyncUserConfirmationResumer` are mixed into an `AIChatAgent` (see
`ThreadAgent`). Each declares this protocol as its base for the type checker only (at run time the base is
`object`), so what a mixin calls on the agent it is part of is a typed contract instead of a guess. (A
"host" is only ever the Ray actor agents live in, `runtime.host`.)
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from agents.messages import ToolCall
    from agents.thread_store import ThreadStore
    from runtime import AgentStorage
    from runtime.alarm_probes import AlarmProbe
    from runtime.schedules import Schedule
    from tools.base import Tool, ToolContext
    from tools.ciba.interrupts import AsyncAuthorizationInterrupt


class ChatAgentContract(Protocol):
    id: str
    name: str

    @property
    def storage(self) -> AgentStorage: ...

    @property
    def thread_store(self) -> ThreadStore: ...

    @property
    def tools(self) -> dict[str, Tool]: ...

    async def authenticate(self, token: str | None) -> dict[str, Any]: ...

    async def authorize(self, claims: dict[str, Any], action: str) -> None: ...

    async def check_access(self, token: str | None, action: str) -> dict[str, Any]: ...

    async def get_owner(self) -> str | None: ...

    async def on_authorization_interrupt(self, call: ToolCall, interrupt: AsyncAuthorizationInterrupt) -> None: ...

    async def resume_tool_call(self, payload: dict[str, Any]) -> str | None: ...

    async def schedule(self, when: float | int | datetime | str, callback: str, payload: Any = None) -> Schedule: ...

    async def cancel_schedule(self, schedule_id: str) -> bool: ...

    async def get_schedules(self, *, status: str | None = None) -> list[Schedule]: ...

    async def _schedule_recovery(self) -> None: ...

    async def _finish_call(self, call: ToolCall, result: str, *, interrupt: dict[str, Any] | None = None) -> None: ...

    async def _continue_if_resolved(self, tool_call_id: str) -> None: ...

    async def _tool_context(self, call: ToolCall) -> ToolContext: ...

    def keeps_retrying(self, schedule: Schedule) -> bool: ...

    async def alarm_probe(self, schedule: Schedule) -> AlarmProbe | None: ...

    async def before_delete(self) -> None: ...


if TYPE_CHECKING:
    MixinBase = ChatAgentContract
else:
    MixinBase = object
