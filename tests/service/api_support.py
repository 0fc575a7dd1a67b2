"""The real `rlm serve` for API tests: a subprocess on loopback with a SQLite (or
PostgreSQL) database, the offline model server as its provider."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx

from rlm.testing import OfflineModelServer
from tests.support import IMAGE

SLOW_PROMPT = "[[sleep:30]] wait here"
METRICS_TOKEN = "operator-metrics-token"
TOKENS = {
    "acme": "acme-secret-token",
    "globex": "globex-secret-token",
    "tiny": "tiny-token",
    "burst": "burst-token",
    "frugal": "frugal-token",
}
#: Root models whose replies the tests script: "slow" waits in a sub-call (30 s
#: unless cancelled), "pause" waits a moment (keep-alive comments are sent meanwhile).
SCRIPTS = {
    "root-slow": [f"```repl\nx = llm_query({SLOW_PROMPT!r})\n```", "FINAL(late)"],
    "root-pause": [
        "```repl\nx = llm_query('[[sleep:1.2]] a pause')\nprint(x)\n```",
        "FINAL(after the pause)",
    ],
}


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def config_text(database: str, *, docker: bool = False) -> str:
    backend = "docker" if docker else "restricted"
    return f"""
[server]
database = "{database}"
allow_unsafe_restricted = true
max_body_bytes = 200000
metrics_token_sha256 = "{sha(METRICS_TOKEN)}"
pool_size = {1 if docker else 0}

[profiles.rlm]
model = "root-main"
sub_model = "sub-main"
backend = "{backend}"

[profiles.slow]
model = "root-slow"
sub_model = "sub-main"
backend = "{backend}"

[profiles.pause]
model = "root-pause"
sub_model = "sub-main"
backend = "restricted"

[profiles.limited]
model = "root-main"
sub_model = "sub-main"
backend = "restricted"
max_sub_calls = 0

[[tenants]]
name = "acme"
token_sha256 = "{sha(TOKENS["acme"])}"
profiles = ["rlm", "slow", "pause", "limited"]
max_concurrent_runs = 4
max_context_bytes = 100000

[[tenants]]
name = "globex"
token_sha256 = "{sha(TOKENS["globex"])}"
profiles = ["rlm"]

[[tenants]]
name = "tiny"
token_sha256 = "{sha(TOKENS["tiny"])}"
profiles = ["slow", "rlm"]
max_concurrent_runs = 1

[[tenants]]
name = "burst"
token_sha256 = "{sha(TOKENS["burst"])}"
profiles = ["rlm"]
runs_per_minute = 1

[[tenants]]
name = "frugal"
token_sha256 = "{sha(TOKENS["frugal"])}"
profiles = ["rlm"]
tokens_per_day = 1
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Service:
    """`rlm serve` in a subprocess; ``url`` is its base URL."""

    def __init__(self, folder: Path, model_server: OfflineModelServer, database: str) -> None:
        self.folder = folder
        self.model_server = model_server
        self.config = folder / "service.toml"
        self.config.write_text(config_text(database, docker="docker" in folder.name))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / "serve.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("RLM_", "OPENAI_"))},
            "OPENAI_API_KEY": "provider-secret-key",
            "OPENAI_BASE_URL": self.model_server.base_url,
            "RLM_SERVE_KEEPALIVE_S": "0.3",
            "RLM_IMAGE": IMAGE,
        }
        command = [sys.executable, "-m", "rlm.cli", "serve", "--config", str(self.config)]
        command += ["--port", str(self.port)]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.folder
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"rlm serve exited:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"rlm serve did not start:\n{self.log.read_text()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout)
        self.process = None
        return code

    def client(self, tenant: str | None = "acme", **kwargs: Any) -> httpx.Client:
        headers = {} if tenant is None else {"Authorization": f"Bearer {TOKENS[tenant]}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)


def wait_status(client: httpx.Client, run_id: str, statuses: set[str], timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        run = client.get(f"/v1/runs/{run_id}").json()
        if run["status"] in statuses or time.monotonic() > deadline:
            return run
        time.sleep(0.05)


def slow_calls(model_server: OfflineModelServer) -> int:
    """Sub-calls of "slow" runs the provider has seen so far."""
    return model_server.stats.prompts[SLOW_PROMPT]


def wait_for_the_slow_sub_call(
    model_server: OfflineModelServer, before: int, timeout: float = 10
) -> None:
    """Until one more "slow" sub-call than ``before`` is at the provider (its cell runs)."""
    deadline = time.monotonic() + timeout
    while slow_calls(model_server) <= before:
        assert time.monotonic() < deadline, "the slow run's sub-call never came"
        time.sleep(0.02)


def sse_events(lines: Any) -> list[dict[str, Any]]:
    """SSE messages as dicts of their fields (comments under ":")."""
    messages: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    for line in lines:
        if line == "":
            if current:
                messages.append(current)
            current = {}
        elif line.startswith(":"):
            messages.append({":": line[1:].strip()})
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            current[name] = current[name] + "\n" + value if name in current else value
    if current:
        messages.append(current)
    return messages
