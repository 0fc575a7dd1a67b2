"""Fuzzing snapshot blobs: the sandbox's reader (sandbox/snapshot.py), the host's
session header (rlm/sessions.py) and the restricted backend's restore, which reads
blobs in the host process.

Properties: what the writer makes reads back equal; a random or mutated blob is
refused with the documented error (``SnapshotInvalid`` in the reader,
``SnapshotError`` on the host) or read whole into exact built-in types, never
anything else; nothing is imported, compiled, executed or unpickled while a blob is
read (an audit hook watches); a refused restore leaves the namespace as it was.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rlm_sandbox import snapshot as S
from rlm_sandbox.names import name_problem

from rlm.backends.restricted import RestrictedSandbox
from rlm.errors import SnapshotError
from rlm.sessions import MAGIC as SESSION_MAGIC
from rlm.sessions import _split
from tests.fuzz.support import any_text, examples, hard_timeout
from tests.support import make_bridge

MB = 1 << 20
#: The ints too long for JSON make long reprs of the examples; that is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

# -- an audit hook: nothing may run while a blob is read -------------------------------

#: Audit events that mean code ran or was loaded, or a process or file was touched.
_FORBIDDEN = ("exec", "compile", "import", "pickle.", "marshal.", "os.", "subprocess.", "open")
_watch: list[list[str]] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _watch and event.startswith(_FORBIDDEN):
        _watch[-1].append(event)


sys.addaudithook(_audit)


def decode_watched(text: str, max_bytes: int = 10 * MB) -> dict[str, Any]:
    """``S.decode`` with the audit hook armed; fails on any forbidden event."""
    seen: list[str] = []
    _watch.append(seen)
    try:
        with hard_timeout(10):
            return S.decode(text, max_bytes)
    finally:
        _watch.pop()
        assert seen == [], f"reading a snapshot raised audit events {seen[:5]}"


# -- values the writer carries ---------------------------------------------------------

_atoms = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([2**13_001 - 1, -(2**13_100)]),  # too long for JSON: travels as hex
    st.floats(),  # nan and the infinities too
    any_text,
    st.text(min_size=256, max_size=300),  # stored once in the object table
    st.binary(max_size=40),
)
_hashable = st.recursive(
    _atoms,
    lambda inner: st.one_of(st.tuples(inner, inner), st.frozensets(inner, max_size=3)),
    max_leaves=8,
)
_values = st.recursive(
    _atoms,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(_hashable, inner, max_size=4),
        st.sets(_hashable, max_size=4),
        st.frozensets(_hashable, max_size=4),
    ),
    max_leaves=20,
)
_names = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True).filter(
    lambda n: name_problem(n, context=True) is None
)
namespaces = st.dictionaries(_names, _values, max_size=6)


def same(a: Any, b: Any) -> bool:
    """Equal, of the same exact types all the way down (nan equal to nan)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):  # in order: the reader keeps it, and nan keys are not found
        return len(a) == len(b) and all(
            same(ka, kb) and same(va, vb)
            for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True)
        )
    if isinstance(a, (set, frozenset)):
        return len(a) == len(b) and all(any(same(x, y) for y in b) for x in a)
    return bool(a == b)


