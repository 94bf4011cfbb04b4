"""Property-based fuzzing of the HTTP API (schemathesis) over the served OpenAPI schema, against the real stack.

Every operation of `/openapi.json` gets generated requests, valid and not (examples from the schema, then
random data: bad ids, wrong types, odd Unicode, missing fields, extra properties), with a valid token of
`dave`, a user no other test uses (his threads, his quota). Every answer must keep the contract:

- never a 5xx (the 503s of a busy or unreachable agent carry `Retry-After`, and none is expected here);
- the status code, content type and body are those the schema documents for it;
- a schema-valid request is not refused as invalid, an invalid one is not accepted;
- without the token the same request is a 401;
- an answer within a deadline (no hang): an event stream's first event (`ready`) included.

The number of examples per operation is bounded for CI (`AGENTRT_FUZZ_EXAMPLES`, default 40); a longer run
with the stateful phase is `st run` as README's security section shows.
"""

from __future__ import annotations

import os
import time
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import ensure_resource_availability, positive_data_acceptance

from tests.http_fixtures import HttpApi, ensure_http_api

pytestmark = pytest.mark.slow

FUZZ_USER = "dave"
EXAMPLES = int(os.environ.get("AGENTRT_FUZZ_EXAMPLES", "25"))
"""Cases per operation in the suite (a longer run: set it higher, or the README's `st run` against `agentrt serve`)."""
ANSWER_SECONDS = 30.0
"""The longest any answer may take (a model turn on the offline model included): longer is a hang."""


@pytest.fixture(scope="module")
def http_api(chat_world: Any) -> HttpApi:
    return ensure_http_api(chat_world)


@pytest.fixture(scope="module")
def api_schema(http_api: HttpApi) -> Any:
    loaded = schemathesis.openapi.from_url(http_api.url + "/openapi.json")
    # the token is dave's, on every request: mutating the Authorization header would only make cases
    # whose one invalid part the test then replaces (the `ignored_auth` check still sends none)
    loaded.config.generation.update(with_security_parameters=False)
    return loaded


schema = schemathesis.pytest.from_fixture("api_schema")


def first_event_or_error(case: Any, base_url: str, headers: dict[str, str]) -> httpx.Response | None:
    """An event stream never ends by itself: read its head (status, headers, the first `ready` event)
    within the deadline and close it. Returns the whole response when it is an error (to validate), None
    for a stream that started as it should."""
    kwargs = case.as_transport_kwargs(base_url=base_url, headers=headers)
    request = httpx.Request(kwargs["method"], kwargs["url"], headers=kwargs.get("headers"), params=kwargs.get("params"))
    with httpx.Client(timeout=ANSWER_SECONDS) as client:
        response = client.send(request, stream=True)
        try:
            if response.status_code != 200:
                response.read()
                return response
            assert response.headers["content-type"].startswith("text/event-stream"), response.headers
            head, deadline = "", time.monotonic() + ANSWER_SECONDS  # pings keep the socket busy: a wall clock
            for chunk in response.iter_text():
                head += chunk
                if "event: ready" in head or time.monotonic() > deadline:
                    break
            assert "event: ready" in head, f"no ready event within {ANSWER_SECONDS:.0f}s: {head[:300]!r}"
            return None
        finally:
            response.close()


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_every_answer_keeps_the_api_contract(case: Any, http_api: HttpApi) -> None:
    headers = http_api.headers(FUZZ_USER)
    if case.operation.path.endswith("/events"):
        response = first_event_or_error(case, http_api.url, headers)
        if response is None:
            return
        assert response.status_code < 500, (response.status_code, response.text)
        return
    # POST /threads/{id}/tool-results with an id of no tool call is a 404 by design, whatever thread the
    # stateful links guess it belongs to: not a lost resource
    response = case.call(base_url=http_api.url, headers=headers, timeout=ANSWER_SECONDS)
    assert response.status_code < 500, (response.status_code, response.text)
    excluded = [ensure_resource_availability]
    if case.operation.path == "/api/chat":
        # the AI SDK transport's body is the client's whole history, of which only the last message is read;
        # what that message must hold (text, or approval answers of this thread) is more than JSON Schema
        # says, so a schema-valid body may be a 422 with a named problem (still never a 5xx, checked above)
        excluded.append(positive_data_acceptance)
    case.validate_response(response, headers=headers, excluded_checks=excluded)
