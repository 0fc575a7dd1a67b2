"""How wall time and memory grow with the work: context size, batch size, sessions.

    .venv/bin/python bench/bench_scaling.py [--parts context,batch,sessions]
        [--mbs 1,10,100,1000] [--ns 10,100,1000,10000] [--ks 1,10,100]
        [--docker-ks 1,10,50,100] [--backends restricted,docker] [--latency 0.05]
        [--repeats 2] [--docker-memory 4g] [--docker-read-sizes 65536]

Every measurement runs in a fresh worker process (this file with ``--worker``), so
its peak RSS (``ru_maxrss``) belongs to that one measurement; ``base`` is the
worker's RSS once its input is built and its imports done, ``+peak`` what the
measurement added on top. Docker containers' memory is their cgroup's
``memory.max_usage_in_bytes`` (cgroup v1, read on the host as root).

- **context**: a sandbox (restricted in-process, and Docker runc with
  ``--docker-memory``), then ``load_context`` of a str of 1..1000 MB, then a cell
  ``print(len(context))``.
- **batch**: one cell ``llm_batch`` of N distinct prompts at ``--latency`` a call
  through the real batcher and model client to the offline model server (its own
  process), at the session's default concurrency c; the ideal is ceil(N/c)*L.
- **sessions**: k ``RLM.acompletion`` runs at once in one process (each its own
  sandbox, Docker containers cold-started; a 20 kB context; a scripted root model
  whose one cell sends 4 prompts with ``llm_batch``, then ``FINAL_VAR``);
  ``--docker-read-sizes`` adds Docker rows whose channels receive into a fixed buffer
  of that many bytes instead of the channel's own, which starts at 64 KiB and grows to
  1 MiB when a read fills it (what a live sandbox holds on the host).

Sizes are interleaved across backends and repeats; each table prints the median
(min-max), and between consecutive rows the growth exponent
``log(t2/t1) / log(size2/size1)`` of time (of the medians, then of the minimums) and
of added memory: 1 is linear, 0 flat, above 1 superlinear.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

_SERVER = """
import json, signal, sys
from rlm.testing import OfflineModelServer
server = OfflineModelServer(latency=float(sys.argv[1]), scripts=json.loads(sys.argv[2])).start()
print(server.base_url, flush=True)
signal.sigwait({signal.SIGTERM, signal.SIGINT})
server.stop()
"""

ROOT_SCRIPT = [
    "```repl\nr = llm_batch([context[i * 100:(i + 1) * 100] for i in range(4)])\n"
    "answer = str(len(r))\n```",
    "FINAL_VAR(answer)",
]
SMALL_CONTEXT = "0123456789abcdef\n" * 1_200  # 20 kB
CGROUP = "/sys/fs/cgroup/memory/docker"


# -- worker side ------------------------------------------------------------------------


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cgroup(container_id: str, name: str) -> int | None:
    try:
        with open(f"{CGROUP}/{container_id}/memory.{name}") as f:
            return int(f.read())
    except OSError:
        return None


class ContainerWatch:
    """Samples the memory of this process's sandbox containers (by owner label)."""

    def __init__(self, interval: float = 0.2) -> None:
        import docker

        from rlm.backends.docker import OWNER, OWNER_LABEL

        self._client = docker.from_env()
        self._filter = {"label": f"{OWNER_LABEL}={OWNER}"}
        self.interval = interval
        self.peak_each: dict[str, int] = {}
        self.peak_total = 0
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ContainerWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                ids = [c["Id"] for c in self._client.api.containers(filters=self._filter)]
            except Exception:
                continue
            total = 0
            for cid in ids:
                now, peak = _cgroup(cid, "usage_in_bytes"), _cgroup(cid, "max_usage_in_bytes")
                total += now or 0
                if peak is not None:
                    self.peak_each[cid] = max(self.peak_each.get(cid, 0), peak)
            self.most = max(self.most, len(ids))
            self.peak_total = max(self.peak_total, total)