def plain_built_ins(value: Any, seen: set[int] | None = None) -> bool:
    """Only exact built-in types, however deep (cycles allowed)."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return True
    kind = type(value)
    if value is None or kind in (bool, int, float, str, bytes):
        return True
    if kind not in (list, tuple, set, frozenset, dict):
        return False
    seen.add(id(value))
    items = [*value.keys(), *value.values()] if kind is dict else list(value)
    return all(plain_built_ins(v, seen) for v in items)


def check_read(values: object) -> None:
    """What a reader gave back is a namespace of plain built-in values."""
    assert type(values) is dict
    for name, value in values.items():
        assert name_problem(name, context=True) is None, name
        assert plain_built_ins(value), (name, type(value))


@given(namespaces)
@settings(max_examples=examples(100))
def test_what_the_writer_makes_reads_back_equal(namespace: dict[str, Any]) -> None:
    text, names, skipped = S.encode(namespace, 10 * MB)
    assert skipped == {}
    assert names == list(namespace)
    out = decode_watched(text)
    assert list(out) == names
    for name in names:
        assert same(out[name], namespace[name]), name


_mutation = st.tuples(st.sampled_from(["flip", "insert", "delete", "cut"]), st.integers(0, 1 << 20))


def mutate(text: str, ops: list[tuple[str, int]], data: st.DataObject) -> str:
    raw = bytearray(text.encode("utf-8", "surrogatepass"))
    for op, where in ops:
        at = where % (len(raw) + 1)
        if op == "flip" and at < len(raw):
            raw[at] = data.draw(st.integers(0, 255))
        elif op == "insert":
            raw[at:at] = data.draw(st.sampled_from([b"[", b"]", b",", b'"', b"1", b"\\", b"\xff"]))
        elif op == "delete":
            del raw[at : at + data.draw(st.integers(1, 8))]
        elif op == "cut":
            del raw[at:]
    return raw.decode("utf-8", "replace")


@given(namespaces, st.lists(_mutation, min_size=1, max_size=4), st.data())
@settings(max_examples=examples(150))
def test_a_mutated_blob_is_refused_or_read_whole(
    namespace: dict[str, Any], ops: list[tuple[str, int]], data: st.DataObject
) -> None:
    text, _, _ = S.encode(namespace, 10 * MB)
    damaged = mutate(text, ops, data)
    try:
        values = decode_watched(damaged)
    except S.SnapshotInvalid as exc:
        assert str(exc)
        return
    check_read(values)
    if damaged == text:
        assert all(same(values[n], namespace[n]) for n in namespace)


# -- forged documents: the right shape, hostile contents --------------------------------

_slot_atoms = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), any_text)
_tags = st.one_of(
    st.sampled_from(["r", "f", "i", "b", "l", "t", "s", "F", "d", "S", "B"]), any_text
)
_tag_args = st.one_of(
    st.integers(-3, 12),
    st.sampled_from(["nan", "inf", "-inf", "ff", "-", "", "0x10", "AAAA", "!!"]),
    st.lists(st.integers(0, 3), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
    st.none(),
    st.booleans(),
    st.floats(),
)
_slots = st.one_of(
    _slot_atoms,
    st.lists(st.one_of(_tags, _tag_args), min_size=0, max_size=3),
    st.tuples(_tags, _tag_args).map(list),
    st.dictionaries(st.text(max_size=3), _slot_atoms, max_size=2),
)
_entries = st.one_of(
    st.tuples(_tags, st.lists(_slots, max_size=6)).map(list),
    st.tuples(st.sampled_from(["S", "B"]), st.one_of(any_text, _slot_atoms)).map(list),
    _slots,
)
_var_names = st.one_of(_names, any_text, st.sampled_from(["llm_query", "__class__", "context"]))
_pairs = st.lists(st.one_of(st.tuples(_var_names, _slots).map(list), _slots), max_size=5)


@given(_pairs, st.lists(_entries, max_size=8), st.booleans())
@settings(max_examples=examples(250))
def test_a_forged_document_is_refused_or_read_whole(
    pairs: list[Any], entries: list[Any], extra_field: bool
) -> None:
    doc: dict[str, Any] = {"vars": pairs, "objects": entries}
    if extra_field:
        doc["exec"] = "__import__('os').system('true')"
    text = S.MAGIC + json.dumps(doc, ensure_ascii=False)
    try:
        values = decode_watched(text)
    except S.SnapshotInvalid as exc:
        assert str(exc)
        return
    assert not extra_field
    check_read(values)


@given(st.text(st.characters(exclude_categories=()), max_size=300), st.booleans())
@settings(max_examples=examples(200))
def test_random_text_is_refused(text: str, with_magic: bool) -> None:
    blob = (S.MAGIC + text) if with_magic else text
    try:
        values = decode_watched(blob)
    except S.SnapshotInvalid:
        return
    check_read(values)


@pytest.mark.parametrize(
    "slot", [["f", []], ["f", {}], ["f", [1]], ["f", {"a": 1}]], ids=["list", "dict", "l1", "d1"]
)
@pytest.mark.parametrize("where", ["var", "object"])
def test_a_float_tag_with_an_unhashable_argument_is_refused(slot: Any, where: str) -> None:
    """Found by the fuzzer: ``["f", []]`` raised TypeError out of the reader (on the
    restricted backend, out of ``restore`` on the host) instead of SnapshotInvalid."""
    if where == "var":
        doc = {"vars": [["x", slot]], "objects": []}
    else:
        doc = {"vars": [["x", ["r", 0]]], "objects": [["l", [slot]]]}
    with pytest.raises(S.SnapshotInvalid, match="float of the snapshot is malformed"):
        S.decode(S.MAGIC + json.dumps(doc), MB)


# -- the host: the session header and the restricted backend's restore -----------------


@given(
    st.one_of(
        st.binary(max_size=200),
        st.binary(max_size=200).map(lambda b: SESSION_MAGIC + b),
        st.tuples(st.integers(-5, 400), st.binary(max_size=200)).map(
            lambda t: SESSION_MAGIC + str(t[0]).encode() + b"\n" + t[1]
        ),
        st.tuples(
            st.dictionaries(any_text, st.one_of(st.integers(), any_text, st.lists(any_text))),
            st.binary(max_size=50),
        ).map(lambda t: SESSION_MAGIC + b"%d\n" % len(h := json.dumps(t[0]).encode()) + h + t[1]),
    )
)
@settings(max_examples=examples(300))
def test_a_session_blob_is_split_or_refused_with_snapshot_error(blob: bytes) -> None:
    with hard_timeout(10):
        try:
            header, rest = _split(blob)
        except SnapshotError as exc:
            assert str(exc)
            return
    assert isinstance(header, dict)
    assert isinstance(rest, bytes)
    assert blob.endswith(rest)


KEPT = "before"


async def _restore_into_a_fresh_sandbox(blob: bytes) -> tuple[list[str] | None, str]:
    box = RestrictedSandbox(make_bridge(), output_limit=10_000)
    await box.start()
    try:
        await box.bind("kept", "before")
        assert await box.get_variable("kept") == KEPT
        try:
            names: list[str] | None = await box.restore(blob)
        except SnapshotError:
            names = None
        return names, await box.get_variable("kept")
    finally:
        await box.close()


@given(namespaces, st.lists(_mutation, max_size=3), st.data())
@settings(max_examples=examples(60))
def test_the_restricted_backend_restores_a_blob_whole_or_refuses_it_unchanged(
    namespace: dict[str, Any], ops: list[tuple[str, int]], data: st.DataObject
) -> None:
    """This backend reads blobs in the host process: a damaged one is SnapshotError
    (never another exception) and the namespace is untouched."""
    text, _, _ = S.encode(namespace, 10 * MB)
    damaged = mutate(text, ops, data) if ops else text
    with hard_timeout(20):
        names, kept = asyncio.run(_restore_into_a_fresh_sandbox(damaged.encode("utf-8")))
    if names is None:
        assert kept == KEPT
        assert damaged != text
    elif damaged == text:
        assert names == list(namespace)
