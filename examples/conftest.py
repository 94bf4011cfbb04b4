"""The test kit (`agentrt.testing`, a pytest plugin installed with the package) serves this agent."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def agentrt_agent() -> str:
    return "examples.travel_agent:TravelAgent"
