"""Tests of the travel agent, written with the test kit as a user of the runtime writes them:

    pytest examples/

The kit's `agentrt` fixture serves `examples.travel_agent:TravelAgent` (see `conftest.py`) in the real
runtime, with the embedded dev services, and plays the user's phone.
"""

from __future__ import annotations

from agentrt.testing import TestKit

BOOK = '/book_trip {"destination": "Paris", "seats": 2}'


async def test_a_booking_waits_for_the_approval_then_completes_by_itself(agentrt: TestKit) -> None:
    async with agentrt.client("alice") as alice:
        sent = await alice.send_message("trip-1", BOOK)
        assert [m["state"] for m in sent if m["role"] == "tool"] == ["pending-authorization"]

        request = await agentrt.approve("alice", binding_message="Book 2 seats to Paris")
        assert request["audience"] == "https://travel.example/api"

        reply = await agentrt.next_message(alice, "trip-1", after=sent[-1])
        assert "Booked 2 seats to Paris" in reply["content"]
        listed = await alice.send_message("trip-1", "/list_trips")
        assert "2 seats to Paris" in listed[-1]["content"]


async def test_a_denied_booking_books_nothing(agentrt: TestKit) -> None:
    async with agentrt.client("bob") as bob:
        sent = await bob.send_message("trip-2", BOOK)
        await agentrt.deny("bob", binding_message="Book 2 seats to Paris")
        reply = await agentrt.next_message(bob, "trip-2", after=sent[-1])
        assert "denied" in reply["content"].lower()
        listed = await bob.send_message("trip-2", "/list_trips")
        assert "No trips booked" in listed[-1]["content"]


async def test_a_cancellation_is_confirmed_in_the_chat(agentrt: TestKit) -> None:
    async with agentrt.client("carol") as carol:
        sent = await carol.send_message("trip-3", '/cancel_trip {"destination": "Rome"}')
        (call,) = [m for m in sent if m["role"] == "tool"]
        assert call["state"] == "awaiting-confirmation"
        answered = await carol.submit_tool_result("trip-3", call["tool_call_id"], approved=True)
        assert "There is no trip to Rome to cancel" in answered[-1]["content"]
