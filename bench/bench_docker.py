"""Docker sandbox costs, runc and runsc side by side.

    .venv/bin/python bench/bench_docker.py [--cells 300] [--calls 500] [--starts 5]

Prints, per runtime: cold start (create + attach + start + handshake), warm acquire
from a pool, the round trip of an empty cell, a 100 MB context load, and the cost of
one ``llm_query`` through the bridge to an instant fake batcher compared with
calling the bridge and the batcher directly on the host. Needs the engine and the
image (scripts/setup-docker.sh).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import anyio

from rlm.backends.docker import (
    ColdStart,
    ContainerPool,
    ContainerSpec,
    DockerSandbox,
    connect,
    launch,
)
from rlm.bridge import SessionBridge
from rlm.session import SessionState
from rlm.subcalls.batcher import SubResult


class InstantBatcher:
    async def run(
        self,
        session: Any,
        model: str,
        prompts: list[str],
        max_concurrent: int | None,
        *,
        on_result: Any = None,
    ) -> list[SubResult]:
        results = [SubResult(text="ok") for _ in prompts]
        if on_result is not None:
            for index, result in enumerate(results):
                on_result(index, result)
        return results


def bridge() -> SessionBridge:
    return SessionBridge(InstantBatcher(), SessionState(sub_model="sub"))  # type: ignore[arg-type]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms"


async def measure(runtime: str, image: str, args: argparse.Namespace) -> dict[str, float]:
    client = connect()
    spec = ContainerSpec(image=image, runtime=runtime)
    out: dict[str, float] = {}

    starts = []
    for _ in range(args.starts):
        t = time.perf_counter()
        box = await launch(client, spec)
        starts.append(time.perf_counter() - t)
        await box.remove()
    out["cold start"] = statistics.median(starts)

    async with ContainerPool(spec, size=2, docker_client=client) as pool:
        acquires = []
        for _ in range(args.starts):
            await pool.wait_full()
            t = time.perf_counter()
            box = await pool.acquire()
            acquires.append(time.perf_counter() - t)
            await box.remove()
        out["warm acquire (pool)"] = statistics.median(acquires)

    async with DockerSandbox(bridge(), ColdStart(spec, docker_client=client)) as sb:
        await sb.execute("1", 10)
        t = time.perf_counter()
        for _ in range(args.cells):
            await sb.execute("x = 1", 10)
        out["cell round trip"] = (time.perf_counter() - t) / args.cells

        context = "0123456789" * 10_000_000
        t = time.perf_counter()
        await sb.load_context(context)
        out["100 MB context load"] = time.perf_counter() - t

        code = (
            "import time\n"
            f"t = time.perf_counter()\nfor _ in range({args.calls}): llm_query('p')\n"
            f"print((time.perf_counter() - t) / {args.calls})"
        )
        result = await sb.execute(code, 120)
        assert result.error is None, result.error
        out["llm_query via bridge"] = float(result.stdout)
        batch = (
            "import time\n"
            "t = time.perf_counter()\nllm_batch(['p'] * 1000)\n"
            "print((time.perf_counter() - t) / 1000)"
        )
        out["llm_batch(1000) per item"] = float((await sb.execute(batch, 120)).stdout)

    host_bridge = bridge()
    t = time.perf_counter()
    for _ in range(args.calls):
        await host_bridge.call("llm_query", {"prompt": "p", "model": None})
    out["bridge.call on host"] = (time.perf_counter() - t) / args.calls
    batcher = InstantBatcher()
    t = time.perf_counter()
    for _ in range(args.calls):
        await batcher.run(host_bridge.session, "sub", ["p"], None)
    out["batcher.run direct"] = (time.perf_counter() - t) / args.calls
    client.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image", default="rlm-sandbox:latest")
    parser.add_argument("--runtimes", default="runc,runsc")
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--cells", type=int, default=300)
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args()
    runtimes = args.runtimes.split(",")
    results = {rt: anyio.run(measure, rt, args.image, args) for rt in runtimes}
    rows = list(next(iter(results.values())))
    print(f"{'':28}" + "".join(f"{rt:>14}" for rt in runtimes))
    for row in rows:
        print(f"{row:28}" + "".join(f"{ms(results[rt][row]):>14}" for rt in runtimes))
    print()
    for rt in runtimes:
        r = results[rt]
        overhead = r["llm_query via bridge"] - r["batcher.run direct"]
        print(
            f"{rt}: one sub-call crosses the bridge in {overhead * 1e3:.3f} ms more than a "
            f"direct batcher call ({r['llm_query via bridge'] / r['batcher.run direct']:.0f}x); "
            f"warm acquire is {r['cold start'] / r['warm acquire (pool)']:.0f}x faster than a "
            "cold start"
        )


if __name__ == "__main__":
    main()
