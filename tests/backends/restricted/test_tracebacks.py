"""What a failed cell reports: its own frames only, refusals and syntax errors as results."""

from __future__ import annotations

import sys

from rlm.backends.restricted import RestrictedSandbox
from tests.backends.restricted.support import run


async def test_errors_show_only_the_cells_own_frames(box: RestrictedSandbox) -> None:
    await run(box, "def inner(v):\n    return v['missing']\n")
    result = await run(box, "data = {}\ninner(data)")
    assert result.error is not None
    assert result.error.startswith("Traceback (most recent call last):")
    assert 'File "<cell 2>", line 2, in <module>' in result.error
    assert "return v['missing']" in result.error
    assert result.error.rstrip().endswith("KeyError: 'missing'")
    for host_detail in ("rlm/", "site-packages", "restricted", ".py"):
        assert host_detail not in result.error


async def test_syntax_errors_and_refusals_are_results(box: RestrictedSandbox) -> None:
    bad = await run(box, "x = (")
    assert bad.error is not None and "SyntaxError" in bad.error
    refusal = await run(box, "y = ().__class__")
    assert refusal.error is not None and "__class__" in refusal.error


async def test_deep_recursion_is_a_normal_error(box: RestrictedSandbox) -> None:
    limit = sys.getrecursionlimit()
    result = await run(box, "def f(n):\n    return f(n + 1)\nf(0)")
    assert result.error is not None and "RecursionError" in result.error
    assert "Previous line repeated" in result.error
    assert sys.getrecursionlimit() == limit
    nested = await run(box, "x = []\nfor i in range(100000):\n    x = [x]\ns = repr(x)")
    assert nested.error is not None and "RecursionError" in nested.error
    assert (await run(box, "print('ok')")).stdout == "ok\n"
