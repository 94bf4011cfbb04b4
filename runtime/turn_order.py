"""Keep one submitter's turns in the order it sent them.

Ray starts an async actor's calls in roughly, not exactly, the order a caller submitted them. Handles
therefore stamp each turn call with `(submitter id, sequence number)`, and the agent admits a call to its
turn queue only after the submitter's previous call was admitted. A gap (a call lost with a crashed
actor, a handle older than this actor instance, or a submitter this instance forgot) is waited on briefly,
then skipped, so nothing hangs: an old handle's first call to a restarted agent may wait
`GAP_TIMEOUT_SECONDS` once.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

TURN_TICKET_KWARG = "_turn_ticket"
GAP_TIMEOUT_SECONDS = 0.25
MAX_SUBMITTERS = 10_000
MAX_REMEMBERED_ORDERS = 10_000


class SubmissionOrder:
    """Admission gate: per submitter, sequence n enters after n-1 (or after a short wait for it)."""

    def __init__(self) -> None:
        self._next: OrderedDict[str, int] = OrderedDict()
        self._waiting: dict[tuple[str, int], asyncio.Future[None]] = {}

    async def admit(self, submitter: str, seq: int) -> None:
        expected = self._next.get(submitter, 0)  # a handle numbers its calls from 0
        if seq > expected:
            waiter = asyncio.get_running_loop().create_future()
            self._waiting[(submitter, seq)] = waiter
            try:
                await asyncio.wait_for(waiter, GAP_TIMEOUT_SECONDS)
            except TimeoutError:
                pass  # the earlier call is not coming (lost, or sent to a previous instance)
            finally:
                self._waiting.pop((submitter, seq), None)
        self._advance(submitter, seq)

    def skip(self, submitter: str, seq: int) -> None:
        """A call refused before it reached the agent still takes its place: the next one need not wait."""
        self._advance(submitter, seq)

    def _advance(self, submitter: str, seq: int) -> None:
        self._next[submitter] = max(self._next.get(submitter, 0), seq + 1)
        self._next.move_to_end(submitter)
        while len(self._next) > MAX_SUBMITTERS:
            self._next.popitem(last=False)
        waiter = self._waiting.get((submitter, seq + 1))
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class RememberedOrders:
    """The admission gates of the agents of one host, by name, kept across their activations (the most
    recently used `MAX_REMEMBERED_ORDERS`): a submitter's order carries over a hibernation."""

    def __init__(self) -> None:
        self._orders: OrderedDict[str, SubmissionOrder] = OrderedDict()

    def of(self, name: str) -> SubmissionOrder:
        order = self._orders.pop(name, None) or SubmissionOrder()
        self._orders[name] = order
        while len(self._orders) > MAX_REMEMBERED_ORDERS:
            self._orders.popitem(last=False)
        return order
