"""Snapshots of a namespace's variables: a versioned, tagged JSON text (stdlib only).

A snapshot is made inside the source sandbox and read inside the target sandbox;
the host only carries it as bytes. So the reader treats every blob as hostile: it
checks the header, the structure, every tag and every reference, builds only exact
built-in types, never evaluates or imports anything, and refuses what it cannot
use with :class:`SnapshotInvalid` before it changes anything. Nothing here uses
pickle.

The text is :data:`MAGIC` (the format and its version, one line), then one JSON
object ``{"vars": [[name, slot], ...], "objects": [entry, ...]}``.

A *slot* is a JSON string, ``true``/``false``/``null``, an integer or a float as
themselves, or a tagged pair: ``["r", n]`` (object ``n`` of the table),
``["f", "nan" | "inf" | "-inf"]``, ``["i", hex]`` (an int too long for JSON),
``["b", base64]`` (bytes). An *entry* of the object table is ``[tag, payload]``:
``l`` list, ``t`` tuple, ``s`` set, ``F`` frozenset (each a list of slots), ``d``
dict (a flat list: key, value, key, value...), and ``S`` / ``B`` (a long str or
bytes, stored once however many variables share it). Containers are entries, so
shared references and cycles come back as they were: ``a is b`` before, after.

Only exact built-in types are carried; anything else (a function, a module, a
generator, an instance of a class model code defined, a ``list`` subclass) leaves
its variable out, with the reason, in ``skipped``. The size is bounded while the
text is built: a variable that would take the snapshot over ``max_bytes`` is
skipped as "over the size limit", never built first.
"""

from __future__ import annotations

import base64
import binascii
import gc
import json
import math
import types
from collections.abc import Iterable
from json.encoder import encode_basestring, encode_basestring_ascii
from typing import Any

from .names import SANDBOX_NAMES, name_problem

MAGIC = "RLMSNAP/1\n"
#: Containers nested deeper, and tuples/frozensets built on more levels of each
#: other (hashing those recurses in C without a limit), are not carried.
MAX_DEPTH = 200
#: Strings and bytes at least this long are stored once, in the object table.
SHARE_AT = 256
#: How many skipped variables are listed by name; the rest are counted.
MAX_SKIPPED = 1000
#: Ints longer than this many bits travel as hex (JSON text of an int is limited).
_MAX_INT_BITS = 13_000
_SMALL_INT = 1 << 62
_ATOMS: tuple[type, ...] = (str, int, float, bool, bytes)
_CONTAINERS: dict[type, str] = {list: "l", tuple: "t", set: "s", frozenset: "F", dict: "d"}
_IMMUTABLE = ("t", "F")
_SPECIAL_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class SnapshotInvalid(ValueError):
    """A blob that is not a snapshot this reader can use; the message says why."""


