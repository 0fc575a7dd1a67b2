"""Copies made only of exact built-in JSON types, for what crosses into host code.

Two things cross from the sandbox's side into host code: a sub-call's arguments,
which model code built, and the context, which the caller hands in and which model
code then holds. Host code must never hold (and so never call methods of) a class
the model defined, such as a ``str`` subclass with its own ``__eq__``; and model code
must never hold the caller's own objects, which it could change or walk. So both are
copied by :func:`plain_copy` into exact ``str``/``int``/``float``/``bool``/``None``/
``list``/``dict`` (strings shared, not copied). The two differ only in how deep they
may go and in how they say no (:data:`SUB_CALL`, :data:`CONTEXT`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlm_sandbox.api import RLMCallError


@dataclass(frozen=True)
class PlainRules:
    """How deep a copy may go, and what it raises (with which message) when it cannot."""

    max_depth: int
    error: type[Exception]
    too_deep: str
    #: ``{type}`` is replaced by the name of the refused value's type.
    not_plain: str
    #: Refuses a dict key that is not a str, int, float, bool or None with this message
    #: (``{type}`` as above) before copying it; None: keys are copied like values.
    bad_key: str | None = None


#: A sub-call's arguments, on the cell's thread: model code sees an RLMCallError.
SUB_CALL = PlainRules(
    max_depth=20,
    error=RLMCallError,
    too_deep="the sub-call's arguments are nested too deeply",
    not_plain="a sub-call argument of type {type} cannot be sent",
)
#: The context given to ``load_context``: the caller sees a TypeError.
CONTEXT = PlainRules(
    max_depth=100,
    error=TypeError,
    too_deep="context is nested more than 100 levels deep",
    not_plain="context must hold only JSON-like data, not {type}",
    bad_key="context keys must be JSON-like, not {type}",
)


def plain_copy(value: Any, rules: PlainRules, depth: int = 0) -> Any:
    """A copy of ``value`` made only of exact built-in JSON types (strings not copied).

    Tuples become lists. Lists are read through ``list.copy`` and dicts through
    ``dict.items``, so a subclass's own ``__iter__`` or ``items`` is never called.
    """
    if depth > rules.max_depth:
        raise rules.error(rules.too_deep)
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__getitem__(value, slice(None))
    if isinstance(value, (list, tuple)):
        items = list.copy(value) if isinstance(value, list) else tuple(value)
        return [plain_copy(v, rules, depth + 1) for v in items]
    if isinstance(value, dict):
        out = {}
        for k, v in dict.items(value):
            if rules.bad_key is not None and k is not None and not isinstance(k, _KEY_TYPES):
                raise rules.error(rules.bad_key.format(type=type(k).__name__))
            key = plain_copy(k, rules, depth + 1)  # before the value, as a comprehension would
            out[key] = plain_copy(v, rules, depth + 1)
        return out
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int.__index__(value)
    if isinstance(value, float):
        return float.__float__(value)
    raise rules.error(rules.not_plain.format(type=type(value).__name__))


_KEY_TYPES = (str, int, float, bool)
