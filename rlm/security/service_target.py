"""``rlm security-check --service URL``: HTTP attacks on a running ``rlm serve``.

Each attack is one check that passes or fails with what it saw: missing and wrong
tokens are 401, malformed JSON is 400, an oversized body is 413 before it is sent,
a body dribbled slowly is cut off within the bound, another tenant's run is 404 (with
``--other-token``), guessing tokens engages the per-address limit (429), and no
response, header or body, ever contains a token. The guessing check runs last: it
locks this address out of the service for up to a minute.
"""

from __future__ import annotations

import json
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.client import HTTPConnection, HTTPSConnection
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    import argparse


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "seconds": self.seconds}


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class ServiceAttack:
    """The attacks on the service at ``url``, as tenant ``token`` (and ``other_token``)."""

    url: str
    token: str
    other_token: str | None = None
    #: Seconds a stalled body may hold its request before the check fails.
    slow_bound_s: float = 35.0
    #: Wrong tokens sent at most before the guessing check fails.
    max_guesses: int = 200
    timeout_s: float = 10.0
    seen: list[bytes] = field(default_factory=list)

    def _connection(self) -> HTTPConnection:
        parts = urlsplit(self.url)
        host = parts.hostname or "127.0.0.1"
        if parts.scheme == "https":
            return HTTPSConnection(host, parts.port or 443, timeout=self.timeout_s)
        return HTTPConnection(host, parts.port or 80, timeout=self.timeout_s)

    def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        if body is not None:
            sent.setdefault("Content-Type", "application/json")
        connection = self._connection()
        try:
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            reply = Reply(
                response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
            )
        finally:
            connection.close()
        self.seen.append(json.dumps(reply.headers).encode() + reply.body)
        return reply

    # The checks: each returns (passed, what was seen).

    def missing_token(self) -> tuple[bool, str]:
        reply = self.request("GET", "/v1/runs")
        return reply.status == 401, f"no Authorization header: {reply.status}"

    def wrong_token(self) -> tuple[bool, str]:
        reply = self.request("GET", "/v1/runs", token="wrong-" + secrets.token_hex(8))
        return reply.status == 401, f"an unknown token: {reply.status}"

    def right_token(self) -> tuple[bool, str]:
        reply = self.request("GET", "/v1/runs", token=self.token)
        return reply.status == 200, f"the given token (needed for the rest): {reply.status}"

    def malformed_json(self) -> tuple[bool, str]:
        reply = self.request("POST", "/v1/runs", token=self.token, body=b'{"profile": ')
        return reply.status == 400, f"a body that is not JSON: {reply.status}"

    def oversized_body(self) -> tuple[bool, str]:
        # Declared, not sent: the service must refuse it from the header.
        sock = self._raw()
        try:
            sock.sendall(self._head("POST", "/v1/runs", 1 << 40) + b"{")
            reply = self._read(sock, self.timeout_s)
        finally:
            sock.close()
        ok = reply.startswith((b"HTTP/1.1 413", b"HTTP/1.0 413"))
        return ok, f"Content-Length 1 TiB: {reply[:12].decode('latin-1') or 'no reply'}"

    def slow_body(self) -> tuple[bool, str]:
        sock = self._raw()
        started = time.monotonic()
        try:
            sock.sendall(self._head("POST", "/v1/runs", 1000) + b'{"profile": ')
            reply = self._read(sock, self.slow_bound_s)
        finally:
            sock.close()
        took = time.monotonic() - started
        ok = took < self.slow_bound_s
        status = reply[:12].decode("latin-1") or "closed"
        return ok, f"a body stalled after 12 of 1000 bytes: {status} after {took:.1f} s"

    def other_tenant(self) -> tuple[bool, str]:
        if self.other_token is None:
            return True, "skipped: no --other-token given"
        runs = json.loads(self.request("GET", "/v1/runs", token=self.token).body)["data"]
        created = False
        if runs:
            run_id = runs[0]["id"]
        else:
            models = json.loads(self.request("GET", "/v1/models", token=self.token).body)
            query = {"profile": models["data"][0]["id"], "query": "rlm security-check"}
            made = self.request(
                "POST", "/v1/runs", token=self.token, body=json.dumps(query).encode()
            )
            run_id = json.loads(made.body)["id"]
            created = True
        codes = [
            self.request(method, path, token=self.other_token).status
            for method, path in (
                ("GET", f"/v1/runs/{run_id}"),
                ("GET", f"/v1/runs/{run_id}/events"),
                ("DELETE", f"/v1/runs/{run_id}"),
            )
        ]
        listed = json.loads(self.request("GET", "/v1/runs", token=self.other_token).body)
        leaked = run_id in [run["id"] for run in listed.get("data", [])]
        if created:
            self.request("DELETE", f"/v1/runs/{run_id}", token=self.token)
        ok = codes == [404, 404, 404] and not leaked
        return ok, f"the other tenant on a run of this one: {codes}, listed: {leaked}"

    def guessing(self) -> tuple[bool, str]:
        for sent in range(1, self.max_guesses + 1):
            reply = self.request("GET", "/v1/runs", token="guess-" + secrets.token_hex(8))
            if reply.status == 429:
                after = reply.headers.get("retry-after")
                ok = after is not None and after.isdigit()
                return ok, f"429 after {sent} wrong tokens, Retry-After {after}"
            if reply.status != 401:
                return False, f"a wrong token got {reply.status}"
        return False, f"{self.max_guesses} wrong tokens, none refused with 429"

    def no_echo(self) -> tuple[bool, str]:
        tokens = [t.encode() for t in (self.token, self.other_token) if t]
        echoed = sum(1 for seen in self.seen for t in tokens if t in seen)
        return echoed == 0, f"{len(self.seen)} responses, {echoed} containing a token"

    def _raw(self) -> socket.socket:
        parts = urlsplit(self.url)
        return socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or 80), timeout=self.timeout_s
        )

    def _head(self, method: str, path: str, length: int) -> bytes:
        host = urlsplit(self.url).netloc
        return (
            f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {self.token}\r\nContent-Length: {length}\r\n\r\n"
        ).encode()

    def _read(self, sock: socket.socket, timeout: float) -> bytes:
        end = time.monotonic() + timeout
        data = b""
        while (left := end - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            data += chunk
            if b"\r\n\r\n" in data and b"connection: close" not in data.lower():
                break
        self.seen.append(data)
        return data

    def run(self) -> list[Check]:
        steps: list[tuple[str, Callable[[], tuple[bool, str]]]] = [
            ("missing token", self.missing_token),
            ("wrong token", self.wrong_token),
            ("right token", self.right_token),
            ("malformed JSON", self.malformed_json),
            ("oversized body", self.oversized_body),
            ("slow body", self.slow_body),
            ("another tenant's run", self.other_tenant),
            ("token guessing", self.guessing),
            ("secrets never echoed", self.no_echo),
        ]
        checks = []
        for name, step in steps:
            started = time.monotonic()
            try:
                ok, detail = step()
            except (OSError, ValueError, KeyError, IndexError) as exc:
                ok, detail = False, f"{type(exc).__name__}: {exc}"
            checks.append(Check(name, ok, detail, round(time.monotonic() - started, 3)))
        return checks


def run_service_check(
    url: str,
    token: str,
    *,
    other_token: str | None = None,
    slow_bound_s: float = 35.0,
    as_json: bool = False,
    console: Console | None = None,
) -> int:
    """Attack the service at ``url``; print the checks; 0 when all passed."""
    console = console or Console()
    attack = ServiceAttack(url, token, other_token, slow_bound_s=slow_bound_s)
    checks = attack.run()
    ok = all(check.ok for check in checks)
    if as_json:
        report = {"service": url, "ok": ok, "checks": [c.to_dict() for c in checks]}
        console.out(json.dumps(report, indent=2), highlight=False)
        return 0 if ok else 1
    table = Table(title=f"rlm serve at {url}")
    for column in ("check", "result", "seen"):
        table.add_column(column)
    for check in checks:
        result = "[green]pass[/green]" if check.ok else "[red]FAIL[/red]"
        table.add_row(check.name, result, check.detail)
    console.print(table)
    return 0 if ok else 1


def main_for(args: argparse.Namespace, console: Console) -> int:
    """``rlm security-check --service URL --token T [--other-token T2] [--slow-bound S]``."""
    if not args.token:
        console.print("[red]error:[/red] --service needs --token")
        return 2
    try:
        bound = 35.0 if args.slow_bound is None else float(args.slow_bound)
    except ValueError:
        console.print("[red]error:[/red] --slow-bound takes seconds")
        return 2
    return run_service_check(
        args.service,
        args.token,
        other_token=args.other_token,
        slow_bound_s=bound,
        as_json=args.json,
        console=console,
    )
