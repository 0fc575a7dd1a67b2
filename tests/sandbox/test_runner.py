"""The runner as a local subprocess, driven frame by frame like the host drives it."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from rlm_sandbox import protocol as P


class LocalRunner:
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
        self.ids = iter(range(1, 10**9))

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        for chunk in P.encode(message):
            self.proc.stdin.write(chunk)
        self.proc.stdin.flush()

    def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while not self.pending:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(0.0, left))
            if not ready:
                raise TimeoutError("runner sent nothing")
            data = os.read(fd, 1 << 20)
            if not data:
                raise EOFError("runner closed its output")
            self.pending.extend(self.decoder.feed(data))
        return P.parse(self.pending.pop(0), P.FROM_SANDBOX)

    def execute(self, code: str, output_limit: int = 10_000, **answers: Any) -> dict[str, Any]:
        cell = next(self.ids)
        self.send(
            {
                "type": "execute",
                "id": cell,
                "code": code,
                "output_limit": output_limit,
                "final_limit": 100_000,
            }
        )
        message = self.recv()
        assert message["type"] == "result", message
        assert message["id"] == cell
        return message

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def runner() -> Iterator[LocalRunner]:
    r = LocalRunner()
    r.send({"type": "hello", "protocol": P.PROTOCOL_VERSION})
    hello = r.recv()
    assert hello["type"] == "hello"
    assert hello["protocol"] == P.PROTOCOL_VERSION
    yield r
    r.close()


def test_namespace_persists_and_a_trailing_expression_is_shown(runner: LocalRunner) -> None:
    assert runner.execute("x = 20")["error"] is None
    result = runner.execute("y = x + 1\ny * 2")
    assert result["stdout"] == "42\n"
    assert runner.execute("None")["stdout"] == ""


def test_context_is_loaded_once_and_large_ones_stream(runner: LocalRunner) -> None:
    context = "line of text\n" * 1_000_000  # 13 MB: many frames
    runner.send({"type": "load_context", "id": 99, "context": context})
    assert runner.recv(30) == {"type": "loaded", "id": 99}
    assert runner.execute("len(context), context[:4]")["stdout"] == "(13000000, 'line')\n"
    runner.send({"type": "load_context", "id": 100, "context": {"a": [1, 2]}})
    assert runner.recv()["type"] == "loaded"
    assert runner.execute("context['a']")["stdout"] == "[1, 2]\n"


def test_prints_and_descriptor_writes_are_captured_not_sent(runner: LocalRunner) -> None:
    code = (
        "import os, sys, subprocess\n"
        "print('via print')\n"
        "print('to stderr', file=sys.stderr)\n"
        "os.write(1, b'M00000002{}' * 3)\n"  # looks like frames; must stay output
        "os.write(2, b'fd two\\n')\n"
        "sys.stdout.buffer.write(b'bytes\\n')\n"
        "sys.__stdout__.write('dunder\\n')\n"
        "subprocess.run(['echo', 'from a child'])\n"
    )
    result = runner.execute(code)
    assert result["error"] is None
    out = result["stdout"]
    for piece in ("via print", "M00000002{}M00000002{}", "bytes", "dunder", "from a child"):
        assert piece in out
    assert "to stderr" in result["stderr"]
    assert "fd two" in result["stderr"]
    # The protocol is intact: the next cell still works.
    assert runner.execute("1 + 1")["stdout"] == "2\n"


def test_output_is_capped_per_cell(runner: LocalRunner) -> None:
    result = runner.execute("print('x' * 100_000)\nimport os; os.write(1, b'y' * 200_000)", 1000)
    assert result["truncated"] is True
    assert len(result["stdout"]) < 1100
    assert "more characters" in result["stdout"]
    following = runner.execute("print('short')", 1000)
    assert following["stdout"] == "short\n"
    assert following["truncated"] is False


def test_errors_show_the_cells_traceback_only(runner: LocalRunner) -> None:
    result = runner.execute("def f():\n    return 1 / 0\nf()")
    error = result["error"]
    assert "ZeroDivisionError" in error
    assert '<cell-1>", line 2, in f' in error
    assert "return 1 / 0" in error
    assert "runner.py" not in error
    syntax = runner.execute("def (:")["error"]
    assert "SyntaxError" in syntax


def test_model_code_cannot_exit_or_read_the_protocol(runner: LocalRunner) -> None:
    assert "SystemExit" in runner.execute("import sys; sys.exit(3)")["error"]
    assert "SystemExit" in runner.execute("exit()")["error"]
    result = runner.execute("import sys\nprint(repr(sys.stdin.read()))\ninput()")
    assert result["stdout"] == "''\n"
    assert "EOFError" in result["error"]
    assert runner.execute("'still here'")["stdout"] == "'still here'\n"


def test_interrupt_stops_a_cell_and_keeps_state(runner: LocalRunner) -> None:
    runner.execute("kept = 'yes'")
    runner.send(
        {
            "type": "execute",
            "id": 50,
            "code": "import time\ntime.sleep(30)",
            "output_limit": 100,
            "final_limit": 100_000,
        }
    )
    time.sleep(0.3)
    runner.send({"type": "interrupt", "id": 50})
    result = runner.recv(5)
    assert result["interrupted"] is True
    assert "KeyboardInterrupt" in result["error"]
    assert runner.execute("kept")["stdout"] == "'yes'\n"


def test_interrupt_for_another_cell_is_ignored(runner: LocalRunner) -> None:
    runner.send(
        {
            "type": "execute",
            "id": 60,
            "code": "import time\ntime.sleep(0.5)\n'done'",
            "output_limit": 100,
            "final_limit": 100_000,
        }
    )
    runner.send({"type": "interrupt", "id": 59})
    result = runner.recv(5)
    assert result["error"] is None
    assert result["stdout"] == "'done'\n"


def test_sub_calls_go_out_as_call_frames(runner: LocalRunner) -> None:
    runner.send(
        {
            "type": "execute",
            "id": 70,
            "code": (
                "a = llm_query('q1')\n"
                "b = llm_batch(['p1', 'p2'], max_concurrent=2)\n"
                "print(a, b, isinstance(b[1], LLMError), b[1].failed)\n"
                "try:\n    llm_query('refuse me')\n"
                "except RLMCallError as e:\n    print('refused:', e)\n"
            ),
            "output_limit": 1000,
            "final_limit": 100_000,
        }
    )
    call = runner.recv()
    assert call == {
        "type": "call",
        "id": call["id"],
        "method": "llm_query",
        "params": {"prompt": "q1", "model": None},
    }
    runner.send({"type": "reply", "id": call["id"], "result": {"text": "A1"}})
    batch = runner.recv()
    assert batch["method"] == "llm_batch"
    assert batch["params"] == {"prompts": ["p1", "p2"], "max_concurrent": 2, "model": None}
    runner.send(
        {
            "type": "reply",
            "id": batch["id"],
            "result": [{"text": "B1"}, {"error": "rate limited", "kind": "rate_limit"}],
        }
    )
    third = runner.recv()
    runner.send({"type": "refused", "id": third["id"], "message": "over budget; stop"})
    result = runner.recv()
    assert result["error"] is None, result["error"]
    assert result["stdout"] == (
        "A1 ['B1', '[LLMError: rate_limit] rate limited'] True True\nrefused: over budget; stop\n"
    )


def test_sub_calls_from_threads_are_matched_by_id(runner: LocalRunner) -> None:
    code = (
        "import threading\n"
        "out = {}\n"
        "def ask(i):\n    out[i] = llm_query(f'p{i}')\n"
        "ts = [threading.Thread(target=ask, args=(i,)) for i in range(5)]\n"
        "[t.start() for t in ts]; [t.join() for t in ts]\n"
        "print(sorted(out.items()))\n"
    )
    runner.send(
        {"type": "execute", "id": 80, "code": code, "output_limit": 1000, "final_limit": 100_000}
    )
    calls = [runner.recv() for _ in range(5)]
    for call in reversed(calls):  # answer out of order
        runner.send(
            {
                "type": "reply",
                "id": call["id"],
                "result": {"text": call["params"]["prompt"].upper()},
            }
        )
    result = runner.recv()
    assert result["stdout"] == str([(i, f"P{i}") for i in range(5)]) + "\n"


def test_interrupt_while_waiting_for_a_sub_call(runner: LocalRunner) -> None:
    runner.send(
        {
            "type": "execute",
            "id": 90,
            "code": "r = llm_query('slow')",
            "output_limit": 100,
            "final_limit": 100_000,
        }
    )
    call = runner.recv()
    runner.send({"type": "interrupt", "id": 90})
    result = runner.recv()
    assert result["interrupted"] is True
    # A late answer for the abandoned call is dropped, not mixed into later cells.
    runner.send({"type": "reply", "id": call["id"], "result": {"text": "late"}})
    assert runner.execute("'r' in dir()")["stdout"] == "False\n"


def test_get_variable(runner: LocalRunner) -> None:
    runner.execute("answer = 'forty-two'\nnums = [1, 2]\nbig = 'z' * 50")
    runner.send({"type": "get_variable", "id": 5, "name": "answer", "max_chars": 100})
    assert runner.recv() == {
        "type": "variable",
        "id": 5,
        "found": True,
        "value": "forty-two",
        "truncated": False,
    }
    runner.send({"type": "get_variable", "id": 6, "name": "nums", "max_chars": 100})
    assert runner.recv()["value"] == "[1, 2]"
    runner.send({"type": "get_variable", "id": 7, "name": "big", "max_chars": 10})
    assert runner.recv()["truncated"] is True
    for name in ("missing", "not a name", "__import__('os')"):
        runner.send({"type": "get_variable", "id": 8, "name": name, "max_chars": 10})
        assert runner.recv()["found"] is False


def test_the_runner_exits_when_the_host_goes_away(runner: LocalRunner) -> None:
    assert runner.proc.stdin is not None
    runner.proc.stdin.close()
    assert runner.proc.wait(timeout=5) == 0


@pytest.mark.parametrize(
    "code",
    [
        "n = 0\nwhile True:\n    n += 1",
        "import time\ntime.sleep(3600)",
        "import threading\nthreading.Event().wait()",
        "llm_batch(['never answered'])",
    ],
    ids=["loop", "sleep", "blocked-wait", "llm_batch"],
)
def test_the_runner_exits_when_the_host_goes_away_mid_cell(runner: LocalRunner, code: str) -> None:
    # Nothing of the host is left to read the result: the whole process must end,
    # not just the reader thread.
    runner.send(
        {"type": "execute", "id": 1, "code": code, "output_limit": 100, "final_limit": 100_000}
    )
    if "llm_batch" in code:
        assert runner.recv()["type"] == "call"
    else:
        time.sleep(0.2)
        assert runner.proc.poll() is None
    assert runner.proc.stdin is not None
    runner.proc.stdin.close()
    started = time.monotonic()
    assert runner.proc.wait(timeout=5) == 0
    assert time.monotonic() - started < 1.0


def test_a_malformed_frame_from_the_host_is_fatal() -> None:
    r = LocalRunner()
    try:
        assert r.proc.stdin is not None
        r.proc.stdin.write(b"garbage!!")
        r.proc.stdin.flush()
        fatal = r.recv()
        assert fatal["type"] == "fatal"
        assert "malformed frame header" in fatal["message"]
        assert r.proc.wait(timeout=5) == 3
    finally:
        r.close()
