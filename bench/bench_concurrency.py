"""What a session's sub-call concurrency buys: one batch at several ``max_concurrent``.

    .venv/bin/python bench/bench_concurrency.py [--n 1000] [--latency 0.2] [--repeats 3]
                                                [--cs 16,32,64,128,256,512] [--with-429]

One ``Batcher.run`` of N distinct prompts against the offline model server (a
process of its own, every call answered after ``--latency``), for each c in
``--cs`` as the session's ``max_concurrent``, interleaved across c, median of
``--repeats``. Prints wall time, the ideal ceil(N/c)·L, their ratio, and the client
process's CPU per request, so the knee where more in flight stops paying is visible.
With ``--with-429``, a second pass has the server refuse every 5th request with 429
(Retry-After 0.05 s), to show what adaptive concurrency and retries cost at each c.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time

import anyio

from rlm.limits import SessionLimits
from rlm.provider import ModelClient
from rlm.session import SessionState
from rlm.subcalls import Batcher

_SERVER = """
import signal, sys
from rlm.testing import Fault, OfflineModelServer
server = OfflineModelServer(latency=float(sys.argv[1])).start()
n, tags = int(sys.argv[3]), sys.argv[4:]
for tag in tags:  # one refusal for every 5th prompt of each run
    for i in range(0, n, 5):
        server.add_fault(Fault(status=429, retry_after=0.05, match=f"p{i}-{tag}."))
print(server.base_url, flush=True)
signal.sigwait({signal.SIGTERM, signal.SIGINT})
server.stop()
"""


async def one(url: str, n: int, c: int, tag: str) -> tuple[float, float, int]:
    client = ModelClient(api_key="offline", base_url=url)
    batcher = Batcher(client)
    session = SessionState(sub_model="sub", limits=SessionLimits(max_concurrent=c))
    prompts = [f"p{i}-{tag}." for i in range(n)]
    cpu = time.process_time()
    t = time.perf_counter()
    results = await batcher.run(session, "sub", prompts, c)
    wall = time.perf_counter() - t
    cpu = time.process_time() - cpu
    await client.aclose()
    failed = sum(1 for r in results if getattr(r, "error", None))
    return wall, cpu / n, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cs", default="16,32,64,128,256,512")
    parser.add_argument("--with-429", action="store_true", help="also the pass with 429s")
    args = parser.parse_args()
    cs = [int(c) for c in args.cs.split(",")]
    for mode in ("plain", "429") if args.with_429 else ("plain",):
        tags = [f"{mode}{r}x{c}" for r in range(args.repeats) for c in cs] if mode == "429" else []
        server = subprocess.Popen(
            [sys.executable, "-c", _SERVER, str(args.latency), mode, str(args.n), *tags],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        runs: dict[int, list[tuple[float, float, int]]] = {c: [] for c in cs}
        try:
            for r in range(args.repeats):
                for c in cs:
                    runs[c].append(anyio.run(one, url, args.n, c, f"{mode}{r}x{c}"))
        finally:
            server.terminate()
            server.wait()
        label = "every 5th request refused once with 429" if mode == "429" else "no refusals"
        print(f"N = {args.n}, L = {args.latency * 1e3:.0f} ms, {label}, median of {args.repeats}")
        print("     c    wall s   ideal s  ratio  client CPU/request  failed")
        for c in cs:
            wall = statistics.median(w for w, _, _ in runs[c])
            cpu = statistics.median(p for _, p, _ in runs[c])
            ideal = math.ceil(args.n / c) * args.latency
            failed = max(f for _, _, f in runs[c])
            print(
                f"  {c:4}  {wall:8.3f}  {ideal:8.3f}  {wall / ideal:5.2f}  "
                f"{cpu * 1e3:12.3f} ms  {failed:6}"
            )
        print(json.dumps({str(c): runs[c] for c in cs}), file=sys.stderr)


if __name__ == "__main__":
    main()
