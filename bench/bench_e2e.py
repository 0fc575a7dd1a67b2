"""An end-to-end run like the demo's, at scale: Docker against restricted, batched
against sequential.

    .venv/bin/python bench/bench_e2e.py [--mb 40] [--chunk 200000] [--latency 0.2]
                                        [--repeats 3] [--sequential-repeats 1]

A context of ``--mb`` MB of log lines with one needle; a scripted root model that
cuts it into chunks of ``--chunk`` characters (~200 for 40 MB) and asks a sub-model
about every chunk, either in one ``llm_batch`` (the default concurrency) or one
``llm_query`` at a time, then answers with ``FINAL_VAR``. The offline model server
runs in a process of its own and answers every call, root and sub, after
``--latency`` seconds. Each run is ``RLM.completion`` from start to answer (sandbox
start, context load, two root calls, the sub-calls); runs are interleaved across the
four ways and the median (min-max) printed, with the ratios the targets name.

``--compare-start`` runs the batched way only, alternating a turn that starts its
sandbox beside the first root call (what rlm does) with one that starts it first and
then calls the root model (what it did before), to measure what the overlap gives.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import rlm.sessions
from rlm import RLM, RLMConfig
from rlm.demo import make_haystack
from rlm.overlap import beside

_SERVER = """
import json, signal, sys
from rlm.testing import OfflineModelServer
server = OfflineModelServer(latency=float(sys.argv[1]), scripts=json.loads(sys.argv[2])).start()
print(server.base_url, flush=True)
signal.sigwait({signal.SIGTERM, signal.SIGINT})
server.stop()
"""


def script(chunk: int, batched: bool) -> list[str]:
    ask = "answers = llm_batch(prompts)" if batched else "answers = [llm_query(p) for p in prompts]"
    return [
        "```repl\n"
        f"chunks = [context[i:i + {chunk}] for i in range(0, len(context), {chunk})]\n"
        "prompts = ['Question: What is the secret access code?\\nAnswer with the answer "
        "only, or NOT FOUND.\\n---\\n' + c for c in chunks]\n"
        f"{ask}\n"
        "hits = [a for a in answers if isinstance(a, str) and a.strip() != 'NOT FOUND']\n"
        "print(len(chunks), hits[:3])\n"
        "```",
        "```repl\nanswer = hits[0] if hits else 'NOT FOUND'\n```\nFINAL_VAR(answer)",
    ]


async def one_after_another(
    prepare: Callable[[], Awaitable[None]], body: Callable[[], Awaitable[Any]]
) -> Any:
    """A turn as it ran before the overlap: the sandbox first, then the root model."""
    await prepare()
    return await body()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=40)
    parser.add_argument("--chunk", type=int, default=200_000)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sequential-repeats", type=int, default=1)
    parser.add_argument("--backends", default="docker,restricted")
    parser.add_argument("--compare-start", action="store_true")
    args = parser.parse_args()
    modes = ("beside", "first") if args.compare_start else ("batched", "sequential")
    if args.compare_start:
        args.sequential_repeats = args.repeats

    haystack = make_haystack(int(args.mb * 1e6 / 47))  # ~47 characters a line
    scripts = {
        "root-batched": script(args.chunk, True),
        "root-sequential": script(args.chunk, False),
    }
    server = subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(args.latency), json.dumps(scripts)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    base_url = server.stdout.readline().strip()
    backends = args.backends.split(",")
    rlms = {
        b: RLM(
            RLMConfig(
                model="root-batched",
                sub_model="sub",
                api_key="offline",
                base_url=base_url,
                backend=b,
                cell_timeout=600,
            )
        )
        for b in backends
    }
    gc.freeze()  # as `rlm run` does
    times: dict[tuple[str, str], list[float]] = {}
    try:
        for i in range(max(args.repeats, args.sequential_repeats)):
            for mode in modes:
                if i >= (args.repeats if mode != "sequential" else args.sequential_repeats):
                    continue
                # The session module looks the overlap up at each turn.
                rlm.sessions.beside = one_after_another if mode == "first" else beside  # type: ignore[assignment]
                for backend in backends:
                    runner = rlms[backend]
                    started = time.perf_counter()
                    result = (
                        runner.completion(haystack.text, haystack.query)
                        if mode != "sequential"
                        else RLM(runner.config.with_(model="root-sequential")).completion(
                            haystack.text, haystack.query
                        )
                    )
                    took = time.perf_counter() - started
                    assert haystack.answer in result.answer, result.answer
                    times.setdefault((backend, mode), []).append(took)
                    print(f"  {backend:10} {mode:10} {took:7.3f} s", file=sys.stderr)
    finally:
        server.terminate()
        server.wait()

    n = -(-len(haystack.text) // args.chunk)
    print(
        f"{len(haystack.text) / 1e6:.1f} MB context, {n} chunks of {args.chunk:,} chars, "
        f"{args.latency * 1e3:.0f} ms a call; median [min-max] of interleaved runs"
    )
    med = {k: statistics.median(v) for k, v in times.items()}
    for (backend, mode), values in sorted(times.items()):
        print(
            f"  {backend:10} {mode:10} {med[backend, mode]:8.3f} s "
            f"[{min(values):.3f}-{max(values):.3f}] (n={len(values)})"
        )
    for backend in backends:
        if (backend, "sequential") in med:
            speedup = med[backend, "sequential"] / med[backend, "batched"]
            print(f"  {backend}: batched is {speedup:.1f}x faster than sequential")
    if {"docker", "restricted"} <= set(backends):
        for mode in modes[:1] if not args.compare_start else modes:
            ratio = med["docker", mode] / med["restricted", mode]
            print(f"  docker / restricted, {mode}: {ratio:.2f}")
    if args.compare_start:
        for backend in backends:
            ratio = med[backend, "beside"] / med[backend, "first"]
            print(f"  {backend}: starting beside the root call / starting first: {ratio:.2f}")


if __name__ == "__main__":
    main()
