"""Final answers given from inside the REPL: ``FINAL(value)``, ``FINAL_VAR(name)``, ``answer``.

Model code ends its run from a cell by calling ``FINAL(value)`` or
``FINAL_VAR("name")``, or by setting ``answer = {"content": ..., "ready": True}``
(the official library's convention, checked when the cell ends). The cell always
runs to its end (or its error); the first FINAL/FINAL_VAR of a cell wins and later
ones are ignored.

The value is carried as JSON: exact ``dict`` (str keys), ``list``, ``tuple`` (as a
list), ``str``, ``int``, finite ``float``, ``bool`` and ``None`` exactly; anything
else as its ``str()``, marked ``converted``. Only exact built-in types are read
(a ``str`` subclass is "anything else"), so the copy handed on holds nothing model
code defined. Its JSON text is bounded: over the limit it is an error in the cell,
never a final.

Both backends use this module: the Docker runner inside the container, the
restricted backend on the cell's own thread (``to_text`` is then the sandbox's
guarded ``str``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

#: Deeper values are not JSON here; they are carried as their text.
MAX_DEPTH = 100
#: JSON cannot carry ints of more digits than Python will turn into text.
_MAX_INT_BITS = 14_000


class FinalTooLarge(ValueError):
    """The final value's JSON text is over the limit."""


class _NotJSON(Exception):
    pass


def json_size(value: Any) -> int:
    """Characters of ``value``'s compact JSON text (the size both ends bound)."""
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False))


def to_final(
    value: Any, how: str, limit: int, to_text: Callable[[Any], str] = str
) -> dict[str, Any]:
    """The ``final`` record of ``value``; FinalTooLarge when its JSON is over ``limit``."""
    budget = [limit, limit]
    try:
        plain = _plain(value, 0, budget)
        converted = False
    except _NotJSON:
        plain = _text(value, to_text)
        converted = True
    size = json_size(plain)
    if size > limit:
        raise FinalTooLarge(
            f"the final answer is {size:,} characters as JSON, over the limit of {limit:,}; "
            "give a shorter answer (a summary, or the key part of the data)"
        )
    final: dict[str, Any] = {"value": plain, "how": how}
    if converted:
        final["converted"] = True
    return final


def _plain(value: Any, depth: int, budget: list[int]) -> Any:
    # budget[0] is a lower bound of the characters still allowed: an early way out
    # for a value far too large (or a shared list repeated a million times), so the
    # copy never grows much past the limit; the exact size is checked afterwards.
    t = type(value)
    if t is str:
        _charge(budget, len(value) + 2)
        return value
    if value is None or t is bool:
        _charge(budget, 4)
        return value
    if t is int:
        if value.bit_length() > _MAX_INT_BITS:
            raise _NotJSON
        _charge(budget, value.bit_length() // 4 + 1)
        return value
    if t is float:
        if not math.isfinite(value):
            raise _NotJSON
        _charge(budget, 3)
        return value
    if depth >= MAX_DEPTH:
        raise _NotJSON
    if t is list or t is tuple:
        _charge(budget, 2)
        out = []
        for item in list(value):
            out.append(_plain(item, depth + 1, budget))
            _charge(budget, 1)
        return out
    if t is dict:
        _charge(budget, 2)
        copy = {}
        for key, item in list(dict.items(value)):
            if type(key) is not str:
                raise _NotJSON
            _charge(budget, len(key) + 4)
            copy[key] = _plain(item, depth + 1, budget)
        return copy
    raise _NotJSON


def _charge(budget: list[int], cost: int) -> None:
    budget[0] -= cost
    if budget[0] < 0:
        raise FinalTooLarge(
            f"the final answer is over the limit of {budget[1]:,} characters as JSON; "
            "give a shorter answer (a summary, or the key part of the data)"
        )


def _text(value: Any, to_text: Callable[[Any], str]) -> str:
    try:
        text = to_text(value)
    except (Exception, RecursionError) as exc:
        return f"<{type(value).__name__} that cannot be shown: {type(exc).__name__}: {exc}>"
    # A str subclass from model code is read as plain characters, never kept.
    return text if type(text) is str else str.__str__(text)


class Finals:
    """One namespace's FINAL/FINAL_VAR functions and the record of the current cell.

    ``begin`` at the start of a cell, ``check_answer`` at its end (in the cell's own
    time limit: ``str()`` of a converted value may run model code), then ``take``.
    """

    def __init__(
        self,
        namespace: dict[str, Any],
        limit: int,
        to_text: Callable[[Any], str] = str,
        check: Callable[[], None] | None = None,
    ) -> None:
        self._namespace = namespace
        self.limit = limit
        self._to_text = to_text
        self._check = check
        self._final: dict[str, Any] | None = None
        self._error: str | None = None
        self._active = False
        #: ``answer`` as the cell found it, when it was ready already: the same
        #: answer still standing at the end is not a new final (the run it ended is
        #: over; a later run in the same namespace must not end on it again).
        self._standing: tuple[Any, Any] | None = None

    def functions(self) -> dict[str, Callable[..., None]]:
        finals = self

        def FINAL(value: Any) -> None:
            """End the run after this cell, with ``value`` as the answer."""
            finals._give(value, "FINAL")

        def FINAL_VAR(name: str) -> None:
            """End the run after this cell, with the variable ``name`` as the answer."""
            if type(name) is not str:
                raise TypeError(
                    f"FINAL_VAR(name) takes the variable's name as a str, not {type(name).__name__}"
                )
            if finals._final is not None or not finals._active:
                return
            found = name.isidentifier() and not name.startswith("_")
            if not found or name not in finals._namespace:
                raise NameError(f"FINAL_VAR: there is no variable named {name[:100]!r}")
            finals._give(finals._namespace[name], "FINAL_VAR")

        return {"FINAL": FINAL, "FINAL_VAR": FINAL_VAR}

    def _give(self, value: Any, how: str) -> None:
        if self._check is not None:
            self._check()
        if self._final is not None or not self._active:
            return
        try:
            self._final = to_final(value, how, self.limit, self._to_text)
        except FinalTooLarge as exc:
            raise ValueError(f"{how}: {exc}") from None

    def begin(self, limit: int | None = None) -> None:
        if limit is not None:
            self.limit = limit
        self._final = None
        self._error = None
        self._active = True
        found = self._ready_answer()
        self._standing = found

    def _ready_answer(self) -> tuple[Any, Any] | None:
        """(the dict, its content) when ``answer`` is an exact dict with ready True."""
        answer = dict.get(self._namespace, "answer")
        if type(answer) is not dict:
            return None
        ready, content = None, None
        # Through dict.items and exact-str keys only: looking a key up could run
        # the __eq__ of a key model code defined.
        for key, item in list(dict.items(answer)):
            if type(key) is str:
                if key == "ready":
                    ready = item
                elif key == "content":
                    content = item
        if ready is not True:
            return None
        return answer, content

    def check_answer(self) -> None:
        """At the end of the cell: a newly ready ``answer`` dict is the final."""
        if self._final is not None or not self._active:
            return
        found = self._ready_answer()
        if found is None:
            return
        standing = self._standing
        if standing is not None and standing[0] is found[0] and standing[1] is found[1]:
            return
        try:
            self._final = to_final(found[1], "answer", self.limit, self._to_text)
        except FinalTooLarge as exc:
            self._error = f"ValueError: answer['content']: {exc}"

    def take(self) -> tuple[dict[str, Any] | None, str | None]:
        """The cell's final record (or None) and an error to add to the cell's, if any."""
        self._active = False
        final, error = self._final, self._error
        self._final = self._error = None
        self._standing = None
        return final, error
