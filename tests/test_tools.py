"""Host tools on the host side: what ToolSet accepts, describes, refuses and answers."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import threading
import time
from collections import Counter
from typing import Annotated, Any, Literal, Optional, Union

import anyio
import anyio.lowlevel
import pytest

from rlm.errors import BridgeRefusal, BudgetExceeded, ConfigurationError
from rlm.tools import Tool, ToolSet, tool


def search(query: str, limit: int = 10, *, mode: Literal["fast", "deep"] = "fast") -> list[str]:
    """Search the corpus for ``query``.

    Returns up to ``limit`` titles.
    """
    return [f"{mode}:{query}:{i}" for i in range(limit)]


def scale(values: list[float], factor: float = 2.0) -> list[float]:
    return [v * factor for v in values]


async def fetch(url: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Fetch a page."""
    return {"url": url, "headers": headers or {}}


def only_positional(a: int, b: int = 5, /, c: int = 7) -> list[int]:
    return [a, b, c]


async def call(
    tools: ToolSet, name: object, arguments: object, calls: Counter[str] | None = None
) -> Any:
    return await tools.call(name, arguments, calls if calls is not None else Counter())


# -- building ----------------------------------------------------------------------------------


def test_specs_carry_names_kinds_defaults_annotations_docs() -> None:
    tools = ToolSet.build([search, fetch])
    assert tools.names == ("search", "fetch")
    assert len(tools) == 2 and tools and "search" in tools
    spec = tools.specs()[0]
    assert spec == {
        "name": "search",
        "doc": "Search the corpus for ``query``.\n\nReturns up to ``limit`` titles.",
        "returns": "list[str]",
        "params": [
            {"name": "query", "kind": "positional-or-keyword", "annotation": "str"},
            {"name": "limit", "kind": "positional-or-keyword", "annotation": "int", "default": 10},
            {
                "name": "mode",
                "kind": "keyword-only",
                "annotation": "Literal['fast', 'deep']",
                "default": "fast",
            },
        ],
    }
    assert tools.specs()[1]["params"][1]["annotation"] == "dict[str, str] | None"
    assert tools.specs()[1]["returns"] == "dict[str, Any]"
    json.dumps(tools.specs())  # what goes to the sandbox is JSON


def test_spellings_of_the_supported_hints() -> None:
    def f(
        a: Optional[int],  # noqa: UP045 -- the old spelling is what is tested
        b: Union[str, None],  # noqa: UP007
        c: Annotated[float, "meters"],
        d: list,  # type: ignore[type-arg]
        e: dict,  # type: ignore[type-arg]
        g: Any,
        h: None,
        i: Literal[1, True, None],
        j: list[dict[str, list[int]]],
    ) -> None:
        pass

    annotations = [p["annotation"] for p in Tool(f).spec()["params"]]
    assert annotations == [
        "int | None",
        "str | None",
        "float",
        "list[Any]",
        "dict[str, Any]",
        "Any",
        "None",
        "Literal[1, True, None]",
        "list[dict[str, list[int]]]",
    ]
    assert Tool(f).spec()["returns"] == "None"


def test_string_annotations_are_resolved() -> None:
    # This module has future annotations: every hint here was a string.
    assert ToolSet.build([scale]).specs()[0]["params"][0]["annotation"] == "list[float]"


def test_describe_lists_signatures_and_docstrings() -> None:
    text = ToolSet.build([search, scale, fetch]).describe()
    assert text.splitlines() == [
        "  search(query: str, limit: int = 10, *, mode: Literal['fast', 'deep'] = 'fast')"
        " -> list[str]",
        "      Search the corpus for ``query``.",
        "",
        "      Returns up to ``limit`` titles.",
        "  scale(values: list[float], factor: float = 2.0) -> list[float]",
        "  fetch(url: str, headers: dict[str, str] | None = None) -> dict[str, Any]",
        "      Fetch a page.",
    ]
    assert ToolSet.build(None).describe() == ""
    assert ToolSet.build([]).describe() == ""
    assert not ToolSet.build(None)


