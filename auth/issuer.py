"""The issuer rules, in one place: which URL the tokens' `iss` names and where discovery is.

`AUTH_ISSUER` is kept as written (any OIDC provider, or the embedded dev server): an issuer is compared as a
string (`iss` claims, the `iss_sub` login hint), so only surrounding whitespace is removed. Without it,
`AUTH0_DOMAIN` becomes `https://{AUTH0_DOMAIN}/`, as Auth0 spells its issuer (with the trailing slash).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from auth.errors import AuthConfigError


def issuer_url(auth_issuer: str | None, auth0_domain: str | None) -> str:
    """The issuer from `AUTH_ISSUER` or `AUTH0_DOMAIN`; `AuthConfigError` (naming the variable) if neither is
    usable."""
    if auth_issuer and auth_issuer.strip():
        issuer = auth_issuer.strip()
        if not issuer.startswith(("https://", "http://")):
            raise AuthConfigError("AUTH_ISSUER must be an http(s) URL")
        if issuer.startswith("http://") and not is_loopback_host(urlsplit(issuer).hostname or ""):
            # the client secret and every token travel to it: plain HTTP only on this machine (the dev server)
            raise AuthConfigError("AUTH_ISSUER must be an https URL (http only for a loopback dev server)")
        return issuer
    if auth0_domain and auth0_domain.strip():
        domain = auth0_domain.strip()
        for prefix in ("https://", "http://"):
            domain = domain.removeprefix(prefix)
        domain = domain.rstrip("/")
        if not domain or "/" in domain:
            raise AuthConfigError("AUTH0_DOMAIN must be a host name such as 'tenant.us.auth0.com'")
        return f"https://{domain}/"
    raise AuthConfigError("set AUTH0_DOMAIN (or AUTH_ISSUER) to the authorization server")


def is_loopback_host(host: str) -> bool:
    """`localhost` or a loopback address (`127.0.0.1`, `::1`, ...): this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of `url`, the default port filled in: what "the same origin" compares."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or {"https": 443, "http": 80}.get(scheme)


def discovery_url(issuer: str) -> str:
    """The OIDC discovery document of `issuer`."""
    return issuer.rstrip("/") + "/.well-known/openid-configuration"
