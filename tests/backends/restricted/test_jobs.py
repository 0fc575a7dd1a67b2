"""Stopping runaway cells: on time, whatever they catch, and never another session's."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.to_thread
import pytest

from rlm.backends.restricted import RestrictedSandbox
from tests.backends.restricted.support import make_sandbox, run, run_beside_a_ticker


async def test_infinite_loop_is_stopped_and_the_session_survives(box: RestrictedSandbox) -> None:
    await run(box, "kept = 'still here'")
    result, ticks = await run_beside_a_ticker(box, "while True:\n    pass", 0.5, every=0.02)
    assert result.timed_out and not result.state_lost
    assert result.error is not None and "time limit" in result.error
    assert ticks > 0  # the event loop kept running meanwhile
    after = await run(box, "print(kept)")
    assert after.stdout == "still here\n" and after.error is None


@pytest.mark.parametrize(
    "code",
    [
        "while True:\n    try:\n        while True:\n            pass\n"
        "    except Exception:\n        pass",
        "while True:\n    try:\n        while True:\n            pass\n"
        "    except (Exception, ArithmeticError) as e:\n        continue",
        "def f():\n    while True:\n        try:\n            f()\n        except RecursionError:\n"
        "            pass\nf()",
        "while True:\n    try:\n        while True:\n            pass\n    finally:\n        x = 1",
        "while True:\n    try:\n        while True:\n            pass\n"
        "    except undefined_name:\n        pass\n    except NameError:\n        pass",
        "import itertools\nsum(itertools.count())",
        "sum(range(10**15))",
        "sum(iter(int, 1))",
        "import itertools\n-1 in itertools.repeat(0)",
        "import itertools\nmax(map(abs, itertools.count()))",
        "import collections\nsum(collections.Counter({1: 10**15}).elements())",
        "import functools, itertools\nfunctools.reduce(max, itertools.count())",
        "import itertools\nlist(itertools.islice(itertools.cycle([1]), 10**15, None))",
        "import itertools\nsorted(itertools.count(), key=abs)",
        "while True:\n    print('x' * 100)",
    ],
)
async def test_runaway_cells_are_stopped(box: RestrictedSandbox, code: str) -> None:
    await run(box, "kept = 1")
    result = await run(box, code, timeout=0.5)
    assert result.timed_out, result
    assert not result.state_lost
    after = await run(box, "print(kept)")
    assert after.stdout == "1\n"


async def test_a_stop_during_a_sub_call_cancels_it(box: RestrictedSandbox) -> None:
    result = await run(box, "r = llm_query('slow')", timeout=0.5)
    assert result.timed_out and not result.state_lost
    assert (await run(box, "print(1)")).stdout == "1\n"


async def test_a_cell_that_cannot_be_stopped_loses_the_namespace_only() -> None:
    sandbox, batcher, _br = make_sandbox(stop_grace_s=0.3)
    batcher.hang_s = 2.0
    await sandbox.start()
    await sandbox.load_context("ctx")
    await sandbox.execute("x = 1", 5)
    # The shielded sub-call keeps the thread waiting outside Python: no stop lands.
    result = await sandbox.execute("llm_query('hang')", 0.3)
    assert result.timed_out and result.state_lost
    assert result.error is not None and "reset" in result.error
    after = await sandbox.execute("print(context)\nprint(x)", 5)
    assert after.stdout == "ctx\n"
    assert after.error is not None and "NameError" in after.error
    assert (await sandbox.execute("print(llm_query('hi'))", 5)).stdout == "echo:hi\n"
    await anyio.sleep(batcher.hang_s)
    # The abandoned thread ended once it was back in Python; worker threads are fine.
    for _ in range(20):
        assert await anyio.to_thread.run_sync(lambda: 42) == 42
    await sandbox.close()


async def test_cancelling_execute_stops_the_thread() -> None:
    sandbox, _b, _br = make_sandbox()
    await sandbox.start()
    with anyio.move_on_after(0.3):
        await sandbox.execute("n = 0\nwhile True:\n    n += 1", 60)
    await anyio.sleep(0.3)
    first = await sandbox.get_variable("n")
    await anyio.sleep(0.3)
    assert await sandbox.get_variable("n") == first  # nothing runs the loop any more
    await sandbox.close()


async def test_stops_never_reach_another_sessions_cell() -> None:
    boxes = [make_sandbox()[0] for _ in range(4)]
    for sandbox in boxes:
        await sandbox.start()
    results: dict[int, Any] = {}
    slow = "n = 0\nfor i in range(3_000_000):\n    n += 1\nprint(n)"

    async def one(i: int) -> None:
        code = "while True:\n    pass" if i % 2 else slow
        results[i] = await boxes[i].execute(code, 0.3 if i % 2 else 60)

    async with anyio.create_task_group() as tg:
        for i in range(len(boxes)):
            tg.start_soon(one, i)
    for i, result in results.items():
        if i % 2:
            assert result.timed_out and not result.state_lost
        else:
            assert result.error is None and result.stdout == "3000000\n", result
    for sandbox in boxes:
        await sandbox.close()


async def test_many_stops_leave_worker_threads_healthy(box: RestrictedSandbox) -> None:
    for _ in range(10):
        result = await run(box, "while True:\n    x = [1] * 10", timeout=0.05)
        assert result.timed_out or result.error is None
    results = [await anyio.to_thread.run_sync(lambda i=i: i * 2) for i in range(50)]
    assert results == [i * 2 for i in range(50)]


async def test_a_sandbox_dropped_without_close_leaves_no_cell_thread() -> None:
    import gc

    # This test's own cell threads, so that another test's thread still on its way
    # out (a retired one finishing a C call) neither hides nor fakes a leak.
    threads = []
    for _ in range(5):
        sandbox, batcher, bridge = make_sandbox()
        await sandbox.start()
        assert (await sandbox.execute("x = 1", 5)).error is None
        assert sandbox._worker is not None
        threads.append(sandbox._worker.thread)
        del sandbox, batcher, bridge  # all of it dropped, nothing closed
    # A thread may hold its last job a moment after the cell's result; on a loaded
    # machine the dropped sandboxes' threads took over a second to go.
    for _ in range(500):
        gc.collect()
        if not any(t.is_alive() for t in threads):
            break
        await anyio.sleep(0.02)
    assert not any(t.is_alive() for t in threads), [t.is_alive() for t in threads]
