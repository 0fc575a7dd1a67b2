"""A container's liveness check over the sockets an engine hands out: plain and TLS.

A remote engine over TLS (``DOCKER_TLS_VERIFY``) attaches through an ``SSLSocket``,
which refuses ``recv`` flags such as ``MSG_PEEK``: the check must still answer.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from rlm.backends.docker.channel import Channel
from rlm.backends.docker.container import SandboxContainer


def tls_pair(
    tmp_path: Path, version: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED
) -> tuple[ssl.SSLSocket, ssl.SSLSocket]:
    """Two connected TLS sockets on loopback, with a throwaway self-signed certificate."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(cert)
    client_ctx.maximum_version = version
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[ssl.SSLSocket] = []

    def accept() -> None:
        conn, _ = listener.accept()
        accepted.append(server_ctx.wrap_socket(conn, server_side=True))

    thread = threading.Thread(target=accept)
    thread.start()
    client = client_ctx.wrap_socket(
        socket.create_connection(listener.getsockname()), server_hostname="localhost"
    )
    thread.join(10)
    listener.close()
    return client, accepted[0]


@pytest.fixture(params=[ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.MAXIMUM_SUPPORTED])
def tls(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[ssl.SSLSocket, ssl.SSLSocket]]:
    client, server = tls_pair(tmp_path, request.param)
    yield client, server
    client.close()
    server.close()


def alive(sock: socket.socket) -> bool:
    # alive() reads only the container's channel.
    return SandboxContainer.alive(SimpleNamespace(channel=Channel(sock)))  # type: ignore[arg-type]


def test_an_idle_tls_attach_is_alive(tls: tuple[ssl.SSLSocket, ssl.SSLSocket]) -> None:
    client, _server = tls
    assert alive(client)


def test_a_tls_attach_whose_engine_hung_up_is_dead(tmp_path: Path) -> None:
    # TLS 1.2: no session tickets arrive after the handshake, so what is left to
    # read is the hang-up alone. (Under 1.3 a hang-up behind unread records reads as
    # alive; the next read then finds the end, as for any late message.)
    client, server = tls_pair(tmp_path, ssl.TLSVersion.TLSv1_2)
    try:
        server.close()
        assert not alive(client)
    finally:
        client.close()


def test_a_plain_attach_is_alive_then_dead() -> None:
    a, b = socket.socketpair()
    try:
        assert alive(a)
        b.close()
        assert not alive(a)
    finally:
        a.close()
