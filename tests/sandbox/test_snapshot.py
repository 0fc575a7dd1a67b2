"""The snapshot format (sandbox/snapshot.py): round trips, what is skipped, the size
bound, and a reader that refuses every malformed blob cleanly (no crash, no hang)."""

from __future__ import annotations

import json
import math
import random
import time
from typing import Any

import pytest
from rlm_sandbox import snapshot as S
from rlm_sandbox.api import make_functions
from rlm_sandbox.final import Finals
from rlm_sandbox.names import SANDBOX_NAMES

MB = 1 << 20


def round_trip(namespace: dict[str, Any], max_bytes: int = 10 * MB) -> dict[str, Any]:
    text, names, skipped = S.encode(namespace, max_bytes)
    assert len(text.encode("utf-8")) <= max_bytes
    assert skipped == {}, skipped
    out = S.decode(text, max_bytes)
    assert list(out) == names
    return out


def test_every_type_round_trips_exactly() -> None:
    values: dict[str, Any] = {
        "s": "plain",
        "u": 'é✓ \u2028 \x00 "quoted" \\ \n',
        "lone": "\ud800 a lone surrogate",
        "long_u": "ü" * 1000,
        "i": -12345678901234567890,
        "huge": 7**20000,
        "neg_huge": -(3**30000),
        "f": 2.5,
        "negzero": -0.0,
        "tiny": 5e-324,
        "nan": math.nan,
        "inf": math.inf,
        "ninf": -math.inf,
        "t": True,
        "no": False,
        "none": None,
        "b": b"\x00\xffbytes",
        "big_b": bytes(range(256)) * 10,
        "empty": [[], (), {}, set(), frozenset(), b"", ""],
        "lst": [1, "two", 3.0, None],
        "tup": (1, (2, (3,))),
        "d": {1: "int key", 2.5: "float", None: "none", (1, "a"): "tuple", False: 0, "s": [1]},
        "st": {1, "a", (2, 3), frozenset({4})},
        "fs": frozenset({"x", (1, 2)}),
        "context": {"kept": True},
    }
    out = round_trip(values)
    for name, value in values.items():
        got = out[name]
        if name == "nan":
            assert math.isnan(got)
            continue
        assert got == value and type(got) is type(value), name
    assert math.copysign(1, out["negzero"]) == -1
    assert [type(x) for x in out["empty"]] == [list, tuple, dict, set, frozenset, bytes, str]


def test_shared_references_and_cycles_come_back() -> None:
    shared = [1, 2]
    cyclic: list[Any] = ["head"]
    cyclic.append(cyclic)
    d: dict[str, Any] = {}
    d["self"] = d
    through_tuple: list[Any] = []
    t = (through_tuple, "x")
    through_tuple.append(t)
    big = "x" * 10_000
    out = round_trip(
        {
            "a": shared,
            "b": shared,
            "c": [shared, shared],
            "cyc": cyclic,
            "d": d,
            "t": t,
            "big1": big,
            "big2": [big, big],
        }
    )
    assert out["a"] is out["b"] is out["c"][0] is out["c"][1]
    assert out["cyc"][1] is out["cyc"]
    assert out["d"]["self"] is out["d"]
    assert out["t"][0][0] is out["t"]
    assert out["big1"] is out["big2"][0] is out["big2"][1]
    out["a"].append(3)
    assert out["c"][0] == [1, 2, 3]
    # A long string shared three times is stored once.
    text, _, _ = S.encode({"a": big, "b": big, "c": [big]}, MB)
    assert len(text) < 11_000


def _gen() -> Any:
    yield 1


class Foo:
    pass


class MyList(list[int]):
    pass


def test_what_cannot_be_carried_is_skipped_by_name_with_why() -> None:
    import json as a_module

    namespace: dict[str, Any] = {
        "__builtins__": {"len": len},
        "__name__": "__main__",
        "ok": 1,
        "fn": lambda: 1,
        "builtin_fn": len,
        "mod": a_module,
        "gen": _gen(),
        "obj": Foo(),
        "cls": Foo,
        "sub": MyList([1]),
        "deep_inside": {"a": [1, 2, {"b": Foo()}]},
        "_private": 1,
        "list": [1],
        "cplx": 1j,
    }
    namespace.update(make_functions(lambda method, params: None))
    finals = Finals(namespace, 100)
    namespace.update(finals.functions())
    text, names, skipped = S.encode(namespace, MB, tools=["search"])
    assert names == ["ok"]
    assert skipped == {
        "fn": "a function",
        "builtin_fn": "a function",
        "mod": "a module",
        "gen": "a generator",
        "obj": "an object of class Foo",
        "cls": "a class",
        "sub": "an object of class MyList (a subclass of list)",
        "deep_inside": "an object of class Foo (at deep_inside['a'][2]['b'])",
        "_private": "'_private' starts with '_'; model code cannot read such names",
        "list": "'list' would hide the Python builtin of that name",
        "cplx": "an object of class complex",
    }
    assert S.decode(text, MB) == {"ok": 1}


