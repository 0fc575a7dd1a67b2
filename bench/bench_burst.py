"""Bursts of Docker sessions through one warm pool: runs per second.

    .venv/bin/python bench/bench_burst.py [--bursts 10,50,200] [--pool 4] [--repeats 1]
                                          [--raw]

``--parallel 1`` is the pool as it was (one refill start at a time, no growth).
``--raw`` also times the engine alone after each burst: as many bare create + start +
remove of the same container spec through the Docker SDK, all at once, with no
runner handshake, context or cell: the bound a burst of sessions can approach.
Each session of a burst starts at once: it takes a container from one
``ContainerPool`` (warm if one is ready, else started for it), loads a 3.6 MB
context, runs one cell whose ``llm_batch`` sends 18 prompts to a fake batcher that
answers after 200 ms, and removes its container. Prints the wall time of each burst,
runs per second, and how many sessions got a warm container.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from typing import Any

import anyio
import anyio.to_thread

from rlm.backends.docker import ContainerPool, ContainerSpec, DockerSandbox, connect
from rlm.bridge import SessionBridge
from rlm.session import SessionState
from rlm.subcalls.batcher import SubResult

CONTEXT = "0123456789abcdef\n" * 211_765  # 3.6 MB
CELL = "r = llm_batch([context[i * 1000:(i + 1) * 1000] for i in range(18)])\nprint(len(r))"


class SlowBatcher:
    async def run(
        self, session: Any, model: str, prompts: list[str], max_concurrent: int | None, **kw: Any
    ) -> list[SubResult]:
        await anyio.sleep(0.2)
        return [SubResult(text="ok") for _ in prompts]


async def one(pool: ContainerPool, failures: list[str]) -> None:
    bridge = SessionBridge(SlowBatcher(), SessionState(sub_model="sub"))  # type: ignore[arg-type]
    try:
        async with DockerSandbox(bridge, pool) as sb:
            await sb.load_context(CONTEXT)
            result = await sb.execute(CELL, 120)
            if result.stdout.strip() != "18":
                failures.append(result.error or result.stdout)
    except Exception as exc:
        failures.append(repr(exc))


async def burst(
    n: int, pool_size: int, spec: ContainerSpec, args: argparse.Namespace
) -> tuple[float, int, int]:
    async with ContainerPool(
        spec, size=pool_size, max_size=max(pool_size, args.max_size), parallel=args.parallel
    ) as pool:
        await pool.wait_full(120)
        failures: list[str] = []
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(n):
                tg.start_soon(one, pool, failures)
        took = time.perf_counter() - started
        warm = pool.handed_out - pool.cold_starts
    if failures:
        print(f"  {len(failures)} of {n} failed, e.g. {failures[0][:200]}")
    return took, warm, len(failures)


async def raw_burst(n: int, spec: ContainerSpec) -> float:
    client = await anyio.to_thread.run_sync(connect)
    limiter = anyio.CapacityLimiter(n)

    def lifecycle() -> None:
        name = f"rlm-burst-raw-{uuid.uuid4().hex[:12]}"
        container = client.containers.create(**spec.create_kwargs(name, {"rlm.burst": "raw"}))
        try:
            container.start()
        finally:
            client.api.remove_container(container.id, force=True)

    async def one() -> None:
        await anyio.to_thread.run_sync(lifecycle, limiter=limiter)

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one)
    return time.perf_counter() - started


async def main_async(args: argparse.Namespace) -> None:
    spec = ContainerSpec(image=args.image, runtime=args.runtime)
    print(
        f"{args.runtime}, warm pool of {args.pool} (grows to {max(args.pool, args.max_size)}, "
        f"{args.parallel} starts at once), median of {args.repeats}"
    )
    for n in (int(b) for b in args.bursts.split(",")):
        results, raws = [], []
        for _ in range(args.repeats):  # interleaved, so both see the same load
            results.append(await burst(n, args.pool, spec, args))
            if args.raw:
                raws.append(await raw_burst(n, spec))
        took = statistics.median(r[0] for r in results)
        print(
            f"  burst of {n:4}: {took:7.2f} s  {n / took:6.1f} runs/s  "
            f"warm {results[0][1]}/{n}  failed {results[0][2]}"
        )
        if raws:
            raw = statistics.median(raws)
            print(f"    engine alone: {raw:7.2f} s  {n / raw:6.1f} containers/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image", default="rlm-sandbox:latest")
    parser.add_argument("--runtime", default="runc")
    parser.add_argument("--bursts", default="10,50,200")
    parser.add_argument("--pool", type=int, default=4)
    parser.add_argument("--max-size", type=int, default=0, help="let the pool grow to this")
    parser.add_argument("--parallel", type=int, default=4, help="pool starts at once")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--raw", action="store_true", help="also time the engine alone")
    anyio.run(main_async, parser.parse_args())


if __name__ == "__main__":
    main()
