"""Servers the tests start find their port even when another process takes it first.

A port is free when it is chosen and may be taken before the server binds it
(another test's server, an outgoing connection's local port). Forced here:
each first try has the port taken by a listener of ours just before the
server starts.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from support import listens, start_listener


def http_server(port: int, folder: Path) -> subprocess.Popen[bytes]:
    """Python's own HTTP server on ``port``: it exits at once when the port is taken."""
    return subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_a_server_whose_port_was_taken_starts_again_on_a_new_one(tmp_path: Path) -> None:
    thieves: list[socket.socket] = []
    tried: list[int] = []

    def launch(port: int) -> subprocess.Popen[bytes]:
        tried.append(port)
        if len(tried) == 1:
            thief = socket.socket()
            thief.bind(("127.0.0.1", port))
            thief.listen()
            thieves.append(thief)
        return http_server(port, tmp_path)

    try:
        proc, port = start_listener(launch, "http.server")
        try:
            assert len(tried) == 2, tried
            assert port == tried[1] != tried[0]
            assert listens(proc.pid, port)
            with socket.create_connection(("127.0.0.1", port)) as conn:
                conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
                assert conn.recv(12).startswith(b"HTTP/1.0 200")
        finally:
            proc.kill()
            proc.wait()
    finally:
        for thief in thieves:
            thief.close()


def test_a_port_another_process_listens_on_is_not_taken_for_the_servers(tmp_path: Path) -> None:
    """The wrong listener answers a connect; only the server's own socket counts."""
    with socket.socket() as thief:
        thief.bind(("127.0.0.1", 0))
        thief.listen()
        port = thief.getsockname()[1]
        proc = http_server(port, tmp_path)
        try:
            with socket.create_connection(("127.0.0.1", port)):
                pass  # a connect succeeds: what waiting for a connect would have believed
            assert not listens(proc.pid, port)
            proc.wait(timeout=30)  # it could not bind, and says so by exiting
            assert not listens(proc.pid, port)
        finally:
            proc.kill()
            proc.wait()