def test_the_injected_names_are_the_ones_the_sandbox_defines() -> None:
    namespace: dict[str, Any] = {}
    namespace.update(make_functions(lambda m, p: None, [_TOOL_SPEC]))
    namespace.update(Finals(namespace, 10).functions())
    assert set(namespace) - {"search"} == SANDBOX_NAMES


_TOOL_SPEC = {"name": "search", "doc": "", "returns": None, "params": []}


def test_the_size_bound_is_kept_while_writing() -> None:
    namespace = {"small": "s" * 100, "big": "b" * (2 * MB), "many": [1] * MB, "after": 2}
    text, names, skipped = S.encode(namespace, MB)
    assert names == ["small", "after"]
    assert skipped == {"big": "over the size limit", "many": "over the size limit"}
    assert len(text) <= MB
    assert S.decode(text, MB) == {"small": "s" * 100, "after": 2}
    # A list repeating one big string a million times stops at the bound, fast.
    started = time.monotonic()
    repeated = ["x" * 100] * 10**7
    _, names, skipped = S.encode({"r": repeated}, MB)
    assert names == [] and skipped == {"r": "over the size limit"}
    assert time.monotonic() - started < 2
    # Non-ASCII text counts in UTF-8 bytes.
    text, names, _ = S.encode({"u": ["é" * 200] * 100}, 45_000)
    assert names == ["u"] and len(text.encode()) <= 45_000
    _, names, _ = S.encode({"u": ["é" * 200] * 100}, 35_000)  # 20,000 characters
    assert names == []


def test_nesting_past_the_limit_is_skipped_and_refused() -> None:
    deep: list[Any] = []
    for _ in range(S.MAX_DEPTH + 5):
        deep = [deep]
    chain: tuple[Any, ...] = ()
    for _ in range(S.MAX_DEPTH - 5):
        chain = (chain,)
    # Each var alone is within bounds, but b builds on a: hashing b would recurse.
    over = (((((((chain,),),),),),),)
    text, names, skipped = S.encode({"deep": deep, "a": chain, "b": over}, MB)
    assert names == ["a"]
    assert "nested more than" in skipped["deep"] and "nested more than" in skipped["b"]
    assert S.decode(text, MB)["a"] == chain


# -- the reader against malformed blobs ---------------------------------------------------------


def _valid() -> str:
    shared = [1, "two"]
    return S.encode(
        {"a": shared, "b": (shared, {1: b"x", "k": {2.5, None}}), "c": "z" * 300, "d": -(10**5000)},
        MB,
    )[0]


def _doc(body: Any) -> str:
    return S.MAGIC + json.dumps(body)


