"""One host tool: a callable checked once, its parameters and their hints."""

from __future__ import annotations

import builtins
import copy
import inspect
import keyword
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, overload

from rlm_sandbox.names import SANDBOX_NAMES
from rlm_sandbox.tools import KINDS

from rlm.errors import ConfigurationError
from rlm.tools.hints import (
    SUPPORTED,
    HintCheck,
    Mismatch,
    UnsupportedHint,
    json_type,
    parse_hint,
    return_text,
)

#: Names model code already has; a tool of the same name would hide one of them.
RESERVED_NAMES = SANDBOX_NAMES | {"context"} | set(dir(builtins))
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_CALLS = 1000


@dataclass(frozen=True)
class _Param:
    name: str
    kind: inspect._ParameterKind
    type: HintCheck
    has_default: bool
    default: Any

    @property
    def spec(self) -> dict[str, Any]:
        kind = next(k for k, v in KINDS.items() if v == self.kind)
        out: dict[str, Any] = {"name": self.name, "kind": kind, "annotation": self.type.text}
        if self.has_default:
            out["default"] = copy.deepcopy(self.default)
        return out


@dataclass(frozen=True, init=False)
class Tool:
    """A host function offered to model code, with its own limits.

    ``name`` defaults to the function's ``__name__``; ``timeout`` (seconds per call)
    and ``max_calls`` (per run) default to the :class:`ToolSet`'s. Every parameter
    needs a type hint of a JSON type (see the module docstring), and defaults must
    be JSON. Construction checks all of it and raises
    :class:`~rlm.errors.ConfigurationError` saying what to change. A ``Tool`` is
    itself callable, so ``@tool`` leaves a function usable on the host.
    """

    fn: Callable[..., Any]
    name: str
    timeout: float | None
    max_calls: int | None
    params: tuple[_Param, ...] = field(repr=False, compare=False)
    doc: str = field(repr=False, compare=False)
    returns: str | None = field(repr=False, compare=False)
    is_async: bool = field(repr=False, compare=False)

    def __init__(
        self,
        fn: Callable[..., Any],
        name: str | None = None,
        timeout: float | None = None,
        max_calls: int | None = None,
    ) -> None:
        if isinstance(fn, Tool):
            fn = fn.fn
        if not callable(fn):
            raise ConfigurationError(f"a tool must be a function, not {type(fn).__name__}")
        if name is None:
            name = getattr(fn, "__name__", None)
            if not isinstance(name, str) or not name.isidentifier():
                raise ConfigurationError(
                    f"tool {fn!r} has no usable name ({name!r}); give it one: "
                    "Tool(fn, name='...') or tools={'name': fn}"
                )
        _check_name(name)
        check_timeout(timeout, f"tool {name!r}: timeout")
        check_max_calls(max_calls, f"tool {name!r}: max_calls")
        params, returns = _analyse(fn, name)
        set_ = partial(object.__setattr__, self)
        set_("fn", fn)
        set_("name", name)
        set_("timeout", timeout)
        set_("max_calls", max_calls)
        set_("params", params)
        set_("doc", _doc(fn))
        set_("returns", returns)
        set_("is_async", _is_async(fn))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def spec(self) -> dict[str, Any]:
        """What the sandbox needs to build this tool's function (JSON)."""
        return {
            "name": self.name,
            "doc": self.doc,
            "returns": self.returns,
            "params": [p.spec for p in self.params],
        }

    def renamed(self, name: str) -> Tool:
        """The same tool under another name."""
        return Tool(self.fn, name=name, timeout=self.timeout, max_calls=self.max_calls)


