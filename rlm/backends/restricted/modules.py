"""The modules model code may import, and the read-only views it gets of them.

Real modules lead to other modules (``statistics.sys``, ``json.decoder.re``) and to
``__builtins__`` through their functions' globals, so model code never holds one: an
``import`` hands out a :class:`ModuleView` carrying only the module's public
functions, classes and constants, minus the ones listed in ``_DENIED_ATTRS``, and
with the guarded replacements of :mod:`.module_overrides` in place (the views are
built per epoch by :mod:`.epoch`).
"""

from __future__ import annotations

import sys
import types
from typing import Any, NoReturn

#: Modules model code may import, shown in the ImportError for anything else.
ALLOWED_MODULES = (
    "bisect",
    "collections",
    "datetime",
    "decimal",
    "difflib",
    "fractions",
    "functools",
    "heapq",
    "itertools",
    "json",
    "math",
    "random",
    "re",
    "statistics",
    "string",
    "textwrap",
    "unicodedata",
)


class ModuleView:
    """A read-only stand-in for an allowed module: named public attributes, nothing else.

    Real modules lead to other modules (``statistics.sys``, ``json.decoder.re``,
    ``textwrap.re``) and to ``__builtins__`` through their functions' globals; a view
    carries only the chosen functions, classes and constants.
    """

    __slots__ = ("_attrs", "_name")

    def __init__(self, name: str, attrs: dict[str, Any]) -> None:
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_attrs", attrs)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._attrs[name]
        except KeyError:
            pass
        raise AttributeError(f"module {self._name!r} has no attribute {name!r} in the sandbox")

    def __setattr__(self, name: str, value: Any) -> NoReturn:
        raise TypeError(f"module {self._name!r} is read-only in the sandbox")

    def __delattr__(self, name: str) -> NoReturn:
        self.__setattr__(name, None)

    def __dir__(self) -> list[str]:
        return sorted(self._attrs)

    def __repr__(self) -> str:
        return f"<module {self._name!r} (sandboxed)>"


#: Public names of allowed modules that are left out, and why.
_DENIED_ATTRS: dict[str, set[str]] = {
    # template() is deprecated; DEBUG makes the compiler print to the host's stdout.
    "re": {"template", "TEMPLATE", "T", "DEBUG", "Scanner"},
    # Formatter.get_field walks attributes named in the format string.
    "string": {"Formatter"},
    # singledispatch evaluates string annotations with eval(); update_wrapper/wraps
    # copy attributes named by the caller (e.g. __globals__) between objects.
    "functools": {
        "singledispatch",
        "singledispatchmethod",
        "update_wrapper",
        "wraps",
        "RLock",
        "GenericAlias",
        "get_cache_token",
        "recursive_repr",
        "namedtuple",
        "WRAPPER_ASSIGNMENTS",
        "WRAPPER_UPDATES",
    },
    # Re-exports of other modules' names.
    "statistics": {
        "Counter",
        "Decimal",
        "Fraction",
        "bisect_left",
        "bisect_right",
        "defaultdict",
        "erf",
        "exp",
        "fabs",
        "fsum",
        "groupby",
        "hypot",
        "log",
        "mul",
        "namedtuple",
        "reduce",
        "repeat",
        "sqrt",
        "tau",
    },
    "fractions": {"Decimal"},
    "datetime": {"datetime_CAPI"},
    "difflib": {"GenericAlias"},
    # setcontext would change the context of the (shared) worker thread.
    "decimal": {"setcontext", "HAVE_CONTEXTVAR", "HAVE_THREADS"},
    "random": {"getstate", "setstate"},
    # UCD objects have their own normalize(), without the size check.
    "unicodedata": {"UCD", "ucd_3_2_0"},
}


def module_attributes(name: str) -> dict[str, Any]:
    """The public attributes of the allowed module ``name``, before any override."""
    module = sys.modules.get(name) or __import__(name)
    denied = _DENIED_ATTRS.get(name, set())
    attrs: dict[str, Any] = {}
    for attr in dir(module):
        if attr.startswith("_") or attr in denied:
            continue
        value = getattr(module, attr)
        if isinstance(value, types.ModuleType):
            continue
        if (
            isinstance(value, type)
            and issubclass(value, BaseException)
            and not issubclass(value, Exception)
        ):
            continue
        attrs[attr] = value
    return attrs
