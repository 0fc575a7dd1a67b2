"""Child RLMs end to end: rlm_query / rlm_batch over the offline server, both backends."""

from __future__ import annotations

import os
from typing import Any

import pytest

from rlm import RLM, SessionLimits
from rlm.testing import OfflineModelServer
from tests.cli_support import owner_filter
from tests.support import ROOT_MODEL, SUB_MODEL, make_config

BACKENDS = ["restricted", pytest.param("docker", marks=pytest.mark.docker)]


CHILD_MODEL = "root-child"
SECRET = "the secret code is 4417"


def cell(code: str) -> str:
    return f"```repl\n{code}\n```"


def events_of(result: Any, kind: str) -> list[dict[str, Any]]:
    return [e for e in result.trajectory if e["event"] == kind]


def no_containers_left(docker_client: Any) -> None:
    assert docker_client.containers.list(all=True, filters=owner_filter(os.getpid())) == []


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
async def test_a_depth_two_child_answers_from_its_own_context(
    backend: str, request: pytest.FixtureRequest
) -> None:
    # The child runs the offline root policy: it inspects its own context, asks the
    # sub model about its chunks, and answers with FINAL_VAR.
    haystack = "\n".join([f"line {i}" for i in range(300)] + [SECRET] + ["tail"] * 50)
    root = [
        cell(
            f"part = {haystack!r}\n"
            'answer = rlm_query("What is the secret code?", context=part)\n'
            "print(type(answer).__name__, answer)"
        ),
        "FINAL_VAR(answer)",
    ]
    with OfflineModelServer(scripts={ROOT_MODEL: root}) as server:
        config = make_config(server, backend=backend, max_depth=2, child_model=CHILD_MODEL)
        result = await RLM(config).acompletion("the root's context", "Find the code.")
    assert result.answer == "4417"
    assert result.children == 1 and result.stopped is None and result.status == "answered"
    # Usage sums the tree and breaks it down by depth and model.
    by_depth = result.usage.by_depth
    assert set(by_depth) == {0, 1}
    assert by_depth[0][ROOT_MODEL].calls == 2
    assert by_depth[1][CHILD_MODEL].calls == 3 and by_depth[1][SUB_MODEL].calls >= 1
    assert result.usage.by_model[SUB_MODEL].calls == by_depth[1][SUB_MODEL].calls
    # Every event says which run it belongs to; the child's are nested under its start.
    assert all({"run_id", "parent_id", "depth"} <= e.keys() for e in result.trajectory)
    root_id = result.session_id
    (start,) = events_of(result, "child_start")
    (end,) = events_of(result, "child_end")
    child_id = start["child_id"]
    assert start["run_id"] == root_id and start["depth"] == 0 and start["parent_id"] is None
    assert end["status"] == "answered" and end["answer"] == "4417"
    child_events = [e for e in result.trajectory if e["run_id"] == child_id]
    assert {e["event"] for e in child_events} >= {"root_call", "cell", "output", "batch_end"}
    assert all(e["depth"] == 1 and e["parent_id"] == root_id for e in child_events)
    inside = result.trajectory.index(start), result.trajectory.index(end)
    assert all(inside[0] < result.trajectory.index(e) < inside[1] for e in child_events)
    if backend == "docker":
        no_containers_left(request.getfixturevalue("docker_client"))


async def test_at_the_depth_limit_rlm_query_is_a_plain_sub_call() -> None:
    root = [
        cell('a = rlm_query("Question: What is the secret code?", context="x\\n' + SECRET + '")'),
        "FINAL_VAR(a)",
    ]
    with OfflineModelServer(scripts={ROOT_MODEL: root}) as server:
        result = await RLM(make_config(server)).acompletion("ctx", "q")  # max_depth 1
        asked = list(server.stats.prompts)
    assert result.answer == "4417"
    assert result.children == 0 and not events_of(result, "child_start")
    assert any(p.startswith("Question: What is the secret code?\n\n---\nx\n") for p in asked)


async def test_a_child_cannot_start_grandchildren_at_depth_two() -> None:
    root = [
        cell('a = rlm_query("What is the secret code?", context=' + repr(SECRET) + ")"),
        "FINAL_VAR(a)",
    ]
    child = [
        cell("b = rlm_query('Question: What is the secret code?', context=context)"),
        "FINAL_VAR(b)",
    ]
    with OfflineModelServer(scripts={ROOT_MODEL: root, CHILD_MODEL: child}) as server:
        config = make_config(server, max_depth=2, child_model=CHILD_MODEL)
        result = await RLM(config).acompletion("ctx", "q")
    assert result.answer == "4417"
    assert result.children == 1
    assert max(e["depth"] for e in result.trajectory) == 1
    assert set(result.usage.by_depth) == {0, 1}


