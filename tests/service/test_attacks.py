"""Attacks on a real `rlm serve`: token brute force, slow and oversized requests, and
another tenant's runs. Each client binds its own loopback source address
(127.0.0.x), so the per-address limit of one test does not reach the next."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from rlm.testing import OfflineModelServer
from tests.service.api_support import SCRIPTS, TOKENS, Service

LIMIT = 5
BODY_TIMEOUT_S = 1.0
PROXY = "127.0.0.40"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    folder: Path = tmp_path_factory.mktemp("attacks")
    with OfflineModelServer(scripts=SCRIPTS) as model_server:
        running = Service(folder, model_server, str(folder / "rlm.db"))
        extra = (
            f"auth_failures_per_minute = {LIMIT}\n"
            f'trusted_proxy = "{PROXY}"\n'
            f"body_timeout_s = {BODY_TIMEOUT_S}\n"
        )
        running.config.write_text(
            running.config.read_text().replace("[server]\n", "[server]\n" + extra, 1)
        )
        running.start()
        try:
            yield running
        finally:
            assert running.stop() == 0


def client_from(service: Service, source: str, token: str | None) -> httpx.Client:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    transport = httpx.HTTPTransport(local_address=source)
    return httpx.Client(base_url=service.url, headers=headers, transport=transport, timeout=10)


def test_token_brute_force_is_limited_per_address_even_for_the_right_token(
    service: Service,
) -> None:
    with client_from(service, "127.0.0.11", "wrong-guess") as guesser:
        for _ in range(LIMIT):
            assert guesser.get("/v1/runs").status_code == 401
        refused = guesser.get("/v1/runs")
        assert refused.status_code == 429, refused.text
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert refused.json()["error"]["code"] == "too_many_auth_failures"
        # The right token from that address is refused too: a 429 says nothing of a guess.
        right = guesser.get("/v1/runs", headers={"Authorization": f"Bearer {TOKENS['acme']}"})
        assert right.status_code == 429
    with client_from(service, "127.0.0.11", None) as anonymous:
        assert anonymous.get("/healthz").status_code == 200
    # Another address is untouched.
    with client_from(service, "127.0.0.12", TOKENS["acme"]) as other:
        assert other.get("/v1/runs").status_code == 200


def test_a_right_token_does_not_count_and_missing_tokens_do_not_block(service: Service) -> None:
    with client_from(service, "127.0.0.13", None) as anonymous:
        for _ in range(LIMIT * 2):
            assert anonymous.get("/v1/runs").status_code == 401
    with client_from(service, "127.0.0.13", TOKENS["acme"]) as client:
        for _ in range(LIMIT * 2):
            assert client.get("/v1/runs").status_code == 200


def test_forwarded_for_counts_only_behind_the_trusted_proxy(service: Service) -> None:
    # A client rotating X-Forwarded-For is still one address to the limiter.
    with client_from(service, "127.0.0.14", "wrong-guess") as spoofer:
        codes = [
            spoofer.get("/v1/runs", headers={"X-Forwarded-For": f"10.0.0.{i}"}).status_code
            for i in range(LIMIT + 1)
        ]
        assert codes == [401] * LIMIT + [429]
    # Behind the trusted proxy, each forwarded client has its own count.
    with client_from(service, PROXY, "wrong-guess") as proxy:
        for _ in range(LIMIT):
            assert proxy.get("/v1/runs", headers={"X-Forwarded-For": "10.1.1.1"}).status_code == 401
        assert proxy.get("/v1/runs", headers={"X-Forwarded-For": "10.1.1.1"}).status_code == 429
        good = {"X-Forwarded-For": "10.1.1.2", "Authorization": f"Bearer {TOKENS['acme']}"}
        assert proxy.get("/v1/runs", headers=good).status_code == 200
        # The proxy's own appended entry counts, not what the client put before it.
        spoofed = {"X-Forwarded-For": "10.1.1.2, 10.1.1.1"}
        assert proxy.get("/v1/runs", headers=spoofed).status_code == 429


def _raw(service: Service, source: str) -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", service.port))
    return sock


def _read_all(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            return data
        if not chunk:
            return data
        data += chunk


def test_a_dribbled_body_gets_408_within_the_bound_while_others_are_served(
    service: Service,
) -> None:
    sock = _raw(service, "127.0.0.15")
    started = time.monotonic()
    head = (
        "POST /v1/runs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {TOKENS['acme']}\r\nContent-Length: 100000\r\n\r\n"
    )
    sock.sendall(head.encode() + b'{"profile": ')
    # Others are served at once meanwhile.
    with client_from(service, "127.0.0.16", TOKENS["acme"]) as other:
        before = time.monotonic()
        assert other.get("/v1/runs").status_code == 200
        assert time.monotonic() - before < 1
    reply = _read_all(sock, 4 * BODY_TIMEOUT_S + 3)
    elapsed = time.monotonic() - started
    sock.close()
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"request_timeout" in reply
    assert elapsed < BODY_TIMEOUT_S + 2


def test_a_body_sent_byte_by_byte_cannot_outlast_the_total_bound(service: Service) -> None:
    sock = _raw(service, "127.0.0.17")
    started = time.monotonic()
    head = (
        "POST /v1/runs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {TOKENS['acme']}\r\nContent-Length: 100000\r\n\r\n"
    )
    sock.sendall(head.encode())
    sock.settimeout(0.01)
    reply = b""
    # One byte every half deadline: each pause is short, the whole is not.
    while time.monotonic() - started < 4 * BODY_TIMEOUT_S + 3:
        try:
            sock.sendall(b" ")
        except OSError:
            break
        try:
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
        except TimeoutError:
            pass
        time.sleep(BODY_TIMEOUT_S / 2)
    elapsed = time.monotonic() - started
    reply += _read_all(sock, 0.5)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert elapsed < 4 * BODY_TIMEOUT_S + 2


def test_an_oversized_header_is_refused(service: Service) -> None:
    sock = _raw(service, "127.0.0.18")
    head = b"GET /v1/runs HTTP/1.1\r\nHost: x\r\n" + b"X-Flood: " + b"a" * (1 << 20) + b"\r\n\r\n"
    with contextlib.suppress(OSError):  # closed while sending: refused
        sock.sendall(head)
    reply = _read_all(sock, 5)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 4") or reply == b"", reply[:200]


def test_headers_dribbled_byte_by_byte_are_cut_off(service: Service) -> None:
    sock = _raw(service, "127.0.0.20")
    started = time.monotonic()
    sock.sendall(b"GET /v1/runs HTTP/1.1\r\nHost: x\r\n")
    sock.settimeout(0.01)
    closed = False
    while time.monotonic() - started < BODY_TIMEOUT_S + 5:
        try:
            sock.sendall(b"X-a: b\r\n")
            if sock.recv(65536) == b"":
                closed = True
                break
        except TimeoutError:
            pass
        except OSError:
            closed = True
            break
        time.sleep(0.5)
    elapsed = time.monotonic() - started
    sock.close()
    assert closed and elapsed < BODY_TIMEOUT_S + 2


def test_a_guessed_run_id_and_another_tenants_look_alike(service: Service) -> None:
    with client_from(service, "127.0.0.19", TOKENS["acme"]) as acme:
        run_id = acme.post("/v1/runs", json={"profile": "rlm", "query": "hi"}).json()["id"]
    with client_from(service, "127.0.0.19", TOKENS["globex"]) as globex:
        for path in (f"/v1/runs/{run_id}", f"/v1/runs/{run_id}/events"):
            theirs = globex.get(path)
            made_up = globex.get(path.replace(run_id, "run_" + "0" * 24))
            assert theirs.status_code == made_up.status_code == 404
            assert theirs.json()["error"]["code"] == made_up.json()["error"]["code"]
            assert TOKENS["acme"] not in theirs.text
        assert globex.delete(f"/v1/runs/{run_id}").status_code == 404
        listed = globex.get("/v1/runs", params={"limit": 100}).json()["data"]
        assert run_id not in [run["id"] for run in listed]
