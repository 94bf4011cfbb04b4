"""The auth layer's configuration error (token errors live with the verifier)."""


class AuthConfigError(ValueError):
    """A required authorization setting is missing or malformed; the message names the variable only."""
