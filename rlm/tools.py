"""Host tools: the user's own functions, callable from model code across the bridge.

``RLM(tools=[search, fetch])`` gives model code a ``search`` and a ``fetch`` of the
same names, signatures and docstrings (built in the sandbox by
:mod:`rlm_sandbox.tools` from :meth:`ToolSet.specs`). A call crosses the bridge as
a ``tool`` request whose name and arguments come straight from the untrusted side,
so :meth:`ToolSet.call` takes nothing on trust:

- the tool must exist; the arguments must be a JSON object within a size bound,
  with every required parameter, no unknown one, and each value of the type its
  hint names (``str``, ``int``, ``float``, ``bool``, ``None``, ``list[X]``,
  ``dict[str, X]``, unions, ``Literal[...]``, ``Any``). Anything else is a
  :class:`~rlm.errors.BridgeRefusal` (``RLMCallError`` in model code);
- each tool has a call limit per run (:class:`~rlm.errors.BudgetExceeded`) and a
  timeout per call;
- what comes back is copied into plain JSON and bounded, so no host object ever
  crosses; a tool that raised, ran out of time or returned something that is not
  JSON comes back as an error message (``ToolError`` in model code) with the
  traceback kept on the host, in the log.

Synchronous tools run on a worker thread. Python cannot stop a thread, so a sync
tool that overruns its timeout is *abandoned*, not stopped: the call answers with
a timeout error at once, and the thread runs on until the function returns (its
result is then dropped). Tools that may block for long should bound their own
waits (pass a timeout to the HTTP client, the database) or be ``async def``, which
are cancelled at the timeout.
"""

from __future__ import annotations

import builtins
import copy
import inspect
import json
import keyword
import logging
import math
import types
import typing
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal, TypeAlias, overload

import anyio
import anyio.lowlevel
import anyio.to_thread
from rlm_sandbox.tools import KINDS, signature_from_spec

from rlm.errors import BridgeRefusal, BudgetExceeded, ConfigurationError

__all__ = ["Tool", "ToolSet", "Tools", "tool"]

log = logging.getLogger(__name__)

#: Names model code already has; a tool of the same name would hide one of them.
RESERVED_NAMES = frozenset(
    {
        "llm_query",
        "llm_batch",
        "llm_batch_iter",
        "rlm_query",
        "rlm_batch",
        "rlm_batch_iter",
        "LLMError",
        "RLMCallError",
        "ToolError",
        "context",
        "FINAL",
        "FINAL_VAR",
    }
    | set(dir(builtins))
)
#: The longest error message a tool's exception gives model code.
MAX_ERROR_CHARS = 2000
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_CALLS = 1000
DEFAULT_MAX_ARGUMENT_BYTES = 1_000_000
DEFAULT_MAX_RESULT_BYTES = 10_000_000
#: Sync tools running at once per event loop; a pool of their own, so slow tools
#: cannot take the threads the Docker backend needs to talk to its engine.
TOOL_THREADS = 16

_SUPPORTED = (
    "str, int, float, bool, None, list[...], dict[str, ...], X | Y (Optional, Union), "
    "Literal[...] or Any"
)
_limiter: anyio.lowlevel.RunVar[anyio.CapacityLimiter] = anyio.lowlevel.RunVar("rlm_tool_threads")

ErrorKind = Literal["raised", "timeout", "bad_return"]


# -- the types tools may take ----------------------------------------------------------------


class _Mismatch(Exception):
    def __init__(self, where: str, expected: str, value: object, shown: str = "") -> None:
        super().__init__(f"{where} must be {expected}, not {shown or _json_type(value)}")
        self.where = where


class _Type:
    """One parameter's type hint, as a check of (already plain) JSON values."""

    text = "Any"

    def check(self, value: Any, where: str) -> Any:
        """``value`` as the tool gets it (an int for a float becomes a float), or _Mismatch."""
        return value


class _Exact(_Type):
    def __init__(self, kind: type) -> None:
        self.kind = kind
        self.text = "None" if kind is type(None) else kind.__name__

    def check(self, value: Any, where: str) -> Any:
        # type(), not isinstance: True is not an int to a tool that asks for one.
        if type(value) is not self.kind:
            raise _Mismatch(where, self.text, value)
        return value


