"""What the second round of container hardening costs: seccomp profile and userns-remap.

    .venv/bin/python bench/bench_hardening.py [--starts 8] [--cells 200] [--image IMAGE]

Side by side, in one run, interleaved so that load on the machine falls on every
variant alike:

- Docker's default seccomp profile vs rlm's allow-list (``seccomp.json``) on runc,
  and rlm's allow-list on runsc (Docker's default profile cannot run under a runsc
  registered with ``--oci-seccomp`` on gVisor 2022-12: it answers clone3 with EPERM);
- two engines this script starts (tests/engines.py): one plain, one with
  ``userns-remap: "default"``, both with rlm's profile.

Prints the median cold start (create + attach + start + handshake) and the median
round trip of an empty cell, and the ratios. Needs root, the engine and the image
(scripts/setup-docker.sh).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rlm.backends.docker import ColdStart, ContainerSpec, DockerSandbox, connect, launch
from rlm.bridge import SessionBridge
from rlm.session import SessionState
from tests.engines import SecondEngine


class _NoCalls:
    async def run(self, *args: Any) -> list[Any]:
        raise AssertionError("the benchmark makes no sub-calls")


def _bridge() -> SessionBridge:
    return SessionBridge(_NoCalls(), SessionState(sub_model="sub"))  # type: ignore[arg-type]


@contextmanager
def _engine(docker_client: Any, image: str, **options: Any) -> Iterator[Any]:
    engine = SecondEngine(**options)
    try:
        engine.start()
        engine.load_image(docker_client, image)
        with engine.client() as client:
            yield client
    finally:
        engine.close()


async def _start(client: Any, spec: ContainerSpec) -> float:
    t = time.perf_counter()
    box = await launch(client, spec)
    elapsed = time.perf_counter() - t
    await box.remove()
    return elapsed


async def _cells(client: Any, spec: ContainerSpec, n: int) -> list[float]:
    box = DockerSandbox(_bridge(), ColdStart(spec, docker_client=client))
    try:
        await box.start()
        await box.execute("x = 0", 10)
        times = []
        for _ in range(n):
            t = time.perf_counter()
            result = await box.execute("x += 1", 10)
            times.append(time.perf_counter() - t)
            assert result.error is None, result.error
        return times
    finally:
        await box.close()


async def run(variants: dict[str, tuple[Any, ContainerSpec]], starts: int, cells: int) -> None:
    start_times: dict[str, list[float]] = {name: [] for name in variants}
    cell_times: dict[str, list[float]] = {name: [] for name in variants}
    for client, spec in variants.values():
        await _start(client, spec)  # warm the engine's caches for this variant
    for _ in range(starts):
        for name, (client, spec) in variants.items():
            start_times[name].append(await _start(client, spec))
    rounds = 4
    for _ in range(rounds):
        for name, (client, spec) in variants.items():
            cell_times[name] += await _cells(client, spec, cells // rounds)
    start = {name: statistics.median(t) for name, t in start_times.items()}
    cell = {name: statistics.median(t) for name, t in cell_times.items()}
    print(f"{'variant':<34} {'cold start':>12} {'empty cell':>12}")
    for name in variants:
        print(f"{name:<34} {start[name] * 1000:>9.0f} ms {cell[name] * 1000:>9.3f} ms")
    print()
    for a, b in (
        ("runc, Docker's default profile", "runc, rlm's profile"),
        ("runc, rlm's profile", "runsc, rlm's profile"),
        ("2nd engine, runc", "2nd engine + userns-remap, runc"),
        ("2nd engine, runsc", "2nd engine + userns-remap, runsc"),
    ):
        if a in variants and b in variants:
            print(f"{b} / {a}: start x{start[b] / start[a]:.2f}, cell x{cell[b] / cell[a]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=8)
    parser.add_argument("--cells", type=int, default=200)
    parser.add_argument("--image", default="rlm-sandbox:latest")
    parser.add_argument("--no-userns", action="store_true", help="skip the two extra engines")
    args = parser.parse_args()
    main_client = connect()
    with ExitStack() as stack:
        variants: dict[str, tuple[Any, ContainerSpec]] = {
            "runc, Docker's default profile": (
                main_client,
                ContainerSpec(image=args.image, runtime="runc", seccomp="default"),
            ),
            "runc, rlm's profile": (main_client, ContainerSpec(image=args.image, runtime="runc")),
            "runsc, rlm's profile": (
                main_client,
                ContainerSpec(image=args.image, runtime="runsc"),
            ),
        }
        if not args.no_userns:
            plain = stack.enter_context(_engine(main_client, args.image))
            remapped = stack.enter_context(_engine(main_client, args.image, userns_remap=True))
            for runtime in ("runc", "runsc"):
                spec = ContainerSpec(image=args.image, runtime=runtime)
                variants[f"2nd engine, {runtime}"] = (plain, spec)
                variants[f"2nd engine + userns-remap, {runtime}"] = (remapped, spec)
        anyio.run(run, variants, args.starts, args.cells)
    main_client.close()


if __name__ == "__main__":
    main()
