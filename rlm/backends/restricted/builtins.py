"""The builtins model code sees: a harmless subset of Python's, and guarded stand-ins.

Left out: everything that compiles, imports, introspects namespaces or does I/O
(``eval``, ``open``, ``globals``, ``vars``, ...; see :mod:`.blocked`). Replaced:
the types whose constructors can build something huge in one C call (``str``,
``int``, ``bytes``) by stand-ins that check first; the sources of long C-level loops
(``range``, ``iter``, ``map``, ``sum`` over lists, key functions) by Python-level
versions (:mod:`.iteration`); ``type``, ``getattr`` and ``__import__`` by their
guarded forms; and the names RestrictedPython's rewritten code calls
(``_getattr_``, ``_write_``, ...) by the epoch's :class:`~.guards.Guards`.
"""

from __future__ import annotations

import builtins
import decimal
import fractions
from collections.abc import Iterable, Iterator
from typing import Any

from RestrictedPython.Guards import guarded_iter_unpack_sequence, guarded_unpack_sequence

from rlm.backends.restricted.blocked import is_blocked_name
from rlm.backends.restricted.guards import Guards
from rlm.backends.restricted.iteration import checkpointed, python_level, safe_range
from rlm.backends.restricted.limits import MAX_DECIMAL_EXPONENT, MAX_INT_DIGITS
from rlm.backends.restricted.modules import ALLOWED_MODULES
from rlm.backends.restricted.output import PrintHandle
from rlm.backends.restricted.sizes import estimate_repr

#: Python's own builtins that model code gets as they are.
_AS_THEY_ARE = (
    "None",
    "False",
    "True",
    "Ellipsis",
    "NotImplemented",
    "abs",
    "all",
    "any",
    "bool",
    "callable",
    "chr",
    "complex",
    "dict",
    "divmod",
    "enumerate",
    "float",
    "frozenset",
    "hash",
    "hex",
    "id",
    "isinstance",
    "issubclass",
    "len",
    "list",
    "next",
    "object",
    "oct",
    "ord",
    "property",
    "reversed",
    "set",
    "slice",
    "staticmethod",
    "classmethod",
    "super",
    "tuple",
    "zip",
    "bin",
)
#: The exception classes model code may raise and catch.
_EXCEPTIONS = (
    "ArithmeticError",
    "AssertionError",
    "AttributeError",
    "BufferError",
    "EOFError",
    "Exception",
    "FloatingPointError",
    "ImportError",
    "IndexError",
    "KeyError",
    "LookupError",
    "MemoryError",
    "ModuleNotFoundError",
    "NameError",
    "NotImplementedError",
    "OSError",
    "OverflowError",
    "RecursionError",
    "ReferenceError",
    "RuntimeError",
    "StopIteration",
    "SyntaxError",
    "TypeError",
    "TimeoutError",
    "UnboundLocalError",
    "UnicodeDecodeError",
    "UnicodeEncodeError",
    "UnicodeError",
    "UnicodeTranslateError",
    "ValueError",
    "ZeroDivisionError",
    "Warning",
    "UserWarning",
    "DeprecationWarning",
    "RuntimeWarning",
    "IndentationError",
)


def make_builtins(g: Guards) -> dict[str, Any]:
    """The builtins of one namespace epoch, built on its guards."""
    names: dict[str, Any] = {name: getattr(builtins, name) for name in _AS_THEY_ARE}
    names.update({name: getattr(builtins, name) for name in _EXCEPTIONS})
    names.update(_constructors(g))
    names.update(_loops(g))
    names.update(_arithmetic(g))
    names.update(_introspection(g))
    names.update(
        {
            "__import__": _importer(g),
            "__build_class__": builtins.__build_class__,
            "__name__": "sandbox",
            "__metaclass__": g.make_class,
        }
    )
    names.update(_rewriter_hooks(g))
    return names


def _constructors(g: Guards) -> dict[str, Any]:
    """``str``, ``int``, ``bytes``, ``bytearray``: stand-ins that refuse huge results."""
    memory_limit = g.memory_limit

    def check_text_arg(*args: Any, **kwargs: Any) -> None:
        if len(args) == 1 and not kwargs and not isinstance(args[0], str):
            g.check_text("str() of this value", estimate_repr(args[0], memory_limit))

    def check_int_arg(value: Any = 0, *args: Any, **kwargs: Any) -> None:
        # Python limits str->int conversion to 4300 digits unless the host lifted
        # the limit; beyond it the conversion is quadratic C work.
        if isinstance(value, (str, bytes, bytearray)) and len(value) > MAX_INT_DIGITS:
            raise ValueError(
                f"int(): strings of more than {MAX_INT_DIGITS:,} digits are not allowed"
            )

    def check_bytes_arg(source: Any = None, *args: Any, **kwargs: Any) -> None:
        if isinstance(source, int) and not isinstance(source, bool):
            g.refuse_size(f"bytes({source:,})", source)

    return {
        "str": g.standin(str, check_text_arg),
        "int": g.standin(int, check_int_arg),
        "bytes": g.standin(bytes, check_bytes_arg),
        "bytearray": g.standin(bytearray, check_bytes_arg),
    }