def _refused(text: str, max_bytes: int = MB) -> str:
    with pytest.raises(S.SnapshotInvalid) as info:
        S.decode(text, max_bytes)
    return str(info.value)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "wrong header"),
        ("{}", "wrong header"),
        ("RLMSNAP/2\n{}", "version '2'"),
        (S.MAGIC, "damaged"),
        (S.MAGIC + "{", "damaged"),
        (S.MAGIC + '{"vars": [], "objects": [NaN]}', "damaged"),
        (S.MAGIC + "[" * 100_000 + "]" * 100_000, "nests too deeply"),
        (_doc([]), "wrong fields"),
        (_doc({"vars": [], "objects": [], "x": 1}), "wrong fields"),
        (_doc({"vars": {}, "objects": []}), "wrong types"),
        (_doc({"vars": [["a"]], "objects": []}), "malformed"),
        (_doc({"vars": [["a", {"x": 1}]], "objects": []}), "malformed"),
        (_doc({"vars": [["a", ["r", 0]]], "objects": []}), "points nowhere"),
        (_doc({"vars": [["a", ["r", -1]]], "objects": [["l", []]]}), "points nowhere"),
        (_doc({"vars": [["a", ["r", True]]], "objects": [["l", []]]}), "points nowhere"),
        (_doc({"vars": [["a", ["q", 1]]], "objects": []}), "unknown tag"),
        (_doc({"vars": [["a", ["f", "NaN"]]], "objects": []}), "float"),
        (_doc({"vars": [["a", ["i", "xyz"]]], "objects": []}), "int"),
        (_doc({"vars": [["a", ["i", ""]]], "objects": []}), "int"),
        (_doc({"vars": [["a", ["b", "!!!"]]], "objects": []}), "base64"),
        (_doc({"vars": [["a", 1]], "objects": [["x", []]]}), "unknown tag"),
        (_doc({"vars": [["a", 1]], "objects": [["l", 5]]}), "unknown tag"),
        (_doc({"vars": [["a", 1]], "objects": [["S", 5]]}), "malformed"),
        (_doc({"vars": [["a", 1]], "objects": [["B", "%%%"]]}), "base64"),
        (_doc({"vars": [["a", 1]], "objects": [["d", [1]]]}), "key alone"),
        (_doc({"vars": [["a", 1]], "objects": [["l", [["l", []]]]]}), "unknown tag"),
        (_doc({"vars": [["a", ["r", 0]]], "objects": [["t", [["r", 0]]]]}), "contains itself"),
        (
            _doc({"vars": [["a", ["r", 0]]], "objects": [["t", [["r", 1]]], ["F", [["r", 0]]]]}),
            "contains itself",
        ),
        (_doc({"vars": [["a", ["r", 0]]], "objects": [["d", [["r", 0], 1]]]}), "damaged"),
        (_doc({"vars": [["a", ["r", 0]]], "objects": [["s", [["r", 1]]], ["l", []]]}), "damaged"),
        (_doc({"vars": [["a", ["r", 0]]], "objects": [["F", [["r", 1]]], ["l", []]]}), "damaged"),
        (_doc({"vars": [["llm_query", 1]], "objects": []}), "function the sandbox gives"),
        (_doc({"vars": [["FINAL", 1]], "objects": []}), "function the sandbox gives"),
        (_doc({"vars": [["print", 1]], "objects": []}), "builtin"),
        (_doc({"vars": [["__builtins__", 1]], "objects": []}), "starts with '_'"),
        (_doc({"vars": [["a b", 1]], "objects": []}), "not a Python identifier"),
        (_doc({"vars": [[1, 1]], "objects": []}), "must be a str"),
        (_doc({"vars": [["a", 1], ["a", 2]], "objects": []}), "twice"),
    ],
)
def test_the_reader_refuses_malformed_blobs(text: str, why: str) -> None:
    assert why in _refused(text)


def test_a_tool_name_cannot_be_restored_over_and_the_size_limit_holds() -> None:
    with pytest.raises(S.SnapshotInvalid, match="function the sandbox gives"):
        S.decode(_doc({"vars": [["search", 1]], "objects": []}), MB, tools=["search"])
    text = _valid()
    assert "limit" in _refused(text, len(text) - 1)


def test_absurd_tuple_nesting_is_refused_without_recursion() -> None:
    # A chain of 200k tuples: hashing it would overflow the C stack; building it
    # must not recurse either.
    n = 200_000
    objects = [["t", [["r", i + 1]]] for i in range(n)] + [["t", []]]
    blob = _doc({"vars": [["a", ["r", 0]]], "objects": objects})
    started = time.monotonic()
    assert "more than" in _refused(blob, 100 * MB)
    assert time.monotonic() - started < 5
    # A wide tuple of many small tuples is fine, and linear.
    wide = [["t", [["r", i + 1] for i in range(n)]]] + [["t", [i]] for i in range(n)]
    started = time.monotonic()
    out = S.decode(_doc({"vars": [["a", ["r", 0]]], "objects": wide}), 100 * MB)
    assert len(out["a"]) == n and out["a"][5] == (5,)
    assert time.monotonic() - started < 5


def test_fuzzed_blobs_are_refused_cleanly() -> None:
    rng = random.Random(1234)
    valid = _valid()
    assert set(S.decode(valid, MB)) == {"a", "b", "c", "d"}
    cases = [valid[:cut] for cut in range(0, len(valid), max(1, len(valid) // 300))]
    for _ in range(2000):
        chars = list(valid)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(chars))
            chars[i] = chr(ord(chars[i]) ^ (1 << rng.randrange(7)))
        cases.append("".join(chars))
    for _ in range(300):
        cases.append("".join(chr(rng.randrange(32, 127)) for _ in range(rng.randint(0, 200))))
        cases.append(S.MAGIC + bytes(rng.randrange(256) for _ in range(100)).decode("latin-1"))
    tokens = ['["r",0]', '["t",[', '["l",[', "]]", ",", "1", '"a"', '["F",[', '["d",[']
    for _ in range(500):
        body = "".join(rng.choice(tokens) for _ in range(rng.randint(1, 40)))
        cases.append(S.MAGIC + '{"vars":[["a",["r",0]]],"objects":[' + body + "]}")
    started = time.monotonic()
    accepted = 0
    for text in cases:
        try:
            out = S.decode(text, MB)
        except S.SnapshotInvalid:
            continue
        accepted += 1  # a flip that still makes a valid snapshot (a digit, a letter)
        assert isinstance(out, dict)
    assert accepted < len(cases) // 2
    assert time.monotonic() - started < 30
