"""Identity, shared by the agents, the ingress and the dev servers: who the issuer is, how a bearer token is
verified, and how this service authenticates itself to the authorization server.

- `settings`: `AuthSettings` (`AUTH0_*`, `AUTH_ISSUER`, `CIBA_*`, `CHECKOUT_AUDIENCE`) and `AuthConfigError`.
- `issuer`: the issuer rules (`AUTH_ISSUER` verbatim, else `https://{AUTH0_DOMAIN}/`).
- `discovery`: `DiscoveryCache`, the issuer's discovery document once per process (the verifier's and the
  CIBA client's).
- `verifier`: `JWTVerifier` and the process's `shared_verifier` (one JWKS cache per process).
- `client_assertion`: `private_key_jwt` client authentication (RFC 7523).
- `http_pool`: one outgoing HTTP client per event loop (a new one costs ~20 ms of TLS set-up).

Nothing here knows of chat, tools or agents.
"""
