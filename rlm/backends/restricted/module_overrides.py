"""Guarded replacements for the parts of the allowed modules that need a guard.

What an allowed module hands out can loop or allocate for long in one C call
(``math.factorial(10**7)``, ``json.dumps`` of shared references, ``itertools``,
a catastrophic regular expression), touch state shared with the host (``random``'s
generator, the thread's ``decimal`` context), or walk attributes by name
(``string.Template``). Each is replaced, in the epoch's module view
(:mod:`.modules`), by a version that checks sizes first, runs its loops through
Python frames, or works on the session's own state.
"""

from __future__ import annotations

import decimal
import fractions
import math
import random
import re
from collections.abc import Callable
from typing import Any

from rlm.backends.restricted.guards import Guards
from rlm.backends.restricted.iteration import (
    is_plain_callable,
    itertool,
    python_level,
    reduce,
    with_python_level_keys,
)
from rlm.backends.restricted.limits import MAX_DECIMAL_EXPONENT, MAX_DECIMAL_PREC, MAX_INT_BITS
from rlm.backends.restricted.methods import REGEX, REGEX_MATCH, REGEX_PATTERN, checked_random
from rlm.backends.restricted.sizes import estimate_repr


def module_overrides(g: Guards, name: str, attrs: dict[str, Any]) -> dict[str, Any]:
    """Replacements for the parts of allowed modules that need a guard."""
    if name == "itertools":
        return {attr: itertool(fn) for attr, fn in attrs.items() if callable(fn)}
    if name == "functools":
        return {"reduce": reduce}
    if name == "random":
        # A generator of the session's own: seeding it does not touch the host's.
        rng = g.random
        out: dict[str, Any] = {
            attr: getattr(rng, attr)
            for attr, value in attrs.items()
            if getattr(value, "__self__", None) is random._inst
        }
        out["randbytes"] = checked_random(g, "randbytes", rng.randbytes)
        out["getrandbits"] = checked_random(g, "getrandbits", rng.getrandbits)
        return out
    if name == "math":
        return _math_overrides(g)
    if name == "json":
        return _json_overrides(g)
    if name == "re":
        return _re_overrides(g, attrs)
    if name == "decimal":
        return _decimal_overrides(g)
    if name == "fractions":
        return {"Fraction": g.standin(fractions.Fraction, _check_fraction_args)}
    if name == "string":
        return {"Template": _template_class(g)}
    if name == "heapq":
        return {
            attr: with_python_level_keys(attrs[attr]) for attr in ("merge", "nlargest", "nsmallest")
        }
    if name == "unicodedata":
        return {"normalize": _checked_normalize(g)}
    return {}


def _math_overrides(g: Guards) -> dict[str, Any]:
    def log2_factorial(n: float) -> float:
        return math.lgamma(n + 1) / math.log(2) if n > 1 else 0.0

    def factorial(n: Any) -> int:
        if isinstance(n, int) and n > 0:
            g.check_int_bits(f"factorial({n:,})", log2_factorial(float(n)))
        return math.factorial(n)

    def comb(n: Any, k: Any) -> int:
        if isinstance(n, int) and isinstance(k, int) and 0 <= k <= n:
            bits = (
                log2_factorial(float(n)) - log2_factorial(float(k)) - log2_factorial(float(n - k))
            )
            g.check_int_bits(f"comb({n:,}, {k:,})", bits)
        return math.comb(n, k)

    def perm(n: Any, k: Any = None) -> int:
        if isinstance(n, int) and n > 0:
            kk = n if k is None else k
            if isinstance(kk, int) and 0 <= kk <= n:
                bits = log2_factorial(float(n)) - log2_factorial(float(n - kk))
                g.check_int_bits(f"perm({n:,}, {kk:,})", bits)
        return math.perm(n, k)

    def prod(iterable: Any, /, *, start: Any = 1) -> Any:
        total = start
        for item in iterable:
            g.check_mult(total, item)
            total = total * item
        return total

    def lcm(*integers: Any) -> int:
        bits = sum(abs(int(i)).bit_length() for i in integers if isinstance(i, int))
        g.check_int_bits("this lcm()", bits)
        return math.lcm(*integers)

    return {"factorial": factorial, "comb": comb, "perm": perm, "prod": prod, "lcm": lcm}


