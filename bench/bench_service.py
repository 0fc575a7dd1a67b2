"""`rlm serve` under load: well-behaved tenants alone, then beside a tenant that floods.

    .venv/bin/python bench/bench_service.py [--backend docker|restricted] [--seconds 20]
        [--repeats 2] [--latency 0.05] [--slots N] [--json out.json]

Starts the offline model server (every call takes ``--latency`` seconds) and a real
``rlm serve`` on loopback, each in its own process, then runs phases in turn,
interleaved ``--repeats`` times:

- **alone**: two well-behaved tenants, each with two clients in a closed loop (the
  ``openai`` SDK: ``chat.completions.create``, one RLM run per request, a ~20 KB
  context with a needle; the root model inspects it, fans ``llm_batch`` out over
  its chunks and answers);
- **flood**: the same, beside a third tenant whose 24 clients send runs as fast as
  they can and retry a 429 after 50 ms, ignoring ``Retry-After`` (from a process of
  its own, so that its CPU does not slow the loop timing the good tenants).

Prints, per phase: the good tenants' runs per second and their latency p50/p99
(pooled over the repeats), the flood's accepted runs and its 429s, and the ratio of
the good tenants' p99 beside the flood to their p99 alone. Every run's answer is
checked. Needs the Docker engine and image for ``--backend docker``
(scripts/setup-docker.sh).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai

from rlm.image import DEFAULT_IMAGE

GOOD = ("good-1", "good-2")
FLOOD = "flood"
GOOD_CLIENTS = 2
FLOOD_CLIENTS = 24
#: A needle among ~20 KB of lines: the root model splits it into chunks for a batch.
CONTEXT = "\n".join(
    f"line {i}: the secret code is 7411" if i == 333 else f"line {i}: nothing here to see"
    for i in range(700)
)
QUERY = "What is the secret code?"


def _token(name: str) -> str:
    return f"bench-token-{name}"


def _config(database: Path, backend: str, slots: int | None) -> str:
    tenants = ""
    for name in (*GOOD, FLOOD):
        quota = 8 if name == FLOOD else GOOD_CLIENTS
        tenants += f"""
[[tenants]]
name = "{name}"
token_sha256 = "{hashlib.sha256(_token(name).encode()).hexdigest()}"
profiles = ["rlm"]
max_concurrent_runs = {quota}
runs_per_minute = "unlimited"
"""
    return f"""
[server]
database = "{database}"
allow_unsafe_restricted = true
pool_size = 4
max_concurrent_sub_calls = 64
{"" if slots is None else f"max_concurrent_runs = {slots}"}

[profiles.rlm]
model = "root-bench"
sub_model = "sub-bench"
backend = "{backend}"
{tenants}"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """`rlm serve` in a subprocess on loopback."""

    def __init__(self, folder: Path, model_url: str, backend: str, slots: int | None) -> None:
        self.config = folder / "service.toml"
        self.config.write_text(_config(folder / "rlm.db", backend, slots))
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / "serve.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RLM_", "OPENAI_"))}
        env.update(OPENAI_API_KEY="bench-provider-key", OPENAI_BASE_URL=model_url)
        env.setdefault("RLM_IMAGE", os.environ.get("RLM_IMAGE", DEFAULT_IMAGE))
        command = [sys.executable, "-m", "rlm.cli", "serve", "--config", str(self.config)]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [*command, "--port", str(self.port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=folder,
            )

    def wait_ready(self, timeout: float = 60.0) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"rlm serve exited:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"rlm serve did not start:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    refused: int = 0
    failed: int = 0
    seconds: float = 0.0


async def _good_client(url: str, tenant: str, until: float, tally: Tally) -> None:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=_token(tenant), max_retries=0)
    try:
        while time.monotonic() < until:
            started = time.monotonic()
            try:
                reply = await client.chat.completions.create(
                    model="rlm",
                    messages=[{"role": "user", "content": QUERY}],
                    extra_body={"rlm": {"context": CONTEXT}},
                    timeout=120,
                )
            except openai.RateLimitError:
                tally.refused += 1
                await asyncio.sleep(0.2)
                continue
            except openai.OpenAIError:
                tally.failed += 1
                continue
            if reply.choices[0].message.content != "7411":
                tally.failed += 1
                continue
            tally.latencies.append(time.monotonic() - started)
    finally:
        await client.close()


async def _flood_client(url: str, until: float, tally: Tally) -> None:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=_token(FLOOD), max_retries=0)
    try:
        while time.monotonic() < until:
            started = time.monotonic()
            try:
                await client.chat.completions.create(
                    model="rlm",
                    messages=[{"role": "user", "content": QUERY}],
                    extra_body={"rlm": {"context": CONTEXT}},
                    timeout=120,
                )
            except openai.RateLimitError:
                tally.refused += 1
                await asyncio.sleep(0.05)  # hostile: Retry-After ignored
                continue
            except openai.OpenAIError:
                tally.failed += 1
                continue
            tally.latencies.append(time.monotonic() - started)
    finally:
        await client.close()


def _flood_process(url: str, seconds: float, out: Any) -> None:
    """The flood, in a process of its own: its clients' CPU must not slow the
    loop that times the good tenants' runs."""

    async def flood() -> Tally:
        bad = Tally()
        until = time.monotonic() + seconds
        await asyncio.gather(*(_flood_client(url, until, bad) for _ in range(FLOOD_CLIENTS)))
        return bad

    bad = asyncio.run(flood())
    out.put((bad.latencies, bad.refused, bad.failed))


