"""Fuzzing the bridge's checks (rlm/bridge.py): every method, any params, as either
backend delivers them (JSON from a Docker frame; from the restricted backend, the
plain copy its transport makes, whose floats may be infinite and whose dict keys may
be numbers).

Properties: a request is answered with JSON the wire can carry or refused with
BridgeRefusal (BudgetExceeded is one), never another exception; a request carrying a
forged depth, budget, session or tenant field is refused with nothing admitted, run
or started; over any sequence of requests the tree never admits more than its
budget, the batcher never sees more prompts than were admitted nor a batch or prompt
over the limits; a stream answers each index once and only its own ids are found.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from rlm.bridge import METHODS, SessionBridge
from rlm.errors import BridgeRefusal
from rlm.session import SessionLimits, SessionState
from rlm.subcalls.batcher import SubResult
from rlm.tools import ToolSet
from tests.fuzz.support import (
    FORGED_FIELDS,
    any_text,
    examples,
    hard_timeout,
    json_scalars,
    json_values,
)
from tests.support import SUB_MODEL, FakeBatcher


class FakeChildren:
    """Child runs that answer at once; records what they were asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], list[Any] | None]] = []

    def can_spawn(self, parent: SessionState) -> bool:
        return True

    async def run(
        self,
        parent: SessionState,
        prompts: list[str],
        contexts: list[Any] | None,
        max_concurrent: int | None,
        *,
        on_result: Callable[[int, SubResult], None] | None = None,
    ) -> Sequence[SubResult]:
        self.calls.append((list(prompts), contexts))
        results = [SubResult(text=f"child:{p[:20]}") for p in prompts]
        for i, r in enumerate(results):
            if on_result is not None:
                on_result(i, r)
        return results


class Rig:
    def __init__(self, limits: SessionLimits | None = None) -> None:
        self.batcher = FakeBatcher(faults=False)
        self.children = FakeChildren()
        self.tool_runs: list[dict[str, Any]] = []

        def add(a: int, b: int = 0) -> int:
            """Adds."""
            self.tool_runs.append({"a": a, "b": b})
            return a + b

        self.session = SessionState(sub_model=SUB_MODEL, limits=limits or SessionLimits())
        self.bridge = SessionBridge(
            self.batcher,
            self.session,
            children=self.children,
            tools=ToolSet.build([add]),
        )

    def work_done(self) -> int:
        return (
            sum(len(c[2]) for c in self.batcher.calls)
            + sum(len(c[0]) for c in self.children.calls)
            + len(self.tool_runs)
        )


def call(rig: Rig, method: object, params: object) -> tuple[Any, BridgeRefusal | None]:
    async def go() -> tuple[Any, BridgeRefusal | None]:
        try:
            return await rig.bridge.call(method, params), None
        except BridgeRefusal as exc:
            return None, exc
        finally:
            await rig.bridge.aclose()

    with hard_timeout(10):
        return asyncio.run(go())


def wire_json(answer: Any) -> None:
    """The answer goes back over the wire: strict JSON."""
    json.dumps(answer, allow_nan=False)


# -- values as the restricted backend's transport delivers them ----------------------------

_plain_scalars = st.one_of(json_scalars, st.floats())  # inf and nan too
plain_values = st.recursive(
    _plain_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.one_of(any_text, st.integers(), st.floats(), st.booleans()), inner, max_size=4
        ),
    ),
    max_leaves=20,
)
values = st.one_of(json_values, plain_values)
_FIELDS = (
    "prompt",
    "prompts",
    "context",
    "contexts",
    "model",
    "max_concurrent",
    "method",
    "stream",
    "name",
    "arguments",
)


def _typed(field: str) -> st.SearchStrategy[Any]:
    """A value of roughly the right type for ``field``, so deeper checks are reached."""
    return {
        "prompt": any_text,
        "prompts": st.lists(any_text, max_size=4),
        "context": values,
        "contexts": st.lists(values, max_size=4),
        "model": st.sampled_from([SUB_MODEL, "other", "", "m" * 201]),
        "max_concurrent": st.one_of(st.integers(-2, 100), st.booleans(), st.floats()),
        "method": st.sampled_from(["llm_batch", "rlm_batch", "llm_query", "tool"]),
        "stream": st.one_of(st.integers(-1, 3), st.booleans(), any_text),
        "name": st.sampled_from(["add", "nope", "__import__", ""]),
        "arguments": st.one_of(
            st.fixed_dictionaries({"a": st.integers()}),
            st.dictionaries(any_text, values, max_size=3),
        ),
    }[field]


