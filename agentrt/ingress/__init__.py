"""The HTTP ingress: a Ray Serve application (FastAPI) in front of the `Chat` thread agents.

Every thread route needs `Authorization: Bearer <JWT>`, verified here (see `access`) and again by the
thread's agent, whose typed errors become HTTP errors with a JSON body `{"error": code, "detail": message}`.

Routes (OpenAPI at `/docs` and `/openapi.json`):

- `POST /threads` create a thread (a new id, or a given one); the caller becomes its owner (201).
- `GET /threads` the caller's threads (from their `ThreadDirectory` agent).
- `GET /threads/{id}` who owns it and how many messages it has.
- `POST /threads/{id}/messages` `{"content"}` -> the new messages, or with `Accept: text/event-stream`
  server-sent events while the turn runs (`token`, `message`, `tool_call`, `interrupt`, ...) then `done`.
- `GET /threads/{id}/messages`, `GET /threads/{id}/interrupts`, `POST /threads/{id}/tool-results`.
- `GET /threads/{id}/events` server-sent events of everything that happens in the thread (resumable with
  `Last-Event-ID` or `?after=`; keep-alive pings), built on the agent's `poll_events` long-polls.
- `POST /ciba/notify` CIBA ping mode's notification endpoint.
- `GET /healthz`, `GET /config` (what the web page needs), `POST /dev/login`, `GET /` (the web page).

The modules, one job each: `settings`, `schemas` (the API models), `errors` (every error as JSON),
`guard` (cheap refusals before parsing), `gateway` (handles to the agents), `access` (who calls, which
thread), `streams` (server-sent events), `threads` and `service` (the routes), `app` (the Serve app).

`app` is the bound application (`serve run agentrt.ingress:app`); `build_app(env_vars)` binds one whose
replicas (and the agents they create) get the given environment.
"""

from agentrt.ingress.app import AgentIngress, api, build_app
from agentrt.ingress.settings import IngressSettings

app = build_app()
"""The application with the environment of whoever deploys it (`serve run agentrt.ingress:app`)."""

__all__ = ["AgentIngress", "IngressSettings", "api", "app", "build_app"]
