"""The embedded services keep their ports across a restart (`agentrt.embedded.port_or_free`).

A run that served requests leaves its closed connections in TIME_WAIT on the server's port for a minute;
a restart must still get that port (as the servers bind it, with SO_REUSEADDR), or the dev issuer's URL
and the approval page's address would change under a user with a purchase pending.
"""

from __future__ import annotations

import socket

from agentrt.embedded import port_or_free


def _serve_one_connection_and_close() -> int:
    """A port whose server closed a connection first (so the server side holds it in TIME_WAIT)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    served, _ = listener.accept()
    served.close()  # the server closes first: its end goes to TIME_WAIT
    client.recv(1)
    client.close()
    listener.close()
    return int(port)


def test_a_port_in_time_wait_is_still_taken() -> None:
    port = _serve_one_connection_and_close()
    assert port_or_free(port) == port


def test_a_port_someone_listens_on_is_not() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert port_or_free(port) != port