@overload
def tool(
    fn: Callable[..., Any],
    /,
    *,
    name: str | None = None,
    timeout: float | None = None,
    max_calls: int | None = None,
) -> Tool: ...
@overload
def tool(
    *, name: str | None = None, timeout: float | None = None, max_calls: int | None = None
) -> Callable[[Callable[..., Any]], Tool]: ...
def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    timeout: float | None = None,
    max_calls: int | None = None,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make a :class:`Tool`: ``@tool``, ``@tool(timeout=5)`` or ``tool(fn, max_calls=10)``."""
    if fn is None:
        return partial(Tool, name=name, timeout=timeout, max_calls=max_calls)
    return Tool(fn, name=name, timeout=timeout, max_calls=max_calls)


def _check_name(name: str) -> None:
    if not name.isidentifier() or keyword.iskeyword(name):
        raise ConfigurationError(f"tool name {name!r} is not a Python identifier; rename it")
    if name.startswith("_"):
        raise ConfigurationError(
            f"tool name {name!r} starts with '_', which sandboxed code may not use; rename it"
        )
    if name in RESERVED_NAMES:
        raise ConfigurationError(
            f"tool name {name!r} would hide the sandbox's own {name!r}; rename it "
            f"(Tool(fn, name='my_{name}') or tools={{'my_{name}': fn}})"
        )


def check_timeout(value: object, what: str, *, required: bool = False) -> None:
    if value is None and not required:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(f"{what} must be a positive number of seconds, not {value!r}")


def check_max_calls(value: object, what: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{what} must be a positive int or None, not {value!r}")


def _analyse(fn: Callable[..., Any], name: str) -> tuple[tuple[_Param, ...], str | None]:
    try:
        signature = inspect.signature(fn, eval_str=True)
    except (NameError, SyntaxError, TypeError) as exc:
        raise ConfigurationError(
            f"tool {name!r}: its type hints could not be read ({type(exc).__name__}: {exc}); "
            "make sure every name they use is importable from the function's module"
        ) from None
    except ValueError as exc:
        raise ConfigurationError(f"tool {name!r}: it has no readable signature ({exc})") from None
    params: list[_Param] = []
    for p in signature.parameters.values():
        where = f"tool {name!r}: parameter {p.name!r}"
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            star = "*" if p.kind is p.VAR_POSITIONAL else "**"
            raise ConfigurationError(
                f"{where}: {star}{p.name} is not supported; name each parameter "
                "(take a list[...] or dict[str, ...] for many values)"
            )
        if p.name.startswith("_"):
            raise ConfigurationError(
                f"{where}: names starting with '_' cannot be passed from sandboxed code; rename it"
            )
        if p.annotation is p.empty:
            raise ConfigurationError(
                f"{where} has no type hint; annotate it with one of {SUPPORTED}"
            )
        try:
            hint = parse_hint(p.annotation)
        except UnsupportedHint as exc:
            raise ConfigurationError(
                f"{where} is annotated {exc}, which tools do not support; use {SUPPORTED}"
            ) from None
        has_default = p.default is not p.empty
        if has_default:
            if not _is_plain_json(p.default):
                raise ConfigurationError(
                    f"{where}: its default {p.default!r} is not JSON data; use str, int, "
                    "float, bool, None, list or dict (or None and build the value inside)"
                )
            try:
                hint.check(p.default, "its default")
            except Mismatch as exc:
                raise ConfigurationError(
                    f"{where}: {exc}; annotate it {hint.text} | {json_type(p.default)} "
                    "or change the default"
                ) from None
        params.append(_Param(p.name, p.kind, hint, has_default, p.default))
    return tuple(params), return_text(signature.return_annotation)


def _is_plain_json(value: object, depth: int = 0) -> bool:
    if depth > 100:
        return False
    if value is None or type(value) in (str, int, bool):
        return True
    if type(value) is float:
        return math.isfinite(value)
    if type(value) is list:
        return all(_is_plain_json(v, depth + 1) for v in value)
    if type(value) is dict:
        return all(type(k) is str and _is_plain_json(v, depth + 1) for k, v in value.items())
    return False


def _doc(fn: Callable[..., Any]) -> str:
    # A partial's own __doc__ describes functools.partial, not the tool.
    while isinstance(fn, partial):
        fn = fn.func
    return inspect.getdoc(fn) or ""


def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 -- a callable object's own async __call__
    )
