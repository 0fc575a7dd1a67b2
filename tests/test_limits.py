"""Run limits for the whole tree: each one stops a run gracefully, with ``stopped`` set."""

from __future__ import annotations

import os
from typing import Any

import pytest

from rlm import RLM, SessionLimits
from rlm.errors import ConfigurationError
from rlm.testing import OfflineModelServer
from tests.cli_support import owner_filter
from tests.support import ROOT_MODEL, SUB_MODEL, make_config

BACKENDS = ["restricted", pytest.param("docker", marks=pytest.mark.docker)]


CHILD_MODEL = "root-child"


def cell(code: str) -> str:
    return f"```repl\n{code}\n```"


async def run(
    script: list[str],
    limits: SessionLimits,
    *,
    backend: str = "restricted",
    child: list[str] | None = None,
    **settings: Any,
) -> Any:
    scripts = {ROOT_MODEL: script}
    if child is not None:
        scripts[CHILD_MODEL] = child
        settings.setdefault("max_depth", 2)
        settings.setdefault("child_model", CHILD_MODEL)
    with OfflineModelServer(scripts=scripts) as server:
        config = make_config(server, backend=backend, limits=limits, **settings)
        result = await RLM(config).acompletion("some context", "a question")
        result.server_prompts = list(server.stats.prompts)
        return result


def limit_events(result: Any) -> list[str]:
    return [e["limit"] for e in result.trajectory if e["event"] == "limit_reached"]


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
async def test_max_sub_calls_stops_the_run_with_a_forced_final_turn(
    backend: str, request: pytest.FixtureRequest
) -> None:
    script = [
        cell("a = llm_batch(['x', 'y'])\nb = llm_batch(['p', 'q', 'r'])"),
        "FINAL(what I had)",
    ]
    result = await run(script, SessionLimits(max_sub_calls=4), backend=backend)
    assert result.stopped == "max_sub_calls"
    assert result.status == "limit" and result.exit_code == 4
    assert result.answer == "what I had"
    assert result.usage.sub_calls == 2
    assert limit_events(result) == ["max_sub_calls"]
    # The model was told why it must answer now.
    assert any("max_sub_calls = 4" in p for p in result.server_prompts)
    if backend == "docker":
        docker_client = request.getfixturevalue("docker_client")
        assert docker_client.containers.list(all=True, filters=owner_filter(os.getpid())) == []


async def test_max_tokens_ends_the_run_without_another_model_call() -> None:
    script = [cell("x = llm_query('hello ' * 200)"), cell("y = 1"), "FINAL(no)"]
    result = await run(script, SessionLimits(max_tokens=300))
    assert result.stopped == "max_tokens"
    assert result.answer.startswith("(no answer: the run reached its max_tokens limit")
    assert result.usage.by_model[ROOT_MODEL].calls == 1  # no forced-final call after it


async def test_max_cost_usd_counts_the_price_of_every_model() -> None:
    prices = {ROOT_MODEL: (1000.0, 1000.0), SUB_MODEL: (1000.0, 1000.0)}
    script = [cell("print(llm_query('hello'))"), cell("y = 2"), cell("z = 3"), "FINAL(no)"]
    # A root reply of ~20 tokens at $1000/M costs ~$0.02: the second turn crosses $0.05.
    result = await run(script, SessionLimits(max_cost_usd=0.05), prices=prices)
    assert result.stopped == "max_cost_usd"
    assert result.cost_usd is not None and result.cost_usd >= 0.05
    # The usage event breaks the cost down by depth and model (the viewer shows it).
    usage = next(e for e in result.trajectory if e["event"] == "usage")
    by_model = usage["cost_by_depth"]["0"]
    assert set(by_model) == {ROOT_MODEL, SUB_MODEL}
    assert sum(by_model.values()) == pytest.approx(result.cost_usd)
    # The sub-call after the budget was spent was not made, and model code was told why.
    output = next(e for e in result.trajectory if e["event"] == "output")
    assert "cost budget spent" in (output["stdout"] + str(output["error"]))
    assert result.status == "limit"


async def test_max_cost_usd_without_prices_is_a_configuration_error() -> None:
    with OfflineModelServer() as server:
        config = make_config(server, limits=SessionLimits(max_cost_usd=1.0))
        with pytest.raises(ConfigurationError, match="price for every model"):
            await RLM(config).acompletion("c", "q")


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
async def test_max_wall_time_cuts_the_cell_and_asks_for_an_answer(
    backend: str, request: pytest.FixtureRequest
) -> None:
    script = [cell("x = llm_query('[[sleep:5]] slow')"), "FINAL(in time)"]
    result = await run(script, SessionLimits(max_wall_time_s=2.0), backend=backend)
    assert result.stopped == "max_wall_time_s"
    assert result.answer == "in time"  # the forced-final turn had its grace
    assert result.wall_time_s < 5.0
    output = next(e for e in result.trajectory if e["event"] == "output")
    assert output["timed_out"]
    if backend == "docker":
        docker_client = request.getfixturevalue("docker_client")
        assert docker_client.containers.list(all=True, filters=owner_filter(os.getpid())) == []


async def test_max_children_refuses_the_rest_and_stops_the_run() -> None:
    script = [
        cell(
            "rs = rlm_batch(['a', 'b', 'c'], max_concurrent=1)\n"
            "kinds = [getattr(r, 'kind', 'ok') for r in rs]"
        ),
        "FINAL_VAR(kinds)",
    ]
    child = ["FINAL(child done)"]
    result = await run(script, SessionLimits(max_children=1), child=child)
    assert result.stopped == "max_children"
    assert result.children == 1
    assert result.limits == {"children": 2}
    assert result.answer == "['ok', 'limit', 'limit']"


async def test_max_consecutive_errors_stops_the_root() -> None:
    script = [cell("1/0"), cell("x = 1"), cell("1/0"), cell("1/0"), "FINAL(x)"]
    result = await run(script, SessionLimits(max_consecutive_errors=2))
    assert result.stopped == "max_consecutive_errors"
    # Errors in a row: 1, then reset by a good cell, then 2 more.
    assert len([e for e in result.trajectory if e["event"] == "cell"]) == 4
    assert result.answer == "x"  # the script's last reply, played at the forced turn


async def test_limits_count_across_the_tree() -> None:
    # Each child makes 2 sub-calls; the tree may make 5: the third child is refused.
    script = [
        cell(
            "rs = rlm_batch(['a', 'b', 'c'], max_concurrent=1)\n"
            "ok = [not getattr(r, 'failed', False) for r in rs]"
        ),
        "FINAL_VAR(ok)",
    ]
    child = [cell("y = llm_batch(['1', '2'])"), "FINAL(done)"]
    result = await run(script, SessionLimits(max_sub_calls=5), child=child)
    assert result.answer == "[True, True, False]"
    assert result.usage.sub_calls == 4
    assert result.stopped == "max_sub_calls"
    assert result.status == "limit"


def test_limit_settings_are_checked() -> None:
    with OfflineModelServer() as server:
        with pytest.raises(ConfigurationError, match="max_wall_time_s must be positive"):
            make_config(server, limits=SessionLimits(max_wall_time_s=0))
        with pytest.raises(ConfigurationError, match="max_depth"):
            make_config(server, max_depth=0)
        with pytest.raises(ConfigurationError, match="price of"):
            make_config(server, prices={"m": [1]})
