"""Captured output: capped with a note, and always valid UTF-8."""

from __future__ import annotations

from rlm.backends.restricted import RestrictedSandbox
from tests.backends.restricted.support import make_sandbox, run


async def test_output_is_capped_with_a_note(box: RestrictedSandbox) -> None:
    sandbox, _b, _br = make_sandbox(output_limit=1_000)
    await sandbox.start()
    result = await sandbox.execute("for i in range(10_000):\n    print('line', i)", 10)
    assert len(result.stdout) == 1_000 and result.truncated
    assert "output truncated" in result.stderr
    assert result.error is None
    await sandbox.close()


async def test_output_with_lone_surrogates_is_valid_utf8(box: RestrictedSandbox) -> None:
    result = await run(box, "print('a\\ud800b')\nraise ValueError('\\udfff')")
    assert result.stdout == "a?b\n"
    result.stdout.encode("utf-8")
    assert result.error is not None
    result.error.encode("utf-8")
