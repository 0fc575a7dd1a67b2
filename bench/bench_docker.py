"""Docker sandbox costs, runc and runsc side by side.

    .venv/bin/python bench/bench_docker.py [--cells 300] [--calls 500] [--starts 5] [--rounds 7]

Prints, per runtime: cold start (create + attach + start + handshake), warm acquire
from a pool, the round trip of an empty cell, a 100 MB context load, and the cost of
one ``llm_query`` through the bridge to an instant fake batcher compared with
calling the bridge and the batcher directly on the host. Needs the engine and the
image (scripts/setup-docker.sh).

The ``llm_query`` figure is also set against the transport's own floor: a raw frame
round trip over the same attach socket to a container of the same spec whose runner
is replaced by an echo. The two alternate ``--rounds`` times (each round ``--calls``
of each); the table gives medians and the line below it min-max and their ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import anyio.to_thread
from raw_attach import raw_container
from rlm_sandbox import protocol

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


#: The echo that stands in for the runner: every byte read goes straight back.
_ECHO = "import os\nwhile True:\n b=os.read(0,65536)\n if not b: break\n os.write(1,b)\n"
_DOCKER_HEADER = struct.Struct(">BxxxL")
#: A sub-call as the runner frames it, so the echo carries a realistic size.
_CALL_FRAME = protocol.encode_bytes(
    {"type": "call", "id": 1, "method": "llm_query", "params": {"prompt": "p", "model": None}}
)


@contextlib.asynccontextmanager
async def raw_echo(
    client: Any, spec: ContainerSpec
) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """A frame's round trip over a bare attach socket: host -> echo -> host."""
    async with raw_container(client, spec, _ECHO) as sock:
        inbox = bytearray()

        async def round_trip() -> None:
            sock.send(_CALL_FRAME)
            want = len(_CALL_FRAME)
            while True:
                while len(inbox) >= _DOCKER_HEADER.size:
                    _, size = _DOCKER_HEADER.unpack_from(inbox)
                    if len(inbox) < _DOCKER_HEADER.size + size:
                        break
                    del inbox[: _DOCKER_HEADER.size + size]
                    want -= size
                if want <= 0:
                    return
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    await anyio.wait_readable(sock)
                    continue
                if not data:
                    raise RuntimeError("the echo container closed its output")
                inbox.extend(data)

        await round_trip()
        yield round_trip


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms"


async def measure(
    runtime: str, image: str, args: argparse.Namespace, spread: dict[str, tuple[float, float]]
) -> dict[str, float]:
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

    async with (
        DockerSandbox(bridge(), ColdStart(spec, docker_client=client)) as sb,
        raw_echo(client, spec) as echo,
    ):
        await sb.execute("1", 10)
        code = (
            "import time\n"
            f"t = time.perf_counter()\nfor _ in range({args.calls}): llm_query('p')\n"
            f"print((time.perf_counter() - t) / {args.calls})"
        )
        cells = max(1, args.cells // args.rounds)
        rounds: dict[str, list[float]] = {
            "cell round trip": [],
            "raw frame round trip": [],
            "llm_query via bridge": [],
        }
        for _ in range(args.rounds):
            t = time.perf_counter()
            for _ in range(cells):
                await sb.execute("x = 1", 10)
            rounds["cell round trip"].append((time.perf_counter() - t) / cells)
            t = time.perf_counter()
            for _ in range(args.calls):
                await echo()
            rounds["raw frame round trip"].append((time.perf_counter() - t) / args.calls)
            result = await sb.execute(code, 120)
            assert result.error is None, result.error
            rounds["llm_query via bridge"].append(float(result.stdout))
        for row, values in rounds.items():
            out[row] = statistics.median(values)
            spread[row] = (min(values), max(values))

        context = "0123456789" * 10_000_000
        t = time.perf_counter()
        await sb.load_context(context)
        out["100 MB context load"] = time.perf_counter() - t
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
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    runtimes = args.runtimes.split(",")
    spreads: dict[str, dict[str, tuple[float, float]]] = {rt: {} for rt in runtimes}
    results = {rt: anyio.run(measure, rt, args.image, args, spreads[rt]) for rt in runtimes}
    rows = list(next(iter(results.values())))
    print(f"{'':28}" + "".join(f"{rt:>14}" for rt in runtimes))
    for row in rows:
        print(f"{row:28}" + "".join(f"{ms(results[rt][row]):>14}" for rt in runtimes))
    print()
    for rt in runtimes:
        r, spread = results[rt], spreads[rt]
        for row, (low, high) in spread.items():
            print(
                f"{rt}: {row} median {ms(r[row])} [{ms(low)}-{ms(high)}] over {args.rounds} rounds"
            )
        print(
            f"{rt}: llm_query via bridge / raw frame round trip = "
            f"{r['llm_query via bridge'] / r['raw frame round trip']:.2f}x (target <= 1.5x)"
        )
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