class _Skip(Exception):
    """A value that cannot be carried; ``path`` is where inside the variable."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path: list[str] = []


class _TooBig(Exception):
    pass


# -- writing -------------------------------------------------------------------------------


def encode(
    namespace: dict[str, Any], max_bytes: int, tools: Iterable[str] = ()
) -> tuple[str, list[str], dict[str, str]]:
    """The snapshot text of ``namespace``'s variables, the names carried, the names skipped.

    The injected names (``llm_query``..., ``FINAL``..., the tools, ``__builtins__``
    and other dunders) are left out silently; every other variable is carried or
    listed in ``skipped`` with why. The text is at most ``max_bytes`` bytes of UTF-8.
    """
    collecting = gc.isenabled()
    gc.disable()  # as in decode: none of what is made is garbage, and it is many objects
    try:
        return _encode(namespace, max_bytes, tools)
    finally:
        if collecting:
            gc.enable()


def _encode(
    namespace: dict[str, Any], max_bytes: int, tools: Iterable[str]
) -> tuple[str, list[str], dict[str, str]]:
    writer = _Writer(max_bytes)
    skip_names = SANDBOX_NAMES | frozenset(tools)
    names: list[str] = []
    skipped: dict[str, str] = {}
    more = 0
    for name, value in list(dict.items(namespace)):
        if type(name) is not str or name.startswith("__") or name in skip_names:
            continue
        reason = name_problem(name, context=True)
        if reason is None:
            reason = writer.add(name, value)
        if reason is None:
            names.append(name)
        elif len(skipped) < MAX_SKIPPED:
            skipped[name] = reason
        else:
            more += 1
    if more:
        skipped["..."] = f"and {more:,} more variables not carried"
    return writer.text(), names, skipped


class _Writer:
    def __init__(self, max_bytes: int) -> None:
        self.room = max_bytes - len(MAGIC) - len('{"vars":[],"objects":[]}')
        self.vars: list[str] = []
        self.objects: list[str | None] = []
        self.heights: list[int] = []
        self.memo: dict[int, int] = {}
        self.journal: list[int] = []
        # Objects memoized by id stay alive until the text is done, so no id is reused.
        self.alive: list[Any] = []

    def add(self, name: str, value: Any) -> str | None:
        """Write one variable; None, or why it is not carried (all of it rolled back)."""
        mark = (len(self.objects), len(self.journal), len(self.alive), self.room)
        try:
            slot = self.slot(value, 0)
            label = encode_basestring_ascii(name)
            self.charge(len(label) + 4 + _size(slot))
        except (_Skip, _TooBig, RecursionError, MemoryError, RuntimeError) as exc:
            del self.objects[mark[0] :]
            del self.heights[mark[0] :]
            for key in self.journal[mark[1] :]:
                del self.memo[key]
            del self.journal[mark[1] :]
            del self.alive[mark[2] :]
            self.room = mark[3]
            if isinstance(exc, _Skip):
                where = "".join(reversed(exc.path))
                if len(where) > 120:
                    where = where[:120] + "..."
                return f"{exc.reason} (at {name}{where})" if where else exc.reason
            if isinstance(exc, _TooBig):
                return "over the size limit"
            if isinstance(exc, MemoryError):
                return "too large to snapshot (out of memory)"
            if isinstance(exc, RecursionError):
                return f"nested more than {MAX_DEPTH} levels deep"
            return "it changed while the snapshot was taken"
        self.vars.append(f"[{label},{slot}]")
        return None

    def charge(self, size: int) -> None:
        self.room -= size
        if self.room < 0:
            raise _TooBig

    def text(self) -> str:
        done = [o for o in self.objects if o is not None]
        if len(done) != len(self.objects):  # every reference counts on its place
            raise RuntimeError("snapshot writer left an object unfinished")
        objects = ",".join(done)
        return f'{MAGIC}{{"vars":[{",".join(self.vars)}],"objects":[{objects}]}}'

    def slot(self, value: Any, depth: int) -> str:
        t = type(value)
        if t is str:
            if len(value) >= SHARE_AT:
                return self.shared(value, "S")
            return _str_text(value)
        if value is None:
            return "null"
        if t is bool:
            return "true" if value else "false"
        if t is int:
            if value.bit_length() > _MAX_INT_BITS:
                return f'["i","{value:x}"]'
            return str(value)
        if t is float:
            if math.isfinite(value):
                return repr(value)
            return '["f","nan"]' if value != value else f'["f","{"inf" if value > 0 else "-inf"}"]'
        if t is bytes:
            if len(value) >= SHARE_AT:
                return self.shared(value, "B")
            return f'["b","{base64.b64encode(value).decode("ascii")}"]'
        tag = _CONTAINERS.get(t)
        if tag is None:
            raise _Skip(_describe(value))
        index = self.memo.get(id(value))
        if index is not None:
            return f'["r",{index}]'
        if depth >= MAX_DEPTH:
            raise _Skip(f"nested more than {MAX_DEPTH} levels deep")
        index = self.remember(value)
        immutable = tag in _IMMUTABLE
        if tag == "d":
            items = [part for pair in list(dict.items(value)) for part in pair]
        else:
            items = list(value)
        parts, height = self.parts(items, depth + 1, immutable, tag)
        if immutable and height + 1 > MAX_DEPTH:
            raise _Skip(f"tuples nested more than {MAX_DEPTH} levels deep")
        self.heights[index] = height + 1 if immutable else 0
        self.objects[index] = f'["{tag}",[{",".join(parts)}]]'
        return f'["r",{index}]'

    def parts(
        self, items: list[Any], depth: int, immutable: bool, tag: str
    ) -> tuple[list[str], int]:
        """The slots of a container's items, and the height of the tuples among them."""
        # The hot loop of a snapshot: short strings and small ints are written here,
        # and the bytes are counted as they come, so a huge container stops at the
        # limit instead of being built first.
        parts: list[str] = []
        used = 10
        height = 0
        i = 0
        try:
            for i, item in enumerate(items):  # noqa: B007 - read when a _Skip is raised
                t = type(item)
                if t is str and len(item) < SHARE_AT and item.isascii():
                    text = encode_basestring(item)
                    used += len(text) + 1
                elif t is int and -_SMALL_INT < item < _SMALL_INT:
                    text = int.__repr__(item)
                    used += len(text) + 1
                else:
                    text = self.slot(item, depth)
                    used += _size(text) + 1
                    if immutable and (t is tuple or t is frozenset):
                        height = max(height, self.heights[self.memo[id(item)]])
                parts.append(text)
                if used > self.room:
                    raise _TooBig
        except _Skip as exc:
            if tag == "d":
                exc.path.append(f"<key {i // 2}>" if i % 2 == 0 else f"[{_show(items[i - 1])}]")
            else:
                exc.path.append(f"[{i}]" if tag in "lt" else "<item>")
            raise
        self.charge(used)
        return parts, height

    def remember(self, value: Any) -> int:
        index = len(self.objects)
        self.objects.append(None)
        self.heights.append(0)
        self.memo[id(value)] = index
        self.journal.append(id(value))
        self.alive.append(value)
        return index

    def shared(self, value: str | bytes, tag: str) -> str:
        index = self.memo.get(id(value))
        if index is None:
            if isinstance(value, str):
                self.charge(len(value))  # a lower bound first: never encode a hopeless one
                literal = _str_text(value)
                size = _size(literal)
            else:
                self.charge(len(value) * 4 // 3)
                literal = f'"{base64.b64encode(value).decode("ascii")}"'
                size = len(literal)
            self.charge(size - len(value) + 8)
            index = self.remember(value)
            self.objects[index] = f'["{tag}",{literal}]'
        return f'["r",{index}]'


def _size(text: str) -> int:
    """Bytes of ``text`` as UTF-8."""
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _str_text(value: str) -> str:
    """The JSON literal of ``value``: raw UTF-8 where it can be, escaped where not."""
    if value.isascii():
        return encode_basestring(value)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: only \\u escapes carry them
        return encode_basestring_ascii(value)
    return encode_basestring(value)


def _show(key: Any) -> str:
    if type(key) in (str, int, float, bool) or key is None:
        return repr(key)[:40]
    return "..."


def _describe(value: Any) -> str:
    # By the exact type only: isinstance() would read a __class__ model code may define.
    cls = type(value)
    if issubclass(cls, (types.FunctionType, types.BuiltinFunctionType, types.MethodType)):
        return "a function"
    if issubclass(cls, types.ModuleType):
        return "a module"
    if issubclass(cls, (types.GeneratorType, types.CoroutineType, types.AsyncGeneratorType)):
        return "a generator"
    if issubclass(cls, type):
        return "a class"
    # Read through type's own descriptor: a metaclass of model code cannot intercept it.
    name = type.__dict__["__name__"].__get__(cls, type)
    for base in (*_ATOMS, *_CONTAINERS):
        if issubclass(cls, base):
            return f"an object of class {name} (a subclass of {base.__name__})"
    return f"an object of class {name}"


# -- reading -------------------------------------------------------------------------------


def decode(text: str, max_bytes: int, tools: Iterable[str] = ()) -> dict[str, Any]:
    """The variables of a snapshot, by name; SnapshotInvalid unless every check passes."""
    if type(text) is not str:
        raise SnapshotInvalid("a snapshot is text")
    if len(text) > max_bytes:
        raise SnapshotInvalid(f"the snapshot is over the {max_bytes:,}-byte limit")
    if not text.startswith(MAGIC):
        if text.startswith("RLMSNAP/"):
            version = text[8:].split("\n", 1)[0][:20]
            raise SnapshotInvalid(f"snapshot format version {version!r} is not supported")
        raise SnapshotInvalid("this is not an rlm sandbox snapshot (wrong header)")
    # Many small containers at once: the cyclic collector would walk them all again
    # and again while they are made (more than twice the time), and none is garbage.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _decode_body(text, tools)
    finally:
        if collecting:
            gc.enable()


def _decode_body(text: str, tools: Iterable[str]) -> dict[str, Any]:
    try:
        doc = json.loads(text[len(MAGIC) :], parse_constant=_no_constant)
    except RecursionError:
        raise SnapshotInvalid("the snapshot nests too deeply") from None
    except (ValueError, MemoryError) as exc:
        raise SnapshotInvalid(f"the snapshot is damaged ({str(exc)[:100]})") from None
    if type(doc) is not dict or set(doc) != {"vars", "objects"}:
        raise SnapshotInvalid("the snapshot's body has the wrong fields")
    entries, pairs = doc["objects"], doc["vars"]
    if type(entries) is not list or type(pairs) is not list:
        raise SnapshotInvalid("the snapshot's body has the wrong types")
    return _Reader(entries, tools).read(pairs)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class _Reader:
    def __init__(self, entries: list[Any], tools: Iterable[str]) -> None:
        self.entries = entries
        self.tools = frozenset(tools)
        self.built: list[Any] = [None] * len(entries)
        self.ready = [False] * len(entries)
        self.heights = [0] * len(entries)

    def read(self, pairs: list[Any]) -> dict[str, Any]:
        for i, entry in enumerate(self.entries):
            self.check_entry(i, entry)
        # Mutable containers first, empty: whatever refers to them (a tuple, a
        # cycle) can then point at the very object that will be filled.
        for i, (tag, payload) in enumerate(self.entries):
            if tag == "l":
                self.built[i] = []
            elif tag == "d":
                self.built[i] = {}
            elif tag == "s":
                self.built[i] = set()
            elif tag == "S":
                self.built[i] = payload
            elif tag == "B":
                self.built[i] = _b64(payload)
            if tag not in _IMMUTABLE:
                self.ready[i] = True
        for i, (tag, _) in enumerate(self.entries):
            if tag in _IMMUTABLE:
                self.build_immutable(i)
        try:
            for i, (tag, payload) in enumerate(self.entries):
                if tag == "l":
                    self.built[i].extend(self.value(s) for s in payload)
                elif tag == "s":
                    self.built[i].update(self.value(s) for s in payload)
                elif tag == "d":
                    target = self.built[i]
                    for k in range(0, len(payload), 2):
                        target[self.value(payload[k])] = self.value(payload[k + 1])
        except TypeError as exc:  # an unhashable key or set member
            raise SnapshotInvalid(f"the snapshot's object table is damaged ({exc})") from None
        out: dict[str, Any] = {}
        for pair in pairs:
            if type(pair) is not list or len(pair) != 2:
                raise SnapshotInvalid("a variable of the snapshot is malformed")
            name, slot = pair
            problem = name_problem(name, self.tools, context=True)
            if problem is not None:
                raise SnapshotInvalid(f"the snapshot cannot restore {problem}")
            if name in out:
                raise SnapshotInvalid(f"the snapshot names {name!r} twice")
            self.check_slot(slot)
            out[name] = self.value(slot)
        return out

    def check_entry(self, i: int, entry: Any) -> None:
        if type(entry) is not list or len(entry) != 2 or type(entry[0]) is not str:
            raise SnapshotInvalid(f"object {i} of the snapshot is malformed")
        tag, payload = entry
        if tag in ("S", "B"):
            if type(payload) is not str:
                raise SnapshotInvalid(f"object {i} of the snapshot is malformed")
            return
        if tag not in ("l", "t", "s", "F", "d") or type(payload) is not list:
            raise SnapshotInvalid(f"object {i} of the snapshot has an unknown tag {tag[:10]!r}")
        if tag == "d" and len(payload) % 2:
            raise SnapshotInvalid(f"object {i} of the snapshot is a dict with a key alone")
        check = self.check_slot
        for slot in payload:
            if type(slot) is list or type(slot) is dict:  # atoms need no look
                check(slot)

    def check_slot(self, slot: Any) -> None:
        t = type(slot)
        if t in (str, int, float, bool) or slot is None:
            return
        if t is not list or len(slot) != 2 or type(slot[0]) is not str:
            raise SnapshotInvalid("a value of the snapshot is malformed")
        tag, arg = slot
        if tag == "r":
            if type(arg) is not int or not 0 <= arg < len(self.entries):
                raise SnapshotInvalid("a reference of the snapshot points nowhere")
        elif tag == "f":
            # A str first: a list or dict here is unhashable, and `in` would raise.
            if type(arg) is not str or arg not in _SPECIAL_FLOATS:
                raise SnapshotInvalid("a float of the snapshot is malformed")
        elif tag in ("i", "b"):
            if type(arg) is not str:
                raise SnapshotInvalid("a value of the snapshot is malformed")
            if tag == "i":
                _hex_int(arg)
            else:
                _b64(arg)
        else:
            raise SnapshotInvalid(f"a value of the snapshot has an unknown tag {tag[:10]!r}")

    def value(self, slot: Any) -> Any:
        if type(slot) is not list:
            return slot
        tag, arg = slot
        if tag == "r":
            return self.built[arg]
        if tag == "f":
            return _SPECIAL_FLOATS[arg]
        if tag == "i":
            return _hex_int(arg)
        return _b64(arg)

    def build_immutable(self, start: int) -> None:
        """Build tuple/frozenset ``start`` after what it holds; no recursion, no cycles."""
        stack = [start]
        # The open nodes (on the stack): where each resumes scanning, its height so far.
        pos = {start: 0}
        height = {start: 0}
        while stack:
            i = stack[-1]
            slots = self.entries[i][1]
            p = pos[i]
            waiting = None
            while p < len(slots):
                slot = slots[p]
                if type(slot) is list and slot[0] == "r":
                    j = slot[1]
                    if not self.ready[j]:
                        waiting = j
                        break
                    height[i] = max(height[i], self.heights[j])
                p += 1
            pos[i] = p
            if waiting is not None:
                if waiting in pos:
                    raise SnapshotInvalid("the snapshot has a tuple that contains itself")
                stack.append(waiting)
                pos[waiting] = 0
                height[waiting] = 0
                continue
            if height[i] + 1 > MAX_DEPTH:
                raise SnapshotInvalid(f"the snapshot nests tuples more than {MAX_DEPTH} deep")
            items = [self.value(s) for s in slots]
            if self.entries[i][0] == "t":
                self.built[i] = tuple(items)
            else:
                try:
                    self.built[i] = frozenset(items)
                except TypeError as exc:
                    raise SnapshotInvalid(f"the snapshot's frozenset is damaged ({exc})") from None
            self.heights[i] = height.pop(i) + 1
            del pos[i]
            self.ready[i] = True
            stack.pop()


def _hex_int(text: str) -> int:
    if len(text) > 1_000_000 or not text or text.lstrip("-") == "":
        raise SnapshotInvalid("an int of the snapshot is malformed")
    try:
        return int(text, 16)
    except ValueError:
        raise SnapshotInvalid("an int of the snapshot is malformed") from None


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise SnapshotInvalid("bytes of the snapshot are not base64") from None
