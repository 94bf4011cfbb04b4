"""The HTTP API's routes and who may use them, through Ray Serve: the service routes and OpenAPI schema,
creating threads and their ownership, a valid token of the owner on every thread route, 4xx answers with a
JSON body for bad input and unknown threads, the per-user thread quota, and a caller's token checked once
per process. Real Ray, real HTTP on 127.0.0.1, the dev authorization server's tokens. No mocks."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from agents.chat import Chat
from agents.directory import ThreadDirectory, directory_id_for
from runtime import get_agent
from tests.http_fixtures import (
    THREADS_PER_USER,
    HttpApi,
    assert_error,
    ensure_http_api,
    new_id,
)
from tests.lifecycle import live_agent_names

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def http_api(chat_world: Any) -> HttpApi:
    return ensure_http_api(chat_world)


async def test_service_routes_and_openapi_schema(http_api: HttpApi) -> None:
    async with http_api.client() as http:
        health = await http.get("/healthz")
        assert health.status_code == 200 and health.json()["ok"] is True
        config = (await http.get("/config")).json()
        assert config["dev_login_url"] == http_api.url + "/dev/login"
        assert config["approvals_url"] == http_api.world.authz.url + "/approvals"
        assert config["dev_authz_url"] == http_api.world.authz.url
        schema = (await http.get("/openapi.json")).json()
        paths = schema["paths"]
        for path in (
            "/threads",
            "/threads/{thread_id}/messages",
            "/threads/{thread_id}/events",
            "/threads/{thread_id}/interrupts",
            "/threads/{thread_id}/tool-results",
            "/healthz",
        ):
            assert path in paths, path
        assert {"ChatMessage", "PendingApproval", "SendMessageRequest", "ErrorBody"} <= set(
            schema["components"]["schemas"]
        )
        page = await http.get("/")
        assert page.status_code == 200 and "<title>" in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert (await http.get("/static/app.js")).status_code == 200
        assert_error(await http.get("/static/../pyproject.toml"), 404)


async def test_create_thread_with_a_given_id_and_ownership(http_api: HttpApi) -> None:
    alice, bob = http_api.headers("alice"), http_api.headers("bob")
    thread_id = new_id()
    async with http_api.client() as http:
        first = await http.post("/threads", json={"thread_id": thread_id}, headers=alice)
        assert first.status_code == 201 and first.json()["thread_id"] == thread_id
        again = await http.post("/threads", json={"thread_id": thread_id}, headers=alice)
        assert again.status_code == 200 and again.json()["created"] is False
        assert_error(await http.post("/threads", json={"thread_id": thread_id}, headers=bob), 403, "not_owner")
        bobs = (await http.get("/threads", headers=bob)).json()["threads"]
        assert thread_id not in [t["thread_id"] for t in bobs]
        described = (await http.get(f"/threads/{thread_id}", headers=alice)).json()
        assert described["owner"] == http_api.world.subject("alice") and described["messages"] == 0


async def test_every_thread_route_needs_a_valid_token_of_the_owner(http_api: HttpApi) -> None:
    alice = http_api.headers("alice")
    thread_id = new_id()
    async with http_api.client() as http:
        assert (await http.post("/threads", json={"thread_id": thread_id}, headers=alice)).status_code == 201
        routes: list[tuple[str, str, dict[str, Any] | None]] = [
            ("POST", "/threads", {}),
            ("GET", "/threads", None),
            ("GET", f"/threads/{thread_id}", None),
            ("POST", f"/threads/{thread_id}/messages", {"content": "hello"}),
            ("GET", f"/threads/{thread_id}/messages", None),
            ("GET", f"/threads/{thread_id}/interrupts", None),
            ("POST", f"/threads/{thread_id}/tool-results", {"tool_call_id": "call_x", "approved": True}),
            ("GET", f"/threads/{thread_id}/events", None),
        ]
        tampered = _tamper(http_api.token("alice"))
        for method, path, body in routes:
            kwargs: dict[str, Any] = {"json": body} if body is not None else {}
            missing = await http.request(method, path, **kwargs)
            assert_error(missing, 401, "unauthenticated")
            assert missing.headers.get("www-authenticate", "").startswith("Bearer")
            for bad in ("not-a-jwt", tampered):
                response = await http.request(method, path, headers={"Authorization": f"Bearer {bad}"}, **kwargs)
                assert_error(response, 401, "unauthenticated")
                assert bad not in response.text  # tokens never echo back
            assert_error(await http.request(method, path, headers={"Authorization": "Basic abc"}, **kwargs), 401)
            if path.startswith(f"/threads/{thread_id}"):
                response = await http.request(method, path, headers=http_api.headers("bob"), **kwargs)
                assert_error(response, 403, "not_owner")
        # bob never became an owner of alice's thread along the way
        assert (await http.get(f"/threads/{thread_id}/messages", headers=alice)).status_code == 200

        # an unauthenticated caller cannot make the cluster create agents
        fresh = new_id()
        for bad in ("not-a-jwt", tampered):
            headers = {"Authorization": f"Bearer {bad}"}
            assert_error(await http.post(f"/threads/{fresh}/messages", json={"content": "hi"}, headers=headers), 401)
            assert_error(await http.get("/threads", headers=headers), 401)
        assert not Chat.storage_path(http_api.storage_dir, fresh).exists()
        assert not ThreadDirectory.storage_path(http_api.storage_dir, directory_id_for("auth0|mallory")).exists()
        live = await live_agent_names(http_api.storage_dir, http_api.namespace)
        assert f"Chat/{fresh}" not in live


def _tamper(token: str) -> str:
    """The same JWT with its payload changed (sub: mallory): the signature no longer matches."""
    import base64

    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "auth0|mallory"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


async def test_bad_input_gets_a_4xx_with_a_json_body(http_api: HttpApi) -> None:
    alice = http_api.headers("alice")
    thread_id = new_id()
    async with http_api.client() as http:
        assert (await http.post("/threads", json={"thread_id": thread_id}, headers=alice)).status_code == 201
        messages = f"/threads/{thread_id}/messages"

        # thread ids
        assert_error(await http.get("/threads/bad%20id!/messages", headers=alice), 422, "invalid_thread_id")
        assert_error(await http.get(f"/threads/{'x' * 129}/messages", headers=alice), 422, "invalid_thread_id")
        assert_error(await http.get("/threads/../messages", headers=alice), 404)
        assert_error(
            await http.post("/threads", json={"thread_id": "no/slash"}, headers=alice), 422, "invalid_thread_id"
        )
        assert_error(await http.post("/threads", json={"thread_id": ".."}, headers=alice), 422, "invalid_thread_id")

        # malformed JSON, wrong types, missing and unknown fields, empty and overlong messages
        json_headers = {**alice, "Content-Type": "application/json"}
        assert_error(await http.post(messages, content=b'{"content": ', headers=json_headers), 422, "invalid_json")
        assert_error(await http.post(messages, content=b"\xff\xfe", headers=json_headers), (400, 422))
        assert_error(await http.post(messages, json={"content": 5}, headers=alice), 422, "invalid_request")
        assert_error(await http.post(messages, json={"content": ["a"]}, headers=alice), 422, "invalid_request")
        assert_error(await http.post(messages, json={}, headers=alice), 422, "invalid_request")
        assert_error(await http.post(messages, json=[], headers=alice), 422, "invalid_request")
        assert_error(await http.post(messages, json={"content": "hi", "x": 1}, headers=alice), 422, "invalid_request")
        assert_error(await http.post(messages, json={"content": "   "}, headers=alice), 422, "invalid_message")
        assert_error(await http.post(messages, json={"content": "a" * 9000}, headers=alice), 422, "invalid_message")
        assert_error(await http.get(f"/threads/{thread_id}/events?after=-1", headers=alice), 422, "invalid_request")
        assert_error(await http.get("/threads?limit=0", headers=alice), 422, "invalid_request")

        # oversize bodies: by Content-Length, and chunked without one
        big = json.dumps({"content": "a" * (70 * 1024)}).encode()
        assert_error(await http.post(messages, content=big, headers=json_headers), 413, "payload_too_large")

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(70):
                yield b"a" * 1024

        chunked = await http.post(messages, content=chunks(), headers=json_headers)
        assert_error(chunked, 413, "payload_too_large")

        # tool results
        results = f"/threads/{thread_id}/tool-results"
        unknown = await http.post(results, json={"tool_call_id": "call_nope", "approved": True}, headers=alice)
        assert_error(unknown, 404, "unknown_tool_call")
        assert_error(await http.post(results, json={"tool_call_id": "c", "approved": "yes"}, headers=alice), 422)
        assert_error(await http.post(results, json={"approved": True}, headers=alice), 422, "invalid_request")

        # unknown routes and methods
        assert_error(await http.get("/nope"), 404, "not_found")
        assert_error(await http.delete(messages, headers=alice), 405, "method_not_allowed")

        # and the thread is still fine
        assert (await http.get(messages, headers=alice)).json()["messages"] == []


async def test_reads_of_an_unknown_thread_are_404_and_create_nothing(http_api: HttpApi) -> None:
    alice = http_api.headers("alice")
    unknown = new_id()
    async with http_api.client() as http:
        for method, path, kwargs in [
            ("GET", f"/threads/{unknown}", {}),
            ("GET", f"/threads/{unknown}/messages", {}),
            ("GET", f"/threads/{unknown}/interrupts", {}),
            ("GET", f"/threads/{unknown}/events", {}),
            ("POST", f"/threads/{unknown}/tool-results", {"json": {"tool_call_id": "call_1", "approved": True}}),
        ]:
            assert_error(await http.request(method, path, headers=alice, **kwargs), 404, "thread_not_found")
    assert not Chat.storage_path(http_api.storage_dir, unknown).exists()
    assert f"Chat/{unknown}" not in await live_agent_names(http_api.storage_dir, http_api.namespace)


async def test_the_per_user_thread_quota_answers_429_and_leaves_existing_threads_alone(http_api: HttpApi) -> None:
    carol = http_api.headers("carol")
    async with http_api.client() as http:
        kept = new_id()
        assert (await http.post("/threads", json={"thread_id": kept}, headers=carol)).status_code == 201
        sent = await http.post(f"/threads/{kept}/messages", json={"content": "what is MSFT at?"}, headers=carol)
        assert sent.status_code == 200
        directory = get_agent(
            ThreadDirectory,
            directory_id_for(http_api.world.subject("carol")),
            storage_dir=http_api.storage_dir,
            namespace=http_api.namespace,
        )
        token = http_api.token("carol")
        for i in range(THREADS_PER_USER - 1):  # fill carol's quota without making 60 agents
            await directory.add(token, f"filler-{i}")

        over = new_id()
        assert_error(await http.post("/threads", json={"thread_id": over}, headers=carol), 429, "thread_quota_exceeded")
        posted = await http.post(f"/threads/{over}/messages", json={"content": "hi"}, headers=carol)
        assert_error(posted, 429, "thread_quota_exceeded")
        assert not Chat.storage_path(http_api.storage_dir, over).exists()

        # carol's existing thread is untouched and still takes messages; opening it again is no new thread
        assert (await http.post("/threads", json={"thread_id": kept}, headers=carol)).status_code == 200
        messages = (await http.get(f"/threads/{kept}/messages", headers=carol)).json()["messages"]
        assert [m["content"] for m in messages if m["role"] == "user"] == ["what is MSFT at?"]
        again = await http.post(f"/threads/{kept}/messages", json={"content": "and AAPL?"}, headers=carol)
        assert again.status_code == 200


async def signature_checks(http_api: HttpApi) -> tuple[int, int]:
    """(JWT signature checks in the ingress replica, in the agent hosts) so far."""
    from ray import serve

    from tests.http_fixtures import APP_NAME
    from tests.lifecycle import host_stats

    ingress = await serve.get_deployment_handle("AgentIngress", APP_NAME).counters.remote()
    hosts = await host_stats(http_api.storage_dir, http_api.namespace)
    in_hosts = sum(stats["counters"].get("jwt_signature_checks", 0) for stats in hosts)
    return ingress.get("jwt_signature_checks", 0), in_hosts


async def test_a_callers_token_is_checked_once_per_process_not_once_per_call(http_api: HttpApi) -> None:
    """The edge and the agents each verify a token (see `agentrt.ingress.access`), but a process that
    verified it accepts it again for a while: further messages and reads cost no signature check."""
    async with httpx.AsyncClient(base_url=http_api.world.authz.url, timeout=10) as dev:
        token = (await dev.post("/dev/login", json={"username": "bob"})).json()["access_token"]  # never used yet
    thread = new_id()
    async with http_api.client(headers={"Authorization": f"Bearer {token}"}) as client:
        before = await signature_checks(http_api)
        assert (await client.post("/threads", json={"thread_id": thread})).status_code == 201
        first = await signature_checks(http_api)
        # one check at the edge; one per host process at most (the thread and bob's directory may share one)
        assert first[0] - before[0] == 1, (before, first)
        assert 1 <= first[1] - before[1] <= 2, (before, first)
        for text in ("hello", "what is MSFT trading at?"):
            assert (await client.post(f"/threads/{thread}/messages", json={"content": text})).status_code == 200
            assert (await client.get(f"/threads/{thread}/messages")).status_code == 200
        assert (await client.get("/threads")).status_code == 200
        assert await signature_checks(http_api) == first


async def test_with_the_dev_sign_in_a_rebound_name_gets_nothing_and_cross_site_sign_in_is_refused(
    http_api: HttpApi,
) -> None:
    """Review hole 7: a web page that rebinds its own name to 127.0.0.1 must not sign in as alice through
    the API's `/dev/login` proxy and read her threads; a cross-site sign-in is refused too."""
    async with http_api.client() as http:
        for path, method in (("/dev/login", "POST"), ("/threads", "GET"), ("/config", "GET")):
            rebound = await http.request(
                method, path, json={"username": "alice"}, headers={"Host": "evil.example", **http_api.headers("alice")}
            )
            assert_error(rebound, 421, "misdirected_request")
        for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
            refused = await http.post("/dev/login", json={"username": "alice"}, headers=headers)
            assert_error(refused, 403, "cross_origin")
        same_origin = await http.post("/dev/login", json={"username": "alice"}, headers={"Origin": http_api.url})
        assert same_origin.status_code == 200 and same_origin.json()["access_token"]
        by_name = await http.get("/threads", headers={"Host": "localhost", **http_api.headers("alice")})
        assert by_name.status_code == 200
