"""rlm side by side with its peers, on this machine, in one run.

    .venv/bin/python bench/peers.py [--repeats 3] [--latency 0.2] [--ns 10,100,1000]

Installs nothing: each peer runs in a subprocess of its own virtual environment's
Python (bench/README.md, "peers.py", says how they were installed and how their
image was built offline). Systems:

- ``rlm-restricted``: ours, the in-process RestrictedPython backend;
- ``rlm-docker``: ours, a hardened Docker container (runc) per session;
- ``rlms-local``: the official library's ``LocalREPL`` (a plain ``exec``, no
  isolation: the floor);
- ``rlms-docker``: its ``DockerREPL`` (``docker run`` + ``docker exec`` per cell, an
  HTTP proxy for sub-calls);
- ``llm-sandbox``: ``SandboxSession`` on Docker (no sub-calls from inside: it has no
  model bridge, so its batch rows are absent).

Rows: sandbox create (the second in a warm process); a trivial cell (median of
``--cells``); a batch of N prompts at ``--latency`` per call (ours ``llm_batch``, the
official library's ``llm_query_batched``); an end-to-end run, the whole library
from its entry point to the answer: a needle in ``--needle-lines`` log lines (~47 MB),
a scripted root model that asks a sub-model about every ``--chunk``-character chunk
in one batch, then sets ``answer["ready"]``. All against one offline model server in a
process of its own, every call (root and sub) answered after ``--latency``.
Each repeat runs every system once, in turn (interleaved), each in a fresh
process; medians, min-max and our ratio to each peer are printed, and the figures
written to JSON and a PNG plot of batch wall time against N (the plot needs
matplotlib, from the rlms venv by default).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEERS = Path(os.environ.get("RLM_PEERS_VENVS", "/work/peers-venvs"))
PEER_IMAGE = "rlms-peer:py3.11"

_SERVER = """
import json, signal, sys
from rlm.testing import OfflineModelServer
server = OfflineModelServer(latency=float(sys.argv[1]), scripts=json.loads(sys.argv[2])).start()
print(server.base_url, flush=True)
signal.sigwait({signal.SIGTERM, signal.SIGINT})
server.stop()
"""

# Each worker: argv = json {"url", "ns", "cells"}; prints one JSON line of seconds.
_OURS = """
import json, sys, time, anyio
args = json.loads(sys.argv[1])
from rlm.bridge import SessionBridge
from rlm.provider import ModelClient
from rlm.session import SessionState
from rlm.subcalls import Batcher

