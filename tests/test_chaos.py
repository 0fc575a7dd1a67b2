"""Chaos: `rlm run` on Docker while a driver breaks things at random moments.

Each round runs the real CLI against a second Docker engine the test owns (so it may
be restarted) and an offline model server in a process of its own (so it may be
killed), and lands one fault mid-run: the sandbox container killed, the model server
killed, SIGTERM / SIGHUP / SIGKILL to `rlm run`, or the engine restarted. After each:
`rlm run` exits within a bound (nothing hangs), its exit code and message match the
fault, no container of ours is left a few seconds later, and the trajectory file is
valid JSON lines up to the fault.

The order and the moments are drawn from a seed printed at the start;
``RLM_CHAOS_SEED=N`` replays a run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rlm.demo import make_haystack
from tests.cli_support import RLM, read_events, start_model_server
from tests.engines import SecondEngine, running_engine
from tests.support import IMAGE

pytestmark = [pytest.mark.docker, pytest.mark.slow]

FAULTS = ("kill_container", "kill_model_server", "sigterm", "sighup", "sigkill", "restart_engine")
#: Extra rounds with faults drawn at random, on top of one round per fault.
EXTRA_ROUNDS = 2
#: Seconds `rlm run` may take to exit after a fault before it counts as hung.
EXIT_LIMIT = 60.0
#: Seconds after `rlm run` is gone by which none of its containers may be left.
CONTAINER_LIMIT = 10.0
#: The moments a fault may land: after the first of these events, plus a little.
MOMENTS = ("sandbox_started", "root_call", "batch_start")


@pytest.fixture(scope="module")
def engine(docker_client: Any) -> Iterator[SecondEngine]:
    with running_engine(docker_client, IMAGE) as engine:
        yield engine


@dataclass
class Round:
    fault: str
    moment: str
    extra_delay: float
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    events: list[dict[str, Any]] | None = None

    def describe(self) -> str:
        return (
            f"fault {self.fault} after {self.moment} +{self.extra_delay:.2f} s: exit "
            f"{self.exit_code}, stderr {self.stderr.strip()[-400:]!r}"
        )


def _events(path: Path, *, partial_tail: bool) -> list[dict[str, Any]]:
    # A run killed before it wrote anything has no trajectory file.
    return read_events(path, partial_tail=partial_tail) if path.exists() else []


def _wait_for_event(path: Path, kinds: tuple[str, ...], proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        events = _events(path, partial_tail=True)
        if any(e.get("event") in kinds for e in events):
            return
        time.sleep(0.02)


def _wait_gone(engine: SecondEngine) -> list[dict[str, Any]]:
    deadline = time.monotonic() + CONTAINER_LIMIT
    while True:
        left = engine.sandbox_containers()
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def _play(engine: SecondEngine, tmp_path: Path, index: int, plan: Round) -> Round:
    haystack = make_haystack(20_000, seed=index)
    context = tmp_path / f"context-{index}.txt"
    context.write_text(haystack.text)
    trajectory = tmp_path / f"run-{index}.jsonl"
    server, url = start_model_server(0.15)
    env = {
        **os.environ,
        "DOCKER_HOST": engine.url,
        "OPENAI_API_KEY": "chaos-key",
        "OPENAI_BASE_URL": url,
        "RLM_MODEL": "root-chaos",
        "RLM_SUB_MODEL": "sub-chaos",
        "RLM_IMAGE": IMAGE,
        "RLM_REQUEST_TIMEOUT": "10",
        "RLM_CELL_TIMEOUT": "30",
    }
    run = subprocess.Popen(
        [
            RLM,
            "run",
            "--backend",
            "docker",
            "--context",
            str(context),
            "--query",
            haystack.query,
            "--json",
            "--trajectory",
            str(trajectory),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        _wait_for_event(trajectory, (plan.moment,), run)
        time.sleep(plan.extra_delay)
        _inject(plan.fault, engine, server, run)
        try:
            plan.stdout, plan.stderr = run.communicate(timeout=EXIT_LIMIT)
        except subprocess.TimeoutExpired:
            run.kill()
            plan.stdout, plan.stderr = run.communicate()
            pytest.fail(f"`rlm run` hung for {EXIT_LIMIT:g} s after {plan.describe()}")
        plan.exit_code = run.returncode
        plan.events = _events(trajectory, partial_tail=plan.fault == "sigkill")
        return plan
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        if server.poll() is None:
            server.terminate()
            server.wait(10)


def _inject(fault: str, engine: SecondEngine, server: subprocess.Popen[str], run: Any) -> None:
    if fault == "kill_container":
        with engine.client(timeout=30) as client:
            for item in engine.sandbox_containers():
                client.api.kill(item["Id"])
    elif fault == "kill_model_server":
        server.kill()
        server.wait()
    elif fault in ("sigterm", "sighup", "sigkill"):
        run.send_signal(
            {"sigterm": signal.SIGTERM, "sighup": signal.SIGHUP, "sigkill": signal.SIGKILL}[fault]
        )
    elif fault == "restart_engine":
        engine.restart()
    else:
        raise AssertionError(f"unknown fault {fault}")


def _judge(plan: Round) -> list[str]:
    """What is wrong with how `rlm run` ended, given the fault it met."""
    code, err, events = plan.exit_code, plan.stderr, plan.events or []
    kinds = [e["event"] for e in events]
    answered = code == 0
    result: dict[str, Any] = {}
    if plan.stdout.strip():
        result = json.loads(plan.stdout)
    problems: list[str] = []
    finished = "final" in kinds  # the fault may land after the last root call
    if plan.fault == "sigkill":
        if code != -signal.SIGKILL:
            problems.append(f"expected death by SIGKILL, got exit {code}")
    elif plan.fault in ("sigterm", "sighup"):
        expected = 143 if plan.fault == "sigterm" else 129
        if code != expected and not (finished and answered):
            problems.append(f"expected exit {expected}, got {code}")
        if code == expected and result.get("status") != "interrupted":
            problems.append(f"--json status is {result.get('status')!r}, not 'interrupted'")
    elif plan.fault == "kill_model_server":
        if code != 5 and not (finished and answered):
            problems.append(f"expected exit 5 (model-provider failure), got {code}")
        if code == 5 and "model server" not in err:
            problems.append("the message does not name the model server")
    elif plan.fault == "kill_container":
        lost = any(e.get("state_lost") for e in events if e["event"] == "output")
        if code not in (0, 3, 6):
            problems.append(f"expected an answer (0, 3) or a sandbox failure (6), got {code}")
        if code in (0, 3) and not lost and not finished:
            problems.append("the run went on without saying the sandbox's state was lost")
    elif plan.fault == "restart_engine":
        if code not in (0, 3, 6):
            problems.append(f"expected recovery (0, 3) or a sandbox failure (6), got {code}")
        if code == 6 and "ocker" not in err:
            problems.append("the message does not name Docker")
    if code is not None and code >= 0 and result and result.get("exit_code") != code:
        problems.append(f"--json exit_code {result.get('exit_code')} != exit {code}")
    return problems


def test_rlm_run_survives_random_faults_and_leaves_nothing_behind(
    engine: SecondEngine, tmp_path: Path
) -> None:
    seed = int(os.environ.get("RLM_CHAOS_SEED") or random.SystemRandom().randrange(2**32))
    print(f"chaos seed {seed} (RLM_CHAOS_SEED={seed} replays this run)")
    rng = random.Random(seed)
    faults = list(FAULTS) + [rng.choice(FAULTS) for _ in range(EXTRA_ROUNDS)]
    rng.shuffle(faults)
    failures: list[str] = []
    for index, fault in enumerate(faults):
        plan = Round(fault, rng.choice(MOMENTS), rng.uniform(0.0, 0.4))
        played = _play(engine, tmp_path, index, plan)
        problems = _judge(played)
        left = _wait_gone(engine)
        if left:
            problems.append(
                f"{len(left)} container(s) left {CONTAINER_LIMIT:g} s after the run ended: "
                + ", ".join(f"{c['Id'][:12]} {c.get('State')}" for c in left)
            )
            with engine.client(timeout=30) as client:  # so the next round starts clean
                for item in left:
                    client.api.remove_container(item["Id"], force=True)
        failures += [f"round {index} ({played.describe()}): {p}" for p in problems]
    assert not failures, f"seed {seed}:\n" + "\n".join(failures)


async def test_an_engine_restart_mid_cell_costs_the_state_then_the_session_goes_on(
    engine: SecondEngine,
) -> None:
    import anyio
    import docker

    from rlm.backends.docker import ColdStart, ContainerSpec, DockerSandbox
    from tests.support import make_bridge

    client = docker.DockerClient(base_url=engine.url, timeout=30)
    source = ColdStart(ContainerSpec(image=IMAGE), docker_client=client)
    sandbox = DockerSandbox(make_bridge(), source)
    try:
        await sandbox.start()
        await sandbox.load_context("kept across restarts")
        assert (await sandbox.execute("x = 1", 10)).error is None
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, engine.restart)
            with anyio.fail_after(EXIT_LIMIT):  # never hangs
                cell = await sandbox.execute("import time; time.sleep(30)", 40)
        assert cell.state_lost and cell.error is not None
        assert "died" in cell.error or "gone" in cell.error
        # The engine is back: the next cell runs in a fresh container, context reloaded.
        with anyio.fail_after(EXIT_LIMIT):
            after = await sandbox.execute("print(context, 'x' in dir())", 10)
        assert after.error is None and after.stdout.strip() == "kept across restarts False"
    finally:
        await sandbox.close()
        await source.aclose()
        client.close()
    assert _wait_gone(engine) == []