def test_mapping_names_tools_and_tool_options_are_kept() -> None:
    limited = Tool(search, timeout=2.5, max_calls=3)
    tools = ToolSet.build({"find": limited, "grow": scale}, timeout=9, max_calls=50)
    assert tools.names == ("find", "grow")
    assert tools.timeout_of("find") == 2.5 and tools.max_calls_of("find") == 3
    assert tools.timeout_of("grow") == 9 and tools.max_calls_of("grow") == 50
    assert ToolSet.build(tools) is tools
    assert tools.subset(["grow"]).names == ("grow",)
    with pytest.raises(ConfigurationError, match="no tools named"):
        tools.subset(["nope"])


def test_tool_decorator_keeps_the_function_callable() -> None:
    @tool
    def double(x: int) -> int:
        return 2 * x

    @tool(name="triple_it", timeout=1.0, max_calls=2)
    def triple(x: int) -> int:
        return 3 * x

    assert isinstance(double, Tool) and double(4) == 8
    assert triple.name == "triple_it" and triple.timeout == 1.0 and triple.max_calls == 2
    assert triple(2) == 6
    assert ToolSet.build([double, triple]).names == ("double", "triple_it")


def test_partials_and_callable_objects_need_a_name_only() -> None:
    class Counter_:
        """Counts."""

        def __call__(self, step: int = 1) -> int:
            return step

    assert Tool(Counter_(), name="count").spec()["params"][0]["name"] == "step"
    assert Tool(functools.partial(scale, factor=3.0), name="triple").spec()["params"][1] == {
        "name": "factor",
        "kind": "keyword-only",
        "annotation": "float",
        "default": 3.0,
    }
    assert Tool(Counter_(), name="count").doc == "Counts."
    assert Tool(functools.partial(search, mode="deep"), name="deep").doc.startswith("Search the")
    with pytest.raises(ConfigurationError, match="no usable name"):
        Tool(Counter_())
    with pytest.raises(ConfigurationError, match="no usable name"):
        ToolSet.build([lambda x: x])


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("llm_query", "would hide the sandbox's own 'llm_query'"),
        ("ToolError", "would hide"),
        ("context", "would hide"),
        ("FINAL_VAR", "would hide"),
        ("print", "would hide"),
        ("len", "would hide"),
        ("class", "not a Python identifier"),
        ("two words", "not a Python identifier"),
        ("_private", "starts with '_'"),
    ],
)
def test_names_that_cannot_be_tools(name: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ToolSet.build({name: scale})


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="two tools are named 'scale'"):
        ToolSet.build([scale, Tool(search, name="scale")])


def _untyped(x):  # type: ignore[no-untyped-def]
    return x


def _star_args(*items: int) -> int:
    return 0


def _star_kwargs(**options: str) -> int:
    return 0


def _tuple(point: tuple[int, int]) -> int:
    return 0


def _set(items: set[str]) -> int:
    return 0


def _int_keys(table: dict[int, str]) -> int:
    return 0


def _object(thing: object) -> int:
    return 0


def _bad_default(path: str = None) -> int:  # type: ignore[assignment]  # noqa: RUF013
    return 0


def _object_default(when: list[int] = (1, 2)) -> int:  # type: ignore[assignment]
    return 0


def _float_literal(x: Literal[1.5]) -> int:  # type: ignore[valid-type]
    return 0


def _unresolvable(x: NoSuchType) -> int:  # type: ignore[name-defined]  # noqa: F821
    return 0


