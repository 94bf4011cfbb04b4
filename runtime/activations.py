"""The agents live in one host process: activated on demand, hibernated when idle, bounded by a live cap.

This is the Durable Object lifecycle, inside one process and without Ray:

    created (first call or due alarm) -> live -> leaving (next due time reported, storage closed) -> gone

- A call for an agent that is not live activates it (a new instance: storage opened, migrations, `on_start`);
  with `create=False` an agent that was never created is `AgentNotFoundError` instead, and nothing is made.
- An agent is idle when no call is in flight or queued (an open event watcher is one), nothing timer-fired
  runs inside it, its next alarm is not about to fire, and it has been so for `idle_seconds` (or for its
  class's `idle_seconds_while_waiting` when all it does is wait for a later alarm). Idle agents leave;
  their file stays, and the scheduler wakes them for their next alarm.
- With `max_live` agents live, activating another first makes the least recently used idle one leave. A
  busy agent is never evicted: if all are busy the activation waits up to `activation_timeout`, then fails
  with `AgentCapacityError` before anything of the call ran.
- A call arriving while its agent is leaving waits for the leave to finish, then runs on a fresh
  activation: callers never see hibernation. Turn order per submitter carries over (the admission gate is
  kept per agent name across activations).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from runtime import metrics
from runtime.agent import Agent, DueReporter
from runtime.errors import AgentCapacityError, AgentNotFoundError, StaleActivationError
from runtime.ids import actor_name
from runtime.methods import check_method
from runtime.storage_choice import agent_exists
from runtime.turn_order import TURN_TICKET_KWARG, RememberedOrders

logger = logging.getLogger("runtime.activations")

LEAVE_RETRY_SECONDS = 5.0
"""An agent that could not leave (its next due time could not be reported) is not tried again before this."""
ALARM_SOON_SECONDS = 5.0
"""An agent waiting for an alarm that fires sooner than this stays live: leaving and waking cost more."""
FENCED_SECONDS = 60.0
"""How long a host refuses an agent another activation fenced off (see `AgentStorage.take_epoch`)."""

LifecycleHook = Callable[[Agent], Awaitable[None]]


class Activations:
    """The live agents of one storage root in this process, in least-recently-used order."""

    def __init__(
        self,
        storage_dir: Path,
        namespace: str,
        *,
        idle_seconds: float,
        max_live: int,
        activation_timeout: float,
        report_due: DueReporter | None = None,
        on_activate: LifecycleHook | None = None,
        on_leave: LifecycleHook | None = None,
        admit: Callable[[str], None] | None = None,
    ) -> None:
        self.storage_dir = Path(storage_dir)
        self.namespace = namespace
        self.idle_seconds = idle_seconds
        self.max_live = max_live
        self.activation_timeout = activation_timeout
        self._report_due = report_due
        self._on_activate = on_activate
        self._on_leave = on_leave
        self._admit = admit
        """Raises if this process may not activate the named agent now (its host does not serve it)."""
        self._live: OrderedDict[str, Agent] = OrderedDict()
        self._busy: dict[str, int] = {}
        self._last_used: dict[str, float] = {}
        self._leaving: dict[str, asyncio.Future[None]] = {}
        self._not_before: dict[str, float] = {}
        self._fenced_until: dict[str, float] = {}
        """Agents fenced off here (a newer activation elsewhere has their file): refused until then."""
        self._orders = RememberedOrders()
        self._room_waiters: set[asyncio.Future[None]] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.counters = {
            "activations": 0,
            "hibernations": 0,
            "deletions": 0,
            "evictions": 0,
            "capacity_refusals": 0,
            "fenced": 0,
            "peak_occupied": 0,
        }

    # -- what is live ----------------------------------------------------------------------------------
    @property
    def live_count(self) -> int:
        return len(self._live)

    @property
    def occupied(self) -> int:
        """Live agents plus those still leaving (they hold their resources until they are closed)."""
        return len(self._live) + len(self._leaving)

    def is_empty(self) -> bool:
        return not self._live and not self._leaving

    def live_names(self) -> list[str]:
        """Names of the live agents, least recently used first."""
        return list(self._live)

    def leaving_names(self) -> list[str]:
        """Names of the agents still leaving: out of the live set, their next due time not yet recorded (a
        leave that cannot record it makes the agent live again)."""
        return list(self._leaving)

    def busy_names(self) -> list[str]:
        return [name for name, count in self._busy.items() if count > 0]

    # -- calls -----------------------------------------------------------------------------------------
    async def call(
        self,
        cls: type[Agent],
        agent_id: str,
        method: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        create: bool = True,
    ) -> Any:
        """Run `method` on the live instance of `(cls, agent_id)`, activating it first if needed.

        The call waits until the activation's start-up finished, whatever the method (decorated or not).
        A turn, once started, runs to its end even if its caller is cancelled (a client that disconnects,
        Ray cancelling a request): half a turn would leave its work half done, for example a schedule
        cancelled and its replacement never made. Reads are cancelled with their caller.
        """
        check_method(cls, method)
        try:
            agent = await self.acquire(cls, agent_id, create=create)
        except (AgentNotFoundError, AgentCapacityError):
            self._skip_ticket(cls, agent_id, kwargs)
            raise
        handed_over = False
        try:
            try:
                await agent._ensure_started()
            except Exception:
                self._discard(agent)  # a failed start-up is not kept: the next call tries afresh
                raise
            outcome = getattr(agent, method)(*args, **(kwargs or {}))
            if not inspect.isawaitable(outcome):
                return outcome
            if not getattr(getattr(cls, method, None), "__agent_turn__", False):
                return await outcome
            task = asyncio.ensure_future(outcome)
            try:
                return await asyncio.shield(task)
            except asyncio.CancelledError:
                if not task.done():  # the turn goes on; the agent stays busy (never evicted) until it ends
                    handed_over = True
                    task.add_done_callback(lambda done: self._turn_finished(agent, done))
                raise
        finally:
            if not handed_over:
                self.release(agent)

    def _turn_finished(self, agent: Agent, task: asyncio.Future[Any]) -> None:
        self.release(agent)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("%s: a turn whose caller had gone failed: %s", agent.name, task.exception())

    async def acquire(self, cls: type[Agent], agent_id: str, *, create: bool = True) -> Agent:
        """The live instance, counted busy until `release`; activated (making room first) if absent."""
        name = actor_name(cls.agent_class_name(), agent_id)
        deadline: float | None = None
        known_to_exist = create
        while True:
            agent = self._live.get(name)
            if agent is not None:
                if type(agent) is not cls:
                    raise TypeError(f"{name} is live as {type(agent).__qualname__}, not {cls.__qualname__}")
                self._enter(name)
                return agent
            leaving = self._leaving.get(name)
            if leaving is not None:
                await asyncio.shield(leaving)
                continue
            if not known_to_exist:
                if not await agent_exists(cls.agent_class_name(), agent_id, self.storage_dir):
                    raise AgentNotFoundError(name)
                known_to_exist = True
                continue  # another call may have activated it meanwhile (a database query is a real wait)
            if self._fenced_until.get(name, 0.0) > time.monotonic():
                raise StaleActivationError(name, 0, 0)  # not here: the newer activation is elsewhere
            if self.occupied >= self.max_live:
                if deadline is None:
                    deadline = time.monotonic() + self.activation_timeout
                await self._make_room(deadline)
                continue
            if self._admit is not None:
                self._admit(name)  # checked with no await before the activation: nothing changes it between
            return self._activate(cls, agent_id, name)

    def _skip_ticket(self, cls: type[Agent], agent_id: str, kwargs: dict[str, Any] | None) -> None:
        """A refused turn keeps its submitter's order: the submitter's next call must not wait for it."""
        ticket = (kwargs or {}).get(TURN_TICKET_KWARG)
        if ticket is None:
            return
        self._orders.of(actor_name(cls.agent_class_name(), agent_id)).skip(*ticket)

    def release(self, agent: Agent) -> None:
        name = agent.name
        count = self._busy.get(name, 0) - 1
        if count > 0:
            self._busy[name] = count
        else:
            self._busy.pop(name, None)
            self._wake_room_waiters()
            if agent._deleting and self._live.get(name) is agent:
                self._begin_leave(name)  # nothing runs in it any more: erase it now (see `_leave`)
        self._last_used[name] = time.monotonic()

    def _enter(self, name: str) -> None:
        self._busy[name] = self._busy.get(name, 0) + 1
        self._last_used[name] = time.monotonic()
        self._live.move_to_end(name)

    def _activate(self, cls: type[Agent], agent_id: str, name: str) -> Agent:
        # Everything below is synchronous: the instance's start-up task first runs at the caller's next
        # await, when the reporter and the kept admission gate are already in place.
        agent = cls(agent_id, self.storage_dir, self.namespace)
        agent._report_due = self._report_due
        agent._evict = lambda: self._evict_stale(agent)
        agent._turn_order = self._orders.of(name)
        self._live[name] = agent
        self._enter(name)
        self.counters["activations"] += 1
        metrics.ACTIVATIONS.inc(agent_class=cls.agent_class_name())
        self.counters["peak_occupied"] = max(self.counters["peak_occupied"], self.occupied)
        if self._on_activate is not None:
            self._spawn(self._on_activate(agent), f"{name}: recording the activation")
        return agent

    def _evict_stale(self, agent: Agent) -> None:
        """Drop an instance fenced off by a newer activation (elsewhere) and keep it from coming back here
        for a while: re-activating it would take the file back from the legitimate one."""
        name = agent.name
        if self._live.get(name) is agent:
            del self._live[name]
            self._fenced_until[name] = time.monotonic() + FENCED_SECONDS
            self.counters["fenced"] += 1
            self._spawn(agent.close(), f"{name}: closing a fenced-off activation")
            if self._on_leave is not None:
                self._spawn(self._on_leave(agent), f"{name}: recording the leave")
            self._wake_room_waiters()

    def _discard(self, agent: Agent) -> None:
        """Drop an instance whose start-up failed (if it is still the live one)."""
        if self._live.get(agent.name) is agent:
            del self._live[agent.name]
            self._spawn(agent.close(), f"{agent.name}: closing after a failed start")
            if self._on_leave is not None:
                self._spawn(self._on_leave(agent), f"{agent.name}: recording the leave")
            self._wake_room_waiters()

    # -- making room -----------------------------------------------------------------------------------
    async def _make_room(self, deadline: float) -> None:
        """Make one idle agent leave (least recently used first), or wait for one to become idle."""
        victim = self._least_recently_used_idle()
        if victim is not None:
            self.counters["evictions"] += 1
            await asyncio.shield(self._begin_leave(victim))
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            self.counters["capacity_refusals"] += 1
            raise AgentCapacityError(
                f"all {self.max_live} live agents of this host are busy; retry shortly", retry_after=1.0
            )
        waiter = asyncio.get_running_loop().create_future()
        self._room_waiters.add(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, remaining)
        finally:
            self._room_waiters.discard(waiter)

    def _wake_room_waiters(self) -> None:
        for waiter in self._room_waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _least_recently_used_idle(self) -> str | None:
        now = time.monotonic()
        for name, agent in self._live.items():
            if self._can_leave(name, agent, now):
                return name
        return None

    def _can_leave(self, name: str, agent: Agent, now: float) -> bool:
        return (
            self._busy.get(name, 0) == 0
            and agent._is_quiet()
            and agent._started is not None
            and agent._started.done()
            and self._not_before.get(name, 0.0) <= now
        )

    # -- hibernation -----------------------------------------------------------------------------------
    def hibernate_idle(self) -> int:
        """Start the leave of every agent idle for `idle_seconds` (the host's reaper calls this)."""
        now, wall = time.monotonic(), time.time()
        started = 0
        for name, agent in list(self._live.items()):
            idle = self._idle_time(agent, wall)
            if idle is None or now - self._last_used.get(name, now) < idle or not self._can_leave(name, agent, now):
                continue
            self._begin_leave(name)
            started += 1
        return started

    def _idle_time(self, agent: Agent, wall: float) -> float | None:
        """How long `agent` stays live with nothing to do; None: it stays (hibernation is off, or its next
        alarm fires within the idle time: staying is cheaper than leaving and waking). A class that sets
        `idle_seconds_while_waiting` sleeps after that long when its next alarm is further away than the
        idle time or `ALARM_SOON_SECONDS`, whichever is shorter (a pending approval's next check). An agent
        being deleted leaves as soon as it is quiet."""
        if agent._deleting:  # deleted by its own timer-fired work (no call ends to erase it): erase it now
            return 0.0
        idle = self.idle_seconds if agent.idle_seconds is None else agent.idle_seconds
        due, waiting = agent._next_due_at, agent.idle_seconds_while_waiting
        if idle <= 0 or (due is not None and due - wall < (idle if waiting is None else min(idle, ALARM_SOON_SECONDS))):
            return None
        return idle if due is None or waiting is None else min(idle, waiting)

    async def let_go(self, leaves: Callable[[str], bool], timeout: float) -> int:
        """Make every live agent whose name `leaves` hibernate as soon as it can (its calls in flight and
        timer-fired work done) and wait until they have left, at most `timeout` seconds: its host no longer
        serves it, and the new one must not activate it before. Returns how many it made leave."""
        deadline, count = time.monotonic() + timeout, 0
        while True:
            now = time.monotonic()
            staying = [name for name in self._live if leaves(name)]
            for name in staying:
                if self._can_leave(name, self._live[name], now):
                    self._begin_leave(name)
                    count += 1
            going = [left for name, left in self._leaving.items() if leaves(name)]
            if not staying and not going:
                return count
            if now > deadline:
                logger.warning("%d agents did not leave within %.0f s: %s", len(staying), timeout, staying[:5])
                return count
            await (asyncio.wait(going, timeout=0.02) if going else asyncio.sleep(0.02))

    def _begin_leave(self, name: str) -> asyncio.Future[None]:
        """Take `name` out of the live set now (no call can reach it any more) and finish leaving in a task
        of its own, so a cancelled caller never leaves it half-closed. Returns when-left."""
        agent = self._live.pop(name)
        agent._stop_timer()
        left = asyncio.get_running_loop().create_future()
        self._leaving[name] = left
        self._spawn(self._leave(name, agent, left), f"{name}: hibernating")
        return left

    async def _leave(self, name: str, agent: Agent, left: asyncio.Future[None]) -> None:
        stays = False
        try:
            if agent._deleting:
                await agent._erase()
                self.counters["deletions"] += 1
                if self._on_leave is not None:
                    await self._on_leave(agent)
            elif await agent._prepare_to_leave():
                await agent.close()
                self.counters["hibernations"] += 1
                metrics.HIBERNATIONS.inc(agent_class=agent.agent_class_name())
                if self._on_leave is not None:
                    await self._on_leave(agent)
            else:
                stays = True
                logger.warning("%s stays live: its next due time could not be recorded", name)
        except Exception:
            logger.exception("%s: error while hibernating (the instance is dropped)", name)
        finally:
            del self._leaving[name]
            self._last_used.pop(name, None)
            if stays:
                self._live[name] = agent
                self._last_used[name] = time.monotonic()
                self._not_before[name] = time.monotonic() + LEAVE_RETRY_SECONDS
            else:
                self._not_before.pop(name, None)
            left.set_result(None)
            self._wake_room_waiters()

    def _spawn(self, awaitable: Awaitable[Any], what: str) -> None:
        async def run() -> None:
            try:
                await awaitable
            except Exception:
                logger.exception("%s failed", what)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def stats(self) -> dict[str, Any]:
        live, leaving, busy = len(self._live), len(self._leaving), len(self.busy_names())
        return {"live": live, "leaving": leaving, "busy": busy, "max_live": self.max_live, **self.counters}