class _Float(_Type):
    text = "float"

    def check(self, value: Any, where: str) -> Any:
        if type(value) is float:
            return value
        if type(value) is int:  # JSON does not tell 1 from 1.0
            return float(value)
        raise _Mismatch(where, self.text, value)


class _List(_Type):
    def __init__(self, item: _Type) -> None:
        self.item = item
        self.text = f"list[{item.text}]"

    def check(self, value: Any, where: str) -> Any:
        if type(value) is not list:
            raise _Mismatch(where, self.text, value)
        return [self.item.check(v, f"{where}[{i}]") for i, v in enumerate(value)]


class _Dict(_Type):
    def __init__(self, item: _Type) -> None:
        self.item = item
        self.text = f"dict[str, {item.text}]"

    def check(self, value: Any, where: str) -> Any:
        if type(value) is not dict:
            raise _Mismatch(where, self.text, value)
        return {k: self.item.check(v, f"{where}[{k[:50]!r}]") for k, v in value.items()}


class _Union(_Type):
    def __init__(self, options: list[_Type]) -> None:
        self.options = options
        self.text = " | ".join(o.text for o in options)

    def check(self, value: Any, where: str) -> Any:
        deeper: _Mismatch | None = None
        for option in self.options:
            try:
                return option.check(value, where)
            except _Mismatch as exc:
                if exc.where != where and deeper is None:
                    deeper = exc  # a list[int] that holds a str: say where
        raise deeper or _Mismatch(where, self.text, value)


class _Literal(_Type):
    def __init__(self, values: tuple[Any, ...]) -> None:
        self.values = values
        self.text = f"Literal[{', '.join(repr(v) for v in values)}]"

    def check(self, value: Any, where: str) -> Any:
        if any(type(value) is type(v) and value == v for v in self.values):
            return value
        shown = ", ".join(repr(v) for v in self.values)
        if value is None or type(value) in (str, int, float, bool):
            raise _Mismatch(where, f"one of {shown}", value, repr(value)[:60])
        raise _Mismatch(where, f"one of {shown}", value)


class _Unsupported(Exception):
    pass


def _parse(hint: Any) -> _Type:
    """A check for ``hint``, or _Unsupported naming the part that is not supported."""
    if hint is Any:
        return _Type()
    if hint is None or hint is type(None):
        return _Exact(type(None))
    if hint in (str, int, bool):
        return _Exact(hint)
    if hint is float:
        return _Float()
    if hint is list:
        return _List(_Type())
    if hint is dict:
        return _Dict(_Type())
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        return _parse(args[0])
    if origin is list and len(args) == 1:
        return _List(_parse(args[0]))
    if origin is dict and len(args) == 2:
        if args[0] is not str:
            raise _Unsupported(f"{_hint_text(hint)} (JSON object keys are str: use dict[str, ...])")
        return _Dict(_parse(args[1]))
    if origin is typing.Union or origin is types.UnionType:
        options: list[_Type] = []
        for arg in args:
            parsed = _parse(arg)
            options.extend(parsed.options if isinstance(parsed, _Union) else [parsed])
        return _Union(options)
    if origin is Literal:
        for value in args:
            if value is not None and type(value) not in (str, int, bool):
                raise _Unsupported(f"{_hint_text(hint)} (Literal values must be str, int or bool)")
        return _Literal(args)
    if isinstance(hint, str):  # a quoted hint in a module with future annotations
        raise _Unsupported(f"{hint!r} (a string, not a type: drop the quotes)")
    if origin is tuple or hint is tuple:
        raise _Unsupported(f"{_hint_text(hint)} (JSON has no tuples: use list[...])")
    raise _Unsupported(_hint_text(hint))


def _hint_text(hint: Any) -> str:
    if hint is inspect.Parameter.empty:
        return ""
    return inspect.formatannotation(hint).replace("typing.", "")


def _return_text(hint: Any) -> str | None:
    if hint is inspect.Signature.empty:
        return None
    try:
        return _parse(hint).text
    except _Unsupported:
        return _hint_text(hint)


def _json_type(value: object) -> str:
    return "None" if value is None else type(value).__name__