def _underscore_param(_x: int) -> int:
    return 0


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (_untyped, "parameter 'x' has no type hint; annotate it"),
        (_star_args, r"\*items is not supported; name each parameter"),
        (_star_kwargs, r"\*\*options is not supported"),
        (_tuple, r"annotated tuple\[int, int\] \(JSON has no tuples: use list\[...\]\)"),
        (_set, r"annotated set\[str\], which tools do not support; use str, int"),
        (_int_keys, r"JSON object keys are str: use dict\[str, ...\]"),
        (_object, "annotated object, which tools do not support"),
        (_bad_default, r"its default must be str, not None; annotate it str \| None"),
        (_object_default, r"its default \(1, 2\) is not JSON data"),
        (_float_literal, "Literal values must be str, int or bool"),
        (_unresolvable, "type hints could not be read"),
        (_underscore_param, "names starting with '_' cannot be passed"),
    ],
)
def test_signatures_tools_cannot_have(fn: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ToolSet.build({"t": fn})


@pytest.mark.parametrize(
    ("tools", "kwargs", "message"),
    [
        ("search", {}, "tools= takes a list of functions"),
        (search, {}, "tools= takes a list of functions"),
        ([42], {}, "a tool must be a function, not int"),
        ({1: search}, {}, "keys name the tools and must be str"),
        ([search], {"timeout": 0}, "timeout must be a positive number of seconds"),
        ([search], {"timeout": float("inf")}, "timeout must be a positive number"),
        ([search], {"max_calls": 0}, "max_calls must be a positive int or None"),
        ([search], {"max_argument_bytes": -1}, "max_argument_bytes must be a positive int"),
    ],
)
def test_bad_tool_arguments(tools: Any, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ToolSet.build(tools, **kwargs)


def test_bad_per_tool_limits() -> None:
    with pytest.raises(ConfigurationError, match="tool 'search': timeout"):
        Tool(search, timeout=-1)
    with pytest.raises(ConfigurationError, match="tool 'search': max_calls"):
        Tool(search, max_calls=True)


# -- calling ---------------------------------------------------------------------------------


async def test_a_call_returns_plain_json() -> None:
    tools = ToolSet.build([search, scale, fetch, only_positional])
    assert await call(tools, "search", {"query": "q", "limit": 2}) == {
        "value": ["fast:q:0", "fast:q:1"]
    }
    assert await call(tools, "search", {"query": "q", "limit": 1, "mode": "deep"}) == {
        "value": ["deep:q:0"]
    }
    # JSON does not tell 1 from 1.0: an int is a float where a float is asked for.
    assert await call(tools, "scale", {"values": [1, 2.5], "factor": 2}) == {"value": [2.0, 5.0]}
    assert await call(tools, "fetch", {"url": "u"}) == {"value": {"url": "u", "headers": {}}}
    assert await call(tools, "only_positional", {"a": 1, "c": 3}) == {"value": [1, 5, 3]}


async def test_the_tool_gets_a_copy_and_returns_a_copy() -> None:
    seen: list[Any] = []
    kept = {"inner": [1, 2]}

    def keep(items: list[int]) -> dict[str, Any]:
        seen.append(items)
        return kept

    tools = ToolSet.build([keep])
    sent = [1, 2, 3]
    answer = await call(tools, "keep", {"items": sent})
    assert seen[0] == sent and seen[0] is not sent
    assert answer == {"value": kept} and answer["value"] is not kept
    assert answer["value"]["inner"] is not kept["inner"]


class _Weird(str):
    pass


async def test_return_values_become_plain_types() -> None:
    def odd() -> Any:
        return {"name": _Weird("x"), "pair": (1, 2)}

    answer = await call(ToolSet.build([odd]), "odd", {})
    assert answer == {"value": {"name": "x", "pair": [1, 2]}}
    assert type(answer["value"]["name"]) is str


@pytest.mark.parametrize(
    ("name", "arguments", "message"),
    [
        ("nope", {}, r"no tool named 'nope' \(the tools are: search, scale\)"),
        (42, {}, "no tool named 'int'"),
        ("search", ["q"], "arguments must be an object of name -> value"),
        ("search", None, "arguments must be an object"),
        ("search", {}, "tool search: missing required argument 'query'"),
        ("search", {"query": "q", "extra": 1}, "tool search: unexpected argument 'extra'"),
        ("search", {"query": "q", "a": 1, "b": 2}, "unexpected arguments 'a', 'b'"),
        ("search", {"query": 3}, "tool search: argument 'query' must be str, not int"),
        ("search", {"query": "q", "limit": True}, "argument 'limit' must be int, not bool"),
        ("search", {"query": "q", "limit": 1.5}, "argument 'limit' must be int, not float"),
        ("search", {"query": "q", "mode": "slow"}, "must be one of 'fast', 'deep', not 'slow'"),
        ("scale", {"values": [1, "2"]}, r"argument 'values'\[1\] must be float, not str"),
        ("scale", {"values": {"a": 1}}, "argument 'values' must be list"),
        ("search", {"query": float("nan")}, "arguments must be JSON data"),
        ("search", {"query": {1, 2}}, "arguments must be JSON data"),
        ("search", {1: "q"}, "argument names must be str"),
    ],
)
async def test_calls_the_host_refuses(name: object, arguments: object, message: str) -> None:
    tools = ToolSet.build([search, scale])
    with pytest.raises(BridgeRefusal, match=message):
        await call(tools, name, arguments)


async def test_nested_mismatch_inside_a_union_says_where() -> None:
    tools = ToolSet.build([fetch])
    with pytest.raises(BridgeRefusal, match=r"argument 'headers'\['a'\] must be str, not int"):
        await call(tools, "fetch", {"url": "u", "headers": {"a": 1}})
    with pytest.raises(BridgeRefusal, match=r"argument 'headers' must be dict\[str, str\] \| None"):
        await call(tools, "fetch", {"url": "u", "headers": "x"})


async def test_arguments_over_the_size_limit_are_refused() -> None:
    tools = ToolSet.build([search], max_argument_bytes=1000)
    assert await call(tools, "search", {"query": "q" * 900, "limit": 0}) == {"value": []}
    with pytest.raises(BridgeRefusal, match="over the 1,000-byte limit; pass less data"):
        await call(tools, "search", {"query": "é" * 600})


async def test_the_call_limit_counts_per_tool_in_the_callers_counter() -> None:
    tools = ToolSet.build([Tool(search, max_calls=2), scale], max_calls=1)
    calls: Counter[str] = Counter()
    await call(tools, "search", {"query": "a", "limit": 0}, calls)
    with pytest.raises(BridgeRefusal):  # refused calls do not count
        await call(tools, "search", {}, calls)
    await call(tools, "search", {"query": "a", "limit": 0}, calls)
    with pytest.raises(BudgetExceeded, match="tool search was already called 2 times"):
        await call(tools, "search", {"query": "a"}, calls)
    await call(tools, "scale", {"values": []}, calls)
    with pytest.raises(BudgetExceeded, match="tool scale was already called 1 times"):
        await call(tools, "scale", {"values": []}, calls)
    assert calls == Counter({"search": 2, "scale": 1})
    # A new run, a new counter.
    assert await call(tools, "scale", {"values": []}) == {"value": []}


async def test_an_exception_gives_its_message_only(caplog: pytest.LogCaptureFixture) -> None:
    class Secret:
        def __repr__(self) -> str:
            return "<Secret host object>"

    def broken(path: str) -> str:
        obj = Secret()
        raise FileNotFoundError(f"no such file: {path}", obj)

    def plain(x: int) -> int:
        raise ValueError("x must be even")

    def long(x: int) -> int:
        raise RuntimeError("y" * 10_000)

    tools = ToolSet.build([broken, plain, long])
    with caplog.at_level(logging.WARNING, logger="rlm.tools"):
        answer = await call(tools, "plain", {"x": 1})
    assert answer == {"error": "ValueError: x must be even", "kind": "raised"}
    # The operator gets the traceback in the log; the model never does.
    assert any(r.exc_info and "x must be even" in str(r.exc_info[1]) for r in caplog.records)
    answer = await call(tools, "long", {"x": 1})
    assert answer["kind"] == "raised"
    assert len(answer["error"]) < 2100 and answer["error"].endswith("[message truncated]")
    answer = await call(tools, "broken", {"path": "/p"})
    assert answer["kind"] == "raised" and answer["error"].startswith("FileNotFoundError:")
    assert "Traceback" not in answer["error"] and __file__ not in answer["error"]


async def test_system_exit_in_a_tool_is_an_error_not_an_exit() -> None:
    def leave() -> None:
        raise SystemExit(3)

    assert await call(ToolSet.build([leave]), "leave", {}) == {
        "error": "SystemExit: 3",
        "kind": "raised",
    }


async def test_async_tool_exceptions_too() -> None:
    async def fails(x: int) -> int:
        await anyio.lowlevel.checkpoint()
        raise KeyError("k")

    assert await call(ToolSet.build([fails]), "fails", {"x": 1}) == {
        "error": "KeyError: 'k'",
        "kind": "raised",
    }


async def test_a_tool_raising_timeout_error_is_not_a_timeout() -> None:
    def times_out() -> None:
        raise TimeoutError("the upstream timed out")

    answer = await call(ToolSet.build([times_out]), "times_out", {})
    assert answer == {"error": "TimeoutError: the upstream timed out", "kind": "raised"}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({1, 2}, "tool bad returned a set, which is not JSON-able"),
        ({"hits": [1, object()]}, r"returned a object \(at \['hits'\]\[1\]\), which is not JSON"),
        (float("inf"), "returned a float that is inf"),
        ({(1, 2): 3}, "returned a dict with a tuple key"),
        (b"bytes", "returned a bytes"),
    ],
)
async def test_a_return_that_is_not_json(value: Any, message: str) -> None:
    def bad() -> Any:
        return value

    answer = await call(ToolSet.build([bad]), "bad", {})
    assert answer["kind"] == "bad_return"
    assert __import__("re").search(message, answer["error"]), answer


