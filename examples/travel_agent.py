"""An agent of your own in about a page: a travel agent with two tools of its own.

- `book_trip` spends money, so it waits for the thread owner's approval on their device (CIBA) with its own
  scope (`travel:book`), audience (the travel API) and binding message ("Book 2 seats to Paris"); once
  approved it runs by itself, exactly once, with the approved access token.
- `cancel_trip` needs no credential, but the user confirms it in the chat (approve/deny).

Serve it with the embedded dev services, then chat (the offline model calls a tool by name):

    agentrt serve --agent examples.travel_agent:TravelAgent
    # in the chat:  /book_trip {"destination": "Paris", "seats": 2}
    #               /cancel_trip {"destination": "Paris"}
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from agents.thread_agent import ThreadAgent
from tools.async_confirmation import get_ciba_credentials
from tools.base import Tool, ToolError

TRAVEL_AUDIENCE = "https://travel.example/api"


class Trip(BaseModel):
    destination: str = Field(min_length=1, max_length=40, pattern=r"^[A-Za-z .-]+$")
    seats: int = Field(ge=1, le=9)


class Cancellation(BaseModel):
    destination: str = Field(min_length=1, max_length=40, pattern=r"^[A-Za-z .-]+$")


class TravelAgent(ThreadAgent):
    """Books trips (approved on the user's device) and cancels them (confirmed in the chat)."""

    def build_tools(self) -> list[Tool]:
        async def book_trip(destination: str, seats: int) -> str:
            credentials = get_ciba_credentials()  # the approved token: call your travel API with it here
            if credentials is None or "travel:book" not in credentials.scope:
                raise ToolError("book_trip ran without an approved travel:book token")
            await self.storage.put(f"trip:{destination}", {"seats": seats})
            return f"Booked {seats} seats to {destination}"

        async def cancel_trip(destination: str) -> str:
            if await self.storage.get(f"trip:{destination}") is None:
                return f"There is no trip to {destination} to cancel"
            await self.storage.delete(f"trip:{destination}")
            return f"Cancelled the trip to {destination}"

        book = Tool(book_trip, name="book_trip", description="Book seats on a trip.", parameters=Trip)
        cancel = Tool(
            cancel_trip,
            name="cancel_trip",
            description="Cancel a booked trip. The user confirms it in the chat.",
            parameters=Cancellation,
            requires_confirmation=True,
        )
        return [
            self.with_async_user_confirmation(
                book,
                scopes=["travel:book"],
                audience=TRAVEL_AUDIENCE,
                binding_message=lambda destination, seats: f"Book {seats} seats to {destination}",
            ),
            cancel,
        ]
