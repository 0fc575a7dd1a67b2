"""Host tools inside the sandbox: the functions make_tools builds, and define_tools."""

from __future__ import annotations

import inspect
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from rlm_sandbox import protocol as P
from rlm_sandbox.api import RLMCallError, make_functions
from rlm_sandbox.tools import ToolError, make_tools

SEARCH = {
    "name": "search",
    "doc": "Search the corpus.\n\nReturns titles.",
    "returns": "list[str]",
    "params": [
        {"name": "query", "kind": "positional-or-keyword", "annotation": "str"},
        {"name": "limit", "kind": "positional-or-keyword", "annotation": "int", "default": 10},
        {"name": "mode", "kind": "keyword-only", "annotation": "str", "default": "fast"},
    ],
}
POSITIONAL = {
    "name": "pair",
    "doc": "",
    "returns": None,
    "params": [
        {"name": "a", "kind": "positional-only", "annotation": "int"},
        {"name": "b", "kind": "positional-or-keyword", "annotation": "Any", "default": None},
    ],
}


class FakeTransport:
    def __init__(self, answer: Any = None) -> None:
        self.answer = {"value": "ok"} if answer is None else answer
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, method: str, params: dict[str, Any]) -> Any:
        self.sent.append((method, params))
        return self.answer


def test_functions_have_the_tools_name_doc_and_signature() -> None:
    tools = make_tools([SEARCH, POSITIONAL], FakeTransport())
    search, pair = tools["search"], tools["pair"]
    assert search.__name__ == search.__qualname__ == "search"
    assert search.__doc__ == "Search the corpus.\n\nReturns titles."
    assert str(inspect.signature(search)) == (
        "(query: str, limit: int = 10, *, mode: str = 'fast') -> list[str]"
    )
    assert str(inspect.signature(pair)) == "(a: int, /, b: Any = None)"
    assert pair.__doc__ is None


def test_a_call_sends_the_bound_arguments_only() -> None:
    transport = FakeTransport({"value": ["t1", "t2"]})
    search = make_tools([SEARCH], transport)["search"]
    assert search("q") == ["t1", "t2"]
    search("q", 3, mode="deep")
    search(query="q", limit=1)
    assert transport.sent == [
        ("tool", {"name": "search", "arguments": {"query": "q"}}),
        ("tool", {"name": "search", "arguments": {"query": "q", "limit": 3, "mode": "deep"}}),
        ("tool", {"name": "search", "arguments": {"query": "q", "limit": 1}}),
    ]
    pair = make_tools([POSITIONAL], transport)["pair"]
    pair(1, b=[1, (2, 3)])
    assert transport.sent[-1] == ("tool", {"name": "pair", "arguments": {"a": 1, "b": [1, (2, 3)]}})


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((), {}, "search() missing a required argument: 'query'"),
        (("q", 1, 2), {}, "search() too many positional arguments"),
        (("q",), {"nope": 1}, "search() got an unexpected keyword argument 'nope'"),
        (("q",), {"query": "again"}, "search() multiple values for argument 'query'"),
    ],
)
def test_wrong_calls_are_type_errors_before_anything_is_sent(
    args: tuple[Any, ...], kwargs: dict[str, Any], message: str
) -> None:
    transport = FakeTransport()
    search = make_tools([SEARCH], transport)["search"]
    with pytest.raises(TypeError) as info:
        search(*args, **kwargs)
    assert str(info.value) == message
    assert transport.sent == []


def test_a_positional_only_parameter_by_keyword_is_a_type_error() -> None:
    pair = make_tools([POSITIONAL], FakeTransport())["pair"]
    with pytest.raises(TypeError, match="pair\\(\\) 'a' parameter is positional only"):
        pair(a=1)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({1, 2}, "argument 'b' is a set, which cannot be sent to a host tool"),
        ([1, object()], r"argument 'b'\[1\] is a object"),
        ({"k": {2: "x"}}, r"argument 'b'\['k'\] has a int key; keys must be str"),
        (float("nan"), "argument 'b' is nan, which JSON cannot carry"),
        (b"raw", "argument 'b' is a bytes"),
    ],
)
def test_arguments_that_are_not_json_are_type_errors(value: Any, message: str) -> None:
    transport = FakeTransport()
    pair = make_tools([POSITIONAL], transport)["pair"]
    with pytest.raises(TypeError, match=message):
        pair(1, value)
    assert transport.sent == []


def test_deeply_nested_arguments_are_refused_here() -> None:
    deep: Any = "x"
    for _ in range(200):
        deep = [deep]
    pair = make_tools([POSITIONAL], FakeTransport())["pair"]
    with pytest.raises(TypeError, match="nested more than 100 levels"):
        pair(1, deep)


