"""Host tools end to end: model code in a real sandbox calls them across the bridge.

Every backend runs the same cells: a tool returns its value, a failing tool is a
``ToolError`` with its message only, wrong arguments are a ``TypeError`` in the
sandbox or an ``RLMCallError`` from the host, a hanging tool times out and leaves
the cell and the host whole, and a Docker sandbox that restarts keeps its tools.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import pytest

from rlm.backends.base import Sandbox
from rlm.backends.restricted import RestrictedSandbox
from rlm.bridge import SessionBridge
from rlm.errors import BridgeRefusal
from rlm.session import SessionLimits, SessionState
from rlm.tools import Tool, ToolSet
from tests.support import IMAGE, SUB_MODEL, FakeBatcher

HOST_SECRET = "host-secret-7d1c"
_release = threading.Event()


def add(a: int, b: int = 1) -> int:
    """Add two numbers."""
    return a + b


def lookup(key: Literal["a", "b"], *, upper: bool = False) -> dict[str, Any]:
    """Look a key up."""
    return {"key": key.upper() if upper else key, "hits": [1, 2.5, None, True]}


def explode(reason: str) -> str:
    secret = HOST_SECRET  # a local of the host frame: never shown to model code
    raise ValueError(f"cannot do {reason}") from KeyError(secret)


def hang() -> str:
    _release.wait(20)
    return "late"


def make_tools() -> ToolSet:
    return ToolSet.build(
        [add, lookup, explode, Tool(hang, timeout=0.5), Tool(add, name="add_twice", max_calls=2)]
    )


def tool_bridge(tools: ToolSet | None = None) -> SessionBridge:
    session = SessionState(sub_model=SUB_MODEL, limits=SessionLimits())
    return SessionBridge(FakeBatcher(), session, tools=make_tools() if tools is None else tools)


BACKENDS = [
    "restricted",
    pytest.param("runc", marks=pytest.mark.docker),
    pytest.param("runsc", marks=[pytest.mark.docker, pytest.mark.runsc]),
]


@pytest.fixture
async def make_box(request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., Any]]:
    """Started sandboxes of the test's backend over a tools bridge, closed after."""
    made: list[Sandbox] = []
    callspec = getattr(request.node, "callspec", None)
    kind = callspec.params.get("backend", "runc") if callspec else "runc"

    async def make(bridge: SessionBridge | None = None, **kwargs: Any) -> Sandbox:
        bridge = bridge or tool_bridge()
        box: Sandbox
        if kind == "restricted":
            box = RestrictedSandbox(bridge, output_limit=10_000)
        else:
            from rlm.backends.docker import ColdStart, ContainerSpec, DockerSandbox

            # Asked for here, not as a parameter: the restricted runs need no engine.
            client = request.getfixturevalue("docker_client")
            source = ColdStart(ContainerSpec(image=IMAGE, runtime=kind), docker_client=client)
            box = DockerSandbox(bridge, source, output_limit=10_000, **kwargs)
        made.append(box)
        await box.start()
        await box.load_context("ctx")
        return box

    yield make
    _release.set()
    for box in made:
        await box.close()
    _release.clear()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_tool_returns_its_value(backend: str, make_box: Any) -> None:
    box = await make_box()
    result = await box.execute(
        "print(add(2, 3), add(a=1), add_twice(4, b=4))\n"
        "r = lookup('b', upper=True)\n"
        "print(r['key'], r['hits'], isinstance(r, dict))",
        20,
    )
    assert result.error is None, result
    assert result.stdout == "5 2 8\nB [1, 2.5, None, True] True\n"


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_failing_tool_is_a_tool_error_with_its_message_only(
    backend: str, make_box: Any
) -> None:
    box = await make_box()
    caught = await box.execute(
        "try:\n    explode('x')\nexcept ToolError as e:\n    print(e.kind, '|', e)", 20
    )
    assert caught.error is None, caught
    assert caught.stdout == "raised | ValueError: cannot do x\n"
    uncaught = await box.execute("explode('y')", 20)
    assert uncaught.error is not None
    assert "ToolError: ValueError: cannot do y" in uncaught.error
    # Only the cell's own frames: not the host's, nor the sandbox's tool wrapper.
    assert "tools.py" not in uncaught.error and "call_tool" not in uncaught.error
    for leak in (HOST_SECRET, __file__, "raise ValueError", "KeyError"):
        assert leak not in uncaught.error + uncaught.stdout + uncaught.stderr, leak