# -- one tool ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Param:
    name: str
    kind: inspect._ParameterKind
    type: _Type
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
        _check_timeout(timeout, f"tool {name!r}: timeout")
        _check_max_calls(max_calls, f"tool {name!r}: max_calls")
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


def _check_timeout(value: object, what: str, *, required: bool = False) -> None:
    if value is None and not required:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(f"{what} must be a positive number of seconds, not {value!r}")


def _check_max_calls(value: object, what: str) -> None:
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
                f"{where} has no type hint; annotate it with one of {_SUPPORTED}"
            )
        try:
            hint = _parse(p.annotation)
        except _Unsupported as exc:
            raise ConfigurationError(
                f"{where} is annotated {exc}, which tools do not support; use {_SUPPORTED}"
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
            except _Mismatch as exc:
                raise ConfigurationError(
                    f"{where}: {exc}; annotate it {hint.text} | {_json_type(p.default)} "
                    "or change the default"
                ) from None
        params.append(_Param(p.name, p.kind, hint, has_default, p.default))
    return tuple(params), _return_text(signature.return_annotation)


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


# -- the set ---------------------------------------------------------------------------------


class ToolSet:
    """The tools of one run (or many), checked once and called many times.

    Build it with :meth:`build`; the bridge routes each ``tool`` request to
    :meth:`call`, the sandbox gets :meth:`specs`, the root model's prompt gets
    :meth:`describe`.
    """

    def __init__(
        self,
        tools: Sequence[Tool] = (),
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_calls: int | None = DEFAULT_MAX_CALLS,
        max_argument_bytes: int = DEFAULT_MAX_ARGUMENT_BYTES,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
    ) -> None:
        _check_timeout(timeout, "tools: timeout", required=True)
        _check_max_calls(max_calls, "tools: max_calls")
        for what, value in (
            ("max_argument_bytes", max_argument_bytes),
            ("max_result_bytes", max_result_bytes),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"tools: {what} must be a positive int, not {value!r}")
        self.timeout = float(timeout)
        self.max_calls = max_calls
        self.max_argument_bytes = max_argument_bytes
        self.max_result_bytes = max_result_bytes
        self._tools: dict[str, Tool] = {}
        for t in tools:
            if not isinstance(t, Tool):
                raise ConfigurationError(f"ToolSet takes Tool objects, not {type(t).__name__}")
            if t.name in self._tools:
                raise ConfigurationError(
                    f"two tools are named {t.name!r}; give one another name "
                    "(Tool(fn, name=...) or a dict of name -> function)"
                )
            self._tools[t.name] = t

    @classmethod
    def build(
        cls,
        tools: Tools | None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_calls: int | None = DEFAULT_MAX_CALLS,
        max_argument_bytes: int = DEFAULT_MAX_ARGUMENT_BYTES,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
    ) -> ToolSet:
        """A checked set from what users pass as ``tools=``.

        A list of functions (or :class:`Tool`), a mapping of name to function (the
        key is the name model code uses), or a ToolSet (returned as it is).
        ``timeout`` and ``max_calls`` apply to tools that do not set their own.
        """
        if isinstance(tools, ToolSet):
            return tools
        limits: dict[str, Any] = {
            "timeout": timeout,
            "max_calls": max_calls,
            "max_argument_bytes": max_argument_bytes,
            "max_result_bytes": max_result_bytes,
        }
        if tools is None:
            return cls((), **limits)
        items: list[Tool] = []
        if isinstance(tools, Mapping):
            for key, fn in tools.items():
                if not isinstance(key, str):
                    raise ConfigurationError(
                        f"tools: keys name the tools and must be str, not {type(key).__name__}"
                    )
                items.append(fn.renamed(key) if isinstance(fn, Tool) else Tool(fn, name=key))
        elif isinstance(tools, (str, bytes)) or not isinstance(tools, Sequence):
            raise ConfigurationError(
                f"tools= takes a list of functions or a dict of name -> function, "
                f"not {type(tools).__name__}"
            )
        else:
            items = [t if isinstance(t, Tool) else Tool(t) for t in tools]
        return cls(items, **limits)

    # -- what the set holds -------------------------------------------------------------

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._tools)

    def __len__(self) -> int:
        return len(self._tools)

    def __bool__(self) -> bool:
        return bool(self._tools)

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __getitem__(self, name: str) -> Tool:
        return self._tools[name]

    def __repr__(self) -> str:
        return f"ToolSet({list(self._tools)!r})"

    def subset(self, names: Sequence[str]) -> ToolSet:
        """The tools named (e.g. those a child run may use), with this set's limits."""
        missing = [n for n in names if n not in self._tools]
        if missing:
            raise ConfigurationError(f"no tools named {missing}; the tools are {list(self.names)}")
        return ToolSet(
            [self._tools[n] for n in dict.fromkeys(names)],
            timeout=self.timeout,
            max_calls=self.max_calls,
            max_argument_bytes=self.max_argument_bytes,
            max_result_bytes=self.max_result_bytes,
        )

    def timeout_of(self, name: str) -> float:
        t = self._tools[name]
        return self.timeout if t.timeout is None else float(t.timeout)

    def max_calls_of(self, name: str) -> int | None:
        t = self._tools[name]
        return self.max_calls if t.max_calls is None else t.max_calls

    def specs(self) -> list[dict[str, Any]]:
        """The specs the sandbox builds the tool functions from (fresh JSON each time)."""
        return [t.spec() for t in self._tools.values()]

    def describe(self) -> str:
        """The tools for the root model's system prompt; "" when there are none.

        One signature line per tool, as ``inspect.signature`` shows it in the
        sandbox, with its docstring indented below it.
        """
        lines: list[str] = []
        for t in self._tools.values():
            lines.append(f"  {t.name}{signature_from_spec(t.spec())}")
            lines.extend(f"      {line}".rstrip() for line in t.doc.splitlines())
        return "\n".join(lines)

    # -- one call from the sandbox --------------------------------------------------------

    async def call(self, name: object, arguments: object, calls: Counter[str]) -> dict[str, Any]:
        """Run one tool call from model code; ``calls`` counts this run's calls per tool.

        Returns ``{"value": v}`` (plain JSON) or ``{"error": message, "kind": k}``.
        Raises BridgeRefusal for a call that must not run (unknown tool, bad
        arguments) and BudgetExceeded past the tool's call limit.
        """
        t = self._lookup(name)
        args, kwargs = self._arguments(t, arguments)
        limit = self.max_calls_of(t.name)
        if limit is not None and calls[t.name] >= limit:
            raise BudgetExceeded(
                f"tool {t.name} was already called {limit} times, its limit for this run; "
                "work with the results you have"
            )
        calls[t.name] += 1
        timeout = self.timeout_of(t.name)
        limiter = _thread_limiter()
        raised: BaseException | None = None
        value: Any = None
        with anyio.move_on_after(timeout) as scope:
            try:
                if t.is_async:
                    value = await t.fn(*args, **kwargs)
                else:
                    value = await anyio.to_thread.run_sync(
                        partial(t.fn, *args, **kwargs), abandon_on_cancel=True, limiter=limiter
                    )
            except (Exception, SystemExit) as exc:
                raised = exc
        if scope.cancelled_caught:
            log.warning(
                "tool %s did not finish within %g s; its call was abandoned", t.name, timeout
            )
            return _error(f"tool {t.name} did not finish within {timeout:g} s", "timeout")
        if raised is not None:
            log.warning("tool %s raised", t.name, exc_info=raised)
            return _error(_exception_text(raised), "raised")
        return await anyio.to_thread.run_sync(self._plain_result, t.name, value, limiter=limiter)

    def _lookup(self, name: object) -> Tool:
        t = self._tools.get(name) if isinstance(name, str) else None
        if t is None:
            shown = str(name)[:50] if isinstance(name, str) else type(name).__name__
            known = ", ".join(self._tools) or "none"
            raise BridgeRefusal(f"no tool named {shown!r} (the tools are: {known})")
        return t

    def _arguments(self, t: Tool, arguments: object) -> tuple[list[Any], dict[str, Any]]:
        if not isinstance(arguments, dict):
            raise BridgeRefusal(f"tool {t.name}: arguments must be an object of name -> value")
        try:
            text = json.dumps(arguments, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError, RecursionError):
            raise BridgeRefusal(f"tool {t.name}: arguments must be JSON data") from None
        if any(type(k) is not str for k in arguments):
            raise BridgeRefusal(f"tool {t.name}: argument names must be str")
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > self.max_argument_bytes:
            raise BridgeRefusal(
                f"tool {t.name}: arguments of {size:,} bytes are over the "
                f"{self.max_argument_bytes:,}-byte limit; pass less data per call"
            )
        # The same copy the wire makes: the tool gets fresh plain JSON, never an
        # object the sandbox side still holds, on either backend.
        plain: dict[str, Any] = json.loads(text)
        known = {p.name for p in t.params}
        unknown = sorted(set(plain) - known)
        if unknown:
            raise BridgeRefusal(
                f"tool {t.name}: unexpected argument{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(repr(u[:50]) for u in unknown[:5])}"
            )
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for p in t.params:
            if p.name not in plain:
                if not p.has_default:
                    raise BridgeRefusal(f"tool {t.name}: missing required argument {p.name!r}")
                if p.kind is inspect.Parameter.POSITIONAL_ONLY:
                    args.append(copy.deepcopy(p.default))  # a later one may be given
                continue
            try:
                value = p.type.check(plain[p.name], f"argument {p.name!r}")
            except _Mismatch as exc:
                raise BridgeRefusal(f"tool {t.name}: {exc}") from None
            if p.kind is inspect.Parameter.POSITIONAL_ONLY:
                args.append(value)
            else:
                kwargs[p.name] = value
        return args, kwargs

    def _plain_result(self, name: str, value: Any) -> dict[str, Any]:
        """``{"value": ...}`` as fresh plain JSON, or the error saying why it cannot be."""
        if inspect.iscoroutine(value):
            value.close()
            return _error(
                f"tool {name} returned a coroutine; declare it `async def` so it is awaited",
                "bad_return",
            )
        try:
            text = json.dumps(value, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError, RecursionError):
            return _error(
                f"tool {name} returned {_what_is_not_json(value)}, which is not JSON-able",
                "bad_return",
            )
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > self.max_result_bytes:
            return _error(
                f"tool {name} returned {size:,} bytes of JSON, over the "
                f"{self.max_result_bytes:,}-byte limit",
                "bad_return",
            )
        return {"value": json.loads(text)}


