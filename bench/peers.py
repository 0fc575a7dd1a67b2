"""rlm side by side with its peers, on this machine, in one run.

    .venv/bin/python bench/peers.py [--repeats 3] [--latency 0.2] [--rows create,cell,...]

Installs nothing: each peer runs in a subprocess of its own virtual environment's
Python (bench/README.md, "peers.py", says how they were installed and how their
image was built offline). Systems:

- ``rlm-restricted``: ours, the in-process RestrictedPython backend;
- ``rlm-docker``: ours, a hardened Docker container (runc) per session;
- ``rlms-local``: the official library's ``LocalREPL`` (a plain ``exec``, no
  isolation: the floor);
- ``rlms-docker``: its ``DockerREPL`` (``docker run`` + ``docker exec`` per cell, an
  HTTP proxy for sub-calls);
- ``llm-sandbox``: ``SandboxSession`` on Docker (no model bridge and no RLM loop, so
  its sub-call and end-to-end rows are n/a; each ``run`` is a fresh interpreter).

Row groups (``--rows``, default all):

- ``create``: sandbox create, the second in a warm process, up to a first cell run;
- ``acquire``: the same from a warm pool (ours ``ContainerPool``, llm-sandbox's
  ``DockerPoolManager``), median of ``--acquires``;
- ``cell``: a trivial cell, ``x = 1``; ``ctx10``: ``n = len(context)`` with a
  ``--ctx-mb`` context loaded (median of ``--cells`` cells or ``--cell-budget`` s);
- ``load100``: loading a ``--load-mb`` context, each system's own way;
- ``batch``: a batch of N prompts at ``--latency`` (ours ``llm_batch``, the official
  library's ``llm_query_batched``);
- ``subcall``: ``--calls`` sequential ``llm_query`` from a cell against a second
  server at latency 0, per call, against the same client call made on the host;
- ``needle``, ``every``: end to end, each library from its entry point to the
  answer over ``--needle-lines`` log lines, a scripted root model: one batch over
  every chunk, then the answer. ``needle`` looks for one line; ``every`` needs every
  chunk's answer (the sum of each chunk's first line id, which the offline sub-model
  echoes back) and is checked against the sum computed here;
- ``memory``: host RSS growth plus the container's memory (``docker stats``) per
  idle sandbox, over ``--idle`` sandboxes (``--idle-containers`` on Docker);
- ``knee``: k sessions each running trivial cells at once, k doubling from 1 until
  the median cell is 2x the k=1 figure or k reaches the cap; prints the largest k
  still under 2x. Run once, after the repeats.

Each repeat runs every system once, in turn (interleaved), each in a fresh
process; medians, min-max and our ratio to each peer are printed, a row a peer
cannot do says ``n/a`` and why, a row that failed says ``error`` (the message
follows the table). JSON goes to ``--json``, a PNG plot of batch wall time against
N to ``--plot`` (matplotlib, from the rlms venv by default).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PEERS = Path(os.environ.get("RLM_PEERS_VENVS", "/work/peers-venvs"))
PEER_IMAGE = "rlms-peer:py3.11"

_SERVER = """
import json, signal, sys
from rlm.testing import OfflineModelServer
scripts = json.loads(sys.argv[2])
servers = [OfflineModelServer(latency=float(sys.argv[1]), scripts=scripts).start(),
           OfflineModelServer(latency=0.0, scripts=scripts).start()]
print(servers[0].base_url, servers[1].base_url, flush=True)
signal.sigwait({signal.SIGTERM, signal.SIGINT})
for server in servers:
    server.stop()
"""

# rlms's DockerREPL has its container call the host at host.docker.internal, the
# Docker bridge's gateway; traffic here must stay on loopback, so its container
# shares the host's network and that name means 127.0.0.1.
_DOCKER_SHIM = """#!/bin/sh
if [ "$1" = run ]; then
  shift
  for a in "$@"; do
    shift
    [ "$a" = host.docker.internal:host-gateway ] && a=host.docker.internal:127.0.0.1
    set -- "$@" "$a"
  done
  exec "$REAL_DOCKER" run --network=host "$@"
fi
exec "$REAL_DOCKER" "$@"
"""

# Shared by every worker (stdlib only: it runs in each system's own venv).
# argv[1] is a JSON object of settings; the worker prints one JSON line:
# {row: seconds | {"error": message}, "_detail": {row: {...}}}.
_COMMON = """
import gc, json, os, re, statistics, subprocess, sys, threading, time, traceback
args = json.loads(sys.argv[1])
out = {"_detail": {}}
perf = time.perf_counter

def emit():
    # The real stdout: LocalREPL swaps sys.stdout per cell, and threads racing can leave it swapped.
    print(json.dumps(out), file=sys.__stdout__)

def want(group):
    return group in args["groups"]

def failed(row, exc):
    traceback.print_exc()
    out[row] = {"error": f"{type(exc).__name__}: {exc}"[:400]}