async def _context_worker(args: dict[str, Any]) -> dict[str, Any]:
    from rlm.bridge import SessionBridge
    from rlm.session import SessionState

    line = "0123456789abcdef\n"
    text = line * (int(args["mb"] * 1e6) // len(line))
    bridge = SessionBridge(None, SessionState(sub_model="sub"))  # type: ignore[arg-type]
    first_frame: list[float] = []
    if args["backend"] == "docker":
        import rlm.backends.docker.channel as channel
        from rlm.backends.docker import ColdStart, ContainerSpec, DockerSandbox

        encode = channel.protocol.encode

        def timed_encode(message: dict[str, Any], **kw: Any) -> Any:
            # Splits a load in two: the host's encoding before the first frame goes
            # out, and the transfer and decoding after it.
            t = time.perf_counter()
            for i, chunk in enumerate(encode(message, **kw)):
                if i == 0:
                    first_frame.append(time.perf_counter() - t)
                yield chunk

        channel.protocol.encode = timed_encode  # type: ignore[assignment]
        sb: Any = DockerSandbox(bridge, ColdStart(ContainerSpec(memory=args["memory"])))
    else:
        from rlm.backends.restricted import make_restricted

        sb = make_restricted(bridge)
    out: dict[str, Any] = {}
    t = time.perf_counter()
    await sb.start()
    await sb.execute("pass", 60)
    out["start"] = time.perf_counter() - t
    out["base"] = _rss_mb()
    t = time.perf_counter()
    await sb.load_context(text)
    out["load"] = time.perf_counter() - t
    if first_frame:
        out["encode"] = first_frame[-1]
    t = time.perf_counter()
    result = await sb.execute("print(len(context))", 600)
    out["cell"] = time.perf_counter() - t
    assert result.stdout.strip() == str(len(text)), (result.stdout, result.error)
    out["peak"] = _peak_mb()
    if args["backend"] == "docker":
        peak = _cgroup(sb.container_id, "max_usage_in_bytes")
        out["container"] = peak / 2**20 if peak is not None else None
    await sb.close()
    return out


async def _batch_worker(args: dict[str, Any]) -> dict[str, Any]:
    from rlm.bridge import SessionBridge
    from rlm.provider import ModelClient
    from rlm.session import SessionState
    from rlm.subcalls import Batcher

    client = ModelClient(api_key="offline", base_url=args["url"])
    session = SessionState(sub_model="sub")
    bridge = SessionBridge(Batcher(client), session)
    if args["backend"] == "docker":
        from rlm.backends.docker import ColdStart, ContainerSpec, DockerSandbox

        sb: Any = DockerSandbox(bridge, ColdStart(ContainerSpec()))
    else:
        from rlm.backends.restricted import make_restricted

        sb = make_restricted(bridge)
    await sb.start()
    await sb.execute("pass", 60)
    n, tag = args["n"], args["tag"]
    code = (
        f"r = llm_batch(['p%d-{tag}' % i for i in range({n})])\n"
        "print(len(r), sum(1 for a in r if not isinstance(a, str)))"
    )
    out: dict[str, Any] = {"c": session.limits.max_concurrent, "base": _rss_mb()}
    cpu = time.process_time()
    t = time.perf_counter()
    result = await sb.execute(code, 900)
    out["wall"] = time.perf_counter() - t
    out["cpu"] = time.process_time() - cpu
    out["peak"] = _peak_mb()
    assert result.stdout.split() == [str(n), "0"], (result.stdout, result.error)
    await sb.close()
    await client.aclose()
    return out


async def _sessions_worker(args: dict[str, Any]) -> dict[str, Any]:
    import anyio

    from rlm import RLM, RLMConfig

    config = RLMConfig(
        model="root-scale",
        sub_model="sub",
        api_key="offline",
        base_url=args["url"],
        backend=args["backend"],
        cell_timeout=600,
    )
    if args.get("read_size"):
        import rlm.backends.docker.channel as channel

        # A fixed receive buffer of this size for each Docker sandbox's channel (the
        # channel's own starts at 64 KiB and grows to 1 MiB when a read fills it).
        channel._FIRST_READ_SIZE = channel._READ_SIZE = args["read_size"]  # type: ignore[attr-defined]
    rlm = RLM(config)
    await rlm.backend()
    answers: list[str] = []

    async def one() -> None:
        result = await rlm.acompletion(SMALL_CONTEXT, "How many answers?")
        answers.append(str(result.answer))

    out: dict[str, Any] = {"base": _rss_mb()}
    watch = ContainerWatch() if args["backend"] == "docker" else None
    if watch is not None:
        watch.__enter__()
    t = time.perf_counter()
    try:
        async with anyio.create_task_group() as tg:
            for _ in range(args["k"]):
                tg.start_soon(one)
    finally:
        out["wall"] = time.perf_counter() - t
        if watch is not None:
            watch.__exit__()
    out["peak"] = _peak_mb()
    assert answers == ["4"] * args["k"], answers[:3]
    if watch is not None:
        each = list(watch.peak_each.values())
        out["container_each"] = statistics.median(each) / 2**20 if each else None
        out["container_total"] = watch.peak_total / 2**20
        out["containers_at_once"] = watch.most
    return out


def worker(raw: str) -> None:
    import anyio

    args = json.loads(raw)
    run: dict[str, Callable[[dict[str, Any]], Any]] = {
        "context": _context_worker,
        "batch": _batch_worker,
        "sessions": _sessions_worker,
    }
    print(json.dumps(anyio.run(run[args["part"]], args)))


# -- driver side ------------------------------------------------------------------------


def _proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_worker(args: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _g(seconds: float) -> str:
    return f"{seconds:.3g}" if seconds < 100 else f"{seconds:.0f}"


def med(values: list[float]) -> str:
    """Median [min-max] of ``values`` seconds, in ms below 1 s, to 3 figures."""
    if not values:
        return "-"
    m = statistics.median(values)
    scale, unit = (1e6, "us") if m < 1e-3 else (1e3, "ms") if m < 1 else (1.0, "s")
    text = f"{_g(m * scale)} {unit}"
    if len(values) > 1:
        text += f" [{_g(min(values) * scale)}-{_g(max(values) * scale)}]"
    return text


def time_exponent(a: list[float], b: list[float], size_a: float, size_b: float) -> str:
    """The growth exponent of the medians, then of the minimums (the least disturbed
    by the other work on a shared machine)."""
    medians = exponent(statistics.median(a), statistics.median(b), size_a, size_b)
    return f"{medians.strip()}/{exponent(min(a), min(b), size_a, size_b).strip()}"


def exponent(a: float | None, b: float | None, size_a: float, size_b: float) -> str:
    if not a or not b or a <= 0 or b <= 0:
        return "   -"
    return f"{math.log(b / a) / math.log(size_b / size_a):4.2f}"


def collect(results: list[dict[str, Any]], key: str) -> list[float]:
    return [r[key] for r in results if r.get(key) is not None]


def print_errors(label: str, results: list[dict[str, Any]]) -> None:
    for r in results:
        if "error" in r:
            print(f"    {label}: FAILED {r['error']}")
            break


def part_context(opts: argparse.Namespace) -> None:
    mbs = [float(x) for x in opts.mbs.split(",")]
    backends = opts.backends.split(",")
    runs: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for mb in mbs:
        for _ in range(opts.repeats):
            for backend in backends:
                r = run_worker(
                    {"part": "context", "backend": backend, "mb": mb, "memory": opts.docker_memory}
                )
                runs.setdefault((backend, mb), []).append(r)
                print(f"  context {backend} {mb:g} MB: {r}", file=sys.stderr, flush=True)
    print(
        f"\ncontext size: load_context of a str, then print(len(context)); seconds median "
        f"[min-max]; memory MB (Docker --memory {opts.docker_memory})"
    )
    for backend in backends:
        print(f"  {backend}")
        print(
            "       MB   load                    MB/s  encode ms  cell                   "
            "host base  +peak  container  | exp: load (med/min)  +peak  container"
        )
        prev: tuple[float, list[float], float, float] | None = None
        for mb in mbs:
            rs = runs[(backend, mb)]
            print_errors(f"{mb:g} MB", rs)
            load, cell = collect(rs, "load"), collect(rs, "cell")
            if not load:
                continue
            base = statistics.median(collect(rs, "base"))
            extra = statistics.median([max(0.0, r["peak"] - r["base"]) for r in rs if "peak" in r])
            cont = collect(rs, "container")
            c = statistics.median(cont) if cont else 0.0
            lm = statistics.median(load)
            growth = (
                f"{time_exponent(prev[1], load, prev[0], mb):>9}  "
                f"{exponent(prev[2], extra, prev[0], mb)}  {exponent(prev[3], c, prev[0], mb)}"
                if prev
                else ""
            )
            # A load that does not copy (restricted binds the str) has no rate.
            rate = f"{mb / lm:6.0f}" if lm >= 1e-3 else f"{'-':>6}"
            enc = collect(rs, "encode")
            encoded = f"{statistics.median(enc) * 1e3:9.1f}" if enc else f"{'-':>9}"
            print(
                f"  {mb:7g}  {med(load):22} {rate} {encoded}   {med(cell):22} "
                f"{base:7.0f} {extra:7.0f}  {c:8.0f}   |      {growth}"
            )
            prev = (mb, load, extra, c)


def part_batch(opts: argparse.Namespace, url: str, server_pid: int) -> None:
    ns = [int(x) for x in opts.ns.split(",")]
    backends = opts.backends.split(",")
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for rep in range(opts.repeats):
        for n in ns:
            for backend in backends:
                server_cpu = _proc_cpu(server_pid)
                r = run_worker(
                    {
                        "part": "batch",
                        "backend": backend,
                        "n": n,
                        "url": url,
                        "tag": f"{rep}{backend}",
                    }
                )
                r["server_cpu"] = _proc_cpu(server_pid) - server_cpu
                runs.setdefault((backend, n), []).append(r)
                print(f"  batch {backend} N={n}: {r}", file=sys.stderr, flush=True)
    print(
        f"\nbatch size: one llm_batch of N prompts at {opts.latency * 1e3:.0f} ms a call, "
        "default concurrency c; median [min-max]; CPU ms per prompt; memory MB"
    )
    for backend in backends:
        print(f"  {backend}")
        print(
            "       N    c   wall                    ideal s  ratio  ms/prompt  "
            "CPU client server  host base  +peak  | exp: wall (med/min)  +peak"
        )
        prev: tuple[int, list[float], float] | None = None
        for n in ns:
            rs = runs[(backend, n)]
            print_errors(f"N={n}", rs)
            wall = collect(rs, "wall")
            if not wall:
                continue
            c = rs[0]["c"]
            ideal = math.ceil(n / c) * opts.latency
            w = statistics.median(wall)
            extra = statistics.median([max(0.0, r["peak"] - r["base"]) for r in rs if "peak" in r])
            cpu = statistics.median(collect(rs, "cpu")) / n * 1e3
            scpu = statistics.median(collect(rs, "server_cpu")) / n * 1e3
            growth = (
                f"{time_exponent(prev[1], wall, prev[0], n):>9}  "
                f"{exponent(prev[2], extra, prev[0], n)}"
                if prev
                else ""
            )
            print(
                f"  {n:6} {c:4}   {med(wall):22} {ideal:7.2f}  {w / ideal:5.2f}  "
                f"{w / n * 1e3:8.3f}  {cpu:10.3f} {scpu:6.3f}  "
                f"{statistics.median(collect(rs, 'base')):8.0f} {extra:6.0f}  |      {growth}"
            )
            prev = (n, wall, extra)


def part_sessions(opts: argparse.Namespace, url: str) -> None:
    # Each way: (label, backend, the Docker channel's receive buffer or None), its ks.
    plan = {("restricted", "restricted", None): [int(x) for x in opts.ks.split(",")]}
    if "docker" in opts.backends.split(","):
        docker_ks = [int(x) for x in opts.docker_ks.split(",")]
        plan["docker", "docker", None] = docker_ks
        for size in filter(None, opts.docker_read_sizes.split(",")):
            plan[f"docker, {int(size) >> 10} KiB receive buffer", "docker", int(size)] = docker_ks
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for _ in range(opts.repeats):
        for k in sorted({k for ks in plan.values() for k in ks}):
            for (label, backend, read_size), ks in plan.items():
                if k in ks:
                    r = run_worker(
                        {
                            "part": "sessions",
                            "backend": backend,
                            "k": k,
                            "url": url,
                            "read_size": read_size,
                        }
                    )
                    runs.setdefault((label, k), []).append(r)
                    print(f"  sessions {label} k={k}: {r}", file=sys.stderr, flush=True)
    print(
        f"\nconcurrent sessions: k runs at once in one process (2 root calls and 4 sub-calls "
        f"each, {opts.latency * 1e3:.0f} ms a call); median [min-max]; memory MB"
    )
    for (backend, _, _), ks in plan.items():
        print(f"  {backend}")
        print(
            "       k   wall                    runs/s  ms/run  host base  +peak  MB/run"
            "  container each  all  at once  | exp: wall (med/min)  +peak"
        )
        prev: tuple[int, list[float], float] | None = None
        for k in ks:
            rs = runs[(backend, k)]
            print_errors(f"k={k}", rs)
            wall = collect(rs, "wall")
            if not wall:
                continue
            w = statistics.median(wall)
            extra = statistics.median([max(0.0, r["peak"] - r["base"]) for r in rs if "peak" in r])
            each = collect(rs, "container_each")
            total = collect(rs, "container_total")
            at_once = collect(rs, "containers_at_once")
            growth = (
                f"{time_exponent(prev[1], wall, prev[0], k):>9}  "
                f"{exponent(prev[2], extra, prev[0], k)}"
                if prev
                else ""
            )
            cont = (
                f"{statistics.median(each):10.0f} {statistics.median(total):5.0f} "
                f"{statistics.median(at_once):7.0f}"
                if each
                else f"{'-':>10} {'-':>5} {'-':>7}"
            )
            print(
                f"  {k:6}   {med(wall):22} {k / w:6.1f} {w / k * 1e3:7.1f}  "
                f"{statistics.median(collect(rs, 'base')):8.0f} {extra:6.0f} {extra / k:6.1f}"
                f"  {cont}  |      {growth}"
            )
            prev = (k, wall, extra)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="context,batch,sessions")
    parser.add_argument("--mbs", default="1,10,100,1000")
    parser.add_argument("--ns", default="10,100,1000,10000")
    parser.add_argument("--ks", default="1,10,100")
    parser.add_argument("--docker-ks", default="1,10,50,100")
    parser.add_argument("--backends", default="restricted,docker")
    parser.add_argument(
        "--docker-read-sizes",
        default="",
        help="sessions: also Docker with the channel's receive buffer at these sizes (bytes)",
    )
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--docker-memory", default="4g")
    opts = parser.parse_args()
    parts = opts.parts.split(",")
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}, {os.cpu_count()} CPUs"
    )
    if "context" in parts:
        part_context(opts)
    if {"batch", "sessions"} & set(parts):
        server = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _SERVER,
                str(opts.latency),
                json.dumps({"root-scale": ROOT_SCRIPT}),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        try:
            if "batch" in parts:
                part_batch(opts, url, server.pid)
            if "sessions" in parts:
                part_sessions(opts, url)
        finally:
            server.terminate()
            server.wait()
    print(f"\nload average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
