"""SessionBridge: every request from a sandbox is checked on the host before it runs."""

from __future__ import annotations

from typing import Any

import pytest

from rlm.bridge import SessionBridge
from rlm.errors import BridgeRefusal, BudgetExceeded
from rlm.session import SessionLimits
from tests.support import SUB_MODEL, FakeBatcher, make_bridge


def bridge_with(**limits: Any) -> tuple[SessionBridge, FakeBatcher]:
    batcher = FakeBatcher()
    return make_bridge(batcher, limits=SessionLimits(**limits)), batcher


async def test_llm_query_returns_one_answer_from_the_sessions_sub_model() -> None:
    bridge, batcher = bridge_with()
    assert await bridge.call("llm_query", {"prompt": "hi"}) == {"text": "echo:hi"}
    (session_id, model, prompts, max_concurrent) = batcher.calls[0]
    assert session_id == bridge.session.session_id
    assert (model, prompts, max_concurrent) == (SUB_MODEL, ["hi"], 1)


async def test_llm_batch_returns_answers_in_order_with_failures_in_place() -> None:
    bridge, batcher = bridge_with()
    answer = await bridge.call("llm_batch", {"prompts": ["a", "fail:nope", "b"]})
    assert answer == [
        {"text": "echo:a"},
        {"error": "nope", "kind": "provider"},
        {"text": "echo:b"},
    ]
    assert batcher.calls[0][3] is None  # no max_concurrent asked for


@pytest.mark.parametrize(
    ("method", "params", "message"),
    [
        ("exec", {"prompt": "x"}, "unknown method"),
        (None, {}, "unknown method"),
        ("llm_query", ["x"], "params must be an object"),
        ("llm_query", {"prompt": "x", "tenant": "victim"}, "unexpected fields"),
        ("llm_batch", {"prompts": ["x"], "session": "other"}, "unexpected fields"),
        ("llm_query", {"prompt": 3}, "prompt 0 is not a str"),
        ("llm_batch", {"prompts": "abc"}, "prompts must be a list"),
        ("llm_batch", {"prompts": ["a", None]}, "prompt 1 is not a str"),
        ("llm_batch", {"prompts": ["a"], "max_concurrent": 0}, "max_concurrent"),
        ("llm_batch", {"prompts": ["a"], "max_concurrent": True}, "max_concurrent"),
        ("llm_batch", {"prompts": ["a"], "max_concurrent": 2.5}, "max_concurrent"),
        ("llm_query", {"prompt": "x", "model": ""}, "model must be"),
        ("llm_query", {"prompt": "x", "model": "m" * 201}, "model must be"),
        ("llm_query", {"prompt": "x", "model": "gpt-expensive"}, "not permitted"),
    ],
)
async def test_malformed_or_forbidden_requests_are_refused_before_the_batcher(
    method: object, params: object, message: str
) -> None:
    bridge, batcher = bridge_with()
    with pytest.raises(BridgeRefusal, match=message):
        await bridge.call(method, params)
    assert batcher.calls == []
    assert bridge.session.calls_admitted == 0


async def test_a_permitted_model_may_be_named() -> None:
    bridge, batcher = bridge_with(allowed_models=frozenset({"other-model"}))
    await bridge.call("llm_query", {"prompt": "x", "model": "other-model"})
    await bridge.call("llm_query", {"prompt": "x", "model": SUB_MODEL})
    assert [call[1] for call in batcher.calls] == ["other-model", SUB_MODEL]


@pytest.mark.parametrize(
    ("limits", "params", "message"),
    [
        ({"max_batch_size": 2}, {"prompts": ["a", "b", "c"]}, "over this session's limit of 2"),
        ({"max_prompt_chars": 5}, {"prompts": ["ok", "too long"]}, "prompt 1 has 8 characters"),
        ({"max_sub_calls": 2}, {"prompts": ["a", "b", "c"]}, "2 left, and this call needs 3"),
    ],
)
async def test_limits_refuse_the_whole_batch_with_what_to_do(
    limits: dict[str, Any], params: dict[str, Any], message: str
) -> None:
    bridge, batcher = bridge_with(**limits)
    with pytest.raises(BudgetExceeded, match=message):
        await bridge.call("llm_batch", params)
    assert batcher.calls == []


async def test_the_sub_call_budget_counts_across_calls() -> None:
    bridge, _ = bridge_with(max_sub_calls=3)
    await bridge.call("llm_batch", {"prompts": ["a", "b"]})
    await bridge.call("llm_query", {"prompt": "c"})
    assert bridge.session.calls_admitted == 3
    with pytest.raises(BudgetExceeded, match="0 left"):
        await bridge.call("llm_query", {"prompt": "d"})


async def test_a_batcher_failure_propagates_to_the_backend() -> None:
    # The backend turns it into a generic refusal for model code; the bridge does
    # not swallow it (tests/backends check that nothing of it reaches the sandbox).
    bridge, _ = bridge_with()
    with pytest.raises(RuntimeError, match="internal detail"):
        await bridge.call("llm_query", {"prompt": "boom"})
