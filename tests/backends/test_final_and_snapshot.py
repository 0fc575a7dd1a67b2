"""Final answers, bound values and snapshots on every backend (restricted, runc, runsc).

``FINAL(value)``, ``FINAL_VAR(name)`` and the ``answer`` dict end a run from inside a
cell with exactly that value (``CellResult.final``); ``Sandbox.bind`` puts a JSON
value under a name; ``snapshot``/``restore`` carry a namespace's variables from one
sandbox to another (of either backend) as bytes the host never parses, and a
forged or broken blob is refused with ``SnapshotError``, leaving the target whole.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from rlm.backends.base import Sandbox
from rlm.backends.restricted import RestrictedSandbox
from rlm.bridge import SessionBridge
from rlm.errors import ProtocolError, SnapshotError
from tests.support import IMAGE, make_bridge

BACKENDS = [
    "restricted",
    pytest.param("runc", marks=pytest.mark.docker),
    pytest.param("runsc", marks=[pytest.mark.docker, pytest.mark.runsc]),
]


@pytest.fixture
async def make_box(request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., Any]]:
    """Started sandboxes (of the test's backend, or the one asked for), closed after."""
    made: list[Sandbox] = []
    callspec = getattr(request.node, "callspec", None)
    default = callspec.params.get("backend", "runc") if callspec else "runc"

    async def make(kind: str | None = None, bridge: SessionBridge | None = None) -> Sandbox:
        kind = kind or default
        bridge = bridge or make_bridge()
        box: Sandbox
        if kind == "restricted":
            box = RestrictedSandbox(bridge, output_limit=10_000)
        else:
            from rlm.backends.docker import ColdStart, ContainerSpec, DockerSandbox

            client = request.getfixturevalue("docker_client")
            source = ColdStart(ContainerSpec(image=IMAGE, runtime=kind), docker_client=client)
            box = DockerSandbox(bridge, source, output_limit=10_000)
        made.append(box)
        await box.start()
        await box.load_context("ctx")
        return box

    yield make
    for box in made:
        await box.close()


# -- FINAL, FINAL_VAR, answer ---------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
async def test_final_inside_a_loop_carries_that_object(backend: str, make_box: Any) -> None:
    box = await make_box()
    code = (
        "for i in range(5):\n"
        "    if i == 3:\n"
        "        FINAL({'i': i, 'pair': (1, 2.5), 'none': None, 'ok': True, 's': 'é'})\n"
        "        FINAL('a later call is ignored')\n"
        "print('the cell ran to its end')"
    )
    result = await box.execute(code, 20)
    assert result.error is None, result
    assert result.stdout == "the cell ran to its end\n"
    assert result.final == {
        "value": {"i": 3, "pair": [1, 2.5], "none": None, "ok": True, "s": "é"},
        "how": "FINAL",
    }
    # The next cell starts without a final.
    assert (await box.execute("x = 1", 20)).final is None


@pytest.mark.parametrize("backend", BACKENDS)
async def test_final_var_and_its_missing_name(backend: str, make_box: Any) -> None:
    box = await make_box()
    result = await box.execute("rows = [[1, 'a'], [2, 'b']]\nFINAL_VAR('rows')", 20)
    assert result.error is None, result
    assert result.final == {"value": [[1, "a"], [2, "b"]], "how": "FINAL_VAR"}
    missing = await box.execute("FINAL_VAR('nope')\nprint('not reached')", 20)
    assert missing.final is None
    assert missing.error is not None and "NameError" in missing.error
    assert "nope" in missing.error and "not reached" not in missing.stdout
    wrong = await box.execute("FINAL_VAR(rows)", 20)
    assert wrong.final is None and wrong.error is not None and "TypeError" in wrong.error


@pytest.mark.parametrize("backend", BACKENDS)
async def test_the_answer_dict(backend: str, make_box: Any) -> None:
    box = await make_box()
    assert (await box.execute("answer = {'content': 'not yet', 'ready': False}", 20)).final is None
    ready = await box.execute("answer['content'] = [1, 2]\nanswer['ready'] = True", 20)
    assert ready.error is None, ready
    assert ready.final == {"value": [1, 2], "how": "answer"}
    # Still standing in the next cell: not a new final (that run is over).
    assert (await box.execute("y = 2", 20)).final is None
    again = await box.execute("answer = {'content': 'new', 'ready': True}", 20)
    assert again.final == {"value": "new", "how": "answer"}
    # FINAL in the same cell wins over the answer dict.
    both = await box.execute("FINAL('f')\nanswer = {'content': 'a', 'ready': True}", 20)
    assert both.final == {"value": "f", "how": "FINAL"}
    # Only an exact dict with ready exactly True.
    for code in (
        "answer = {'content': 'x', 'ready': 1}",
        "answer = [('content', 'x'), ('ready', True)]",
        "answer = None",
    ):
        assert (await box.execute(code, 20)).final is None, code


@pytest.mark.parametrize("backend", BACKENDS)
async def test_no_final_is_none_and_an_error_keeps_the_final(backend: str, make_box: Any) -> None:
    box = await make_box()
    plain = await box.execute("print(1)", 20)
    assert plain.final is None and plain.error is None
    failed = await box.execute("FINAL('given')\n1 / 0", 20)
    assert failed.error is not None and "ZeroDivisionError" in failed.error
    assert failed.final == {"value": "given", "how": "FINAL"}


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_value_that_is_not_json_is_carried_as_text(backend: str, make_box: Any) -> None:
    box = await make_box()
    cases = {
        "FINAL({3, 1})": "{1, 3}",
        "FINAL({1: 'a'})": "{1: 'a'}",
        "FINAL(float('nan'))": "nan",
        "FINAL(b'raw')": "b'raw'",
        "FINAL(range(3))": "range(0, 3)",
    }
    for code, text in cases.items():
        result = await box.execute(code, 20)
        assert result.error is None, (code, result)
        assert result.final == {"value": text, "how": "FINAL", "converted": True}, code
    cls = await box.execute("class Box:\n    pass\nFINAL(Box())\n", 20)
    assert cls.error is None, cls
    assert cls.final is not None and cls.final["converted"] is True
    assert "Box object" in cls.final["value"]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_final_over_the_limit_is_an_error_not_a_final(backend: str, make_box: Any) -> None:
    box = await make_box()
    box.value_limit = 1000
    big = await box.execute("FINAL('x' * 2000)\nprint('not reached')", 20)
    assert big.final is None and big.error is not None
    assert "over the limit of 1,000" in big.error and "not reached" not in big.stdout
    answer = await box.execute("answer = {'content': list(range(1000)), 'ready': True}", 20)
    assert answer.final is None and answer.error is not None
    assert "over the limit" in answer.error
    fits = await box.execute("FINAL('x' * 900)", 20)
    assert fits.error is None and fits.final == {"value": "x" * 900, "how": "FINAL"}


# -- bind ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
async def test_bind_puts_a_json_copy_under_a_name(backend: str, make_box: Any) -> None:
    box = await make_box()
    history = [{"q": "first?", "a": "yes", "n": (1, 2.5)}]
    await box.bind("history", history)
    await box.bind("context_0", "the first context")
    await box.bind("count", 3)
    await box.bind("nothing", None)
    result = await box.execute(
        "history[0]['a'] = 'changed'\nprint(history, context_0, count, nothing, context)",
        20,
    )
    assert result.error is None, result
    assert result.stdout == (
        "[{'q': 'first?', 'a': 'changed', 'n': [1, 2.5]}] the first context 3 None ctx\n"
    )
    assert history[0]["a"] == "yes"  # the caller's object is not the sandbox's
    await box.bind("count", 4)  # binding again replaces
    assert (await box.execute("print(count)", 20)).stdout == "4\n"


@pytest.mark.parametrize("backend", BACKENDS)
async def test_bind_refuses_bad_names_and_values(backend: str, make_box: Any) -> None:
    box = await make_box()
    for name in (
        "llm_query",
        "FINAL",
        "FINAL_VAR",
        "print",
        "__x__",
        "_x",
        "1a",
        "a-b",
        "class",
        "context",
        "",
    ):
        with pytest.raises(ValueError):
            await box.bind(name, 1)
    deep: list[Any] = []
    for _ in range(200):
        deep = [deep]
    for value in ({1, 2}, {1: "a"}, float("nan"), b"x", object(), deep):
        with pytest.raises(TypeError):
            await box.bind("v", value)
    ok = await box.execute("try:\n    v\nexcept NameError:\n    print(llm_query('no v'))", 20)
    assert ok.error is None and ok.stdout == "echo:no v\n", ok


# -- snapshots ----------------------------------------------------------------------------------

STATE = (
    "shared = [1, 'two', None]\n"
    "cyc = [shared]\n"
    "cyc.append(cyc)\n"
    "data = {'rows': shared, 'pair': (1.5, -0.0), 'keys': {1: 'a', (2, 3): b'raw'},\n"
    "        'tags': {'x', 'y'}, 'frozen': frozenset([4]), 'nan': float('nan'),\n"
    "        'big': 7 ** 6000}\n"
    "def helper():\n    return 1\n"
    "class Thing:\n    pass\n"
    "thing = Thing()\n"
    "answer = {'content': 'old', 'ready': True}\n"
)
CHECK = (
    "assert data['rows'] is shared and cyc[0] is shared and cyc[1] is cyc\n"
    "assert data['pair'] == (1.5, -0.0) and str(data['pair'][1]) == '-0.0'\n"
    "assert data['keys'] == {1: 'a', (2, 3): b'raw'}\n"
    "assert data['tags'] == {'x', 'y'} and data['frozen'] == frozenset([4])\n"
    "assert data['nan'] != data['nan'] and data['big'] == 7 ** 6000\n"
    "print(context, shared, sorted(data))\n"
)
CROSS = [
    pytest.param("restricted", "restricted", id="restricted-restricted"),
    pytest.param("runc", "runc", marks=pytest.mark.docker, id="runc-runc"),
    pytest.param("runsc", "runsc", marks=[pytest.mark.docker, pytest.mark.runsc], id="runsc-runsc"),
    pytest.param("restricted", "runc", marks=pytest.mark.docker, id="restricted-runc"),
    pytest.param("runc", "restricted", marks=pytest.mark.docker, id="runc-restricted"),
]


@pytest.mark.parametrize(("source", "target"), CROSS)
async def test_a_snapshot_carries_the_variables_to_another_sandbox(
    source: str, target: str, make_box: Any
) -> None:
    src = await make_box(source)
    await src.load_context({"doc": "the context"})
    made = await src.execute(STATE, 20)
    assert made.error is None, made
    snap = await src.snapshot(10_000_000)
    assert isinstance(snap.blob, bytes)
    assert sorted(snap.names) == ["answer", "context", "cyc", "data", "shared"]
    assert snap.skipped == {
        "helper": "a function",
        "Thing": "a class",
        "thing": "an object of class Thing",
    }
    dst = await make_box(target)
    await dst.bind("kept", 1)
    restored = await dst.restore(snap.blob)
    assert sorted(restored) == sorted(snap.names)
    result = await dst.execute(CHECK + "print(kept)", 20)
    assert result.error is None, result
    assert (
        result.stdout == "{'doc': 'the context'} [1, 'two', None] "
        "['big', 'frozen', 'keys', 'nan', 'pair', 'rows', 'tags']\n1\n"
    )
    # A restored answer that was already ready is not a new final.
    assert (await dst.execute("x = 1", 20)).final is None
    # The source is untouched and still works.
    assert (await src.execute("print(len(cyc))", 20)).stdout == "2\n"


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_snapshot_over_its_size_skips_what_does_not_fit(
    backend: str, make_box: Any
) -> None:
    box = await make_box()
    await box.execute("small = 'x' * 100\nlarge = 'y' * 200_000", 20)
    snap = await box.snapshot(50_000)
    assert sorted(snap.names) == ["context", "small"]
    assert snap.skipped == {"large": "over the size limit"}
    assert len(snap.blob) <= 50_000
    with pytest.raises(ValueError, match="at least"):
        await box.snapshot(10)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_50_mb_variable_snapshots_and_restores(backend: str, make_box: Any) -> None:
    src = await make_box()
    made = await src.execute("big = '0123456789abcdef' * 3_125_000\nprint(len(big))", 60)
    assert made.error is None and made.stdout == "50000000\n", made
    started = time.monotonic()
    snap = await src.snapshot(60_000_000)
    taken = time.monotonic() - started
    assert snap.names == ["context", "big"] or sorted(snap.names) == ["big", "context"]
    assert 50_000_000 < len(snap.blob) < 50_100_000
    dst = await make_box()
    started = time.monotonic()
    assert "big" in await dst.restore(snap.blob)
    put = time.monotonic() - started
    check = await dst.execute("print(len(big), big[:20], big[-3:])", 60)
    assert check.error is None and check.stdout == "50000000 0123456789abcdef0123 def\n", check
    print(f"\n50 MB on {backend}: snapshot {taken:.2f} s, restore {put:.2f} s")
    assert taken < 60 and put < 60


BAD_BLOBS = [
    b"",
    b"not a snapshot",
    b"\xff\xfe\x00garbage",
    b"RLMSNAP/9\n{}",
    b'RLMSNAP/1\n{"vars": [["x", 1]], "objects": [',
    b'RLMSNAP/1\n{"vars": [["llm_query", 1]], "objects": []}',
    b'RLMSNAP/1\n{"vars": [["__builtins__", {}]], "objects": []}',
    b'RLMSNAP/1\n{"vars": [["x", ["r", 0]]], "objects": [["t", [["r", 0]]]]}',
    b"RLMSNAP/1\n" + b"[" * 100_000,
]


def _tuple_bomb(depth: int) -> bytes:
    objects = [["t", [["r", i + 1]]] for i in range(depth)] + [["t", []]]
    return b"RLMSNAP/1\n" + json.dumps({"vars": [["x", ["r", 0]]], "objects": objects}).encode()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_malicious_blobs_are_refused_and_the_target_still_works(
    backend: str, make_box: Any
) -> None:
    box = await make_box()
    await box.execute("mine = [1, 2]", 20)
    for blob in [*BAD_BLOBS, _tuple_bomb(300_000)]:
        with pytest.raises(SnapshotError):
            await box.restore(blob)
    box.snapshot_limit = 1000
    with pytest.raises(SnapshotError, match="limit"):
        await box.restore(b"RLMSNAP/1\n" + b" " * 2000)
    # All or nothing: the good variable before the bad name is not bound either.
    with pytest.raises(SnapshotError):
        await box.restore(b'RLMSNAP/1\n{"vars": [["a", 1], ["print", 2]], "objects": []}')
    result = await box.execute(
        "print(mine, llm_query('still'))\ntry:\n    a\nexcept NameError:\n    print('no a')", 20
    )
    assert result.error is None, result
    assert result.stdout == "[1, 2] echo:still\nno a\n"


FIND_RUNNER = (
    "def find_runner():\n"
    "    for cell in getattr(llm_query, '__clo' + 'sure__'):\n"
    "        fn = getattr(cell, 'cell_' + 'contents')\n"
    "        owner = getattr(fn, '__se' + 'lf__', None)\n"
    "        if owner is not None and hasattr(owner, 'send'):\n"
    "            return owner\n"
    "runner = find_runner()\n"
)


@pytest.mark.docker
@pytest.mark.parametrize("target", ["restricted", "runc"])
async def test_a_blob_forged_by_model_code_can_only_be_refused(target: str, make_box: Any) -> None:
    src = await make_box("runc")
    dst = await make_box(target)
    await dst.execute("mine = 'intact'", 20)
    forged = [blob.decode("latin-1") for blob in BAD_BLOBS[3:]] + [
        _tuple_bomb(300_000).decode(),
        'RLMSNAP/1\n{"vars": [["x", ["r", 0]]], "objects": [["s", [["r", 1]]], ["l", []]]}',
        'RLMSNAP/1\n{"vars": [["FINAL", 1], ["ok", 2]], "objects": []}',
    ]
    for text in forged:
        code = FIND_RUNNER + (
            f"runner._snapshot = lambda req, max_bytes: {{'type': 'snapshot', 'id': req, "
            f"'blob': {text!r}, 'names': ['ok'], 'skipped': {{}}}}\n"
        )
        patched = await src.execute(code, 20)
        assert patched.error is None, patched
        snap = await src.snapshot(10_000_000)  # the host carries it, unread
        with pytest.raises(SnapshotError):
            await dst.restore(snap.blob)
    # A reply that breaks the protocol ends the source's session, never the host.
    broken = await src.execute(
        FIND_RUNNER + "runner._snapshot = lambda req, max_bytes: {'type': 'snapshot', "
        "'id': req, 'blob': 'x', 'names': [1], 'skipped': {}}\n",
        20,
    )
    assert broken.error is None
    with pytest.raises(ProtocolError):
        await src.snapshot(1000)
    result = await dst.execute("print(mine)", 20)
    assert result.error is None and result.stdout == "intact\n"