@pytest.mark.parametrize(
    ("backend", "children"),
    [("restricted", 20), pytest.param("docker", 20, marks=pytest.mark.docker)],
    indirect=["backend"],
)
async def test_rlm_batch_runs_children_in_parallel_in_input_order(
    backend: str, children: int, request: pytest.FixtureRequest
) -> None:
    # Each child waits on one sub-call long enough for every child to start (Docker
    # starts containers a few at a time on two cores): run one at a time, they would
    # never overlap at the server.
    sleep = 0.5 if backend == "restricted" else 5.0
    root = [
        cell(
            f"answers = rlm_batch([f'child {{i}}' for i in range({children})])\nprint(answers[:3])"
        ),
        "FINAL_VAR(answers)",
    ]
    child = [cell(f"x = llm_query('[[sleep:{sleep}]] ' + context)"), "FINAL_VAR(x)"]
    limits = SessionLimits(max_live_children=children)
    with OfflineModelServer(scripts={ROOT_MODEL: root, CHILD_MODEL: child}) as server:
        # 20 containers starting on two cores can hold up the root's next call.
        config = make_config(
            server,
            backend=backend,
            max_depth=2,
            child_model=CHILD_MODEL,
            limits=limits,
            request_timeout=60.0,
        )
        result = await RLM(config).acompletion("ctx", "q")
        peak = server.stats.max_in_flight
    expected = [f"echo: [[sleep:{sleep}]] child {i}" for i in range(children)]
    assert result.answer == repr(expected)
    assert result.children == children
    assert peak >= children  # every child's sleeping sub-call was in flight at once
    if backend == "docker":
        no_containers_left(request.getfixturevalue("docker_client"))


async def test_live_children_are_capped_per_run() -> None:
    root = [cell("answers = rlm_batch([f'c{i}' for i in range(9)])"), "FINAL_VAR(answers)"]
    child = [cell("x = llm_query('[[sleep:0.3]] ' + context)"), "FINAL_VAR(x)"]
    limits = SessionLimits(max_live_children=3)
    with OfflineModelServer(scripts={ROOT_MODEL: root, CHILD_MODEL: child}) as server:
        config = make_config(server, max_depth=2, child_model=CHILD_MODEL, limits=limits)
        result = await RLM(config).acompletion("ctx", "q")
        peak = server.stats.max_in_flight
    assert result.children == 9
    assert peak == 3


async def test_a_failing_child_is_an_llm_error_and_the_parent_goes_on() -> None:
    root = [
        cell(
            "r = rlm_query('do it', context=['a', 'b'])\n"
            "print(isinstance(r, LLMError), r.kind)\n"
            "x = 'parent went on: ' + r.kind"
        ),
        "FINAL_VAR(x)",
    ]
    child = [cell("1/0"), cell("1/0"), cell("1/0"), "FINAL(never)"]
    limits = SessionLimits(max_consecutive_errors=2)
    with OfflineModelServer(scripts={ROOT_MODEL: root, CHILD_MODEL: child}) as server:
        config = make_config(server, max_depth=2, child_model=CHILD_MODEL, limits=limits)
        result = await RLM(config).acompletion("ctx", "q")
    assert result.answer == "parent went on: limit"
    (end,) = events_of(result, "child_end")
    assert end["status"] == "limit" and end["stopped"] == "max_consecutive_errors"
    # The child's own limit is not the tree's: the root finished by itself.
    assert result.stopped is None


async def test_a_child_whose_root_model_fails_is_an_llm_error() -> None:
    root = [
        cell("r = rlm_query('What is the secret code?')\nx = (r.failed, r.kind)"),
        "FINAL_VAR(x)",
    ]
    with OfflineModelServer(scripts={ROOT_MODEL: root}) as server:
        # A child model the server does not know: every call to it is a 404.
        from rlm.testing import Fault

        server.add_fault(Fault(status=404, times=100, model="root-missing"))
        config = make_config(server, max_depth=2, child_model="root-missing")
        result = await RLM(config).acompletion("ctx", "q")
    assert result.answer == "(True, 'child')"
