"""`agentrt serve` as a user runs it, in its own process with embedded defaults, its terminal captured."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from devservers.server_thread import free_port
from tests.test_cli import Output, agentrt_command, clean_env


@contextmanager
def served(tmp_path: Path, *args: str) -> Iterator[tuple[str, Output]]:
    """`agentrt serve <args>` with its storage root in `tmp_path/data`; yields the API URL and its output,
    and stops it with Ctrl-C (SIGINT) afterwards."""
    port = free_port()
    command = agentrt_command() + ["serve", "--port", str(port), "--storage-dir", str(tmp_path / "data")]
    command += ["--num-cpus", "2", *args]
    proc = subprocess.Popen(
        command,
        env=clean_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output = Output(proc)
    try:
        output.wait_for(r"Ctrl-C to stop", timeout=90)
        yield f"http://127.0.0.1:{port}", output
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
