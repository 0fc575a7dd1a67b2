"""Bulk data over the Docker attach socket: the raw socket against rlm's channel.

    .venv/bin/python bench/bench_bulk.py [--runtime runc] [--mb 100] [--repeats 5]

Side by side, interleaved, medians of ``--repeats`` (min-max in brackets):

- **raw attach, host -> container**: ``--mb`` MB of bytes written to a hardened
  container's attached stdin (the sandbox spec, the runner replaced by a sink that
  counts bytes and answers once all arrived): the ceiling for loading a context;
- **raw attach, container -> host**: the same container writes ``--mb`` MB to its
  stdout and the host reads and demultiplexes it: the ceiling for prompts going out;
- **context load**: ``DockerSandbox.load_context`` of a ``--mb`` MB ``str``, until
  the runner says it is loaded;
- **llm_batch prompts out**: ``llm_batch`` of 200 prompts of ``--mb``/200 MB from
  model code to an instant batcher and back, timed inside the cell.

Each row prints MB/s and its ratio to the raw socket in the same direction.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import struct
import time
from typing import Any

import anyio
from raw_attach import raw_container

from rlm.backends.docker import ColdStart, ContainerSpec, DockerSandbox, connect
from rlm.bridge import SessionBridge
from rlm.session import SessionState
from rlm.subcalls.batcher import SubResult

_SINK = (
    "import os,sys\nn=0\ntotal=int(sys.argv[1])\n"
    "while n<total:\n b=os.read(0,1<<20)\n if not b: break\n n+=len(b)\n"
    "os.write(1,b'%d\\n'%n)\n"
    "os.read(0,1)\n"
    "b=memoryview(bytes(1<<20))\nn=0\n"
    "while n<total: n+=os.write(1,b[:total-n])\n"
    "os.read(0,1)\n"
)


class InstantBatcher:
    async def run(
        self, session: Any, model: str, prompts: list[str], max_concurrent: int | None, **kw: Any
    ) -> list[SubResult]:
        return [SubResult(text="ok") for _ in prompts]


def bridge() -> SessionBridge:
    return SessionBridge(InstantBatcher(), SessionState(sub_model="sub"))  # type: ignore[arg-type]


async def raw_attach(spec: ContainerSpec, size: int) -> tuple[float, float]:
    """Seconds to push ``size`` bytes in and to pull ``size`` bytes out, raw."""
    client = connect()
    try:
        async with raw_container(client, spec, _SINK, str(size)) as sock:
            return await _push_pull(sock, size)
    finally:
        client.close()


async def _push_pull(sock: socket.socket, size: int) -> tuple[float, float]:
    payload = memoryview(b"x" * size)
    header = struct.Struct(">BxxxL")

    async def recv_until(n: int) -> None:
        got, raw = 0, bytearray()
        while got < n:
            try:
                data = sock.recv(1 << 20)
            except BlockingIOError:
                await anyio.wait_readable(sock)
                continue
            if not data:
                raise RuntimeError("sink closed")
            raw += data
            pos = 0
            while len(raw) - pos >= 8:
                _, length = header.unpack_from(raw, pos)
                if len(raw) - pos - 8 < length:
                    break
                got += length
                pos += 8 + length
            del raw[:pos]

    t = time.perf_counter()
    view = payload
    while view:
        try:
            view = view[sock.send(view[: 1 << 20]) :]
        except BlockingIOError:
            await anyio.wait_writable(sock)
    await recv_until(len(b"%d\n" % size))
    push = time.perf_counter() - t
    t = time.perf_counter()
    sock.send(b"g")
    await recv_until(size)
    pull = time.perf_counter() - t
    sock.send(b"x")
    return push, pull


async def ours(spec: ContainerSpec, size: int) -> tuple[float, float]:
    context = "0123456789" * (size // 10)
    async with DockerSandbox(bridge(), ColdStart(spec)) as sb:
        await sb.execute("1", 30)
        t = time.perf_counter()
        await sb.load_context(context)
        load = time.perf_counter() - t
        each = size // 200
        code = (
            "import time\n"
            f"ps = [str(i % 10) * {each} for i in range(200)]\n"
            "t = time.perf_counter()\nr = llm_batch(ps)\n"
            "print(time.perf_counter() - t)"
        )
        result = await sb.execute(code, 300)
        assert result.error is None, result.error
        return load, float(result.stdout)


def fmt(seconds: list[float], size: int) -> str:
    med = statistics.median(seconds)
    return (
        f"{size / med / 1e6:8.0f} MB/s  {med * 1e3:8.1f} ms "
        f"[{min(seconds) * 1e3:.0f}-{max(seconds) * 1e3:.0f}]"
    )


async def main_async(args: argparse.Namespace) -> None:
    spec = ContainerSpec(image=args.image, runtime=args.runtime)
    size = args.mb * 1_000_000
    rows: dict[str, list[float]] = {k: [] for k in ("push", "pull", "load", "batch")}
    for _ in range(args.repeats):
        push, pull = await raw_attach(spec, size)
        load, batch = await ours(spec, size)
        rows["push"].append(push)
        rows["pull"].append(pull)
        rows["load"].append(load)
        rows["batch"].append(batch)
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"{args.runtime}, {args.mb} MB, median of {args.repeats} interleaved [min-max]")
    print(f"  raw attach, host -> container   {fmt(rows['push'], size)}")
    print(
        f"  context load (load_context)     {fmt(rows['load'], size)}"
        f"  {med['push'] / med['load']:.2f} of raw"
    )
    print(f"  raw attach, container -> host   {fmt(rows['pull'], size)}")
    print(
        f"  llm_batch 200 prompts out+back  {fmt(rows['batch'], size)}"
        f"  {med['pull'] / med['batch']:.2f} of raw"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image", default="rlm-sandbox:latest")
    parser.add_argument("--runtime", default="runc")
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    anyio.run(main_async, parser.parse_args())


if __name__ == "__main__":
    main()