def _json_overrides(g: Guards) -> dict[str, Any]:
    import json

    def check(obj: Any, kwargs: dict[str, Any]) -> None:
        indent = kwargs.get("indent")
        if isinstance(indent, int) and indent > 1000:
            raise ValueError("json: indent above 1000 is not allowed in the sandbox")
        if isinstance(indent, str) and len(indent) > 1000:
            raise ValueError("json: indent longer than 1000 characters is not allowed")
        for key in ("default", "object_hook", "object_pairs_hook", "parse_float", "parse_int"):
            if key in kwargs and is_plain_callable(kwargs[key]):
                kwargs[key] = python_level(kwargs[key])
        estimate = estimate_repr(obj, g.memory_limit)
        if isinstance(indent, (int, str)) and indent:
            width = indent if isinstance(indent, int) else len(indent)
            estimate *= 1 + width
        g.check_text("this JSON text", estimate)

    def dumps(obj: Any, **kwargs: Any) -> str:
        check(obj, kwargs)
        return json.dumps(obj, **kwargs)

    def dump(obj: Any, fp: Any, **kwargs: Any) -> None:
        check(obj, kwargs)
        fp.write(json.dumps(obj, **kwargs))

    class JSONEncoder(json.JSONEncoder):
        def __init__(self, **kwargs: Any) -> None:
            check(None, kwargs)
            super().__init__(**kwargs)

        def encode(self, o: Any) -> str:
            g.check_text("this JSON text", estimate_repr(o, g.memory_limit))
            return super().encode(o)

        def iterencode(self, o: Any, _one_shot: bool = False) -> Any:
            g.check_text("this JSON text", estimate_repr(o, g.memory_limit))
            return super().iterencode(o, _one_shot)

    JSONEncoder.__module__ = "json"
    return {"dumps": dumps, "dump": dump, "JSONEncoder": JSONEncoder}


def _re_overrides(g: Guards, attrs: dict[str, Any]) -> dict[str, Any]:
    """``re`` as model code sees it: the ``regex`` engine, time-limited, without the GIL.

    Python's own engine backtracks inside one C call that holds the GIL: a pattern
    such as ``a*a*b`` on 10,000 characters runs for minutes and freezes the whole
    host. The ``regex`` module avoids most such blow-ups outright, and every call
    made here passes it a timeout (the cell's time left) and ``concurrent=True`` (the
    GIL is released while matching). Without ``regex`` installed, Python's engine is
    used and catastrophic patterns stay a known limit.
    """
    engine = REGEX
    if engine is None:
        return _stdlib_re_overrides(g)

    def compile(pattern: Any, flags: Any = 0) -> Any:
        g.check()
        if isinstance(flags, int) and flags & engine.DEBUG:
            raise ValueError("re.DEBUG is not available in the sandbox")
        if isinstance(pattern, REGEX_PATTERN):
            if flags:
                raise ValueError("cannot process flags argument with a compiled pattern")
            return pattern
        return engine.compile(pattern, flags)

    def method(name: str) -> Callable[..., Any]:
        def call(pattern: Any, string: Any, flags: Any = 0) -> Any:
            return g.getattr(compile(pattern, flags), name)(string)

        call.__name__ = call.__qualname__ = name
        call.__doc__ = getattr(re, name).__doc__
        return call

    def sub(pattern: Any, repl: Any, string: Any, count: int = 0, flags: int = 0) -> Any:
        return g.getattr(compile(pattern, flags), "sub")(repl, string, count)

    def subn(pattern: Any, repl: Any, string: Any, count: int = 0, flags: int = 0) -> Any:
        return g.getattr(compile(pattern, flags), "subn")(repl, string, count)

    def split(pattern: Any, string: Any, maxsplit: int = 0, flags: int = 0) -> Any:
        return g.getattr(compile(pattern, flags), "split")(string, maxsplit)

    out: dict[str, Any] = {
        name: method(name) for name in ("match", "fullmatch", "search", "findall", "finditer")
    }
    flag_names = "A ASCII I IGNORECASE L LOCALE M MULTILINE S DOTALL U UNICODE X VERBOSE"
    out.update({name: getattr(engine, name) for name in flag_names.split()})
    out.update(
        compile=compile,
        sub=sub,
        subn=subn,
        split=split,
        purge=engine.purge,
        error=engine.error,
        Pattern=REGEX_PATTERN,
        Match=REGEX_MATCH,
        RegexFlag=engine.RegexFlag,
        NOFLAG=0,
    )
    return out


def _stdlib_re_overrides(g: Guards) -> dict[str, Any]:
    debug = re.DEBUG

    def no_debug(fn: Callable[..., Any], flag_index: int) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            flags = args[flag_index] if len(args) > flag_index else kwargs.get("flags", 0)
            if isinstance(flags, int) and flags & debug:
                raise ValueError("re.DEBUG is not available in the sandbox")
            return fn(*args, **kwargs)

        call.__name__ = call.__qualname__ = fn.__name__
        call.__doc__ = fn.__doc__
        return call

    def sub(pattern: Any, repl: Any, string: Any, count: int = 0, flags: int = 0) -> Any:
        compiled = out["compile"](pattern, flags)
        return g.getattr(compiled, "sub")(repl, string, count)

    def subn(pattern: Any, repl: Any, string: Any, count: int = 0, flags: int = 0) -> Any:
        compiled = out["compile"](pattern, flags)
        return g.getattr(compiled, "subn")(repl, string, count)

    out: dict[str, Any] = {
        "compile": no_debug(re.compile, 1),
        "match": no_debug(re.match, 2),
        "fullmatch": no_debug(re.fullmatch, 2),
        "search": no_debug(re.search, 2),
        "findall": no_debug(re.findall, 2),
        "finditer": no_debug(re.finditer, 2),
        "split": no_debug(re.split, 3),
    }
    out["sub"] = sub
    out["subn"] = subn
    return out