_params = st.one_of(
    st.lists(st.sampled_from(_FIELDS), max_size=5, unique=True).flatmap(
        lambda names: st.fixed_dictionaries({n: st.one_of(_typed(n), values) for n in names})
    ),
    st.dictionaries(
        st.one_of(any_text, st.sampled_from(_FIELDS + FORGED_FIELDS)), values, max_size=4
    ),
    values,
)
_methods = st.one_of(st.sampled_from(METHODS), any_text, json_scalars)


@given(_methods, _params)
@settings(max_examples=examples(300))
def test_any_request_is_answered_with_wire_json_or_refused(method: object, params: object) -> None:
    rig = Rig()
    answer, refusal = call(rig, method, params)
    if refusal is not None:
        assert str(refusal)
    else:
        assert method in METHODS
        wire_json(answer)
    # Admitted before they ran: every prompt the batcher saw was counted.
    assert sum(len(c[2]) for c in rig.batcher.calls) <= rig.session.calls_admitted


# -- forged fields -----------------------------------------------------------------------------

_VALID: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "llm_query": st.fixed_dictionaries({"prompt": any_text}),
    "llm_batch": st.fixed_dictionaries({"prompts": st.lists(any_text, min_size=1, max_size=3)}),
    "rlm_query": st.fixed_dictionaries({"prompt": any_text, "context": json_values}),
    "rlm_batch": st.fixed_dictionaries({"prompts": st.lists(any_text, min_size=1, max_size=3)}),
    "stream_open": st.fixed_dictionaries(
        {
            "method": st.sampled_from(["llm_batch", "rlm_batch"]),
            "prompts": st.lists(any_text, min_size=1, max_size=3),
        }
    ),
    "stream_next": st.fixed_dictionaries({"stream": st.integers(1, 3)}),
    "stream_close": st.fixed_dictionaries({"stream": st.integers(1, 3)}),
    "tool": st.fixed_dictionaries({"name": st.just("add"), "arguments": st.just({"a": 1})}),
}


@given(
    st.sampled_from(METHODS).flatmap(lambda m: st.tuples(st.just(m), _VALID[m])),
    st.dictionaries(st.sampled_from(FORGED_FIELDS), values, min_size=1, max_size=3),
)
@settings(max_examples=examples(150))
def test_a_forged_depth_budget_session_or_tenant_field_is_refused_with_nothing_admitted(
    request: tuple[str, dict[str, Any]], forged: dict[str, Any]
) -> None:
    method, params = request
    rig = Rig(SessionLimits(max_sub_calls=5, max_children=2))
    before = (rig.session.depth, rig.session.tenant, rig.session.session_id, rig.session.limits)
    answer, refusal = call(rig, method, {**params, **forged})
    assert refusal is not None, (method, answer)
    assert "unexpected fields" in str(refusal)
    assert rig.session.calls_admitted == 0
    assert rig.work_done() == 0
    assert len(rig.bridge.streams) == 0
    assert (
        rig.session.depth,
        rig.session.tenant,
        rig.session.session_id,
        rig.session.limits,
    ) == before
    assert rig.session.tree.limits == rig.session.limits


# -- budgets over a sequence of requests --------------------------------------------------------

_batch_request = st.one_of(
    st.tuples(st.just("llm_query"), st.fixed_dictionaries({"prompt": st.text(max_size=12)})),
    st.tuples(
        st.just("llm_batch"),
        st.fixed_dictionaries({"prompts": st.lists(st.text(max_size=12), max_size=7)}),
    ),
    st.tuples(
        st.just("rlm_batch"),
        st.fixed_dictionaries({"prompts": st.lists(st.text(max_size=12), max_size=7)}),
    ),
    st.tuples(
        st.just("stream_open"),
        st.fixed_dictionaries(
            {"method": st.just("llm_batch"), "prompts": st.lists(st.text(max_size=12), max_size=7)}
        ),
    ),
)


