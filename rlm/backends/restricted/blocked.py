"""What may never be handed to model code, and what is handed out as is.

Every object model code can reach must lead nowhere else: no underscore attributes,
no frames, code, tracebacks or real modules, whatever the route (``getattr`` with a
computed name, ``str.format`` field lookups, a stdlib helper that copies
attributes), and no builtin that compiles or imports. The guards
(:class:`~.guards.Guards`) consult these sets on every attribute and item read; the
compile policy (:mod:`.policy`) refuses the names at compile time already.
"""

from __future__ import annotations

import builtins
import collections
import sys
import types
from typing import Any, NoReturn

from RestrictedPython.transformer import INSPECT_ATTRIBUTES


def deny(message: str) -> NoReturn:
    raise AttributeError(message)


_BLOCKED_NAMES = frozenset(
    INSPECT_ATTRIBUTES
    | {
        "f_back",
        "f_builtins",
        "f_code",
        "f_globals",
        "f_locals",
        "f_trace",
        "f_generator",
        "f_lasti",
        "f_lineno",
        "tb_frame",
        "tb_next",
        "tb_lasti",
        "tb_lineno",
        "cell_contents",
        "mro",
        "gi_yieldfrom",
        "cr_await",
        "cr_origin",
        "ag_await",
    }
)
#: Dunder attributes model code may read (``type(x).__name__``): their values are
#: only ever handed out when they are plain str.
READABLE_DUNDERS = frozenset({"__name__", "__qualname__", "__doc__"})
_BLOCKED_PREFIXES = ("_", "co_", "gi_", "cr_", "ag_", "tb_", "func_", "im_")
#: Objects of these types are never handed out, and have no attributes to model code.
BLOCKED_TYPES = frozenset(
    {
        types.ModuleType,
        types.FrameType,
        types.CodeType,
        types.TracebackType,
        types.CellType,
    }
)
#: Builtins that compile, import, introspect namespaces or do I/O. Identity checked
#: on every attribute and item read, so no route (a stdlib attribute, a dict built by
#: stdlib code) hands them out.
_DANGEROUS = tuple(
    getattr(builtins, name)
    for name in (
        "eval",
        "exec",
        "compile",
        "open",
        "__import__",
        "globals",
        "locals",
        "vars",
        "input",
        "breakpoint",
        "getattr",
        "setattr",
        "delattr",
        "type",
        "memoryview",
        "help",
        "exit",
        "quit",
        "__build_class__",
    )
    if hasattr(builtins, name)
)
DANGEROUS_IDS = frozenset(id(x) for x in (*_DANGEROUS, builtins.__dict__, sys.modules))


#: Containers model code may always modify: its own, or the copy ``getattr`` hands
#: out of one that a host class or module holds.
MUTABLE_CONTAINER_TYPES = frozenset(
    {
        dict,
        list,
        set,
        bytearray,
        collections.deque,
        collections.defaultdict,
        collections.OrderedDict,
        collections.Counter,
    }
)
_FORMAT_METHODS = (str.format, str.format_map)


#: Values handed out without further checks: they lead nowhere.
PLAIN_TYPES = frozenset(
    {str, int, float, bool, type(None), bytes, tuple, list, dict, set, frozenset, complex}
)


def is_format_method(value: Any) -> bool:
    """``str.format``/``format_map``, unbound or bound to any str, however reached."""
    if value is _FORMAT_METHODS[0] or value is _FORMAT_METHODS[1]:
        return True
    return (
        type(value) is types.BuiltinMethodType
        and value.__name__ in ("format", "format_map")
        and isinstance(value.__self__, str)
    )


def is_blocked_name(name: str) -> bool:
    return name.startswith(_BLOCKED_PREFIXES) or name in _BLOCKED_NAMES
