"""Host tools as model code sees them: functions that run on the host.

The host sends one spec per tool (see ``rlm.tools.ToolSet.specs``)::

    {"name": "search", "doc": "...", "returns": "list[str]" | None,
     "params": [{"name": "query", "kind": "positional-or-keyword",
                 "annotation": "str", "default": 10 (only when there is one)}]}

and :func:`make_tools` turns each into a function of that name, docstring and
signature. Calling one binds the arguments against the signature here, so a wrong
call fails at once with the ``TypeError`` Python would give; the bound arguments
then go to the host as one ``tool`` request, where they are checked again (this
side is not trusted) against the tool's type hints. A tool that fails on the host
(it raised, ran out of time, returned something that is not JSON) raises
:class:`ToolError` here, with a message and never a host traceback.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from .api import RLMCallError, Transport

#: Parameter kinds as the specs spell them.
KINDS = {
    "positional-only": inspect.Parameter.POSITIONAL_ONLY,
    "positional-or-keyword": inspect.Parameter.POSITIONAL_OR_KEYWORD,
    "keyword-only": inspect.Parameter.KEYWORD_ONLY,
}
#: How deep an argument may nest before it is refused here (the host bounds size).
_MAX_DEPTH = 100


class ToolError(Exception):
    """A host tool failed: it raised, timed out, or returned something not JSON.

    ``kind`` says which (``raised``, ``timeout``, ``bad_return``); the message is
    the tool's own, without the host's traceback.
    """

    def __init__(self, message: str, kind: str = "error") -> None:
        # One argument, so the message is exactly what str() and tracebacks show.
        super().__init__(message)
        self.message = message
        self.kind = kind


class _Annotation(str):
    """An annotation kept as text that prints bare: ``x: int``, not ``x: 'int'``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return str(self)


def signature_from_spec(spec: dict[str, Any]) -> inspect.Signature:
    """The signature a tool spec describes, annotations as text."""
    params = []
    for param in spec["params"]:
        annotation = param.get("annotation")
        params.append(
            inspect.Parameter(
                param["name"],
                KINDS[param["kind"]],
                default=param.get("default", inspect.Parameter.empty),
                annotation=_Annotation(annotation) if annotation else inspect.Parameter.empty,
            )
        )
    returns = spec.get("returns")
    return inspect.Signature(
        params, return_annotation=_Annotation(returns) if returns else inspect.Signature.empty
    )


def make_tools(specs: list[dict[str, Any]], transport: Transport) -> dict[str, Callable[..., Any]]:
    """One function per spec, by name, each calling the host over ``transport``."""
    return {spec["name"]: _make_tool(spec, transport) for spec in specs}


def _make_tool(spec: dict[str, Any], transport: Transport) -> Callable[..., Any]:
    name = str(spec["name"])
    signature = signature_from_spec(spec)

    def call_tool(*args: Any, **kwargs: Any) -> Any:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{name}() {exc}") from None
        arguments = dict(bound.arguments)
        for key, value in arguments.items():
            _check_json(value, f"{name}(): argument {key!r}", 0)
        return _to_value(name, transport("tool", {"name": name, "arguments": arguments}))

    call_tool.__name__ = call_tool.__qualname__ = name
    call_tool.__doc__ = spec.get("doc") or None
    call_tool.__signature__ = signature  # type: ignore[attr-defined]
    return call_tool


def _check_json(value: Any, where: str, depth: int) -> None:
    # The same rule on both backends: what JSON would change or refuse on the wire
    # (a set, an int dict key) is a TypeError here, before anything is sent.
    if depth > _MAX_DEPTH:
        raise TypeError(f"{where} is nested more than {_MAX_DEPTH} levels deep")
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise TypeError(f"{where} is {value!r}, which JSON cannot carry")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_json(item, f"{where}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where} has a {type(key).__name__} key; keys must be str")
            _check_json(item, f"{where}[{key[:50]!r}]", depth + 1)
        return
    raise TypeError(
        f"{where} is a {type(value).__name__}, which cannot be sent to a host tool; "
        "use str, int, float, bool, None, list or dict"
    )


def _to_value(name: str, answer: Any) -> Any:
    if isinstance(answer, dict):
        if "value" in answer and len(answer) == 1:
            return answer["value"]
        message, kind = answer.get("error"), answer.get("kind", "error")
        if isinstance(message, str) and isinstance(kind, str):
            raise ToolError(message, kind)
    raise RLMCallError(f"malformed answer from the host for tool {name}: {str(answer)[:200]}")