@given(
    st.integers(0, 12),
    st.integers(1, 5),
    st.integers(1, 10),
    st.lists(_batch_request, min_size=1, max_size=8),
)
@settings(max_examples=examples(200))
def test_no_sequence_of_requests_gets_past_the_budgets(
    max_sub_calls: int, max_batch: int, max_chars: int, requests: list[tuple[str, dict[str, Any]]]
) -> None:
    limits = SessionLimits(
        max_sub_calls=max_sub_calls, max_batch_size=max_batch, max_prompt_chars=max_chars
    )
    rig = Rig(limits)

    async def go() -> None:
        bridge = rig.bridge
        try:
            for method, params in requests:
                with contextlib.suppress(BridgeRefusal):
                    await bridge.call(method, params)
                assert rig.session.calls_admitted <= max_sub_calls
            await bridge.cell_finished()
        finally:
            await bridge.aclose()

    with hard_timeout(10):
        asyncio.run(go())
    sent = [p for c in rig.batcher.calls for p in c[2]]
    assert len(sent) <= rig.session.calls_admitted <= max_sub_calls
    assert all(len(c[2]) <= max_batch for c in rig.batcher.calls)
    assert all(len(p) <= max_chars for p in sent)
    assert all(len(c[0]) <= max_batch for c in rig.children.calls)


# -- contexts a child would take -------------------------------------------------------------


def _deep(depth: int, leaf: Any) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


@given(
    st.one_of(
        values,
        st.tuples(st.integers(1, 1000), _plain_scalars).map(lambda t: _deep(*t)),
        st.tuples(st.integers(1, 40), st.integers(1, 40)).map(
            lambda t: [["x" * t[0]] * t[1]] * t[1]
        ),
    ),
    st.integers(1, 400),
    st.booleans(),
)
@settings(max_examples=examples(200))
def test_any_childs_context_is_sized_and_passed_or_refused(
    context: Any, limit: int, spawn: bool
) -> None:
    rig = Rig(SessionLimits(max_child_context_chars=limit))
    if not spawn:
        rig.bridge.children = None  # at the depth limit: one plain prompt instead
    answer, refusal = call(rig, "rlm_query", {"prompt": "q", "context": context})
    if refusal is not None:
        assert str(refusal)
        assert rig.work_done() == 0
        return
    wire_json(answer)
    if spawn:
        ((_, contexts),) = rig.children.calls
        assert contexts is not None and contexts[0] is context
    else:
        ((_, _, (prompt,), _),) = rig.batcher.calls
        assert prompt.startswith("q")


# -- streams -----------------------------------------------------------------------------------

_stream_ops = st.lists(
    st.one_of(
        st.tuples(st.just("open"), st.integers(0, 5)),
        st.tuples(
            st.sampled_from(["next", "close"]),
            st.one_of(st.integers(-1, 6), st.booleans(), any_text, st.floats(0, 3)),
        ),
    ),
    max_size=12,
)


@given(_stream_ops)
@settings(max_examples=examples(150))
def test_streams_answer_each_index_once_and_only_their_own_ids(ops: list[tuple[str, Any]]) -> None:
    rig = Rig()
    seen: dict[int, list[int]] = {}
    totals: dict[int, int] = {}
    done: set[int] = set()

    async def go() -> None:
        bridge = rig.bridge
        try:
            for op, arg in ops:
                if op == "open":
                    prompts = [f"p{i}" for i in range(arg)]
                    try:
                        opened = await bridge.call(
                            "stream_open", {"method": "llm_batch", "prompts": prompts}
                        )
                    except BridgeRefusal:
                        assert arg == 0 or len(bridge.streams) >= bridge.streams.max_open
                        continue
                    sid = opened["stream"]
                    assert type(sid) is int and sid not in totals
                    totals[sid], seen[sid] = arg, []
                    continue
                mine = type(arg) is int and arg in totals and arg not in done
                try:
                    answer = await bridge.call(f"stream_{op}", {"stream": arg})
                except BridgeRefusal:
                    assert op == "next" and not mine
                    continue
                if op == "close":
                    assert answer is None
                    if mine:
                        done.add(arg)
                    continue
                assert mine, arg
                wire_json(answer)
                for index, wire in answer["items"]:
                    assert 0 <= index < totals[arg]
                    assert index not in seen[arg]
                    assert wire == {"text": f"echo:p{index}"}
                    seen[arg].append(index)
                if answer["done"]:
                    assert sorted(seen[arg]) == list(range(totals[arg]))
                    done.add(arg)
        finally:
            await bridge.aclose()

    with hard_timeout(10):
        asyncio.run(go())


def test_unexpected_fields_of_mixed_key_types_are_refused() -> None:
    """Found by the fuzzer: keys of mixed types (the restricted backend's plain copy
    keeps int keys) made the refusal's own sorted() raise TypeError."""
    rig = Rig()
    _, refusal = call(rig, "llm_query", {"prompt": "x", "": None, 0: None, None: 1})
    assert refusal is not None
    assert "unexpected fields ['', '0', 'None']" in str(refusal)
    assert rig.work_done() == 0
