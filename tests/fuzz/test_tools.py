"""Fuzzing host tools' argument and result checks (rlm/tools/: hints, tool, toolset).

Properties: a hint's check accepts exactly the JSON values a reference reading of
the hint accepts, and gives them to the tool as that reading says (an int where a
float is asked for becomes a float, the first union member that fits decides); a
call with any name and any arguments either runs the tool with arguments that fit
its signature (every required one, no unknown one, each of its type, a copy of what
was sent, within the size bound) or is refused with BridgeRefusal before it runs;
whatever a tool returns comes back as strict wire JSON equal to it, or as a
bad_return error, never an exception.
"""

from __future__ import annotations

import asyncio
import json
import math
import typing
from collections import Counter
from typing import Annotated, Any, Literal

from hypothesis import given, settings
from hypothesis import strategies as st

from rlm.errors import BridgeRefusal
from rlm.tools import Tool, ToolSet
from rlm.tools.hints import Mismatch, parse_hint
from tests.fuzz.support import any_text, examples, hard_timeout, json_equal, json_values

# -- hints and a reference reading of them ----------------------------------------------

_literals = st.lists(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from(["a", "b", ""])),
    min_size=1,
    max_size=3,
).map(lambda vs: Literal[tuple(vs)])  # type: ignore[misc]

_base_hints = st.sampled_from([str, int, float, bool, None, type(None), Any, list, dict])
hints = st.recursive(
    st.one_of(_base_hints, _literals),
    lambda inner: st.one_of(
        inner.map(lambda h: list[h]),  # type: ignore[valid-type]
        inner.map(lambda h: dict[str, h]),  # type: ignore[valid-type]
        st.tuples(inner, inner).map(lambda t: typing.Union[t[0], t[1]]),  # noqa: UP007
        inner.map(lambda h: typing.Optional[h]),  # noqa: UP045
        inner.map(lambda h: Annotated[h, "meta"]),
    ),
    max_leaves=6,
)

_NO = object()


def reference(value: Any, hint: Any) -> Any:
    """What a tool asking for ``hint`` gets for ``value``, or _NO if it must be refused."""
    if hint is Any:
        return value
    if hint is None or hint is type(None):
        return value if value is None else _NO
    if hint in (str, int, bool):
        return value if type(value) is hint else _NO
    if hint is float:
        return float(value) if type(value) in (int, float) else _NO
    if hint is list:
        return value if type(value) is list else _NO
    if hint is dict:
        return value if type(value) is dict else _NO
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        return reference(value, args[0])
    if origin is list:
        if type(value) is not list:
            return _NO
        items = [reference(v, args[0]) for v in value]
        return _NO if any(i is _NO for i in items) else items
    if origin is dict:
        if type(value) is not dict:
            return _NO
        out = {k: reference(v, args[1]) for k, v in value.items()}
        return _NO if any(v is _NO for v in out.values()) else out
    if origin is Literal:
        return value if any(type(value) is type(a) and value == a for a in args) else _NO
    # A union: its members in order (nested unions are flattened by typing itself).
    for option in args:
        got = reference(value, option)
        if got is not _NO:
            return got
    return _NO


@given(hints, json_values)
@settings(max_examples=examples(250))
def test_a_hint_accepts_exactly_what_its_reference_reading_does(hint: Any, value: Any) -> None:
    check = parse_hint(hint)
    expected = reference(value, hint)
    try:
        got = check.check(value, "argument 'x'")
    except Mismatch as exc:
        assert expected is _NO, (hint, value)
        assert str(exc).startswith("argument 'x'")
        return
    assert expected is not _NO, (hint, value, got)
    assert json_equal(got, expected)


# -- calls through a ToolSet ----------------------------------------------------------------

runs: list[tuple[str, dict[str, Any]]] = []


def lookup(query: str, /, limit: int = 10, *, exact: bool = False) -> list[str]:
    """Looks things up."""
    runs.append(("lookup", {"query": query, "limit": limit, "exact": exact}))
    return [query] * min(max(limit, 0), 3)


def scale(
    values: list[float], factor: float | None = None, mode: Literal["up", "down"] = "up"
) -> dict[str, Any]:
    """Scales."""
    runs.append(("scale", {"values": values, "factor": factor, "mode": mode}))
    return {"n": len(values), "mode": mode}


def tag(items: dict[str, list[int]], note: str | int | None) -> bool:
    """Tags."""
    runs.append(("tag", {"items": items, "note": note}))
    return True


def anything(value: Any = None) -> Any:
    """Echoes."""
    runs.append(("anything", {"value": value}))
    return value


TOOLS = ToolSet.build([lookup, scale, tag, anything], max_argument_bytes=2_000)
SIGNATURES: dict[str, dict[str, tuple[Any, bool]]] = {
    "lookup": {"query": (str, True), "limit": (int, False), "exact": (bool, False)},
    "scale": {
        "values": (list[float], True),
        "factor": (float | None, False),
        "mode": (Literal["up", "down"], False),
    },
    "tag": {"items": (dict[str, list[int]], True), "note": (str | int | None, True)},
    "anything": {"value": (Any, False)},
}

