"""The embedded dev authorization server: OIDC discovery, JWKS, dev login and CIBA (poll and ping mode).

It plays Auth0 for local runs and tests, and is strict on purpose: a client that passes against it should
pass against Auth0. Requests follow CIBA Core 1.0 and Auth0's rules (client authentication by
`client_secret_post`, `client_secret_basic` or `private_key_jwt`, exactly one hint, `openid` in the scope,
Auth0's binding message rule, `requested_expiry`, `audience`, RAR `authorization_details`), and polling is
policed: polling faster than the interval answers `slow_down` and adds 5 s to that request's interval, and
an `auth_req_id` is single use.

It also plays the user's phone: `GET /approvals` is a page listing the waiting requests with Approve and
Deny buttons, and `/dev/ciba/requests` is the same as JSON for tests, the CLI and the benchmark. Those
endpoints have no authentication, which is why the server refuses to listen beyond loopback.

All state lives in one `AuthzState`, so a test can stop the HTTP server and start a new one on the same
port with the same state (an outage without losing the requests or the signing key).

The modules, each importing only those listed before it:

- `keys`: `SigningKey`, the RSA key behind every token and the JWKS.
- `protocol`: the wire vocabulary: `OAuthError`, endpoint layouts, the form-body reader, constants.
- `ciba_request`: `CIBARequest`, one backchannel request as the server remembers it.
- `request_file`: keeping the requests in a file across restarts.
- `tokens`: the token endpoint's and the dev login's response bodies.
- `state`: `AuthzState` (users, clients, requests, polling rules) and `create_state`.
- `client_auth`: which client an HTTP request authenticates as.
- `backchannel`: checking a `bc-authorize` request's parameters.
- `pages`: the approvals page and the dev login page (HTML, CSS and script).
- `routes`: the HTTP handlers; `app`: `create_authz_app`, the Starlette app.
- `server`: `DevAuthorizationServer`, the app on a loopback port in a background thread.

Callers import from `devservers.authz_server`, which re-exports the public names.
"""
