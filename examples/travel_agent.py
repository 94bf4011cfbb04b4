"""An agent of your own in about a page: a travel agent with three tools of its own, from two imports.

- `book_trip` spends money, so it waits for the thread owner's approval on their device (CIBA) with its own
  scope (`travel:book`), audience (the travel API) and binding message ("Book 2 seats to Paris"); once
  approved it runs by itself, exactly once, with the approved access token.
- `cancel_trip` needs no credential, but the user confirms it in the chat (approve/deny).
- `list_trips` takes no arguments and needs no confirmation.

Each tool's parameters come from its function's type hints, its description from its docstring.

Serve it with the embedded dev services, then chat (the offline model calls a tool by name):

    agentrt serve --agent examples.travel_agent:TravelAgent
    # in the chat:  /book_trip {"destination": "Paris", "seats": 2}
    #               /cancel_trip {"destination": "Paris"}
    #               /list_trips

`examples/test_travel_agent.py` tests it with the test kit (`agentrt.testing`).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from agents import ThreadAgent
from tools import Tool, ToolError, fit_binding_message, get_ciba_credentials

TRAVEL_AUDIENCE = "https://travel.example/api"

Destination = Annotated[str, Field(min_length=1, max_length=40, pattern=r"^[A-Za-z .-]+$", description="A city")]
Seats = Annotated[int, Field(ge=1, le=9)]


class TravelAgent(ThreadAgent):
    """Books trips (approved on the user's device), cancels them (confirmed in the chat) and lists them."""

    def build_tools(self) -> list[Tool]:
        async def book_trip(destination: Destination, seats: Seats) -> str:
            """Book seats on a trip."""
            credentials = get_ciba_credentials()  # the approved token: call your travel API with it here
            if credentials is None or "travel:book" not in credentials.scope:
                raise ToolError("book_trip ran without an approved travel:book token")
            await self.storage.put(f"trip:{destination}", {"seats": seats})
            return f"Booked {seats} seats to {destination}"

        async def cancel_trip(destination: Destination) -> str:
            """Cancel a booked trip. The user confirms it in the chat."""
            if await self.storage.get(f"trip:{destination}") is None:
                return f"There is no trip to {destination} to cancel"
            await self.storage.delete(f"trip:{destination}")
            return f"Cancelled the trip to {destination}"

        async def list_trips() -> str:
            """List the booked trips."""
            trips = await self.storage.list("trip:")
            booked = [f"{trip['seats']} seats to {key.removeprefix('trip:')}" for key, trip in trips.items()]
            return "; ".join(booked) or "No trips booked"

        return [
            self.with_async_user_confirmation(
                Tool(book_trip),
                scopes=["travel:book"],
                audience=TRAVEL_AUDIENCE,
                binding_message=lambda destination, seats: fit_binding_message(f"Book {seats} seats to {destination}"),
            ),
            Tool(cancel_trip, requires_confirmation=True),
            Tool(list_trips),
        ]
