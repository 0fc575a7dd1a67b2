"""How much faster llm_batch is than llm_query in a loop, and what the batcher costs.

Run: ``.venv/bin/python bench/bench_batcher.py`` (about a minute and a half;
``--quick`` skips the sequential N=100 run and the largest batches).

Against the offline model server at 200 ms latency it prints, for N = 3, 10, 100 and
1000 prompts, the wall time of N sequential ``llm_query`` calls and of one
``llm_batch`` at several ``max_concurrent`` c, each as a ratio of the ideal
⌈N/c⌉·L (L = 200 ms; sequential is the batch with c = 1). Sequential N = 1000
would take 200 s and is left out. Each batch runs on c connections opened just
before it, as in a run whose batches follow each other within the keep-alive.

Then, at N = c = 100, the same requests made six ways side by side: raw sockets
(what the server and the kernel alone allow), the openai SDK's own client, the bare
``ModelClient``, the batcher, the batcher on new connections, and the batcher with
a server that has no CPU of its own (see below). Last, at zero
latency, the batcher's own cost per call: the same calls made through the batcher
and straight through the client.

The server runs in a process of its own, as a provider would: in a thread of this
process it would compete with the client for the GIL and the benchmark would time
the server as much as the batcher. On a machine with two or more CPUs that process
is pinned to one CPU and this one to the others, as a provider runs on machines of
its own: left to the scheduler, the two processes that wake each other share a CPU
at times, and the batch waits for the server's turn (bench/README.md). Like
``rlm run``, the benchmark freezes its start-up heap first (rlm/cli.py).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import multiprocessing
import os
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from multiprocessing.connection import Connection
from typing import Any

import openai

from rlm.provider.client import ChatResult, ModelClient
from rlm.session import SessionLimits, SessionState
from rlm.subcalls.batcher import Batcher

LATENCY = 0.2
SUB = "sub-bench"


def split_cpus() -> tuple[set[int], set[int]] | None:
    """CPUs for (this process, the server), or None with fewer than two to split."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return set(cpus[:-1]), {cpus[-1]}


