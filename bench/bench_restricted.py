"""The restricted backend's fixed costs, side by side with a plain ``exec`` floor.

    .venv/bin/python bench/bench_restricted.py [--cells 2000] [--starts 200] [--rounds 5]
                                               [--modes inprocess,process] [--json FILE]

The floor is what the official library's LocalREPL does: ``exec`` of the cell in a
dict, no isolation. Against it, per isolation mode of the restricted backend
(``inprocess``: cells on a thread of this process; ``process``: a worker process,
see ``rlm/backends/restricted/process.py``): creating and starting a sandbox
(back to back, and for the worker also 1.5 s apart, when its spare is ready), a
trivial cell (``x = 1``), a cell over a 10 MB context already loaded
(``n = len(context)``), and one ``llm_query`` to an instant fake batcher. The
systems are measured in rounds, interleaved, so a busy machine slows all of them
alike; it prints each row's median (over all rounds) and min-max of the round
medians, and the ratio to the floor.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rlm.backends.base import Sandbox
from rlm.bridge import SessionBridge
from rlm.session import SessionState
from rlm.subcalls.batcher import SubResult

CONTEXT = "x" * 10_000_000


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
        return [SubResult(text="ok") for _ in prompts]


def bridge() -> SessionBridge:
    return SessionBridge(InstantBatcher(), SessionState(sub_model="sub"))  # type: ignore[arg-type]


def make(mode: str) -> Sandbox:
    from rlm.backends.restricted import make_restricted

    return make_restricted(bridge(), isolation=mode, output_limit=20_000)


def drop_spares() -> None:
    from rlm.backends.restricted.process import drop_spares

    drop_spares()


async def timed(n: int, step: Callable[[], Awaitable[Any]]) -> list[float]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        await step()
        times.append(time.perf_counter() - t)
    return times


class Floor:
    """A plain exec in a dict: the official LocalREPL's cost, no isolation at all."""

    def __init__(self) -> None:
        self.namespace: dict[str, Any] = {"__builtins__": __builtins__}

    async def execute(self, code: str) -> None:
        exec(compile(code, "<cell>", "exec"), self.namespace)


async def run_round(modes: list[str], args: argparse.Namespace) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    floor = Floor()
    floor.namespace["context"] = CONTEXT

    async def floor_start() -> None:
        Floor()

    out["exec (floor)"] = {
        "create": statistics.median(await timed(args.starts, floor_start)),
        "trivial cell": statistics.median(await timed(args.cells, lambda: floor.execute("x = 1"))),
        "cell over 10 MB": statistics.median(
            await timed(args.cells // 4, lambda: floor.execute("n = len(context)"))
        ),
    }
    for mode in modes:
        starts = []
        for _ in range(args.starts if mode == "inprocess" else max(args.starts // 20, 3)):
            box = make(mode)
            t = time.perf_counter()
            await box.start()
            starts.append(time.perf_counter() - t)
            await box.close()
        ready = []
        if mode == "process":  # sessions started apart: the spare worker is ready
            for _ in range(3):
                await anyio.sleep(1.5)
                box = make(mode)
                t = time.perf_counter()
                await box.start()
                ready.append(time.perf_counter() - t)
                await box.close()
        box = make(mode)
        await box.start()
        try:
            await box.load_context(CONTEXT)
            for _ in range(50):  # warm up
                await box.execute("x = 1", 10)
            row = {
                "create": statistics.median(starts),
                **({"create, spare ready": statistics.median(ready)} if ready else {}),
                "trivial cell": statistics.median(
                    await timed(args.cells, lambda b=box: b.execute("x = 1", 10))  # type: ignore[misc]
                ),
                "cell over 10 MB": statistics.median(
                    await timed(args.cells // 4, lambda b=box: b.execute("n = len(context)", 10))  # type: ignore[misc]
                ),
                "llm_query": statistics.median(
                    await timed(
                        args.cells // 4,
                        lambda b=box: b.execute("r = llm_query('hi')", 10),  # type: ignore[misc]
                    )
                ),
            }
            result = await box.execute("x = 1", 10)
            assert result.error is None, result.error
        finally:
            await box.close()
        out[f"restricted ({mode})"] = row
    return out


async def main(args: argparse.Namespace) -> dict[str, Any]:
    modes = [m for m in args.modes.split(",") if m]
    rounds = [await run_round(modes, args) for _ in range(args.rounds)]
    systems = list(rounds[0])
    summary: dict[str, Any] = {}
    floor = systems[0]
    header = (
        f"{'system':24} {'workload':18} {'median':>11} {'min-max of rounds':>24} {'x floor':>9}"
    )
    print(header)
    print("-" * len(header))
    for system in systems:
        summary[system] = {}
        for workload in rounds[0][system]:
            values = [r[system][workload] for r in rounds]
            med = statistics.median(values)
            base = [r[floor].get(workload.partition(",")[0]) for r in rounds]
            ratio = med / statistics.median(base) if base[0] is not None else None
            summary[system][workload] = {
                "median_ms": med * 1000,
                "min_ms": min(values) * 1000,
                "max_ms": max(values) * 1000,
                "x_floor": ratio,
            }
            spread = f"{min(values) * 1000:.3f}-{max(values) * 1000:.3f} ms"
            shown = f"{ratio:8.1f}x" if ratio is not None else f"{'-':>9}"
            print(f"{system:24} {workload:18} {med * 1000:8.3f} ms {spread:>24} {shown}")
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=2000)
    parser.add_argument("--starts", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--modes", default="inprocess,process")
    parser.add_argument("--json", type=Path)
    ns = parser.parse_args()
    result = anyio.run(main, ns)
    drop_spares()
    if ns.json is not None:
        ns.json.write_text(json.dumps(result, indent=2))