_plain_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), any_text)
plain_values = st.recursive(
    _plain_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(any_text, st.integers(), st.none()), inner, max_size=3),
    ),
    max_leaves=15,
)


def _argument_for(hint: Any) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.from_type(hint) if hint is not Any else json_values, json_values, plain_values
    )


@st.composite
def tool_calls(draw: st.DrawFn) -> tuple[Any, Any]:
    name = draw(
        st.one_of(
            st.sampled_from(sorted(SIGNATURES)),
            any_text,
            st.sampled_from(["__import__", "eval", "Lookup"]),
            json_values,
        )
    )
    if not isinstance(name, str) or name not in SIGNATURES:
        return name, draw(st.dictionaries(any_text, json_values, max_size=3))
    arguments: dict[Any, Any] = {}
    for param, (hint, _) in SIGNATURES[name].items():
        if draw(st.integers(0, 4)):
            arguments[param] = draw(_argument_for(hint))
    extra = draw(st.dictionaries(st.one_of(any_text, st.integers()), plain_values, max_size=2))
    if draw(st.booleans()):
        arguments.update(extra)
    if draw(st.integers(0, 9)) == 0:
        return name, draw(plain_values)  # not even an object
    return name, arguments


def call_tool(name: Any, arguments: Any) -> tuple[dict[str, Any] | None, BridgeRefusal | None]:
    async def go() -> tuple[dict[str, Any] | None, BridgeRefusal | None]:
        try:
            return await TOOLS.call(name, arguments, Counter()), None
        except BridgeRefusal as exc:
            return None, exc

    with hard_timeout(10):
        return asyncio.run(go())


def _json_size(value: Any) -> int:
    return len(
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8", "surrogatepass")
    )


@given(tool_calls())
@settings(max_examples=examples(200))
def test_a_tool_runs_only_with_arguments_that_fit_its_signature(case: tuple[Any, Any]) -> None:
    name, arguments = case
    runs.clear()
    answer, refusal = call_tool(name, arguments)
    if refusal is not None:
        assert str(refusal)
        assert runs == []
        return
    assert answer is not None
    json.dumps(answer, allow_nan=False)
    ((ran, got),) = runs
    assert ran == name
    signature = SIGNATURES[name]
    assert isinstance(arguments, dict)
    assert set(arguments) <= set(signature)
    assert all(k in arguments for k, (_, required) in signature.items() if required)
    assert _json_size(arguments) <= TOOLS.max_argument_bytes
    for param, sent in arguments.items():
        # The tool gets what the wire would carry: a JSON copy (int keys become str).
        expected = reference(json.loads(json.dumps(sent)), signature[param][0])
        assert expected is not _NO, (param, sent)
        assert json_equal(got[param], expected)
        if isinstance(sent, (list, dict)) and sent:
            assert got[param] is not sent  # a copy, never the sandbox's own object


class _Opaque:
    def __repr__(self) -> str:
        return "<host object with a secret>"


_returns = st.recursive(
    st.one_of(
        _plain_scalars,
        st.sampled_from([math.inf, -math.inf, math.nan]),
        st.builds(_Opaque),
        st.binary(max_size=4),
        st.sets(st.integers(), max_size=2),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.tuples(inner, inner),
        st.dictionaries(
            st.one_of(any_text, st.integers(), st.floats(), st.booleans(), st.none()),
            inner,
            max_size=3,
        ),
    ),
    max_leaves=12,
)


@given(_returns)
@settings(max_examples=examples(200))
def test_whatever_a_tool_returns_comes_back_as_wire_json_or_bad_return(value: Any) -> None:
    holder: dict[str, Any] = {"v": value}

    def give_back() -> Any:
        return holder["v"]

    tools = ToolSet([Tool(give_back)], max_result_bytes=5_000)

    async def go() -> dict[str, Any]:
        return await tools.call("give_back", {}, Counter())

    with hard_timeout(10):
        answer = asyncio.run(go())
    text = json.dumps(answer, allow_nan=False)
    if "error" in answer:
        assert answer["kind"] == "bad_return"
        assert "secret" not in answer["error"]
        return
    try:
        expected = json.loads(json.dumps(value, ensure_ascii=False, allow_nan=False))
    except (TypeError, ValueError):
        raise AssertionError(f"{value!r} is not JSON, yet came back as {text[:200]}") from None
    assert json_equal(answer["value"], expected)


@given(st.integers(1, 3_000), st.sampled_from(["[", '{"a":']))
@settings(max_examples=examples(40))
def test_deeply_nested_arguments_are_refused_or_run(depth: int, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    value = json.loads(opener * min(depth, 900) + "1" + closer * min(depth, 900))
    for _ in range(depth - min(depth, 900)):
        value = [value]
    runs.clear()
    answer, refusal = call_tool("anything", {"value": value})
    assert (refusal is None) == (answer is not None)
    assert (len(runs) == 1) == (refusal is None)
