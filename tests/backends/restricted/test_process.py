"""The restricted backend in a worker process: the OS boundary, the hard kill, the bridge."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import Any

import anyio
import pytest

from rlm.backends.restricted.confine import AS_HEADROOM, seccomp_binding
from rlm.backends.restricted.process import ProcessSandbox
from rlm.backends.restricted.spawn import drop_spares
from tests.backends.restricted.support import CANARY, make_isolated, run, run_beside_a_ticker

#: A comparison of two structures built from shared references: one C call that
#: holds the interpreter lock for minutes (2**40 element comparisons).
GIL_HOG = "a = []\nb = []\nfor _ in range(40):\n    a = [a, a]\n    b = [b, b]\nprint(a == b)"


@pytest.fixture
async def worker_box() -> Any:
    box, _batcher, _bridge = make_isolated("process", stop_grace_s=0.3)
    await box.start()
    await box.load_context("ctx")
    yield box
    await box.close()


def _proc(box: ProcessSandbox, name: str) -> str:
    with open(f"/proc/{box.pid}/{name}") as f:
        return f.read()


async def test_the_worker_has_an_empty_environment_and_only_its_channel(
    worker_box: ProcessSandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    drop_spares()  # the next worker is started with this host state
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    secret = tmp_path / "secret.txt"
    secret.write_text(CANARY)
    held = os.open(secret, os.O_RDONLY)  # inheritable in the host: never in the worker
    os.set_inheritable(held, True)
    try:
        box, _b, _br = make_isolated("process", spare=False)
        await box.start()
        assert _proc(box, "environ") == ""
        targets = []
        for fd in os.listdir(f"/proc/{box.pid}/fd"):
            try:
                targets.append(os.readlink(f"/proc/{box.pid}/fd/{fd}"))
            except FileNotFoundError:
                continue  # the descriptor listing itself
        allowed = ("pipe:", "socket:", "anon_inode:", "/dev/null", f"/proc/{box.pid}/statm")
        assert all(t.startswith(allowed) for t in targets), targets
        assert not any("secret" in t for t in targets)
        assert sum(t.startswith("pipe:") for t in targets) == 2  # the protocol, in and out
        result = await run(box, "print(1)")
        assert result.stdout == "1\n"
        await box.close()
    finally:
        os.close(held)


async def test_the_worker_runs_under_resource_limits(worker_box: ProcessSandbox) -> None:
    limits = {
        line[:26].strip(): line[26:].split()[:2]
        for line in _proc(worker_box, "limits").splitlines()
    }
    memory = worker_box.limits.memory_bytes + AS_HEADROOM
    assert limits["Max address space"] == [str(memory), str(memory)]
    assert limits["Max cpu time"] == ["3600", "3600"]
    assert limits["Max open files"] == ["64", "64"]
    soft, hard = limits["Max processes"]
    assert soft == hard and soft != "unlimited"


async def test_a_seccomp_filter_is_on(worker_box: ProcessSandbox) -> None:
    # pyseccomp is a dependency on Linux: a machine without a binding is a broken
    # install here, not a reason for the worker to run unfiltered unnoticed.
    assert seccomp_binding() is not None, "no seccomp binding: pip install pyseccomp"
    mode = next(
        line.split()[1]
        for line in _proc(worker_box, "status").splitlines()
        if line.startswith("Seccomp:")
    )
    assert mode == "2"  # a filter
    assert "NoNewPrivs:\t1" in _proc(worker_box, "status")


def test_the_filter_refuses_processes_sockets_writes_and_raising_limits(tmp_path: Any) -> None:
    """The filter itself, in a process that applies it and then tries each."""
    script = textwrap.dedent(
        f"""
        import os, resource, socket, threading
        from rlm.backends.restricted.confine import Limits, apply
        c = apply(Limits(memory_bytes=1 << 30))
        print("binding", c.seccomp)
        def attempt(name, fn):
            try:
                fn()
                print(name, "allowed")
            except (OSError, ValueError) as e:  # setrlimit says EPERM as ValueError
                print(name, "refused", e)
        attempt("fork", os.fork)
        attempt("socket", lambda: socket.socket())
        attempt("write", lambda: open({str(tmp_path / "x")!r}, "w"))
        attempt("exec", lambda: os.execv("/bin/true", ["true"]))
        attempt("raise", lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1000, 1000)))
        attempt("kill", lambda: os.kill(1, 0))
        t = threading.Thread(target=lambda: None); t.start(); t.join()
        print("thread ok")
        print("read", len(open("/proc/self/status").read()) > 0)
        """
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", script], capture_output=True, text=True, timeout=60, env={}
    ).stdout
    assert "thread ok" in out and "read True" in out
    assert not (tmp_path / "x").exists()
    assert "binding None" not in out
    for name in ("fork", "socket", "write", "exec", "raise", "kill"):
        line = next(ln for ln in out.splitlines() if ln.startswith(name + " "))
        assert line.startswith(f"{name} refused"), out


async def test_a_c_call_holding_the_gil_is_killed_and_the_session_goes_on(
    worker_box: ProcessSandbox,
) -> None:
    await run(worker_box, "kept = 1")
    first = worker_box.pid
    result, ticks = await run_beside_a_ticker(worker_box, GIL_HOG, 0.5, every=0.05)
    assert result.timed_out and result.state_lost, result
    assert result.error is not None and "killed" in result.error and "`context`" in result.error
    assert result.duration_s < 0.5 + 0.3 + 1.0 + 1.5  # timeout + grace + margin, and slack
    assert ticks >= 10  # the host's event loop ran throughout
    after = await run(worker_box, "print(context)\nprint(llm_query('still'))\nprint(kept)")
    assert after.stdout == "ctx\necho:still\n", after
    assert after.error is not None and "NameError" in after.error
    assert not after.state_lost  # the loss was reported once, by the killed cell
    assert worker_box.pid != first and worker_box.resets == 1


async def test_a_worker_that_dies_between_cells_is_replaced_and_says_so(
    worker_box: ProcessSandbox,
) -> None:
    await run(worker_box, "kept = 1")
    assert worker_box.pid is not None
    os.kill(worker_box.pid, 9)
    await anyio.sleep(0.2)
    result = await run(worker_box, "print(context)")
    assert result.stdout == "ctx\n" and result.state_lost
    assert result.error is not None and "SIGKILL" in result.error


async def test_memory_is_measured_for_the_worker_alone() -> None:
    box, _b, _br = make_isolated("process", memory_limit_bytes=300 * 1024 * 1024)
    await box.start()
    await box.execute("kept = 1", 5)
    code = "x = []\nwhile True:\n    x.append(' ' * 10**6 + str(len(x)))"
    result = await box.execute(code, 60)
    assert result.error is not None and "MemoryError" in result.error, result
    assert not result.state_lost
    after = await box.execute("n = len(x)\ndel x\nprint(kept, n > 100)", 5)
    assert after.stdout == "1 True\n", after
    await box.close()


async def test_the_worker_ends_when_the_host_goes_away() -> None:
    from rlm.backends.restricted.confine import Limits
    from rlm.backends.restricted.spawn import spawn

    proc = spawn(Limits(memory_bytes=1 << 30))
    assert proc.stdin is not None
    proc.stdin.close()  # what the kernel does when the host dies
    assert await anyio.to_thread.run_sync(lambda: proc.wait(timeout=30)) == 0


@pytest.mark.parametrize(
    "code",
    [
        "while True:\n    pass",
        "while True:\n    try:\n        while True:\n            pass\n"
        "    except Exception:\n        pass",
        "import itertools\nsum(itertools.count())",
        "r = llm_query('slow')",
    ],
)
async def test_runaway_cells_are_stopped_softly_in_the_worker(
    worker_box: ProcessSandbox, code: str
) -> None:
    await run(worker_box, "kept = 1")
    result = await run(worker_box, code, timeout=0.5)
    assert result.timed_out and not result.state_lost, result
    assert (await run(worker_box, "print(kept)")).stdout == "1\n"


async def test_tools_bindings_and_snapshots_cross_to_the_worker(
    worker_box: ProcessSandbox,
) -> None:
    await worker_box.bind("given", {"a": [1, 2]})
    result = await run(worker_box, "given['a'].append(3)\nprint(given)")
    assert result.stdout == "{'a': [1, 2, 3]}\n"
    snap = await worker_box.snapshot(10_000)
    assert "given" in snap.names
    other, _b, _br = make_isolated("process")
    await other.start()
    assert "given" in await other.restore(snap.blob)
    assert (await run(other, "print(given)")).stdout == "{'a': [1, 2, 3]}\n"
    await other.close()


async def test_cancelling_execute_interrupts_the_cell_and_keeps_the_worker(
    worker_box: ProcessSandbox,
) -> None:
    await run(worker_box, "kept = 1")
    first = worker_box.pid
    with anyio.move_on_after(0.3):
        await worker_box.execute("n = 0\nwhile True:\n    n += 1", 60)
    first_n = await worker_box.get_variable("n")
    await anyio.sleep(0.2)
    assert await worker_box.get_variable("n") == first_n  # nothing runs the loop any more
    after = await run(worker_box, "print(kept)")
    assert after.stdout == "1\n" and not after.state_lost
    assert worker_box.pid == first


async def test_the_config_key_picks_the_worker_process(monkeypatch: pytest.MonkeyPatch) -> None:
    from rlm.config import RLMConfig
    from rlm.errors import ConfigurationError
    from rlm.stack import BackendChoice, build_session
    from tests.backends.restricted.support import FakeBatcher

    monkeypatch.setenv("RLM_RESTRICTED_ISOLATION", "process")
    config = RLMConfig.from_env(dotenv=False, backend="restricted", sub_model="sub")
    assert config.restricted_isolation == "process"
    with pytest.raises(ConfigurationError, match="restricted_isolation"):
        config.with_(restricted_isolation="thread")
    stack = build_session(
        config,
        BackendChoice("restricted", "asked for"),
        batcher=FakeBatcher(),  # type: ignore[arg-type]
    )
    try:
        assert isinstance(stack.sandbox, ProcessSandbox)
        await stack.start("the context")
        cell = await stack.sandbox.execute("print(len(context), llm_query('hi'))", 10.0)
        assert cell.error is None and cell.stdout == "11 echo:hi\n", cell
    finally:
        await stack.aclose()
    inprocess = build_session(
        config.with_(restricted_isolation="inprocess"),
        BackendChoice("restricted", "asked for"),
        batcher=FakeBatcher(),  # type: ignore[arg-type]
    )
    assert not isinstance(inprocess.sandbox, ProcessSandbox)
    await inprocess.aclose()


async def test_a_final_answer_comes_back_from_the_worker(worker_box: ProcessSandbox) -> None:
    result = await run(worker_box, "FINAL({'answer': [1, 2], 'from': context})")
    assert result.error is None, result
    assert result.final == {"value": {"answer": [1, 2], "from": "ctx"}, "how": "FINAL"}