def _loops(g: Guards) -> dict[str, Any]:
    """The builtins that loop in C, as versions that pass through Python frames."""

    def sandbox_sum(iterable: Iterable[Any], /, start: Any = 0) -> Any:
        if isinstance(start, (int, float, complex, decimal.Decimal, fractions.Fraction)):
            return sum(iterable, start)
        if isinstance(start, (str, bytes, bytearray)):
            return sum(iterable, start)  # raises the usual TypeError
        # Lists, tuples and the like: added in Python, so a long sum can be stopped.
        total = start
        for item in iterable:
            total = total + item
        return total

    def sandbox_iter(obj: Any, *sentinel: Any) -> Iterator[Any]:
        g.check()
        if sentinel:
            return checkpointed(iter(python_level(obj), *sentinel))
        return iter(obj)

    def sandbox_map(function: Any, iterable: Any, /, *iterables: Any) -> Iterator[Any]:
        if iterables:
            return (function(*args) for args in zip(iterable, *iterables, strict=False))
        return (function(x) for x in iterable)

    def sandbox_filter(function: Any, iterable: Any, /) -> Iterator[Any]:
        if function is None:
            return (x for x in iterable if x)
        return (x for x in iterable if function(x))

    def sandbox_sorted(iterable: Any, /, *, key: Any = None, reverse: bool = False) -> list[Any]:
        return sorted(iterable, key=python_level(key), reverse=reverse)

    def sandbox_min(*args: Any, **kwargs: Any) -> Any:
        if "key" in kwargs:
            kwargs["key"] = python_level(kwargs["key"])
        return min(*args, **kwargs)

    def sandbox_max(*args: Any, **kwargs: Any) -> Any:
        if "key" in kwargs:
            kwargs["key"] = python_level(kwargs["key"])
        return max(*args, **kwargs)

    return {
        "range": safe_range,
        "sum": sandbox_sum,
        "iter": sandbox_iter,
        "map": sandbox_map,
        "filter": sandbox_filter,
        "sorted": sandbox_sorted,
        "min": sandbox_min,
        "max": sandbox_max,
    }


def _arithmetic(g: Guards) -> dict[str, Any]:
    """``pow`` and ``round``, refusing results too big to compute in one C call."""

    def sandbox_pow(base: Any, exp: Any, mod: Any = None) -> Any:
        g.check()
        g.check_pow(base, exp, mod)
        return pow(base, exp, mod)

    def sandbox_round(number: Any, ndigits: Any = None) -> Any:
        if (
            ndigits is not None
            and not isinstance(number, float)
            and isinstance(ndigits, int)
            and abs(ndigits) > MAX_DECIMAL_EXPONENT
        ):
            raise ValueError(
                f"round(): ndigits must be within ±{MAX_DECIMAL_EXPONENT:,} in the sandbox"
            )
        return round(number) if ndigits is None else round(number, ndigits)

    return {"pow": sandbox_pow, "round": sandbox_round}


def _introspection(g: Guards) -> dict[str, Any]:
    """``dir``, ``type``, ``getattr`` and friends, through the guards."""

    def sandbox_dir(*obj: Any) -> list[str]:
        if not obj:
            raise TypeError("dir() needs an argument in the sandbox")
        return [n for n in dir(obj[0]) if not is_blocked_name(n)]

    def sandbox_type(*args: Any) -> Any:
        if len(args) != 1:
            raise TypeError("type() takes exactly one argument in the sandbox")
        return g.type_of(args[0])

    sandbox_type.__name__ = sandbox_type.__qualname__ = "type"

    def sandbox_getattr(obj: Any, name: Any, *default: Any) -> Any:
        return g.getattr(obj, name, *default)

    return {
        "dir": sandbox_dir,
        "type": sandbox_type,
        "getattr": sandbox_getattr,
        "hasattr": g.hasattr,
        "setattr": g.setattr,
        "delattr": g.delattr,
        "repr": g.repr,
        "ascii": g.ascii,
        "format": g.format,
    }


def _importer(g: Guards) -> Any:
    """``__import__``: the allowed modules, as the epoch's read-only views."""

    def sandbox_import(
        name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0
    ) -> Any:
        g.check()
        if level != 0 or not isinstance(name, str):
            raise ImportError("relative imports are not available in the sandbox")
        root = name.partition(".")[0]
        if name not in ALLOWED_MODULES:
            raise ImportError(
                f"module {name!r} is not available in the sandbox; you may import: "
                + ", ".join(ALLOWED_MODULES),
                name=root,
            )
        return g.module(name)

    return sandbox_import


def _rewriter_hooks(g: Guards) -> dict[str, Any]:
    """The names RestrictedPython's rewritten code (and the compile policy's) calls."""

    def print_factory(_getattr_: Any = None) -> PrintHandle:
        return PrintHandle(g)

    return {
        "_getattr_": g.getattr,
        "_getitem_": g.getitem,
        "_getiter_": g.getiter,
        "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
        "_unpack_sequence_": guarded_unpack_sequence,
        "_write_": g.write,
        "_inplacevar_": g.inplace,
        "_apply_": lambda f, *a, **k: f(*a, **k),
        "_print_": print_factory,
        "_rlm_binop_": g.binop,
        "_rlm_format_": g.format_value,
        "_rlm_catch_": g.catch,
        "_rlm_aug_item_": g.aug_item,
        "_rlm_aug_attr_": g.aug_attr,
        "_rlm_display_": g.display,
    }
