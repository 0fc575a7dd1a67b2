"""The type hints a tool's parameters may have, and checking JSON values against them.

Only what JSON can carry: ``str``, ``int``, ``float``, ``bool``, ``None``,
``list[X]``, ``dict[str, X]``, unions, ``Literal[...]`` and ``Any``.
"""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any, Literal

SUPPORTED = (
    "str, int, float, bool, None, list[...], dict[str, ...], X | Y (Optional, Union), "
    "Literal[...] or Any"
)


class Mismatch(Exception):
    def __init__(self, where: str, expected: str, value: object, shown: str = "") -> None:
        super().__init__(f"{where} must be {expected}, not {shown or json_type(value)}")
        self.where = where


class HintCheck:
    """One parameter's type hint, as a check of (already plain) JSON values."""

    text = "Any"

    def check(self, value: Any, where: str) -> Any:
        """``value`` as the tool gets it (an int for a float becomes a float), or Mismatch."""
        return value


class _Exact(HintCheck):
    def __init__(self, kind: type) -> None:
        self.kind = kind
        self.text = "None" if kind is type(None) else kind.__name__

    def check(self, value: Any, where: str) -> Any:
        # type(), not isinstance: True is not an int to a tool that asks for one.
        if type(value) is not self.kind:
            raise Mismatch(where, self.text, value)
        return value


class _Float(HintCheck):
    text = "float"

    def check(self, value: Any, where: str) -> Any:
        if type(value) is float:
            return value
        if type(value) is int:  # JSON does not tell 1 from 1.0
            return float(value)
        raise Mismatch(where, self.text, value)


class _List(HintCheck):
    def __init__(self, item: HintCheck) -> None:
        self.item = item
        self.text = f"list[{item.text}]"

    def check(self, value: Any, where: str) -> Any:
        if type(value) is not list:
            raise Mismatch(where, self.text, value)
        return [self.item.check(v, f"{where}[{i}]") for i, v in enumerate(value)]


class _Dict(HintCheck):
    def __init__(self, item: HintCheck) -> None:
        self.item = item
        self.text = f"dict[str, {item.text}]"

    def check(self, value: Any, where: str) -> Any:
        if type(value) is not dict:
            raise Mismatch(where, self.text, value)
        return {k: self.item.check(v, f"{where}[{k[:50]!r}]") for k, v in value.items()}


class _Union(HintCheck):
    def __init__(self, options: list[HintCheck]) -> None:
        self.options = options
        self.text = " | ".join(o.text for o in options)

    def check(self, value: Any, where: str) -> Any:
        deeper: Mismatch | None = None
        for option in self.options:
            try:
                return option.check(value, where)
            except Mismatch as exc:
                if exc.where != where and deeper is None:
                    deeper = exc  # a list[int] that holds a str: say where
        raise deeper or Mismatch(where, self.text, value)


class _Literal(HintCheck):
    def __init__(self, values: tuple[Any, ...]) -> None:
        self.values = values
        self.text = f"Literal[{', '.join(repr(v) for v in values)}]"

    def check(self, value: Any, where: str) -> Any:
        if any(type(value) is type(v) and value == v for v in self.values):
            return value
        shown = ", ".join(repr(v) for v in self.values)
        if value is None or type(value) in (str, int, float, bool):
            raise Mismatch(where, f"one of {shown}", value, repr(value)[:60])
        raise Mismatch(where, f"one of {shown}", value)


class UnsupportedHint(Exception):
    pass


def parse_hint(hint: Any) -> HintCheck:
    """A check for ``hint``, or UnsupportedHint naming the part that is not supported."""
    if hint is Any:
        return HintCheck()
    if hint is None or hint is type(None):
        return _Exact(type(None))
    if hint in (str, int, bool):
        return _Exact(hint)
    if hint is float:
        return _Float()
    if hint is list:
        return _List(HintCheck())
    if hint is dict:
        return _Dict(HintCheck())
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        return parse_hint(args[0])
    if origin is list and len(args) == 1:
        return _List(parse_hint(args[0]))
    if origin is dict and len(args) == 2:
        if args[0] is not str:
            raise UnsupportedHint(
                f"{hint_text(hint)} (JSON object keys are str: use dict[str, ...])"
            )
        return _Dict(parse_hint(args[1]))
    if origin is typing.Union or origin is types.UnionType:
        options: list[HintCheck] = []
        for arg in args:
            parsed = parse_hint(arg)
            options.extend(parsed.options if isinstance(parsed, _Union) else [parsed])
        return _Union(options)
    if origin is Literal:
        for value in args:
            if value is not None and type(value) not in (str, int, bool):
                raise UnsupportedHint(
                    f"{hint_text(hint)} (Literal values must be str, int or bool)"
                )
        return _Literal(args)
    if isinstance(hint, str):  # a quoted hint in a module with future annotations
        raise UnsupportedHint(f"{hint!r} (a string, not a type: drop the quotes)")
    if origin is tuple or hint is tuple:
        raise UnsupportedHint(f"{hint_text(hint)} (JSON has no tuples: use list[...])")
    raise UnsupportedHint(hint_text(hint))


def hint_text(hint: Any) -> str:
    if hint is inspect.Parameter.empty:
        return ""
    return inspect.formatannotation(hint).replace("typing.", "")


def return_text(hint: Any) -> str | None:
    if hint is inspect.Signature.empty:
        return None
    try:
        return parse_hint(hint).text
    except UnsupportedHint:
        return hint_text(hint)


def json_type(value: object) -> str:
    return "None" if value is None else type(value).__name__