@contextmanager
def on_cpus(cpus: set[int] | None) -> Iterator[None]:
    """Run this thread (the event loop's) on ``cpus`` for a while; None: as it is."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _serve(conn: Connection, latency: float, cpus: set[int] | None) -> None:
    from rlm.testing import OfflineModelServer

    if cpus is not None:
        os.sched_setaffinity(0, cpus)  # before uvicorn's thread starts, which inherits it
    with OfflineModelServer(latency=latency) as server:
        conn.send(server.base_url)
        conn.recv()  # until the parent says stop (or goes away)


@contextmanager
def server_process(latency: float, cpus: set[int] | None = None) -> Iterator[str]:
    """The offline server in a process of its own, on ``cpus`` if given."""
    parent, child = multiprocessing.Pipe()
    process = multiprocessing.get_context("spawn").Process(
        target=_serve, args=(child, latency, cpus), daemon=True
    )
    process.start()
    try:
        if not parent.poll(30):
            raise RuntimeError("the offline server did not start")
        yield parent.recv()
    finally:
        parent.send("stop")
        process.join(10)
        if process.is_alive():
            process.kill()


def new_session(max_concurrent: int) -> SessionState:
    limits = SessionLimits(max_concurrent=max_concurrent, max_sub_calls=None, max_batch_size=10**6)
    return SessionState(sub_model=SUB, limits=limits)


async def timed(make: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await make()
    return time.perf_counter() - started


async def median_of(repeats: int, make: Callable[[], Awaitable[object]]) -> float:
    return statistics.median([await timed(make) for _ in range(repeats)])


async def warm(batcher: Batcher, width: int) -> None:
    """Open ``width`` connections first, as a long run would have them open."""
    session = new_session(width)
    await batcher.run(session, SUB, [f"warm {i}" for i in range(width)], width)


async def speedups(base_url: str, quick: bool) -> None:
    client = ModelClient(api_key="bench", base_url=base_url, timeout=60)
    batcher = Batcher(client, max_concurrent=1000, dedup=False)
    await warm(batcher, 1000 if not quick else 100)
    print(f"llm_batch vs llm_query, server latency L = {LATENCY * 1000:.0f} ms")
    print(f"{'N':>5}  {'how':<22} {'wall s':>8} {'ideal s':>8} {'ratio':>6}")
    plan: list[tuple[int, list[int]]] = [
        (3, [1, 3]),
        (10, [1, 3, 10]),
        (100, [1, 10, 50, 100]),
        (1000, [10, 100, 250, 1000]),
    ]
    run = 0
    for n, widths in plan:
        for c in widths:
            if quick and (n * LATENCY / c > 5):
                continue
            run += 1
            prompts = [f"run {run} prompt {i}" for i in range(n)]
            session = new_session(c)
            ideal = math.ceil(n / c) * LATENCY
            # Short runs are repeated and the median kept: this machine is shared.
            repeats = 9 if ideal <= 1.0 else 1
            if c == 1:
                how = f"llm_query x{n}"

                async def loop(
                    prompts: list[str] = prompts, session: SessionState = session
                ) -> None:
                    for p in prompts:
                        await batcher.run(session, SUB, [p], 1)

                wall = await median_of(repeats, loop)
            else:
                how = f"llm_batch c={c}"
                # Steady state: the connections a run's earlier batches left open.
                await warm(batcher, c)
                wall = await median_of(
                    repeats, lambda p=prompts, s=session, c=c: batcher.run(s, SUB, p, c)
                )
            print(f"{n:>5}  {how:<22} {wall:>8.3f} {ideal:>8.3f} {wall / ideal:>6.2f}")
            failures = session.usage.model(SUB).failures
            if failures:
                print(f"       ({failures} sub-calls failed)")
        if n == 1000:
            print(f"{n:>5}  {'llm_query x1000':<22} {'(not run: 200 s at L = 200 ms)':>24}")
    await client.aclose()


async def raw_http(base_url: str, n: int) -> Callable[[], Awaitable[None]]:
    """``n`` requests at once over plain asyncio sockets: what the server alone allows."""
    host_port = base_url.split("//", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    conns = [await asyncio.open_connection(host, int(port)) for _ in range(n)]

    async def one(i: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = json.dumps({"model": SUB, "messages": [{"role": "user", "content": f"r{i}"}]})
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body.encode())
        )
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
        await reader.readexactly(length)

    async def run() -> None:
        await asyncio.gather(*(one(i, r, w) for i, (r, w) in enumerate(conns)))

    return run


async def floors(base_url: str, unpinned: tuple[str, set[int]] | None) -> None:
    """Where the time goes at N = 100, c = 100: server, HTTP client, batcher.

    ``unpinned`` is a server left free to run on any CPU, and every CPU: its row is
    the batcher with both processes left to the scheduler.
    """
    n = width = 100
    client = ModelClient(api_key="bench", base_url=base_url, timeout=60)
    batcher = Batcher(client, max_concurrent=1000, dedup=False)
    await warm(batcher, width)
    raw = await raw_http(base_url, n)

    async def direct() -> None:
        await asyncio.gather(
            *(client.chat(SUB, [{"role": "user", "content": f"d{i}"}]) for i in range(n))
        )

    sdk = openai.AsyncOpenAI(api_key="bench", base_url=base_url, timeout=60, max_retries=0)

    async def through_sdk() -> None:
        await asyncio.gather(
            *(
                sdk.chat.completions.create(
                    model=SUB, messages=[{"role": "user", "content": f"s{i}"}]
                )
                for i in range(n)
            )
        )

    async def batched() -> None:
        await batcher.run(new_session(width), SUB, [f"b{i}" for i in range(n)], width)

    cold_clients: list[ModelClient] = []

    async def cold() -> None:
        fresh = ModelClient(api_key="bench", base_url=base_url, timeout=60)
        cold_clients.append(fresh)  # closed after timing
        cold_batcher = Batcher(fresh, max_concurrent=1000, dedup=False)
        await cold_batcher.run(new_session(width), SUB, [f"c{i}" for i in range(n)], width)

    ways: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        ("raw HTTP/1.1 on asyncio sockets", raw),
        ("openai SDK create() x100, gathered", through_sdk),
        ("ModelClient.chat x100, gathered", direct),
        ("Batcher.run (llm_batch)", batched),
        ("Batcher.run on new connections", cold),
    ]
    shared_client = None
    if unpinned is not None:
        shared_url, every_cpu = unpinned
        shared_client = ModelClient(api_key="bench", base_url=shared_url, timeout=60)
        shared_batcher = Batcher(shared_client, max_concurrent=1000, dedup=False)
        await warm(shared_batcher, width)

        async def shared() -> None:
            with on_cpus(every_cpu):
                prompts = [f"u{i}" for i in range(n)]
                await shared_batcher.run(new_session(width), SUB, prompts, width)

        ways.append(("Batcher.run, no CPU of its own", shared))
    print()
    print(
        f"N = {n}, c = {width}: the same {n} requests made {len(ways)} ways "
        "(interleaved, median of 9)"
    )
    walls: dict[str, list[float]] = {label: [] for label, _ in ways}
    cpus: dict[str, list[float]] = {label: [] for label, _ in ways}
    await through_sdk()  # its own connections, opened before timing
    for _ in range(9):
        for label, make in ways:
            cpu = time.process_time()
            walls[label].append(await timed(make))
            cpus[label].append((time.process_time() - cpu) / n * 1000)
        for fresh in cold_clients:
            await fresh.aclose()
        cold_clients.clear()
    for label, _ in ways:
        ratio = statistics.median(walls[label]) / LATENCY
        cpu_ms = statistics.median(cpus[label])
        print(f"  {label:<34} ratio {ratio:>5.2f}   client CPU {cpu_ms:.2f} ms/request")
    await client.aclose()
    await sdk.close()
    if shared_client is not None:
        await shared_client.aclose()


class InstantClient:
    """Answers at once, in process: what is left is the batcher's own bookkeeping."""

    async def chat(self, model: str, messages: list[dict[str, str]], **_: object) -> ChatResult:
        await asyncio.sleep(0)
        return ChatResult(text="ok", prompt_tokens=1, completion_tokens=1)


