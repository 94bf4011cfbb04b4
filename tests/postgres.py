"""A throwaway PostgreSQL server for the tests: Debian's PostgreSQL (`/usr/lib/postgresql/<v>/bin`),
initialised in a temporary folder, listening on 127.0.0.1 on a free port, stopped and deleted afterwards.

PostgreSQL refuses to run as root, so when the tests run as root the server runs as the `postgres` user
(its folder handed over to it). The runtime connects as `agentrt`, an ordinary role that owns the
database: not a superuser and without BYPASSRLS, as the runtime requires (row-level security keeps each
agent to its own rows, and a superuser would see through it).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from devservers.server_thread import free_port

RUNTIME_ROLE = "agentrt"
DATABASE = "agentrt"


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL's programs, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[-3]))
    return Path(found[-1]).parent if found else None


@dataclass
class PostgresServer:
    folder: Path
    port: int
    bin: Path
    run_as: str | None
    fsync: bool = False
    """Off for the tests (speed; a crash of the machine is not what they test); on for benchmarks."""

    @property
    def url(self) -> str:
        """The runtime's connection URL (role `agentrt`, trusted on 127.0.0.1: a test server only)."""
        return f"postgresql://{RUNTIME_ROLE}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = list(args)
        if self.run_as:
            command = ["runuser", "-u", self.run_as, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=check, timeout=120)

    def start(self) -> PostgresServer:
        data = self.folder / "data"
        self._run(str(self.bin / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8")
        self.resume()
        self.psql(f"CREATE ROLE {RUNTIME_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS")
        self.psql(f"CREATE DATABASE {DATABASE} OWNER {RUNTIME_ROLE}")
        return self

    def new_database(self, name: str) -> str:
        """A fresh database owned by the runtime's role (a test that counts everything in it); its URL."""
        self.psql(f"CREATE DATABASE {name} OWNER {RUNTIME_ROLE}")
        return f"postgresql://{RUNTIME_ROLE}@127.0.0.1:{self.port}/{name}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser (the harness's own setup and checks)."""
        proc = self._run(
            str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", database,
            "-v", "ON_ERROR_STOP=1", "-At", "-c", sql,
        )  # fmt: skip
        return proc.stdout.strip()

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "immediate", "stop", check=False)

    def pause(self) -> None:
        """Stop the server (its connections dropped), keeping its data: an outage, until `resume()`."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "fast", "stop")

    def resume(self) -> None:
        sockets, data = self.folder / "sockets", str(self.folder / "data")
        fsync = "on" if self.fsync else "off"
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {sockets} -c fsync={fsync} -c max_connections=200"
        self._run(str(self.bin / "pg_ctl"), "-D", data, "-l", str(self.folder / "log"), "-o", options, "-w", "start")

    def to_json(self) -> str:
        """What another process needs to pause and resume this server (`from_json`)."""
        return json.dumps(
            {
                "folder": str(self.folder),
                "port": self.port,
                "bin": str(self.bin),
                "run_as": self.run_as,
                "fsync": self.fsync,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> PostgresServer:
        fields = json.loads(text)
        return cls(Path(fields["folder"]), fields["port"], Path(fields["bin"]), fields["run_as"], fields["fsync"])


@contextlib.contextmanager
def postgres_server(*, fsync: bool = False) -> Iterator[PostgresServer]:
    """A started throwaway server (see the module docstring); raises `RuntimeError` if none is installed."""
    binaries = postgres_bin()
    if binaries is None:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql; scripts/test.sh does)")
    folder = Path(tempfile.mkdtemp(prefix="agentrt-pg-"))
    run_as = None
    if os.geteuid() == 0:
        run_as = "postgres"
        account = pwd.getpwnam(run_as)
        os.chmod(folder, 0o700)
        os.chown(folder, account.pw_uid, account.pw_gid)
    (folder / "sockets").mkdir()
    if run_as:
        os.chown(folder / "sockets", pwd.getpwnam(run_as).pw_uid, pwd.getpwnam(run_as).pw_gid)
    server = PostgresServer(folder=folder, port=free_port(), bin=binaries, run_as=run_as, fsync=fsync)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
