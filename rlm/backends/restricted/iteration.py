"""Python-level iteration: loops that C code would run are handed out as Python frames.

A thread can be stopped only while it runs Python bytecode. ``sum(range(10**12))``,
``list(itertools.count())`` or ``sorted(xs, key=len)`` on a huge list are loops in C
that never return to the interpreter; so the sources of such loops (huge ranges,
``itertools``, ``iter(callable, sentinel)``, key functions, ``functools.reduce``)
are replaced by iterators and callables that pass through a Python frame for each
item, which is where an injected stop lands.
"""

from __future__ import annotations

import itertools
import types
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from rlm.backends.restricted.limits import MAX_ITERTOOLS_FANOUT, REAL_RANGE_LIMIT


def python_level(func: Any) -> Any:
    """``func`` as a Python function, so C code that calls it repeatedly can be stopped."""
    if func is None or isinstance(func, types.FunctionType):
        return func

    def call(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    return call


def checkpointed(iterable: Iterable[Any]) -> Iterator[Any]:
    """Iterate ``iterable`` through a Python frame: each item is a point to stop at."""
    # Not ``yield from``: resuming after a plain yield checks for pending exceptions,
    # resuming inside ``yield from`` does not.
    for item in iterable:  # noqa: UP028
        yield item


class BigRange:
    """A ``range`` too long to hand to C consumers: the same sequence, Python-level."""

    __slots__ = ("_r",)

    def __init__(self, r: range) -> None:
        self._r = r

    start = property(lambda self: self._r.start)
    stop = property(lambda self: self._r.stop)
    step = property(lambda self: self._r.step)

    def __len__(self) -> int:
        return len(self._r)

    def __iter__(self) -> Iterator[int]:
        return checkpointed(self._r)

    def __reversed__(self) -> Iterator[int]:
        return checkpointed(reversed(self._r))

    def __contains__(self, item: Any) -> bool:
        if type(item) is int or type(item) is bool:
            return item in self._r
        return any(item == x for x in checkpointed(self._r))

    def __getitem__(self, index: Any) -> Any:
        value = self._r[index]
        return make_range(value) if isinstance(value, range) else value

    def __eq__(self, other: object) -> bool:
        if isinstance(other, BigRange):
            return self._r == other._r
        return self._r == other

    def __hash__(self) -> int:
        return hash(self._r)

    def __bool__(self) -> bool:
        return bool(self._r)

    def __repr__(self) -> str:
        return repr(self._r)

    def count(self, item: Any) -> int:
        if type(item) is int:
            return self._r.count(item)
        return sum(1 for x in checkpointed(self._r) if x == item)

    def index(self, item: Any) -> int:
        if type(item) is int:
            return self._r.index(item)
        for i, x in enumerate(checkpointed(self._r)):
            if x == item:
                return i
        raise ValueError(f"{item!r} is not in range")


def make_range(r: range) -> Any:
    return r if len(r) <= REAL_RANGE_LIMIT else BigRange(r)


def safe_range(*args: Any) -> Any:
    """``range``; a long one iterates in Python so it can be stopped."""
    return make_range(range(*args))


def itertool(fn: Callable[..., Any]) -> Callable[..., Any]:
    def make(*args: Any, **kwargs: Any) -> Any:
        if fn is itertools.product:
            repeat = kwargs.get("repeat", 1)
            if isinstance(repeat, int) and repeat * max(len(args), 1) > MAX_ITERTOOLS_FANOUT:
                raise ValueError(f"product(): repeat is limited to {MAX_ITERTOOLS_FANOUT:,} here")
        n = args[1] if len(args) > 1 else kwargs.get("n", 2)
        if fn is itertools.tee and isinstance(n, int) and n > MAX_ITERTOOLS_FANOUT:
            raise ValueError(f"tee(): n is limited to {MAX_ITERTOOLS_FANOUT:,} here")
        args = tuple(python_level(a) if is_plain_callable(a) else a for a in args)
        kwargs = {k: python_level(v) if is_plain_callable(v) else v for k, v in kwargs.items()}
        result = fn(*args, **kwargs)
        if isinstance(result, tuple):  # tee()
            return tuple(checkpointed(it) for it in result)
        return checkpointed(result)

    make.__name__ = make.__qualname__ = fn.__name__
    make.__doc__ = fn.__doc__
    return make


def is_plain_callable(value: Any) -> bool:
    return callable(value) and not isinstance(value, (types.FunctionType, type))


def reduce(function: Any, iterable: Any, *initial: Any) -> Any:
    """functools.reduce, in Python so that a long reduction can be stopped."""
    it = iter(iterable)
    if initial:
        value = initial[0]
    else:
        try:
            value = next(it)
        except StopIteration:
            raise TypeError("reduce() of empty iterable with no initial value") from None
    for item in it:
        value = function(value, item)
    return value


def with_python_level_keys(fn: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        if "key" in kwargs:
            kwargs["key"] = python_level(kwargs["key"])
        return fn(*args, **kwargs)

    call.__name__ = call.__qualname__ = fn.__name__
    return call
