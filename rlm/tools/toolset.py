"""A run's tools: checked once, each call from the sandbox checked and run on the host."""

from __future__ import annotations

import copy
import inspect
import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from typing import Any, Literal, TypeAlias

import anyio
import anyio.lowlevel
import anyio.to_thread
from rlm_sandbox.tools import signature_from_spec

from rlm.errors import BridgeRefusal, BudgetExceeded, ConfigurationError
from rlm.tools.hints import Mismatch
from rlm.tools.tool import (
    DEFAULT_MAX_CALLS,
    DEFAULT_TIMEOUT,
    Tool,
    check_max_calls,
    check_timeout,
)

log = logging.getLogger("rlm.tools")

#: The longest error message a tool's exception gives model code.
MAX_ERROR_CHARS = 2000
DEFAULT_MAX_ARGUMENT_BYTES = 1_000_000
DEFAULT_MAX_RESULT_BYTES = 10_000_000
#: Sync tools running at once per event loop; a pool of their own, so slow tools
#: cannot take the threads the Docker backend needs to talk to its engine.
TOOL_THREADS = 16

_limiter: anyio.lowlevel.RunVar[anyio.CapacityLimiter] = anyio.lowlevel.RunVar("rlm_tool_threads")

ErrorKind = Literal["raised", "timeout", "bad_return"]


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
        check_timeout(timeout, "tools: timeout", required=True)
        check_max_calls(max_calls, "tools: max_calls")
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
            except Mismatch as exc:
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
