"""Methods of builtin objects that do a lot in one C call, and their checked stand-ins.

``getattr`` (see :meth:`~.guards.Guards.getattr`) hands out, in place of such a
method, a function that checks first: ``s.ljust(10**10)``, ``sep.join(...)``,
``b.replace(...)`` refuse a result too big to build (:mod:`.sizes`); ``list.sort``
calls its key through a Python frame (:mod:`.iteration`); a ``regex`` pattern's
methods run with the cell's time left as their timeout and without the GIL.
"""

from __future__ import annotations

import collections
import random
import re
import time
import types
from collections.abc import Callable
from typing import Any, Protocol

from rlm.backends.restricted.iteration import checkpointed, python_level
from rlm.backends.restricted.sizes import TEXT_METHOD_CHECKS


def _regex_engine() -> types.ModuleType | None:
    try:
        import regex
    except ImportError:  # pragma: no cover - a dependency; without it, Python's re
        return None
    return regex


REGEX = _regex_engine()
REGEX_PATTERN: Any = type(REGEX.compile("")) if REGEX is not None else re.Pattern
REGEX_MATCH: Any = type(REGEX.match("", "")) if REGEX is not None else re.Match
#: Seconds a regex call may run past the cell's deadline before it stops by itself:
#: a little, so that the cell's own stop (a clear "time limit" error) normally wins.
_REGEX_SLACK_S = 0.2
_REGEX_METHODS = frozenset(
    {
        "match",
        "fullmatch",
        "prefixmatch",
        "search",
        "findall",
        "finditer",
        "split",
        "splititer",
        "sub",
        "subf",
        "subn",
        "subfn",
        "scanner",
    }
)


class MethodGuards(Protocol):
    """What the checked methods need of the guards (:class:`~.guards.Guards` is one)."""

    #: Until when the job is inside a C call that ends by itself (see Guards).
    busy_until: float

    def check(self) -> None: ...

    def time_left(self) -> float: ...

    def refuse_size(self, what: str, nbytes: float) -> None: ...

    def check_text(self, what: str, chars: float) -> None: ...


#: Attribute names whose values :func:`wrap_method` may replace (checked before calling it).
WRAPPED_METHOD_NAMES = frozenset(
    {
        "ljust",
        "rjust",
        "center",
        "zfill",
        "expandtabs",
        "replace",
        "join",
        "translate",
        "sort",
        "to_bytes",
        "elements",
        "sub",
        "subn",
        "expand",
        "randbytes",
        "getrandbits",
        *_REGEX_METHODS,
    }
)


def wrap_method(g: MethodGuards, obj: Any, name: str, value: Any) -> Any:
    """Methods of builtin objects that can build something huge in one C call."""
    if isinstance(obj, (str, bytes, bytearray)) or (
        isinstance(obj, type) and issubclass(obj, (str, bytes, bytearray))
    ):
        check = TEXT_METHOD_CHECKS.get(name)
        if check is not None:
            bound = not isinstance(obj, type)
            return checked_method(g, value, check, obj if bound else None)
        return value
    if isinstance(obj, list) and name == "sort":

        def sort(*, key: Any = None, reverse: bool = False) -> None:
            value(key=python_level(key), reverse=reverse)

        return sort
    if isinstance(obj, int) and name == "to_bytes":

        def to_bytes(length: int = 1, *args: Any, **kwargs: Any) -> bytes:
            g.refuse_size(f"int.to_bytes({length:,})", length)
            data: bytes = value(length, *args, **kwargs)
            return data

        return to_bytes
    if isinstance(obj, collections.Counter) and name == "elements":
        return lambda: checkpointed(value())
    if REGEX is not None and isinstance(obj, REGEX_PATTERN) and name in _REGEX_METHODS:
        return limited_regex_method(g, obj, name, value)
    if isinstance(obj, (re.Pattern, re.Match, REGEX_MATCH)) and name in (
        "sub",
        "subn",
        "expand",
    ):
        return checked_regex_method(g, obj, name, value)
    if isinstance(obj, random.Random) and name in ("randbytes", "getrandbits"):
        return checked_random(g, name, value)
    return value


def checked_method(g: MethodGuards, method: Any, check: Callable[..., Any], bound_to: Any) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        g.check()
        if bound_to is None:  # the unbound form: str.join(sep, items)
            if not args:
                return method(*args, **kwargs)
            target, rest = args[0], args[1:]
        else:
            target, rest = bound_to, args
        replaced = check(g, target, *rest, *kwargs.values())
        if replaced is not None:  # join() materialised its iterable: pass that on
            rest = replaced
            kwargs = {}
        if bound_to is None:
            return method(target, *rest, **kwargs)
        return method(*rest, **kwargs)

    return call


def checked_regex_method(g: MethodGuards, obj: Any, name: str, method: Any) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        g.check()
        if name == "expand":
            template = args[0] if args else kwargs.get("template", "")
            g.check_text("this expand()", len(template) * (len(obj.string) + 1))
            return method(*args, **kwargs)
        repl: Any = args[0] if args else kwargs.get("repl")
        string = args[1] if len(args) > 1 else kwargs.get("string", "")
        if callable(repl):
            args = (python_level(repl), *args[1:]) if args else args
            if "repl" in kwargs:
                kwargs["repl"] = python_level(repl)
        elif hasattr(repl, "__len__") and hasattr(string, "__len__"):
            # Each match is replaced by at most len(repl) * len(string) characters
            # (a template can repeat the match); this bound is loose but cheap.
            g.check_text("this substitution", len(string) + (len(string) + 1) * len(repl))
        return method(*args, **kwargs)

    return call


def checked_random(g: MethodGuards, name: str, method: Any) -> Any:
    def call(n: Any) -> Any:
        g.check()
        if isinstance(n, int):
            g.refuse_size(f"random.{name}({n:,})", n if name == "randbytes" else n / 8)
        return method(n)

    return call


def limited_regex_method(g: MethodGuards, obj: Any, name: str, method: Any) -> Any:
    """A method of a ``regex`` pattern, run with the cell's time left and without the GIL."""
    growth = checked_regex_method(g, obj, name, method) if name in ("sub", "subn") else method

    def call(*args: Any, **kwargs: Any) -> Any:
        g.check()
        timeout = g.time_left() + _REGEX_SLACK_S
        kwargs["timeout"] = timeout
        kwargs["concurrent"] = True
        # The engine checks its clock every so many steps: on a busy machine it may
        # stop a little late. The host waits for it (the GIL is free meanwhile).
        g.busy_until = time.monotonic() + timeout
        try:
            return growth(*args, **kwargs)
        finally:
            g.busy_until = 0.0

    return call
