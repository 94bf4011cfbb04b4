"""An expense agent of one's own, as the review wrote it, with the bugs a newcomer's first tools have:
`list_expenses` raises `KeyError` before any expense exists, and `submit_expense` for the merchant "Broken"
raises with its approved access token in the message (an upstream error quoting the request)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from agents import ThreadAgent
from tools import Tool, fit_binding_message, get_ciba_credentials

EXPENSES_AUDIENCE = "https://expenses.example/api"


class ExpenseAgent(ThreadAgent):
    """Submits expenses (approved on the user's device) and lists them."""

    def build_tools(self) -> list[Tool]:
        async def submit_expense(amount: Annotated[float, Field(gt=0)], merchant: str) -> str:
            """Submit one expense."""
            credentials = get_ciba_credentials()
            if merchant == "Broken" and credentials is not None:
                raise RuntimeError(f"expenses API said 401 to Authorization: Bearer {credentials.access_token}")
            expenses = await self.storage.get("expenses") or []
            await self.storage.put("expenses", [*expenses, {"amount": amount, "merchant": merchant}])
            return f"Submitted {amount:.2f} at {merchant}"

        async def list_expenses() -> str:
            """List the submitted expenses."""
            expenses = await self.storage.get("expenses") or {}
            return "; ".join(f"{e['amount']:.2f} at {e['merchant']}" for e in expenses["items"])  # the bug

        return [
            self.with_async_user_confirmation(
                Tool(submit_expense),
                scopes=["expenses:submit"],
                audience=EXPENSES_AUDIENCE,
                binding_message=lambda amount, merchant: fit_binding_message(f"Expense {amount:.2f} at {merchant}"),
            ),
            Tool(list_expenses),
        ]
