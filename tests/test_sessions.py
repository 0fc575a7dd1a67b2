"""Persistent sessions: one sandbox across turns, forks, snapshots, idleness."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from rlm import RLM
from rlm.errors import RLMError, SandboxUnavailable, SnapshotError
from rlm.sessions import MAGIC, SessionClosed
from rlm.stack import SessionStack
from rlm.testing import OfflineModelServer
from rlm.testing.server import Fault
from tests.cli_support import owner_filter
from tests.support import ROOT_MODEL, make_config, wait_until

BACKENDS = ["restricted", pytest.param("docker", marks=pytest.mark.docker)]


def cell(code: str) -> str:
    return f"```repl\n{code}\n```"


class Scripted:
    """The offline server, with the root model's replies chosen by each turn's query."""

    def __init__(self, turns: dict[str, list[str]]) -> None:
        self.turns = turns

    def reply(self, messages: list[dict[str, Any]]) -> str:
        first = next(m["content"] for m in messages if m["role"] == "user")
        query = first.split("\n", 1)[0].removeprefix("Query: ").strip()
        step = sum(1 for m in messages if m["role"] == "assistant")
        script = self.turns[query]
        return script[min(step, len(script) - 1)]


def scripted_server(turns: dict[str, list[str]]) -> OfflineModelServer:
    server = OfflineModelServer()
    script = Scripted(turns)
    server._root_reply = lambda messages, model=None: script.reply(messages)  # type: ignore[method-assign]
    return server


def containers_of_this_process(docker_client: Any) -> list[Any]:
    return list(docker_client.containers.list(all=True, filters=owner_filter(os.getpid())))


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
async def test_a_variable_set_in_turn_one_is_read_in_turn_two(
    backend: str, request: pytest.FixtureRequest
) -> None:
    turns = {
        "remember": [cell("kept = len(context) * 10"), "FINAL(noted)"],
        "recall": [
            cell("print(kept, context_0, context_1, context, history[0]['answer'])"),
            cell("both = f'{kept} {context_0} {context_1}'"),
            "FINAL_VAR(both)",
        ],
    }
    with scripted_server(turns) as server:
        rlm = RLM(make_config(server, backend=backend))
        async with rlm.session() as session:
            first = await session.acompletion(context="abcd", query="remember")
            second = await session.acompletion(context="second", query="recall")
            assert session.turns == 2
            total = session.usage
        seen = "\n".join(server.stats.prompts)
    assert (first.answer, first.turn) == ("noted", 1)
    assert (second.answer, second.turn) == ("40 abcd second", 2)
    assert "40 abcd second second noted" in seen
    # The root model was told what the session holds.
    assert "This is turn 2 of a session" in seen and "`context_1` (a str of 6" in seen
    # Usage per turn and for the session.
    calls = [r.usage.by_model[ROOT_MODEL].calls for r in (first, second)]
    assert calls == [2, 3] and total.by_model[ROOT_MODEL].calls == 5
    if backend == "docker":
        assert containers_of_this_process(request.getfixturevalue("docker_client")) == []


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
async def test_a_fork_of_a_session_with_a_50_mb_variable_diverges_independently(
    backend: str,
) -> None:
    turns = {
        "load": [cell("big = 'x' * 50_000_000\nbranch = 'root'"), "FINAL(loaded)"],
        "go left": [cell("branch = 'left'\nbig = big[:10]"), "FINAL_VAR(branch)"],
        "go right": [cell("branch = 'right' + str(len(big))"), "FINAL_VAR(branch)"],
        "where": [cell("here = f'{branch} {len(big)}'"), "FINAL_VAR(here)"],
    }
    with scripted_server(turns) as server:
        rlm = RLM(make_config(server, backend=backend, cell_timeout=60.0))
        async with rlm.session() as session:
            await session.acompletion(query="load")
            started = time.monotonic()
            left, right = await session.afork(2)
            fork_s = time.monotonic() - started
            try:
                assert (await left.acompletion(query="go left")).answer == "left"
                assert (await right.acompletion(query="go right")).answer == "right50000000"
                assert (await left.acompletion(query="where")).answer == "left 10"
                assert (await right.acompletion(query="where")).answer == "right50000000 50000000"
                assert (await session.acompletion(query="where")).answer == "root 50000000"
                assert left.turns == 3 and left.history[0]["answer"] == "loaded"
            finally:
                await left.aclose()
                await right.aclose()
    print(f"fork(2) of a 50 MB variable on {backend}: {fork_s:.2f} s")


def test_a_snapshot_is_restored_in_a_new_process(tmp_path: Path) -> None:
    turns = {
        "set": [cell("fruit = {'apples': 3, 'pears': (1, 2)}\nf = lambda: 1"), "FINAL(set)"],
        "read": [
            cell("got = f\"{fruit['apples']} {fruit['pears']} {len(history)}\""),
            "FINAL_VAR(got)",
        ],
    }
    with scripted_server(turns) as server:
        rlm = RLM(make_config(server))
        with rlm.session() as session:
            session.completion(context="the data", query="set")
            blob = session.snapshot()
            assert session.skipped == {"f": "a function"}
        path = tmp_path / "session.snap"
        path.write_bytes(blob)
        script = textwrap.dedent(
            f"""
            from pathlib import Path
            from rlm import RLM
            from tests.support import make_config
            from rlm.testing import OfflineModelServer

            class Server: base_url = {server.base_url!r}
            rlm = RLM(make_config(Server()))
            with rlm.restore(Path({str(path)!r}).read_bytes()) as session:
                result = session.completion(query="read")
                print(result.answer, result.turn)
            """
        )
        proc = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=Path(__file__).resolve().parent.parent,
        )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "3 (1, 2) 1 2"


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"not a snapshot at all",
        MAGIC + b"12\n{not json!!}",
        MAGIC + b"999999999\n{}",
        MAGIC + b"2\n{}garbage after the header",
        MAGIC + b'50\n{"turns": 1, "history": [], "contexts": []}    ' + os.urandom(4000),
    ],
)
async def test_a_malicious_snapshot_fails_cleanly(blob: bytes) -> None:
    with OfflineModelServer() as server:
        rlm = RLM(make_config(server))
        with pytest.raises(SnapshotError):
            await rlm.arestore(blob)
        # The host is whole: a new session works.
        async with rlm.session() as session:
            result = await session.acompletion(
                context="x\nthe code is 9", query="What is the code?"
            )
    assert result.answer == "9"


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
async def test_an_idle_session_closes_its_sandbox(
    backend: str, request: pytest.FixtureRequest
) -> None:
    turns = {"one": ["FINAL(1)"], "two": ["FINAL(2)"]}
    with scripted_server(turns) as server:
        rlm = RLM(make_config(server, backend=backend))
        session = await rlm.session(idle_timeout=0.5).start()
        try:
            assert (await session.acompletion(query="one")).answer == "1"
            await anyio.sleep(1.5)
            assert session.closed
            if backend == "docker":
                docker_client = request.getfixturevalue("docker_client")
                assert containers_of_this_process(docker_client) == []
            with pytest.raises(SessionClosed, match="closed"):
                await session.acompletion(query="two")
        finally:
            await session.aclose()


@pytest.mark.docker
async def test_a_restarted_sandbox_is_reported_not_hidden(docker_client: Any) -> None:
    turns = {
        "crash": [cell("x = 1\nimport os\nos._exit(9)"), "FINAL(after the crash)"],
        "next": [cell("print('x' in globals())"), "FINAL(went on)"],
    }
    with scripted_server(turns) as server:
        rlm = RLM(make_config(server, backend="docker"))
        async with rlm.session() as session:
            crashed = await session.acompletion(context="data", query="crash")
            after = await session.acompletion(query="next")
        seen = "\n".join(server.stats.prompts)
    assert crashed.state_lost and not after.state_lost
    assert session.state_lost_turns == [1]
    assert "The sandbox had to be restarted" in seen


def test_the_blocking_api_with_forks_and_restore() -> None:
    turns = {
        "set": [cell("n = 5"), "FINAL(ok)"],
        "bump": [cell("n += 1"), "FINAL_VAR(n)"],
    }
    with scripted_server(turns) as server:
        rlm = RLM(make_config(server))
        with rlm.session() as session:
            session.completion(query="set")
            forks = session.fork(2)
            try:
                assert [f.completion(query="bump").answer for f in forks] == ["6", "6"]
                assert forks[0].completion(query="bump").answer == "7"
            finally:
                for fork in forks:
                    fork.close()
            blob = session.snapshot()
            assert session.completion(query="bump").answer == "6"
        with rlm.restore(blob) as restored:
            assert restored.completion(query="bump").answer == "6"


def _start_after_first_request(
    monkeypatch: pytest.MonkeyPatch, server: OfflineModelServer, *, then: Exception | None = None
) -> None:
    """Make a stack's start wait until the model server has a request: a turn that
    started its sandbox before its first root call would wait here for ever."""
    start = SessionStack.start

    async def start_late(self: SessionStack, context: Any = None) -> None:
        await wait_until(lambda: server.stats.requests > 0, timeout=10)
        if then is not None:
            await self.aclose()
            raise then
        await start(self, context)

    monkeypatch.setattr(SessionStack, "start", start_late)


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
async def test_the_sandbox_starts_while_the_first_root_call_is_in_flight(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    turns = {"count": [cell("n = len(context)"), "FINAL_VAR(n)"]}
    with scripted_server(turns) as server:
        server.latency = 0.2
        _start_after_first_request(monkeypatch, server)
        rlm = RLM(make_config(server, backend=backend))
        async with rlm.session() as session:
            result = await session.acompletion(context="x" * 5000, query="count")
    assert result.answer == "5000"
    kinds = [e["event"] for e in result.trajectory]
    assert kinds[0] == "run_start" and "root_call" in kinds


async def test_a_sandbox_that_fails_to_start_stops_the_root_call_in_flight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    turns = {"count": [cell("n = len(context)"), "FINAL_VAR(n)"]}
    with scripted_server(turns) as server:
        server.latency = 30.0
        _start_after_first_request(monkeypatch, server, then=SandboxUnavailable("engine gone"))
        rlm = RLM(make_config(server, request_timeout=60.0))
        session = await rlm.session().start()
        started = time.monotonic()
        # The start's own error, not a group of it and the cancelled root call.
        with pytest.raises(SandboxUnavailable, match="engine gone"):
            await session.acompletion(context="data", query="count")
        # A liveness bound, not a speed claim: the root call would take 30 s.
        assert time.monotonic() - started < 20
        assert session.closed
        await wait_until(lambda: server.stats.disconnects > 0, timeout=10)
        assert server.stats.completed == 0


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
async def test_a_failed_first_root_call_leaves_the_sandbox_ready_for_the_next_turn(
    backend: str,
) -> None:
    turns = {
        "first": ["FINAL(never)"],
        "again": [cell("n = len(context_0)"), "FINAL_VAR(n)"],
    }
    with scripted_server(turns) as server:
        server.add_fault(Fault(status=400, match="first"))
        rlm = RLM(make_config(server, backend=backend))
        async with rlm.session() as session:
            with pytest.raises(RLMError):
                await session.acompletion(context="y" * 700, query="first")
            again = await session.acompletion(query="again")
    assert again.answer == "700"