async def test_a_circular_return_is_not_json() -> None:
    loop: list[Any] = []
    loop.append(loop)

    def bad() -> Any:
        return loop

    answer = await call(ToolSet.build([bad]), "bad", {})
    assert answer == {
        "error": "tool bad returned a value nested too deeply (or holding itself), "
        "which is not JSON-able",
        "kind": "bad_return",
    }


async def test_a_coroutine_from_a_sync_function_is_a_bad_return() -> None:
    async def inner() -> int:
        return 1

    def sneaky() -> Any:
        return inner()

    answer = await call(ToolSet.build([sneaky]), "sneaky", {})
    assert answer["kind"] == "bad_return" and "async def" in answer["error"]


async def test_a_return_over_the_size_limit() -> None:
    def big(n: int) -> str:
        return "x" * n

    tools = ToolSet.build([big], max_result_bytes=1000)
    assert await call(tools, "big", {"n": 998}) == {"value": "x" * 998}
    answer = await call(tools, "big", {"n": 999})
    assert answer == {
        "error": "tool big returned 1,001 bytes of JSON, over the 1,000-byte limit",
        "kind": "bad_return",
    }


async def test_a_hanging_sync_tool_times_out_and_its_thread_is_abandoned() -> None:
    release = threading.Event()
    finished = threading.Event()

    def hang() -> str:
        release.wait(30)
        finished.set()
        return "late"

    tools = ToolSet.build([Tool(hang, timeout=0.3)])
    started = time.monotonic()
    answer = await call(tools, "hang", {})
    assert time.monotonic() - started < 5
    assert answer == {"error": "tool hang did not finish within 0.3 s", "kind": "timeout"}
    # The thread still runs: Python cannot stop it, only stop waiting for it.
    assert not finished.is_set()
    release.set()
    assert await anyio.to_thread.run_sync(finished.wait, 10)


async def test_a_hanging_async_tool_is_cancelled_at_its_timeout() -> None:
    cancelled = asyncio.Event()

    async def hang() -> str:
        try:
            await anyio.sleep(30)
        finally:
            cancelled.set()
        return "late"

    tools = ToolSet.build([hang], timeout=0.3)
    answer = await call(tools, "hang", {})
    assert answer == {"error": "tool hang did not finish within 0.3 s", "kind": "timeout"}
    assert cancelled.is_set()


async def test_sync_tools_run_off_the_event_loop() -> None:
    def slow(x: int) -> int:
        time.sleep(0.3)
        return x

    tools = ToolSet.build([slow])
    started = time.monotonic()
    results: list[Any] = []

    async def one(i: int) -> None:
        results.append(await call(tools, "slow", {"x": i}))

    async with anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(one, i)
    assert time.monotonic() - started < 1.0
    assert sorted(r["value"] for r in results) == [0, 1, 2, 3]


async def test_cancelling_the_caller_cancels_the_call() -> None:
    async def hang() -> None:
        await anyio.sleep(30)

    tools = ToolSet.build([hang])
    with anyio.move_on_after(0.2) as scope:
        await call(tools, "hang", {})
    assert scope.cancelled_caught
