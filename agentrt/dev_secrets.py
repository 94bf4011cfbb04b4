"""The embedded defaults' secrets, kept in the storage folder so that a restart keeps what is pending.

With nothing configured, `agentrt serve` needs a CIBA client secret for the dev authorization server and
an `AUTH0_SESSION_ENCRYPTION_KEY` for the approved credentials. New random values on every run would make
a purchase pending across a restart impossible to complete (its records could no longer be decrypted, its
client would be unknown). So they are generated once, written to `<storage>/dev-secrets.json` with mode
0600, and read from there on every later run. They are never printed or logged.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

from runtime.private_files import private_dir

FILE_NAME = "dev-secrets.json"


@dataclass(frozen=True, repr=False)
class DevSecrets:
    client_id: str
    client_secret: str
    encryption_key: str

    def __repr__(self) -> str:  # never show the values
        return f"DevSecrets(client_id={self.client_id!r}, client_secret=***, encryption_key=***)"


def load_or_create(storage_dir: Path) -> DevSecrets:
    """The storage folder's dev secrets, created (0600, atomically: the first process wins) if absent."""
    path = Path(storage_dir) / FILE_NAME
    if not path.exists():
        fresh = DevSecrets(
            client_id="dev-agent-" + secrets.token_hex(6),
            client_secret=secrets.token_urlsafe(32),
            encryption_key=secrets.token_hex(32),
        )
        private_dir(path.parent)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as out:
                json.dump(asdict(fresh), out)
            return fresh
    data = json.loads(path.read_text())
    return DevSecrets(**{k: str(data[k]) for k in ("client_id", "client_secret", "encryption_key")})