@pytest.mark.parametrize("backend", BACKENDS)
async def test_wrong_arguments_fail_in_the_sandbox_or_on_the_host(
    backend: str, make_box: Any
) -> None:
    box = await make_box()
    code = (
        "def attempt(f, *a, **k):\n"
        "    try:\n"
        "        f(*a, **k)\n"
        "    except (TypeError, RLMCallError) as e:\n"
        "        print(type(e).__name__, '|', e)\n"
        "attempt(add, 1, 2, 3)\n"
        "attempt(add, 1, c=2)\n"
        "attempt(add, {1, 2})\n"
        "attempt(add, 'x')\n"
        "attempt(lookup, 'c')\n"
        "attempt(add, 1.5)\n"
    )
    result = await box.execute(code, 20)
    assert result.error is None, result
    assert result.stdout.splitlines() == [
        "TypeError | add() too many positional arguments",
        "TypeError | add() got an unexpected keyword argument 'c'",
        "TypeError | add(): argument 'a' is a set, which cannot be sent to a host tool; "
        "use str, int, float, bool, None, list or dict",
        "RLMCallError | tool add: argument 'a' must be int, not str",
        "RLMCallError | tool lookup: argument 'key' must be one of 'a', 'b', not 'c'",
        "RLMCallError | tool add: argument 'a' must be int, not float",
    ]


@pytest.mark.docker
async def test_a_forged_tool_call_is_refused_by_the_host(make_box: Any) -> None:
    # In Docker model code can reach the runner's transport and skip the wrapper.
    box = await make_box()
    code = (
        "send = [c.cell_contents for c in add.__closure__ if callable(c.cell_contents)"
        " and getattr(c.cell_contents, '__name__', '') == '_transport'][0]\n"
        "for forged in ({'name': 'add', 'arguments': {'a': 1, 'zz': 2}},\n"
        "               {'name': 'add', 'arguments': [1]},\n"
        "               {'name': 'nope', 'arguments': {}},\n"
        "               {'name': 'add', 'arguments': {}, 'extra': 1}):\n"
        "    try:\n"
        "        send('tool', forged)\n"
        "    except RLMCallError as e:\n"
        "        print(e)\n"
    )
    result = await box.execute(code, 20)
    assert result.error is None, result
    lines = result.stdout.splitlines()
    assert lines[0] == "tool add: unexpected argument 'zz'"
    assert lines[1] == "tool add: arguments must be an object of name -> value"
    assert lines[2].startswith("no tool named 'nope' (the tools are: add, lookup")
    assert len(lines) == 4 and "extra" in lines[3]


async def test_a_forged_tool_call_through_the_bridge_is_refused() -> None:
    bridge = tool_bridge()
    with pytest.raises(BridgeRefusal, match="unexpected argument 'zz'"):
        await bridge.call("tool", {"name": "add", "arguments": {"a": 1, "zz": 2}})
    with pytest.raises(BridgeRefusal, match="missing required argument 'a'"):
        await bridge.call("tool", {"name": "add", "arguments": {}})
    assert await bridge.call("tool", {"name": "add", "arguments": {"a": 1}}) == {"value": 2}


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_tool_over_its_call_limit_is_refused(backend: str, make_box: Any) -> None:
    box = await make_box()
    code = (
        "print(add_twice(1), add_twice(2))\n"
        "try:\n    add_twice(3)\nexcept RLMCallError as e:\n    print(e)\n"
        "print(add(5))"
    )
    result = await box.execute(code, 20)
    assert result.error is None, result
    assert result.stdout.splitlines() == [
        "2 3",
        "tool add_twice was already called 2 times, its limit for this run; "
        "work with the results you have",
        "6",
    ]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_hanging_tool_times_out_and_the_cell_goes_on(backend: str, make_box: Any) -> None:
    box = await make_box()
    started = time.monotonic()
    code = (
        "try:\n    hang()\nexcept ToolError as e:\n    print(e.kind, '|', e)\n"
        "print('after', add(1))"
    )
    result = await box.execute(code, 20)
    assert time.monotonic() - started < 10
    assert result.error is None and not result.timed_out, result
    assert result.stdout == "timeout | tool hang did not finish within 0.5 s\nafter 2\n"
    follow = await box.execute("print(add(40, 2))", 20)
    assert follow.stdout == "42\n" and not follow.state_lost


@pytest.mark.docker
async def test_tools_survive_a_docker_restart(make_box: Any) -> None:
    box = await make_box(interrupt_grace=1.0)
    code = (
        "import time\n"
        "while True:\n    try:\n        time.sleep(5)\n    except KeyboardInterrupt:\n        pass"
    )
    stuck = await box.execute(code, 1.0)
    assert stuck.state_lost is True
    after = await box.execute("print(context, add(1, 1), 'ToolError' in dir())", 20)
    assert after.error is None, after
    assert after.stdout == "ctx 2 True\n"
    assert box.containers_started == 2


@pytest.mark.parametrize("backend", BACKENDS)
async def test_no_tools_no_tool_names(backend: str, make_box: Any) -> None:
    box = await make_box(tool_bridge(ToolSet.build(None)))
    code = (
        "try:\n    add\nexcept NameError:\n    print('no add')\n"
        "try:\n    ToolError\nexcept NameError:\n    print('no ToolError')"
    )
    result = await box.execute(code, 20)
    assert result.stdout == "no add\nno ToolError\n", result