def test_a_tool_error_carries_message_and_kind() -> None:
    answer = {"error": "ValueError: x must be even", "kind": "raised"}
    search = make_tools([SEARCH], FakeTransport(answer))["search"]
    with pytest.raises(ToolError) as info:
        search("q")
    assert str(info.value) == "ValueError: x must be even"
    assert info.value.kind == "raised" and info.value.message == "ValueError: x must be even"
    assert info.value.args == ("ValueError: x must be even",)


@pytest.mark.parametrize(
    "answer",
    [["value"], {"value": 1, "extra": 2}, {"error": 3}, {}, "text", {"error": "x", "kind": 1}],
)
def test_a_malformed_answer_is_an_rlm_call_error(answer: Any) -> None:
    search = make_tools([SEARCH], FakeTransport(answer))["search"]
    with pytest.raises(RLMCallError, match="malformed answer from the host for tool search"):
        search("q")


def test_make_functions_adds_tools_and_tool_error() -> None:
    functions = make_functions(FakeTransport(), [SEARCH])
    assert functions["ToolError"] is ToolError
    assert callable(functions["search"]) and "llm_query" in functions
    assert "ToolError" not in make_functions(FakeTransport(), [])


# -- define_tools in the runner, as a local process ----------------------------------------


class _Runner:
    """Just enough of the host to define tools and answer their calls."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rlm_sandbox"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )
        self.decoder = P.Decoder()
        self.pending: list[bytes] = []

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(P.encode_bytes(message))
        self.proc.stdin.flush()

    def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while not self.pending:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("runner sent nothing")
            data = os.read(fd, 1 << 20)
            if not data:
                raise EOFError("runner closed its output")
            self.pending.extend(self.decoder.feed(data))
        return P.parse(self.pending.pop(0), P.FROM_SANDBOX)

    def execute(self, code: str, answer: Any = None) -> dict[str, Any]:
        """Run a cell, answering each tool call with ``answer(params)``."""
        self.send(
            {
                "type": "execute",
                "id": 1,
                "code": code,
                "output_limit": 10_000,
                "final_limit": 100_000,
            }
        )
        while True:
            message = self.recv()
            if message["type"] == "result":
                return message
            assert message["type"] == "call" and message["method"] == "tool", message
            assert answer is not None, message
            self.send({"type": "reply", "id": message["id"], "result": answer(message["params"])})

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def runner() -> Iterator[_Runner]:
    r = _Runner()
    r.send({"type": "hello", "protocol": P.PROTOCOL_VERSION})
    assert r.recv()["type"] == "hello"
    yield r
    r.close()


def test_define_tools_puts_them_in_the_namespace(runner: _Runner) -> None:
    runner.send({"type": "define_tools", "id": 7, "tools": [SEARCH]})
    assert runner.recv() == {"type": "loaded", "id": 7}
    result = runner.execute(
        "print(search('q', 2))\nprint(search.__doc__.splitlines()[0])",
        answer=lambda params: {"value": [params["name"], params["arguments"]]},
    )
    assert result["error"] is None, result
    assert result["stdout"] == "['search', {'query': 'q', 'limit': 2}]\nSearch the corpus.\n"
    code = "try:\n    search('q')\nexcept ToolError as e:\n    print(e.kind, e)"
    result = runner.execute(code, answer=lambda _p: {"error": "KeyError: 'k'", "kind": "raised"})
    assert result["stdout"] == "raised KeyError: 'k'\n"
    uncaught = runner.execute("search('q')", answer=lambda _p: {"error": "boom", "kind": "raised"})
    assert uncaught["error"].endswith("ToolError: boom\n")
    assert "tools.py" not in uncaught["error"] and "<cell-" in uncaught["error"]


def test_define_tools_again_replaces_the_old_ones(runner: _Runner) -> None:
    runner.send({"type": "define_tools", "id": 1, "tools": [SEARCH]})
    assert runner.recv()["type"] == "loaded"
    runner.send({"type": "define_tools", "id": 2, "tools": [POSITIONAL]})
    assert runner.recv()["type"] == "loaded"
    result = runner.execute("print('search' in dir(), 'pair' in dir(), 'ToolError' in dir())")
    assert result["stdout"] == "False True True\n"
    runner.send({"type": "define_tools", "id": 3, "tools": []})
    assert runner.recv()["type"] == "loaded"
    result = runner.execute("print('pair' in dir(), 'ToolError' in dir(), 'llm_query' in dir())")
    assert result["stdout"] == "False False True\n"


def test_unreadable_tool_specs_end_the_runner_with_a_fatal(runner: _Runner) -> None:
    runner.send({"type": "define_tools", "id": 1, "tools": [{"name": "x"}]})
    message = runner.recv()
    assert message["type"] == "fatal" and "bad tool specs" in message["message"]
    assert runner.proc.wait(10) == 3