def keep(row, value):
    if isinstance(value, tuple):
        value, out["_detail"][row] = value
    if isinstance(value, dict):
        out.update(value)
    else:
        out[row] = value

def record(row, fn):
    try:
        keep(row, fn())
    except Exception as exc:  # a row that fails says so in its cell; the rest go on
        failed(row, exc)

def text_of(megabytes):
    size = int(megabytes * 1_000_000)
    return ("lorem ipsum dolor sit amet, " * (size // 28 + 1))[:size]

def median_cells(run_cell):
    times, end = [], perf() + args["cell_budget"]
    while len(times) < args["cells"] and (len(times) < 5 or perf() < end):
        t = perf()
        run_cell()
        times.append(perf() - t)
    return statistics.median(times)

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "kB": 1e3, "MB": 1e6, "GB": 1e9}

def container_memory(ids):
    # docker stats: the cgroup's usage less inactive page cache, as `docker stats` shows.
    done = subprocess.run(["docker", "stats", "--no-stream", "--format", "{{.MemUsage}}", *ids],
                          capture_output=True, text=True, check=True)
    used = [re.match(r"([0-9.]+)([A-Za-z]+)", line.split("/")[0].strip())
            for line in done.stdout.splitlines() if line.strip()]
    return [float(m.group(1)) * _UNITS[m.group(2)] for m in used]

def idle_memory(make, close, ids_of):
    count = args["idle_containers"] if ids_of else args["idle"]
    close(make())  # code and caches loaded before the baseline
    gc.collect()
    before = rss()
    boxes = []
    try:
        for _ in range(count):
            boxes.append(make())
        gc.collect()
        host = (rss() - before) / count
        inside = statistics.mean(container_memory([ids_of(b) for b in boxes])) if ids_of else 0.0
    finally:
        for box in boxes:
            close(box)
    detail = {"sandboxes": count, "host_MiB": host / 2**20, "container_MiB": inside / 2**20}
    return (host + inside) / 2**20, detail

def knee_step(curve, means, k, times):
    # The median is the criterion; the mean shows waits the median can hide (a
    # GIL-bound exec runs many cells per switch interval, then waits out the others').
    curve[k], means[k] = statistics.median(times), statistics.mean(times)

def knee_result(curve, means, base, cap):
    held = max(k for k, v in curve.items() if v < 2 * base)
    last = max(curve)
    detail = {"cap": cap, "reached_2x": curve[last] >= 2 * base,
              "median_cell_ms": {str(k): v * 1e3 for k, v in curve.items()},
              "mean_cell_ms": {str(k): v * 1e3 for k, v in means.items()}}
    return held, detail

def knee_threads(make, cell, close, cap):
    sessions, curve, means, base, k = [], {}, {}, None, 1
    try:
        while True:
            while len(sessions) < k:
                sessions.append(make())
            times, errors = [], []
            def loop(session):
                try:
                    end, n = perf() + args["knee_budget"], 0
                    while n < 3 or perf() < end:
                        t = perf()
                        cell(session)
                        times.append(perf() - t)
                        n += 1
                except Exception as exc:
                    errors.append(exc)
            threads = [threading.Thread(target=loop, args=(s,)) for s in sessions[:k]]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            if errors:
                raise errors[0]
            knee_step(curve, means, k, times)
            base = base or curve[k]
            if curve[k] >= 2 * base or k >= cap:
                break
            k = min(cap, 2 * k)
    finally:
        for s in sessions:
            close(s)
    return knee_result(curve, means, base, cap)

def every_chunk_sum(path, chunk):
    # What the "every" root code computes, done here to check its answer.
    text = open(path).read()
    lines = text.splitlines()
    size = max(1, len(lines) * chunk // len(text))
    return sum(int(lines[i].split()[0]) for i in range(0, len(lines), size))

SUBCALL_CELL = (
    "import datetime\\n"
    "t = datetime.datetime.now()\\n"
    "for _ in range({calls}):\\n"
    "    llm_query('p')\\n"
    "print((datetime.datetime.now() - t).total_seconds() / {calls})"
)
"""

_OURS = (
    _COMMON
    + """
import anyio
from rlm.bridge import SessionBridge
from rlm.provider import ModelClient
from rlm.session import SessionState
from rlm.subcalls import Batcher

DOCKER = args["system"] == "rlm-docker"

def make_bridge(url):
    client = ModelClient(api_key="offline", base_url=url)
    return client, SessionBridge(Batcher(client), SessionState(sub_model="sub"))

async def arecord(row, fn):
    try:
        keep(row, await fn())
    except Exception as exc:  # a row that fails says so in its cell; the rest go on
        failed(row, exc)

async def amedian_cells(sb, code):
    times, end = [], perf() + args["cell_budget"]
    while len(times) < args["cells"] and (len(times) < 5 or perf() < end):
        t = perf()
        await sb.execute(code, 60)
        times.append(perf() - t)
    return statistics.median(times)

async def run(sb, code, timeout=600):
    result = await sb.execute(code, timeout)
    if result.error is not None:
        raise RuntimeError(str(result.error)[:300])
    return result

async def main():
    client, bridge = make_bridge(args["url"])
    source = None
    if DOCKER:
        from rlm.backends.docker import ColdStart, ContainerSpec, DockerSandbox
        source = ColdStart(ContainerSpec())

    async def new_sandbox(on=bridge, from_=None):
        if DOCKER:
            sb = DockerSandbox(on, from_ or source)
        else:
            from rlm.backends.restricted import make_restricted
            sb = make_restricted(on)
        await sb.start()
        await sb.execute("pass", 30)
        return sb

    sb = None
    if want("create"):
        async def create():
            nonlocal sb
            for attempt in range(2):  # the second, in a warm process, is what is reported
                t = perf()
                box = await new_sandbox()
                took = perf() - t
                if attempt == 0:
                    await box.close()
            sb = box
            return took
        await arecord("sandbox create", create)
    if want("acquire") and DOCKER:
        from rlm.backends.docker import ContainerPool
        async def acquire():
            async with ContainerPool(ContainerSpec(), size=2) as pool:
                times = []
                for _ in range(args["acquires"]):
                    await pool.wait_full()
                    t = perf()
                    box = await new_sandbox(from_=pool)
                    times.append(perf() - t)
                    await box.close()
            return statistics.median(times)
        await arecord("warm acquire", acquire)
    if sb is None and (want("cell") or want("batch")):
        sb = await new_sandbox()
    if want("cell"):
        await arecord("trivial cell", lambda: amedian_cells(sb, "x = 1"))
    if want("batch"):
        for n in args["ns"]:
            async def batch(n=n):
                code = f"r = llm_batch(['p%d' % i for i in range({n})])\\nassert len(r) == {n}"
                t = perf()
                await run(sb, code)
                return perf() - t
            await arecord(f"batch N={n}", batch)
    if sb is not None:
        await sb.close()
    if want("ctx10"):
        async def ctx10():
            box = await new_sandbox()
            try:
                text = text_of(args["ctx_mb"])
                await box.load_context(text)
                took = await amedian_cells(box, "n = len(context)")
                assert (await run(box, "print(n)")).stdout.strip() == str(len(text))
                return took
            finally:
                await box.close()
        await arecord("cell over 10 MB context", ctx10)
    if want("load100"):
        async def load100():
            box = await new_sandbox()
            try:
                text = text_of(args["load_mb"])
                t = perf()
                await box.load_context(text)
                took = perf() - t
                assert (await run(box, "print(len(context))")).stdout.strip() == str(len(text))
                return took
            finally:
                await box.close()
        await arecord("load 100 MB context", load100)
    if want("subcall"):
        async def subcall():
            client0, bridge0 = make_bridge(args["url0"])
            box = await new_sandbox(on=bridge0)
            try:
                await run(box, "llm_query('warm')")
                result = await run(box, SUBCALL_CELL.format(calls=args["calls"]))
                in_cell = float(result.stdout.strip().splitlines()[-1])
                messages = [{"role": "user", "content": "p"}]
                await client0.chat("sub", messages)
                t = perf()
                for _ in range(args["calls"]):
                    await client0.chat("sub", messages)
                host = (perf() - t) / args["calls"]
            finally:
                await box.close()
                await client0.aclose()
            return {"sub-call in a cell, 0 ms": in_cell, "same call on host, 0 ms": host,
                    "sub-call overhead, 0 ms": in_cell - host}
        await arecord("sub-call in a cell, 0 ms", subcall)
    if want("memory"):
        async def memory():
            async def make():
                # A session of its own, as each run has (the batcher is shared).
                own = SessionBridge(bridge.batcher, SessionState(sub_model="sub"))
                return await new_sandbox(on=own)
            # idle_memory is synchronous: drive the async sandboxes from a worker thread.
            def sync_make():
                return anyio.from_thread.run(make)
            def sync_close(box):
                anyio.from_thread.run(box.close)
            ids_of = (lambda box: box.container_id) if DOCKER else None
            return await anyio.to_thread.run_sync(idle_memory, sync_make, sync_close, ids_of)
        await arecord("idle sandbox memory", memory)
    if want("knee"):
        async def knee():
            cap = args["knee_cap_containers"] if DOCKER else args["knee_cap"]
            boxes, curve, means, base, k = [], {}, {}, None, 1
            try:
                while True:
                    while len(boxes) < k:
                        boxes.append(await new_sandbox())
                    times = []
                    async def loop(box):
                        end, n = perf() + args["knee_budget"], 0
                        while n < 3 or perf() < end:
                            t = perf()
                            await run(box, "x = 1", 120)
                            times.append(perf() - t)
                            n += 1
                    async with anyio.create_task_group() as tg:
                        for box in boxes[:k]:
                            tg.start_soon(loop, box)
                    knee_step(curve, means, k, times)
                    base = base or curve[k]
                    if curve[k] >= 2 * base or k >= cap:
                        break
                    k = min(cap, 2 * k)
            finally:
                for box in boxes:
                    await box.close()
            return knee_result(curve, means, base, cap)
        await arecord("sessions until 2x cell", knee)
    if source is not None:
        await source.aclose()
    await client.aclose()
    from rlm import RLM, RLMConfig
    backend = "docker" if DOCKER else "restricted"
    for group, row, model, expect in (
        ("needle", "end-to-end needle", "root-ours-needle", lambda: args["answer"]),
        ("every", "end-to-end every chunk", "root-ours-every",
         lambda: str(every_chunk_sum(args["haystack"], args["chunk"]))),
    ):
        if not want(group):
            continue
        async def e2e(model=model, expect=expect):
            text = open(args["haystack"]).read()
            config = RLMConfig(model=model, sub_model="sub", api_key="offline",
                               base_url=args["url"], backend=backend, cell_timeout=600)
            t = perf()
            result = await RLM(config).acompletion(text, "What is the secret access code?")
            took = perf() - t
            if expect() not in str(result.answer):
                raise RuntimeError(f"wrong answer: {str(result.answer)[:200]}")
            return took
        await arecord(row, e2e)

anyio.run(main)
emit()
"""
)

_RLMS = (
    _COMMON
    + """
from rlm.clients.openai import OpenAIClient
from rlm.core.lm_handler import LMHandler

DOCKER = args["system"] == "rlms-docker"

def start_handler(url):
    handler = LMHandler(OpenAIClient(api_key="offline", model_name="sub", base_url=url))
    handler.start()
    return handler

handler = start_handler(args["url"])

def new_env(on=handler):
    if DOCKER:
        from rlm.environments.docker_repl import DockerREPL
        env = DockerREPL(image=args["image"], lm_handler_address=on.address)
    else:
        from rlm.environments.local_repl import LocalREPL
        env = LocalREPL(lm_handler_address=on.address)
    env.execute_code("pass")
    return env

def printed(env, code):
    result = env.execute_code(code)
    if not result.stdout.strip():
        raise RuntimeError(f"no output: {result.stderr[-300:]}")
    return result.stdout.strip().splitlines()[-1]

env = None
if want("create"):
    def create():
        global env
        for attempt in range(2):  # the second, in a warm process, is what is reported
            t = perf()
            box = new_env()
            took = perf() - t
            if attempt == 0:
                box.cleanup()
        env = box
        return took
    record("sandbox create", create)
if env is None and (want("cell") or want("batch")):
    env = new_env()
if want("cell"):
    record("trivial cell", lambda: median_cells(lambda: env.execute_code("x = 1")))
if want("batch"):
    for n in args["ns"]:
        def batch(n=n):
            code = f"r = llm_query_batched(['p%d' % i for i in range({n})])\\nprint(len(r))"
            t = perf()
            got = printed(env, code)
            took = perf() - t
            if got != str(n):
                raise RuntimeError(f"batch of {n} printed {got!r}")
            return took
        record(f"batch N={n}", batch)
if env is not None:
    env.cleanup()
if want("ctx10"):
    def ctx10():
        box = new_env()
        try:
            text = text_of(args["ctx_mb"])
            box.load_context(text)
            took = median_cells(lambda: box.execute_code("n = len(context)"))
            assert printed(box, "print(n)") == str(len(text))
            return took
        finally:
            box.cleanup()
    record("cell over 10 MB context", ctx10)
if want("load100"):
    def load100():
        box = new_env()
        try:
            text = text_of(args["load_mb"])
            t = perf()
            box.load_context(text)
            took = perf() - t
            assert printed(box, "print(len(context))") == str(len(text))
            return took
        finally:
            box.cleanup()
    record("load 100 MB context", load100)
if want("subcall"):
    def subcall():
        handler0 = start_handler(args["url0"])
        box = new_env(handler0)
        try:
            box.execute_code("llm_query('warm')")
            in_cell = float(printed(box, SUBCALL_CELL.format(calls=args["calls"])))
            direct = OpenAIClient(api_key="offline", model_name="sub", base_url=args["url0"])
            direct.completion("p")
            t = perf()
            for _ in range(args["calls"]):
                direct.completion("p")
            host = (perf() - t) / args["calls"]
        finally:
            box.cleanup()
            handler0.stop()
        return {"sub-call in a cell, 0 ms": in_cell, "same call on host, 0 ms": host,
                "sub-call overhead, 0 ms": in_cell - host}
    record("sub-call in a cell, 0 ms", subcall)
if want("memory"):
    ids_of = (lambda box: box.container_id) if DOCKER else None
    record("idle sandbox memory", lambda: idle_memory(new_env, lambda b: b.cleanup(), ids_of))
if want("knee"):
    cap = args["knee_cap_containers"] if DOCKER else args["knee_cap"]
    record("sessions until 2x cell", lambda: knee_threads(
        new_env, lambda b: b.execute_code("x = 1"), lambda b: b.cleanup(), cap))
handler.stop()
from rlm import RLM
environment = "docker" if DOCKER else "local"
env_kwargs = {"image": args["image"]} if DOCKER else {}
kw = {"api_key": "offline", "base_url": args["url"]}
for group, row, model, expect in (
    ("needle", "end-to-end needle", "root-peer-needle", lambda: args["answer"]),
    ("every", "end-to-end every chunk", "root-peer-every",
     lambda: str(every_chunk_sum(args["haystack"], args["chunk"]))),
):
    if not want(group):
        continue
    def e2e(model=model, expect=expect):
        text = open(args["haystack"]).read()
        t = perf()
        rlm = RLM(backend="openai", backend_kwargs={"model_name": model, **kw},
                  other_backends=["openai"], other_backend_kwargs=[{"model_name": "sub", **kw}],
                  environment=environment, environment_kwargs=env_kwargs, max_iterations=5)
        result = rlm.completion(text, root_prompt="What is the secret access code?")
        took = perf() - t
        if expect() not in str(result.response):
            raise RuntimeError(f"wrong answer: {str(result.response)[:200]}")
        return took
    record(row, e2e)
emit()
"""
)

_LLM_SANDBOX = (
    _COMMON
    + """
from llm_sandbox import SandboxSession

def new_session():
    session = SandboxSession(lang="python", image=args["image"], skip_environment_setup=True)
    session.open()
    session.run("pass")
    return session

def end(session):
    # Its close stops the container with the engine's 10 s grace (its process ignores
    # SIGTERM); a kill first makes tearing down 64 of them take seconds, not minutes.
    # Never inside a timed span.
    try:
        session.container.kill()
    except Exception:
        pass
    session.close()

session = None
if want("create"):
    def create():
        global session
        for attempt in range(2):  # the second, in a warm process, is what is reported
            t = perf()
            box = new_session()
            took = perf() - t
            if attempt == 0:
                end(box)
        session = box
        return took
    record("sandbox create", create)
if want("acquire"):
    def acquire():
        from llm_sandbox.pool import PoolConfig, PooledSandboxSession, create_pool_manager
        pool = create_pool_manager(backend="docker", lang="python", image=args["image"],
                                   config=PoolConfig(min_pool_size=2, max_pool_size=2),
                                   skip_environment_setup=True)
        try:
            times = []
            for _ in range(args["acquires"]):
                end = perf() + 60
                while pool.get_stats()["state_counts"]["idle"] < 2:
                    if perf() > end:
                        raise TimeoutError("the pool did not fill in 60 s")
                    time.sleep(0.02)
                t = perf()
                pooled = PooledSandboxSession(pool_manager=pool)
                pooled.open()
                pooled.run("pass")
                times.append(perf() - t)
                pooled.close()  # back into the pool: llm-sandbox reuses its containers
        finally:
            for pooled_box in pool._pool:  # as end() does, before its 10 s stops
                try:
                    pooled_box.container.kill()
                except Exception:
                    pass
            pool.close()
        return statistics.median(times)
    record("warm acquire", acquire)
if session is None and want("cell"):
    session = new_session()
if want("cell"):
    record("trivial cell", lambda: median_cells(lambda: session.run("x = 1")))
if session is not None:
    end(session)

def load(box, megabytes):
    # Its way to give code a context: a file copied in (each run is a fresh interpreter).
    text = text_of(megabytes)
    path = os.path.join(args["tmp"], "context.txt")
    with open(path, "w") as f:
        f.write(text)
    box.copy_to_runtime(path, "/sandbox/context.txt")
    return len(text)

def check(box, code, expect):
    got = box.run(code).stdout.strip()
    if got != expect:
        raise RuntimeError(f"printed {got[-200:]!r}, expected {expect!r}")

if want("ctx10"):
    def ctx10():
        box = new_session()
        try:
            size = load(box, args["ctx_mb"])
            cell = "n = len(open('/sandbox/context.txt').read())"
            took = median_cells(lambda: box.run(cell))
            check(box, cell + "\\nprint(n)", str(size))
            return took
        finally:
            end(box)
    record("cell over 10 MB context", ctx10)
if want("load100"):
    def load100():
        box = new_session()
        try:
            t = perf()
            size = load(box, args["load_mb"])
            took = perf() - t
            check(box, "print(len(open('/sandbox/context.txt').read()))", str(size))
            return took
        finally:
            end(box)
    record("load 100 MB context", load100)
if want("memory"):
    record("idle sandbox memory",
           lambda: idle_memory(new_session, end, lambda b: b.container.id))
if want("knee"):
    record("sessions until 2x cell", lambda: knee_threads(
        new_session, lambda b: b.run("x = 1"), end, args["knee_cap_containers"]))
emit()
"""
)

SYSTEMS: dict[str, tuple[str, str]] = {
    "rlm-restricted": (sys.executable, _OURS),
    "rlm-docker": (sys.executable, _OURS),
    "rlms-local": (str(PEERS / "rlms/bin/python"), _RLMS),
    "rlms-docker": (str(PEERS / "rlms/bin/python"), _RLMS),
    "llm-sandbox": (str(PEERS / "llm-sandbox/bin/python"), _LLM_SANDBOX),
}
OURS = ("rlm-restricted", "rlm-docker")

GROUPS = (
    "create",
    "acquire",
    "cell",
    "ctx10",
    "load100",
    "batch",
    "subcall",
    "needle",
    "every",
    "memory",
    "knee",
)
#: Rows a system cannot do, and why (printed in its cell).
NOT_APPLICABLE: dict[tuple[str, str], str] = {
    ("rlm-restricted", "acquire"): "in-process",
    ("rlms-local", "acquire"): "no pool",
    ("rlms-docker", "acquire"): "no pool",
    **{("llm-sandbox", g): "no model bridge" for g in ("batch", "subcall")},
    **{("llm-sandbox", g): "no RLM loop" for g in ("needle", "every")},
}
#: Rows where more is better (the rest: less is better).
HIGHER_IS_BETTER = {"sessions until 2x cell"}


def group_rows(group: str, ns: list[int]) -> list[str]:
    return {
        "create": ["sandbox create"],
        "acquire": ["warm acquire"],
        "cell": ["trivial cell"],
        "ctx10": ["cell over 10 MB context"],
        "load100": ["load 100 MB context"],
        "batch": [f"batch N={n}" for n in ns],
        "subcall": [
            "sub-call in a cell, 0 ms",
            "same call on host, 0 ms",
            "sub-call overhead, 0 ms",
        ],
        "needle": ["end-to-end needle"],
        "every": ["end-to-end every chunk"],
        "memory": ["idle sandbox memory"],
        "knee": ["sessions until 2x cell"],
    }[group]


def root_script(batch: str, chunk: int, every: bool) -> list[str]:
    """A scripted root model: chunks, one batch over all of them, the answer."""
    if every:
        # Every chunk's answer counts: the offline sub-model echoes the head of a
        # prompt with no question in it, so each answer carries its chunk's first line.
        first = (
            "```repl\n"
            "lines = context.splitlines()\n"
            f"size = max(1, len(lines) * {chunk} // len(context))\n"
            "chunks = ['\\n'.join(lines[i:i + size]) for i in range(0, len(lines), size)]\n"
            "prompts = [c + '\\n\\nWhich line does the excerpt above start with?' "
            "for c in chunks]\n"
            f"answers = {batch}(prompts)\n"
            "total = sum(int(a.split()[1]) for a in answers)\n"
            "print(len(chunks), total)\n"
            "```"
        )
        final = "str(total)"
    else:
        first = (
            "```repl\n"
            f"chunks = [context[i:i + {chunk}] for i in range(0, len(context), {chunk})]\n"
            "prompts = ['Question: What is the secret access code?\\nAnswer with the answer "
            "only, or NOT FOUND.\\n---\\n' + c for c in chunks]\n"
            f"answers = {batch}(prompts)\n"
            "hits = [a for a in answers if isinstance(a, str) and a.strip() != 'NOT FOUND']\n"
            "print(len(chunks), hits[:3])\n"
            "```"
        )
        final = "hits[0] if hits else 'NOT FOUND'"
    return [
        first,
        # The answer dict, the form both libraries read (rlms 0.1.3 has no FINAL_VAR).
        # (rlms defines `answer` up front; rlm reads a plain dict set by the cell.)
        "```repl\ntry:\n    answer\nexcept NameError:\n    answer = {}\n"
        f"answer['content'] = {final}\n"
        "answer['ready'] = True\n```",
    ]


def run_worker(
    system: str, groups: list[str], settings: dict[str, Any], env: dict[str, str]
) -> dict[str, Any]:
    """One fresh process of ``system`` doing ``groups``; a crash fails every row."""
    python, code = SYSTEMS[system]
    payload = {**settings, "system": system, "groups": groups}
    with tempfile.TemporaryDirectory() as cwd:  # rlms writes a workspace into its cwd
        payload["tmp"] = cwd
        try:
            proc = subprocess.run(
                [python, "-c", code, json.dumps(payload)],
                capture_output=True,
                text=True,
                timeout=settings["worker_timeout"],
                cwd=cwd,
                env=env,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return {"_crash": f"timed out after {settings['worker_timeout']} s"}
    try:
        result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"_crash": f"exit {proc.returncode}: {proc.stderr.strip()[-400:]}"}
    return result


def fmt(row: str, value: float) -> str:
    if row == "idle sandbox memory":
        return f"{value:.1f} MiB" if value >= 1 else f"{value * 1024:.0f} KiB"
    if row in HIGHER_IS_BETTER:
        return f"{value:.0f}"
    if abs(value) < 1e-3:
        return f"{value * 1e6:.0f} us"
    return f"{value * 1e3:.3g} ms" if abs(value) < 1 else f"{value:.3g} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--ns", default="10,100,1000")
    parser.add_argument("--rows", default=",".join(GROUPS), help="row groups, see the docstring")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--cells", type=int, default=50, help="cells per cell row, at most")
    parser.add_argument("--cell-budget", type=float, default=3.0, help="s per cell row, at most")
    parser.add_argument("--acquires", type=int, default=5)
    parser.add_argument("--ctx-mb", type=float, default=10)
    parser.add_argument("--load-mb", type=float, default=100)
    parser.add_argument("--calls", type=int, default=300, help="sub-calls in the 0 ms row")
    parser.add_argument("--idle", type=int, default=50, help="in-process sandboxes, memory row")
    parser.add_argument("--idle-containers", type=int, default=10)
    parser.add_argument("--knee-cap", type=int, default=256, help="k cap, in-process")
    parser.add_argument("--knee-cap-containers", type=int, default=64)
    parser.add_argument("--knee-budget", type=float, default=1.0, help="s of cells per k")
    parser.add_argument("--needle-lines", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=200_000, help="characters a sub-call")
    parser.add_argument("--worker-timeout", type=float, default=900)
    parser.add_argument("--json", default=str(HERE / "peers.json"))
    parser.add_argument("--plot", default=str(HERE / "peers.png"))
    parser.add_argument("--plot-python", default=str(PEERS / "rlms/bin/python"))
    args = parser.parse_args()
    systems = args.systems.split(",")
    groups = [g for g in args.rows.split(",") if g]
    unknown = set(groups) - set(GROUPS) or set(systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown: {', '.join(sorted(unknown))}")
    ns = [int(n) for n in args.ns.split(",")]
    rows = [r for g in GROUPS if g in groups for r in group_rows(g, ns)]
    row_group = {r: g for g in GROUPS for r in group_rows(g, ns)}

    workdir = tempfile.TemporaryDirectory()
    settings: dict[str, Any] = {
        "ns": ns,
        "image": PEER_IMAGE,
        "chunk": args.chunk,
        **{
            k: getattr(args, k)
            for k in (
                "cells",
                "cell_budget",
                "acquires",
                "ctx_mb",
                "load_mb",
                "calls",
                "idle",
                "idle_containers",
                "knee_cap",
                "knee_cap_containers",
                "knee_budget",
                "worker_timeout",
            )
        },
    }
    if {"needle", "every"} & set(groups):
        from rlm.demo import make_haystack

        haystack = make_haystack(args.needle_lines)
        path = Path(workdir.name) / "haystack.txt"
        path.write_text(haystack.text)
        settings |= {"haystack": str(path), "answer": haystack.answer}
    scripts = {
        f"root-{who}-{kind}": root_script(batch, args.chunk, kind == "every")
        for who, batch in (("ours", "llm_batch"), ("peer", "llm_query_batched"))
        for kind in ("needle", "every")
    }
    shim = Path(workdir.name) / "bin"
    shim.mkdir()
    (shim / "docker").write_text(_DOCKER_SHIM)
    (shim / "docker").chmod(0o755)
    base_env = {**os.environ, "PYTHONPATH": ""}
    envs = {
        s: (
            {
                **base_env,
                "PATH": f"{shim}:{os.environ['PATH']}",
                "REAL_DOCKER": shutil.which("docker") or "docker",
            }
            if s.startswith("rlms")
            else base_env
        )
        for s in systems
    }

    server = subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(args.latency), json.dumps(scripts)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    settings["url"], settings["url0"] = server.stdout.readline().split()
    runs: dict[str, dict[str, list[float]]] = {s: {} for s in systems}
    details: dict[str, dict[str, list[Any]]] = {s: {} for s in systems}
    errors: dict[str, dict[str, str]] = {s: {} for s in systems}
    started, load_before = time.time(), os.getloadavg()
    loads: list[float] = [load_before[0]]

    def collect(system: str, wanted: list[str]) -> None:
        doable = [g for g in wanted if (system, g) not in NOT_APPLICABLE]
        if not doable:
            return
        t = time.perf_counter()
        result = run_worker(system, doable, settings, envs[system])
        crash = result.pop("_crash", None)
        for row, detail in result.pop("_detail", {}).items():
            details[system].setdefault(row, []).append(detail)
        for row in (r for g in doable for r in group_rows(g, ns)):
            value = result.get(row, {"error": crash or "not measured"})
            if isinstance(value, dict):
                errors[system][row] = str(value.get("error"))
            else:
                runs[system].setdefault(row, []).append(float(value))
        took = time.perf_counter() - t
        loads.append(os.getloadavg()[0])  # the machine is shared: say how busy it was
        print(
            f"  {system} {','.join(doable)}: {took:.1f} s, load {loads[-1]:.1f}",
            file=sys.stderr,
            flush=True,
        )

    try:
        # Memory is measured in a process of its own, where no earlier row has left
        # freed memory for new sandboxes to reuse unseen; the knee, once, at the end.
        alone, once = [g for g in groups if g == "memory"], [g for g in groups if g == "knee"]
        for repeat in range(args.repeats):
            print(f"repeat {repeat + 1}", file=sys.stderr, flush=True)
            for system in systems:
                collect(system, [g for g in groups if g not in alone + once])
                collect(system, alone)
        if once:
            print("once", file=sys.stderr, flush=True)
            for system in systems:
                collect(system, once)
    finally:
        server.terminate()
        server.wait()
        workdir.cleanup()
    load_after, took_all = os.getloadavg(), time.time() - started

    med = {s: {r: statistics.median(v) for r, v in runs[s].items()} for s in systems}
    print(
        f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}, {os.cpu_count()} CPUs, "
        f"{took_all / 60:.1f} min; 1-min load average {min(loads):.1f}-{max(loads):.1f} "
        f"(sampled after each worker; {load_after[0]:.1f} at the end); "
        f"model server latency {args.latency * 1e3:.0f} ms (0 ms for the sub-call rows); "
        f"median [min-max] of {args.repeats} interleaved runs (sessions: one run)"
    )
    width, label = 28, max(len(r) for r in rows) + 1
    print(f"{'':{label}}" + "".join(f" {s:>{width}}" for s in systems))
    for row in rows:
        cells = []
        for s in systems:
            values = runs[s].get(row)
            if (s, row_group[row]) in NOT_APPLICABLE:
                text = f"n/a ({NOT_APPLICABLE[s, row_group[row]]})"
            elif row in errors[s]:
                text = "error"
            elif not values:
                text = "n/a"
            elif len(values) == 1:
                text = fmt(row, values[0])
            else:
                text = f"{fmt(row, med[s][row])} [{fmt(row, min(values))}-{fmt(row, max(values))}]"
            cells.append(f" {text:>{width}}")
        print(f"{row:{label}}" + "".join(cells))

    print("\nours / theirs (below 1: ours is faster or smaller; sessions: above 1 holds more)")
    for ours in (s for s in systems if s in OURS):
        for peer in (s for s in systems if s not in OURS):
            parts = [
                f"{row} {med[ours][row] / med[peer][row]:.3g}"
                for row in rows
                if row in med[ours] and row in med[peer] and med[peer][row] > 0
            ]
            print(f"  {ours} / {peer}: " + ", ".join(parts))
    notes = []
    for s in systems:
        if "sub-call in a cell, 0 ms" in med[s] and med[s].get("same call on host, 0 ms"):
            ratio = med[s]["sub-call in a cell, 0 ms"] / med[s]["same call on host, 0 ms"]
            notes.append(f"  {s}: a sub-call from a cell costs {ratio:.2f}x the host's own call")
        for detail in details[s].get("sessions until 2x cell", []):
            curve = ", ".join(
                f"k={k} {v:.3g}/{detail['mean_cell_ms'][k]:.3g}"
                for k, v in detail["median_cell_ms"].items()
            )
            cap = "" if detail["reached_2x"] else f" (cap {detail['cap']} reached under 2x)"
            notes.append(f"  {s}: trivial cell with k sessions, median/mean ms: {curve}{cap}")
        for detail in details[s].get("idle sandbox memory", [])[:1]:
            notes.append(
                f"  {s}: idle sandbox, first run: host {detail['host_MiB']:.1f} MiB + "
                f"container {detail['container_MiB']:.1f} MiB, over {detail['sandboxes']}"
            )
    if notes:
        print("\nnotes\n" + "\n".join(notes))
    failures = [f"  {s} / {row}: {msg}" for s in systems for row, msg in errors[s].items()]
    if failures:
        print("\nerrors\n" + "\n".join(failures))

    report = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "cpus": os.cpu_count(),
        "minutes": took_all / 60,
        "load_average": {"start": load_before, "end": load_after, "after_each_worker": loads},
        "latency_s": args.latency,
        "repeats": args.repeats,
        "runs": runs,
        "median": med,
        "details": details,
        "errors": errors,
        "not_applicable": {f"{s} / {g}": why for (s, g), why in NOT_APPLICABLE.items()},
    }
    Path(args.json).write_text(json.dumps(report, indent=1))
    print(f"\nwrote {args.json}")
    plot = f"""
import json, matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
r = json.load(open({args.json!r}))
fig, ax = plt.subplots(figsize=(7, 4.5))
for system, rows in r["median"].items():
    pts = sorted((int(k.split("=")[1]), v) for k, v in rows.items() if k.startswith("batch N="))
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=system)
ax.set_xscale("log"); ax.set_yscale("log")
ax.set_xlabel("N prompts in one batch"); ax.set_ylabel("wall time, s (median)")
ax.set_title("batch of N sub-calls at {args.latency * 1e3:.0f} ms each, " + r["date"])
ax.grid(True, which="both", alpha=0.3); ax.legend()
fig.tight_layout(); fig.savefig({args.plot!r}, dpi=110)
"""
    if any(r.startswith("batch N=") for r in rows):
        done = subprocess.run([args.plot_python, "-c", plot], capture_output=True, text=True)
        if done.returncode == 0:
            print(f"wrote {args.plot}")
        else:
            print(f"no plot: {done.stderr.strip()[-300:]}", file=sys.stderr)


if __name__ == "__main__":
    main()