async def main():
    out = {}
    client = ModelClient(api_key="offline", base_url=args["url"])
    batcher = Batcher(client)
    bridge = SessionBridge(batcher, SessionState(sub_model="sub"))
    for attempt in range(2):  # the second, in a warm process, is what is reported
        t = time.perf_counter()
        if args["system"] == "rlm-docker":
            from rlm.backends.docker import ColdStart, ContainerSpec, DockerSandbox
            sb = DockerSandbox(bridge, ColdStart(ContainerSpec()))
        else:
            from rlm.backends.restricted import make_restricted
            sb = make_restricted(bridge)
        await sb.start()
        await sb.execute("pass", 30)
        out["sandbox create"] = time.perf_counter() - t
        if attempt == 0:
            await sb.close()
    cells = []
    for _ in range(args["cells"]):
        t = time.perf_counter()
        await sb.execute("x = 1", 30)
        cells.append(time.perf_counter() - t)
    out["trivial cell"] = sorted(cells)[len(cells) // 2]
    for n in args["ns"]:
        code = f"r = llm_batch(['p%d' % i for i in range({n})])\\nassert len(r) == {n}"
        t = time.perf_counter()
        res = await sb.execute(code, 600)
        assert res.error is None, res.error
        out[f"batch N={n}"] = time.perf_counter() - t
    await sb.close()
    await client.aclose()
    if args.get("haystack"):
        from rlm import RLM, RLMConfig
        text = open(args["haystack"]).read()
        backend = "docker" if args["system"] == "rlm-docker" else "restricted"
        config = RLMConfig(model="root-ours", sub_model="sub", api_key="offline",
                           base_url=args["url"], backend=backend, cell_timeout=600)
        t = time.perf_counter()
        result = await RLM(config).acompletion(text, "What is the secret access code?")
        out["end-to-end needle"] = time.perf_counter() - t
        assert args["answer"] in result.answer, result.answer
    print(json.dumps(out))

anyio.run(main)
"""

_RLMS = """
import json, sys, time
args = json.loads(sys.argv[1])
from rlm.clients.openai import OpenAIClient
from rlm.core.lm_handler import LMHandler
out = {}
handler = LMHandler(OpenAIClient(api_key="offline", model_name="sub", base_url=args["url"]))
handler.start()
for attempt in range(2):  # the second, in a warm process, is what is reported
    t = time.perf_counter()
    if args["system"] == "rlms-docker":
        from rlm.environments.docker_repl import DockerREPL
        env = DockerREPL(image=args["image"], lm_handler_address=handler.address)
    else:
        from rlm.environments.local_repl import LocalREPL
        env = LocalREPL(lm_handler_address=handler.address)
    env.execute_code("pass")
    out["sandbox create"] = time.perf_counter() - t
    if attempt == 0:
        env.cleanup()
cells = []
for _ in range(args["cells"]):
    t = time.perf_counter()
    env.execute_code("x = 1")
    cells.append(time.perf_counter() - t)
out["trivial cell"] = sorted(cells)[len(cells) // 2]
for n in args["ns"]:
    code = f"r = llm_query_batched(['p%d' % i for i in range({n})])\\nprint(len(r))"
    t = time.perf_counter()
    res = env.execute_code(code)
    took = time.perf_counter() - t
    if res.stdout.strip() != str(n):
        raise SystemExit(f"batch of {n} failed: {res.stdout[-300:]} {res.stderr[-300:]}")
    out[f"batch N={n}"] = took
env.cleanup()
handler.stop()
if args.get("haystack"):
    from rlm import RLM
    text = open(args["haystack"]).read()
    kw = {"api_key": "offline", "base_url": args["url"]}
    environment = "docker" if args["system"] == "rlms-docker" else "local"
    env_kwargs = {"image": args["image"]} if environment == "docker" else {}
    t = time.perf_counter()
    rlm = RLM(backend="openai", backend_kwargs={"model_name": "root-peer", **kw},
              other_backends=["openai"], other_backend_kwargs=[{"model_name": "sub", **kw}],
              environment=environment, environment_kwargs=env_kwargs, max_iterations=5)
    result = rlm.completion(text, root_prompt="What is the secret access code?")
    out["end-to-end needle"] = time.perf_counter() - t
    if args["answer"] not in str(result.response):
        raise SystemExit(f"wrong answer: {str(result.response)[:300]}")
print(json.dumps(out))
"""

_LLM_SANDBOX = """
import json, sys, time
args = json.loads(sys.argv[1])
from llm_sandbox import SandboxSession
out = {}
for attempt in range(2):  # the second, in a warm process, is what is reported
    t = time.perf_counter()
    session = SandboxSession(lang="python", image=args["image"], skip_environment_setup=True)
    session.open()
    session.run("pass")
    out["sandbox create"] = time.perf_counter() - t
    if attempt == 0:
        session.close()
cells = []
for _ in range(args["cells"]):
    t = time.perf_counter()
    session.run("x = 1")
    cells.append(time.perf_counter() - t)
out["trivial cell"] = sorted(cells)[len(cells) // 2]
session.close()
print(json.dumps(out))
"""

SYSTEMS: dict[str, tuple[str, str]] = {
    "rlm-restricted": (sys.executable, _OURS),
    "rlm-docker": (sys.executable, _OURS),
    "rlms-local": (str(PEERS / "rlms/bin/python"), _RLMS),
    "rlms-docker": (str(PEERS / "rlms/bin/python"), _RLMS),
    "llm-sandbox": (str(PEERS / "llm-sandbox/bin/python"), _LLM_SANDBOX),
}
OURS = ("rlm-restricted", "rlm-docker")


def root_script(batch: str, chunk: int) -> list[str]:
    """A scripted root model: chunks, one batch over all of them, the answer."""
    return [
        "```repl\n"
        f"chunks = [context[i:i + {chunk}] for i in range(0, len(context), {chunk})]\n"
        "prompts = ['Question: What is the secret access code?\\nAnswer with the answer "
        "only, or NOT FOUND.\\n---\\n' + c for c in chunks]\n"
        f"answers = {batch}(prompts)\n"
        "hits = [a for a in answers if isinstance(a, str) and a.strip() != 'NOT FOUND']\n"
        "print(len(chunks), hits[:3])\n"
        "```",
        # The answer dict, the form both libraries read (rlms 0.1.3 has no FINAL_VAR).
        # (rlms defines `answer` up front; rlm reads a plain dict set by the cell.)
        "```repl\ntry:\n    answer\nexcept NameError:\n    answer = {}\n"
        "answer['content'] = hits[0] if hits else 'NOT FOUND'\n"
        "answer['ready'] = True\n```",
    ]


def run_worker(
    system: str, url: str, args: argparse.Namespace, needle: dict[str, str]
) -> dict[str, float]:
    python, code = SYSTEMS[system]
    payload = {
        **needle,
        "system": system,
        "url": url,
        "ns": [int(n) for n in args.ns.split(",")],
        "cells": args.cells,
        "image": PEER_IMAGE,
    }
    with tempfile.TemporaryDirectory() as cwd:  # rlms writes a workspace into its cwd
        proc = subprocess.run(
            [python, "-c", code, json.dumps(payload)],
            capture_output=True,
            text=True,
            timeout=1800,
            cwd=cwd,
            env={**os.environ, "PYTHONPATH": ""},
            check=False,
        )
    if proc.returncode != 0:
        print(f"  {system} failed: {proc.stderr.strip()[-400:]}", file=sys.stderr)
        return {}
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def fmt(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if seconds < 1 else f"{seconds:.3f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--ns", default="10,100,1000")
    parser.add_argument("--cells", type=int, default=50)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--needle-lines", type=int, default=1_000_000, help="0: no end-to-end row")
    parser.add_argument("--chunk", type=int, default=200_000, help="characters a sub-call")
    parser.add_argument("--json", default=str(HERE / "peers.json"))
    parser.add_argument("--plot", default=str(HERE / "peers.png"))
    parser.add_argument("--plot-python", default=str(PEERS / "rlms/bin/python"))
    args = parser.parse_args()
    systems = args.systems.split(",")

    needle: dict[str, str] = {}
    workdir = tempfile.TemporaryDirectory()
    if args.needle_lines:
        from rlm.demo import make_haystack

        haystack = make_haystack(args.needle_lines)
        path = Path(workdir.name) / "haystack.txt"
        path.write_text(haystack.text)
        needle = {"haystack": str(path), "answer": haystack.answer}
    scripts = {
        "root-ours": root_script("llm_batch", args.chunk),
        "root-peer": root_script("llm_query_batched", args.chunk),
    }
    server = subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(args.latency), json.dumps(scripts)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    url = server.stdout.readline().strip()
    runs: dict[str, dict[str, list[float]]] = {s: {} for s in systems}
    started = time.time()
    try:
        for repeat in range(args.repeats):
            for system in systems:
                t = time.perf_counter()
                for row, value in run_worker(system, url, args, needle).items():
                    runs[system].setdefault(row, []).append(value)
                print(
                    f"  repeat {repeat + 1}: {system} {time.perf_counter() - t:.1f} s",
                    file=sys.stderr,
                )
    finally:
        server.terminate()
        server.wait()
        workdir.cleanup()

    rows = ["sandbox create", "trivial cell"] + [f"batch N={n}" for n in args.ns.split(",")]
    rows.append("end-to-end needle")
    med = {s: {r: statistics.median(v) for r, v in runs[s].items()} for s in systems}
    print(
        f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}, {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.1f}; model server latency {args.latency * 1e3:.0f} ms; "
        f"median [min-max] of {args.repeats} interleaved runs"
    )
    width = 30
    print(f"{'':18}" + "".join(f" {s:>{width}}" for s in systems))
    for row in rows:
        cells = []
        for s in systems:
            values = runs[s].get(row)
            if not values:
                cells.append(f" {'n/a':>{width}}")
                continue
            text = f"{fmt(med[s][row])} [{fmt(min(values))}-{fmt(max(values))}]"
            cells.append(f" {text:>{width}}")
        print(f"{row:18}" + "".join(cells))
    print("\nour ratio to each peer (ours / theirs; below 1 is faster)")
    for ours in (s for s in systems if s in OURS):
        for peer in (s for s in systems if s not in OURS):
            parts = [
                f"{row} {med[ours][row] / med[peer][row]:.3g}"
                for row in rows
                if row in med[ours] and row in med[peer]
            ]
            print(f"  {ours} / {peer}: " + ", ".join(parts))

    report = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "cpus": os.cpu_count(),
        "latency_s": args.latency,
        "repeats": args.repeats,
        "runs": runs,
        "median": med,
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
    done = subprocess.run([args.plot_python, "-c", plot], capture_output=True, text=True)
    if done.returncode == 0:
        print(f"wrote {args.plot}")
    else:
        print(f"no plot: {done.stderr.strip()[-300:]}", file=sys.stderr)


if __name__ == "__main__":
    main()