async def phase(url: str, seconds: float, flood: bool) -> tuple[Tally, Tally]:
    good, bad = Tally(), Tally()
    process = None
    if flood:
        results: Any = multiprocessing.Queue()
        process = multiprocessing.Process(target=_flood_process, args=(url, seconds, results))
        process.start()
    until = time.monotonic() + seconds
    started = time.monotonic()
    await asyncio.gather(
        *(_good_client(url, t, until, good) for t in GOOD for _ in range(GOOD_CLIENTS))
    )
    good.seconds = bad.seconds = time.monotonic() - started
    if process is not None:
        bad.latencies, bad.refused, bad.failed = await asyncio.to_thread(results.get, True, 300)
        process.join()
    return good, bad


class ModelServer:
    """The offline model server in a process of its own (its CPU is not ours)."""

    def __init__(self, latency: float) -> None:
        code = (
            "import sys, time\n"
            "from rlm.testing import OfflineModelServer\n"
            f"with OfflineModelServer(latency={latency!r}) as s:\n"
            "    print(s.base_url, flush=True)\n"
            "    sys.stdin.read()\n"
        )
        self.process = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        self.base_url = self.process.stdout.readline().strip()
        if not self.base_url:
            raise RuntimeError("the offline model server did not start")

    def __enter__(self) -> ModelServer:
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(30)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def merge(tallies: list[Tally]) -> Tally:
    out = Tally()
    for t in tallies:
        out.latencies += t.latencies
        out.refused += t.refused
        out.failed += t.failed
        out.seconds += t.seconds
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with (
        ModelServer(args.latency) as model_server,
        tempfile.TemporaryDirectory(prefix="rlm-bench-service-") as folder,
    ):
        server = Server(Path(folder), model_server.base_url, args.backend, args.slots)
        try:
            server.wait_ready()
            await phase(server.url, min(5.0, args.seconds), flood=False)  # warm-up
            results: dict[str, list[tuple[Tally, Tally]]] = {"alone": [], "flood": []}
            for _ in range(args.repeats):
                for name in ("alone", "flood"):
                    results[name].append(await phase(server.url, args.seconds, name == "flood"))
        finally:
            server.stop()
    report: dict[str, Any] = {
        "backend": args.backend,
        "latency_s": args.latency,
        "seconds": args.seconds,
        "repeats": args.repeats,
        "slots": args.slots,
    }
    for name, pairs in results.items():
        good = merge([g for g, _ in pairs])
        bad = merge([b for _, b in pairs])
        report[name] = {
            "good_runs": len(good.latencies),
            "good_runs_per_s": len(good.latencies) / good.seconds,
            "good_p50_s": statistics.median(good.latencies) if good.latencies else None,
            "good_p99_s": percentile(good.latencies, 0.99),
            "good_refused": good.refused,
            "good_failed": good.failed,
            "flood_runs": len(bad.latencies),
            "flood_runs_per_s": len(bad.latencies) / bad.seconds if bad.seconds else 0.0,
            "flood_refused": bad.refused,
            "flood_failed": bad.failed,
        }
    report["p99_ratio"] = report["flood"]["good_p99_s"] / report["alone"]["good_p99_s"]
    report["p50_ratio"] = report["flood"]["good_p50_s"] / report["alone"]["good_p50_s"]
    return report


def show(report: dict[str, Any]) -> None:
    print(
        f"rlm serve load test: backend {report['backend']}, model latency "
        f"{report['latency_s'] * 1000:.0f} ms, {report['repeats']} x {report['seconds']:g} s "
        "per phase, interleaved"
    )
    header = f"{'phase':<7}{'good runs/s':>12}{'p50':>9}{'p99':>9}{'flood runs/s':>14}"
    print(header + f"{'flood 429s':>12}{'failed':>8}")
    for name in ("alone", "flood"):
        r = report[name]
        failed = r["good_failed"] + r["flood_failed"]
        print(
            f"{name:<7}{r['good_runs_per_s']:>12.2f}{r['good_p50_s']:>8.2f}s"
            f"{r['good_p99_s']:>8.2f}s{r['flood_runs_per_s']:>14.2f}{r['flood_refused']:>12}"
            f"{failed:>8}"
        )
    print(
        f"good tenants beside the flood / alone: p50 x{report['p50_ratio']:.2f}, "
        f"p99 x{report['p99_ratio']:.2f} (target: p99 within 2x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["docker", "restricted"], default="docker")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    parser.add_argument("--repeats", type=int, default=2, help="alone/flood pairs")
    parser.add_argument("--latency", type=float, default=0.05, help="model call latency, s")
    parser.add_argument(
        "--slots", type=int, help="[server] max_concurrent_runs (default: the server's)"
    )
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    report = asyncio.run(run(args))
    show(report)
    failed = sum(report[n]["good_failed"] + report[n]["flood_failed"] for n in ("alone", "flood"))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if failed:
        sys.exit(f"{failed} run(s) failed: see the counts above")


if __name__ == "__main__":
    main()