async def cpu_per_call(n: int, make: Callable[[], Awaitable[object]]) -> float:
    """CPU time of this process per call, in µs (the server's is not counted)."""
    started = time.process_time()
    await make()
    return (time.process_time() - started) / n * 1e6


async def overhead(base_url: str, quick: bool) -> None:
    """Per-call cost of the batcher over the bare client, at zero latency."""
    client = ModelClient(api_key="bench", base_url=base_url, timeout=60)
    n_seq = 300 if quick else 1000
    n_par, width = (500, 100) if quick else (2000, 100)
    instant = InstantClient()
    rows = []
    for name, target in (("offline server", client), ("instant client", instant)):
        batcher = Batcher(target, max_concurrent=1000, dedup=False)  # type: ignore[arg-type]
        if target is client:
            await warm(batcher, width)
        scale = 1 if target is client else 10

        async def direct_seq(target: Any = target, n: int = n_seq * scale) -> None:
            for i in range(n):
                await target.chat(SUB, [{"role": "user", "content": f"d{i}"}])

        async def batched_seq(batcher: Batcher = batcher, n: int = n_seq * scale) -> None:
            session = new_session(1)
            for i in range(n):
                await batcher.run(session, SUB, [f"b{i}"], 1)

        async def direct_par(target: Any = target, n: int = n_par * scale) -> None:
            gate = asyncio.Semaphore(width)

            async def one(i: int) -> None:
                async with gate:
                    await target.chat(SUB, [{"role": "user", "content": f"dp{i}"}])

            await asyncio.gather(*(one(i) for i in range(n)))

        async def batched_par(batcher: Batcher = batcher, n: int = n_par * scale) -> None:
            prompts = [f"bp{i}" for i in range(n)]
            await batcher.run(new_session(width), SUB, prompts, width)

        for label, n, direct, batched in (
            ("one at a time", n_seq * scale, direct_seq, batched_seq),
            (f"{width} at a time", n_par * scale, direct_par, batched_par),
        ):
            # Interleaved, so a change in the machine's load hits both alike.
            ds, bs = [], []
            for _ in range(5):
                ds.append(await cpu_per_call(n, direct))
                bs.append(await cpu_per_call(n, batched))
            rows.append((f"{name}, {label}", n, statistics.median(ds), statistics.median(bs)))
    print()
    print(
        "batcher overhead per call at zero latency (CPU of this process, interleaved, median of 5)"
    )
    print(f"{'':<34} {'calls':>6} {'direct':>10} {'batcher':>10} {'overhead':>10}")
    for label, n, d, b in rows:
        print(f"{label:<34} {n:>6} {d:>8.0f}µs {b:>8.0f}µs {b - d:>8.0f}µs")
    await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the longest runs")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    ours, servers = split_cpus() or (None, None)
    if ours is not None and servers is not None:
        print(f"client on CPUs {sorted(ours)}, offline server on CPU {min(servers)}")
    else:
        print("one CPU: the client and the offline server share it")
    gc.freeze()  # as `rlm run` does before a run (rlm/cli.py)
    with ExitStack() as stack:
        url = stack.enter_context(server_process(LATENCY, servers))
        unpinned = None
        if ours is not None:
            # Started before this process is pinned, so that it inherits every CPU.
            every_cpu = os.sched_getaffinity(0)
            unpinned = (stack.enter_context(server_process(LATENCY)), every_cpu)
        stack.enter_context(on_cpus(ours))
        asyncio.run(speedups(url, args.quick))
        asyncio.run(floors(url, unpinned))
    with server_process(0.0, servers) as url, on_cpus(ours):
        asyncio.run(overhead(url, args.quick))
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