def _decimal_overrides(g: Guards) -> dict[str, Any]:
    def check_context(**kwargs: Any) -> None:
        prec = kwargs.get("prec")
        if isinstance(prec, int) and prec > MAX_DECIMAL_PREC:
            raise ValueError(f"decimal: prec above {MAX_DECIMAL_PREC:,} is not allowed here")
        emax = kwargs.get("Emax")
        if isinstance(emax, int) and emax > MAX_DECIMAL_EXPONENT:
            raise ValueError(f"decimal: Emax above {MAX_DECIMAL_EXPONENT:,} is not allowed here")
        emin = kwargs.get("Emin")
        if isinstance(emin, int) and emin < -MAX_DECIMAL_EXPONENT:
            raise ValueError(f"decimal: Emin below -{MAX_DECIMAL_EXPONENT:,} is not allowed here")

    def check_context_args(*args: Any, **kwargs: Any) -> None:
        names = ("prec", "rounding", "Emin", "Emax", "capitals", "clamp", "flags", "traps")
        check_context(**dict(zip(names, args, strict=False)), **kwargs)

    def check_decimal(value: Any = "0", *_: Any, **__: Any) -> None:
        if isinstance(value, str):
            match = re.search(r"[eE]\s*([-+]?\d+)", value)
            digits = sum(c.isdigit() for c in value[: MAX_DECIMAL_EXPONENT * 2 + 100])
            if (match and abs(int(match.group(1)[:12])) > MAX_DECIMAL_EXPONENT) or (
                digits > MAX_DECIMAL_EXPONENT
            ):
                raise ValueError(
                    "decimal: numbers beyond 10**±100,000 are not allowed in the sandbox"
                )
        elif isinstance(value, decimal.Decimal | tuple):
            d = decimal.Decimal(value)
            if d.is_finite() and abs(d.adjusted()) > MAX_DECIMAL_EXPONENT:
                raise ValueError(
                    "decimal: numbers beyond 10**±100,000 are not allowed in the sandbox"
                )

    def localcontext(ctx: Any = None, **kwargs: Any) -> Any:
        check_context(**kwargs)
        if ctx is not None and isinstance(ctx, decimal.Context):
            check_context(prec=ctx.prec, Emax=ctx.Emax, Emin=ctx.Emin)
        return decimal.localcontext(ctx, **kwargs)

    def getcontext() -> decimal.Context:
        # A copy: the real one belongs to the worker thread, shared with other sessions.
        return decimal.getcontext().copy()

    return {
        "Decimal": g.standin(decimal.Decimal, check_decimal),
        "Context": g.standin(decimal.Context, check_context_args),
        "localcontext": localcontext,
        "getcontext": getcontext,
        "DefaultContext": decimal.DefaultContext.copy(),
        "BasicContext": decimal.BasicContext.copy(),
        "ExtendedContext": decimal.ExtendedContext.copy(),
    }


def _check_fraction_args(numerator: Any = 0, denominator: Any = None, **_: Any) -> None:
    for value in (numerator, denominator):
        if isinstance(value, str):
            match = re.search(r"[eE]\s*([-+]?\d+)", value)
            if match and abs(int(match.group(1)[:12])) > MAX_DECIMAL_EXPONENT:
                raise ValueError("Fraction: exponents beyond ±100,000 are not allowed here")
        elif isinstance(value, decimal.Decimal):
            if value.is_finite() and abs(value.adjusted()) > MAX_DECIMAL_EXPONENT:
                raise ValueError("Fraction: numbers beyond 10**±100,000 are not allowed here")
        elif isinstance(value, int) and int(value).bit_length() > MAX_INT_BITS:
            raise ValueError("Fraction: the numbers are too large for the sandbox")


def _template_class(g: Guards) -> type:
    import string

    def check(template: Any, mapping: Any, kwargs: dict[str, Any]) -> None:
        values = list(kwargs.values())
        if isinstance(mapping, dict):
            values += list(mapping.values())
        biggest = max((estimate_repr(v, g.memory_limit) for v in values), default=0)
        slots = template.template.count(template.delimiter) if template.delimiter else 0
        g.check_text("this substitution", len(template.template) + slots * biggest)

    class Template(string.Template):
        def substitute(self, mapping: Any = None, /, **kws: Any) -> str:
            check(self, mapping, kws)
            return super().substitute(*([] if mapping is None else [mapping]), **kws)

        def safe_substitute(self, mapping: Any = None, /, **kws: Any) -> str:
            check(self, mapping, kws)
            return super().safe_substitute(*([] if mapping is None else [mapping]), **kws)

    Template.__module__ = "string"
    return Template


def _checked_normalize(g: Guards) -> Callable[[str, str], str]:
    import unicodedata

    # ``form`` as model code passes it: unicodedata.normalize refuses a wrong one.
    def normalize(form: Any, unistr: str) -> str:
        if isinstance(unistr, str) and not unistr.isascii():
            growth = 18 if isinstance(form, str) and form.startswith("NFK") else 4
            g.refuse_size("this normalize()", len(unistr) * growth * 4)
        return unicodedata.normalize(form, unistr)

    return normalize