#: What ``tools=`` takes: a list of functions or Tools, a mapping of name to either,
#: or a ToolSet.
Tools: TypeAlias = (
    Sequence[Callable[..., Any] | Tool] | Mapping[str, Callable[..., Any] | Tool] | ToolSet
)


def _thread_limiter() -> anyio.CapacityLimiter:
    try:
        return _limiter.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(TOOL_THREADS)
        _limiter.set(limiter)
        return limiter


def _error(message: str, kind: ErrorKind) -> dict[str, Any]:
    return {"error": message, "kind": kind}


def _exception_text(exc: BaseException) -> str:
    try:
        message = str(exc)
    except Exception:
        message = "<the exception's message could not be shown>"
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    if len(text) > MAX_ERROR_CHARS:
        text = text[:MAX_ERROR_CHARS] + "... [message truncated]"
    return text


def _what_is_not_json(value: Any) -> str:
    """Names what in a return value JSON refused, e.g. ``a set (at ['hits'][2])``."""
    path = ""
    for _ in range(20):
        if isinstance(value, float) and not math.isfinite(value):
            return f"a float that is {value!r}" + (f" (at {path})" if path else "")
        if isinstance(value, (list, tuple)):
            step = next(((f"[{i}]", v) for i, v in enumerate(value) if not _json_ok(v)), None)
        elif isinstance(value, dict):
            key = next((k for k in value if not isinstance(k, (str, int, float, bool))), False)
            if key is not False and key is not None:
                return f"a dict with a {type(key).__name__} key" + (f" (at {path})" if path else "")
            step = next(
                ((f"[{str(k)[:30]!r}]", v) for k, v in value.items() if not _json_ok(v)), None
            )
        else:
            return f"a {type(value).__name__}" + (f" (at {path})" if path else "")
        if step is None:
            break
        path += step[0]
        value = step[1]
    return "a value nested too deeply (or holding itself)"


def _json_ok(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return False
    return True
