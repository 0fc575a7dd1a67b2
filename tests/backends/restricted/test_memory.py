"""Memory limits: the watchdog stops growth, the process ceiling one huge C call."""

from __future__ import annotations

from tests.backends.restricted.support import make_sandbox


async def test_memory_growth_is_stopped_by_the_watchdog() -> None:
    sandbox, _b, _br = make_sandbox(memory_limit_bytes=300 * 1024 * 1024)
    await sandbox.start()
    await sandbox.execute("kept = 1", 5)
    code = "x = []\nwhile True:\n    x.append(' ' * 10**6 + str(len(x)))"
    result = await sandbox.execute(code, 60)
    assert result.error is not None and "MemoryError" in result.error, result
    assert not result.timed_out and not result.state_lost
    after = await sandbox.execute("n = len(x)\ndel x\nprint(kept, n > 100)", 5)
    assert after.stdout == "1 True\n", after
    await sandbox.close()


async def test_one_huge_c_call_fails_with_memory_error() -> None:
    """The watchdog cannot run during one C call; the process ceiling catches it."""
    import resource

    before = resource.getrlimit(resource.RLIMIT_DATA)
    sandbox, _b, _br = make_sandbox(memory_limit_bytes=256 * 1024 * 1024)
    await sandbox.start()
    await sandbox.load_context("ab" * 50_000_000)
    # About 100 million 2-tuples built inside list(): several GB without the ceiling.
    result = await sandbox.execute("pairs = list(zip(context, context[1:]))", 60)
    assert result.error is not None and "MemoryError" in result.error, result
    assert resource.getrlimit(resource.RLIMIT_DATA) == before
    assert (await sandbox.execute("print(len(context))", 5)).stdout == "100000000\n"
    await sandbox.close()
    big = [0] * 10**8  # the host allocates freely again
    assert len(big) == 10**8


async def test_memory_growth_cannot_be_caught() -> None:
    sandbox, _b, _br = make_sandbox(memory_limit_bytes=300 * 1024 * 1024)
    await sandbox.start()
    code = (
        "x = []\nwhile True:\n    try:\n        x.append(' ' * 10**6 + str(len(x)))\n"
        "    except MemoryError:\n        pass\n    except Exception:\n        pass"
    )
    result = await sandbox.execute(code, 60)
    assert result.error is not None and "MemoryError" in result.error
    await sandbox.close()
