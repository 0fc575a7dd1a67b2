"""The sandbox's life: state across cells, context, variables, closing, sub-calls."""

from __future__ import annotations

from typing import Any

import pytest

from rlm.backends.restricted import RestrictedSandbox
from rlm.errors import SandboxError, VariableNotFound
from tests.backends.restricted.support import CANARY, make_sandbox, run

#: The tests of ``box`` run in both modes (see conftest.py).
ISOLATIONS = ("inprocess", "process")


async def test_state_persists_and_print_is_captured(box: RestrictedSandbox) -> None:
    first = await run(box, "x = 41\nprint('hello', x)")
    assert first.stdout == "hello 41\n" and first.error is None
    second = await run(box, "x += 1\nprint(x, len(context) > 0)")
    assert second.stdout == "42 True\n"
    shown = await run(box, "[x, 'y']")
    assert shown.stdout == "[42, 'y']\n"


async def test_functions_and_classes_work_across_cells(box: RestrictedSandbox) -> None:
    await run(
        box,
        "class Counter2:\n"
        "    def __init__(self):\n"
        "        self.n = 0\n"
        "    def bump(self):\n"
        "        self.n += 1\n"
        "        return self.n\n"
        "def twice(f):\n"
        "    f()\n"
        "    return f()\n"
        "c = Counter2()\n",
    )
    result = await run(box, "d = {'k': 1}\nd['k'] += 2\nprint(twice(c.bump), d, type(c).__name__)")
    assert result.error is None, result.error
    assert result.stdout == "2 {'k': 3} Counter2\n"


async def test_load_context_binds_without_copying(box: RestrictedSandbox) -> None:
    big = "x" * (100 * 1024 * 1024)
    await box.load_context(big)
    if isinstance(box, RestrictedSandbox):
        assert await box.get_variable("context") is big
    else:  # from a worker, as from Docker: the first 8,000,000 characters
        assert await box.get_variable("context") == big[:8_000_000]
    result = await run(box, "print(len(context), context[:3])")
    assert result.stdout == f"{len(big)} xxx\n"


async def test_list_and_dict_contexts_are_the_sandboxes_own_copy() -> None:
    sandbox, _b, _br = make_sandbox()
    await sandbox.start()
    docs = {"docs": ["a", "b"], "n": 2}
    await sandbox.load_context(docs)
    result = await sandbox.execute(
        "context['docs'].append('c')\ncontext.clear()\nprint(context)", 5
    )
    assert result.stdout == "{}\n"
    assert docs == {"docs": ["a", "b"], "n": 2}
    with pytest.raises(TypeError):
        await sandbox.load_context(b"bytes")
    with pytest.raises(TypeError):
        await sandbox.load_context({"x": object()})
    await sandbox.close()


async def test_get_variable(box: RestrictedSandbox) -> None:
    await run(box, "s = 'plain text'\nn = [1, 2]\nimport datetime\nd = datetime.date(2024, 1, 2)")
    assert await box.get_variable("s") == "plain text"
    assert await box.get_variable("n") == "[1, 2]"
    assert await box.get_variable("d") == "2024-01-02"
    with pytest.raises(VariableNotFound):
        await box.get_variable("nope")
    with pytest.raises(VariableNotFound):
        await box.get_variable("_print")
    with pytest.raises(VariableNotFound):
        await box.get_variable("__builtins__")


async def test_get_variable_of_a_huge_value_is_capped(box: RestrictedSandbox) -> None:
    await run(box, "big = list(range(100_000))")
    text = await box.get_variable("big")
    assert text.startswith("[0, 1, 2") and "truncated" in text and len(text) < 10_100


async def test_close_twice_and_use_after_close() -> None:
    sandbox, _b, _br = make_sandbox()
    await sandbox.start()
    await sandbox.close()
    await sandbox.close()
    with pytest.raises(SandboxError):
        await sandbox.execute("1", 1)


async def test_llm_batch_keeps_order_and_fails_per_item() -> None:
    sandbox, batcher, _br = make_sandbox()
    await sandbox.start()
    code = """
rs = llm_batch(['a', 'fail:boom', 'c'], max_concurrent=2)
print(rs[0], rs[2])
print(isinstance(rs[1], LLMError), rs[1].failed, rs[1].kind, rs[1].message)
print([isinstance(r, LLMError) for r in rs])
print(llm_query('solo'))
"""
    result = await sandbox.execute(code, 10)
    assert result.error is None, result.error
    assert result.stdout == (
        "echo:a echo:c\nTrue True provider boom\n[False, True, False]\necho:solo\n"
    )
    assert batcher.calls == [["a", "fail:boom", "c"], ["solo"]]
    await sandbox.close()


async def test_refused_sub_calls_raise_rlm_call_error(box: RestrictedSandbox) -> None:
    code = """
try:
    llm_batch(['p'] * 6)
except RLMCallError as e:
    print('refused:', e)
try:
    llm_query('x', model='not-allowed')
except RLMCallError as e:
    print('refused:', e)
"""
    result = await run(box, code)
    assert result.error is None, result.error
    lines = result.stdout.splitlines()
    assert lines[0].startswith("refused: batch of 6 prompts is over this session's limit of 5")
    assert lines[1].startswith("refused: model 'not-allowed' is not permitted")


async def test_sub_call_arguments_reach_the_host_as_plain_values() -> None:
    sandbox, batcher, _br = make_sandbox()
    await sandbox.start()
    code = """
class Sneaky(str):
    def __eq__(self, other):
        while True:
            pass
r = llm_batch([Sneaky('a'), 'b'])
print(r)
"""
    result = await sandbox.execute(code, 10)
    assert result.error is None, result.error
    assert [type(p) for p in batcher.calls[0]] == [str, str]
    await sandbox.close()


async def test_host_failures_do_not_leak_details(box: RestrictedSandbox) -> None:
    assert box.bridge is not None

    async def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError(f"internal {CANARY}")

    box.bridge.batcher.run = broken  # type: ignore[method-assign]
    result = await run(box, "try:\n    llm_query('x')\nexcept RLMCallError as e:\n    print(e)")
    assert result.stdout == "the host could not complete this sub-call (RuntimeError)\n"
    assert CANARY not in str(result)
