"""Values the host binds in a sandbox (:meth:`Sandbox.bind`): plain JSON, copied.

Both backends take the same values, so a session behaves the same on either: exact
``str``, ``int``, finite ``float``, ``bool``, ``None``, and ``list``/``tuple``
(as a list) and ``dict`` with ``str`` keys of those, at most :data:`MAX_DEPTH`
deep. The copy is made of exact built-in types, so the sandbox never holds the
caller's own objects (the restricted backend shares the process) and JSON carries
it to a container unchanged.
"""

from __future__ import annotations

import math
from typing import Any

from rlm_sandbox.names import name_problem

MAX_DEPTH = 100


def check_bind(name: str, value: Any, tools: list[str]) -> Any:
    """``value`` as a plain JSON copy; ValueError for a bad name, TypeError for a bad value."""
    problem = name_problem(name, tools)
    if problem is not None:
        raise ValueError(f"cannot bind {problem}")
    return _copy(value, name, 0)


def _copy(value: Any, where: str, depth: int) -> Any:
    t = type(value)
    if value is None or t is str or t is bool or t is int:
        return value
    if t is float:
        if not math.isfinite(value):
            raise TypeError(f"{where} is {value!r}, which JSON cannot carry")
        return value
    if depth >= MAX_DEPTH:
        raise TypeError(f"{where} is nested more than {MAX_DEPTH} levels deep")
    if t is list or t is tuple:
        return [_copy(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value)]
    if t is dict:
        out = {}
        for key, item in value.items():
            if type(key) is not str:
                raise TypeError(f"{where} has a {type(key).__name__} key; keys must be str")
            out[key] = _copy(item, f"{where}[{key[:50]!r}]", depth + 1)
        return out
    raise TypeError(
        f"{where} is a {t.__name__}; bind takes str, int, float, bool, None, "
        "and lists and dicts (str keys) of them"
    )
