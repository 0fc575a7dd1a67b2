"""The guards: the functions RestrictedPython's rewritten cell code calls.

RestrictedPython rewrites every attribute, item, iteration and write in a cell into a
call to a guard function (``_getattr_``, ``_getitem_``, ``_write_``, ...), and the
compile policy (:mod:`.policy`) adds calls for operators, f-string fields,
``except`` clauses and the trailing expression. :class:`Guards` supplies them all.
Everything is built per namespace *epoch* (see :mod:`.epoch`), so a namespace thrown
away after a stuck cell keeps guards of its own that refuse to run anything ever
again.

Two facts shape the design:

- Every object model code can reach must lead nowhere else: no underscore
  attributes, no frames, code, tracebacks or real modules, whatever the route
  (``getattr`` with a computed name, ``str.format`` field lookups, a stdlib helper
  that copies attributes), and no builtin that compiles or imports
  (:mod:`.blocked`).
- The cell runs in a thread of the host process. A thread can be stopped (an
  exception injected into it) only while it runs Python bytecode; C code that loops
  or allocates without returning to the interpreter holds the GIL and stalls the
  whole host. So the sources of long C-level loops (huge ranges, ``itertools``,
  ``iter(callable, sentinel)``, ``map``) hand out Python-level iterators
  (:mod:`.iteration`), and the operations that can build a huge object in one C
  call (``*``, ``**``, ``<<``, ``str.join``, padding, ``%``/format widths, ``repr``
  of shared references, ...) check the size of what they would build first
  (:mod:`.sizes`, :mod:`.methods`).
"""

from __future__ import annotations

import collections
import copy
import decimal
import fractions
import operator
import random
import re
import time
import types
import weakref
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

from RestrictedPython.transformer import ALLOWED_FUNC_NAMES

from rlm.backends.restricted.blocked import (
    BLOCKED_TYPES,
    DANGEROUS_IDS,
    MUTABLE_CONTAINER_TYPES,
    PLAIN_TYPES,
    READABLE_DUNDERS,
    deny,
    is_blocked_name,
    is_format_method,
)
from rlm.backends.restricted.limits import MAX_FORMAT_WIDTH, MAX_INT_DIGITS
from rlm.backends.restricted.methods import WRAPPED_METHOD_NAMES, wrap_method
from rlm.backends.restricted.modules import ModuleView
from rlm.backends.restricted.output import OutputSink
from rlm.backends.restricted.sizes import SizeLimits, estimate_repr
from rlm.backends.restricted.stops import SandboxStop


class Guards(SizeLimits):
    """The guard functions, builtins and module views of one namespace epoch.

    ``stop`` is set (to a SandboxStop subclass) by the host when the running cell
    must end; from then on every guard raises it, so model code that would
    swallow one injected exception meets another at its next guarded step.
    """

    def __init__(self, *, memory_limit: int, output_limit: int) -> None:
        super().__init__(memory_limit)
        self.stop: type[SandboxStop] | None = None
        #: When the running job must end (time.monotonic()), set by the host.
        self.deadline = 0.0
        #: Until when the job is inside a C call that ends by itself (a regex with a
        #: timeout, run without the GIL): the host waits for it rather than give up.
        self.busy_until = 0.0
        self.output = OutputSink(output_limit)
        self.model_classes: weakref.WeakSet[type] = weakref.WeakSet()
        self.random = random.Random()
        self._standins: dict[type, type] = {}
        # Built on these guards, so put in place by :func:`~.epoch.new_guards`: the
        # builtins model code sees, the module views it imports, and (by the real
        # type's id) the stand-ins handed out in place of real types.
        self.builtins: dict[str, Any] = {}
        self.module: Callable[[str], ModuleView] = _no_modules
        self.substitutes: dict[int, Any] = {}

    # -- stopping ---------------------------------------------------------------------

    def check(self) -> None:
        stop = self.stop
        if stop is not None:
            raise stop()

    def time_left(self) -> float:
        return max(self.deadline - time.monotonic(), 0.001)

    # -- text ---------------------------------------------------------------------------

    def to_str(self, obj: Any) -> str:
        """``str(obj)`` for print and formatting, refusing what would be huge."""
        t = type(obj)
        if t is str:
            same: str = obj
            return same
        if t is int and obj.bit_length() > MAX_INT_DIGITS * 3.33:
            raise ValueError(
                f"converting an int of more than {MAX_INT_DIGITS:,} digits to text is not "
                "allowed; use hex() for huge numbers"
            )
        if t is int or t is float or t is bool or obj is None:
            return str(obj)
        if isinstance(obj, str):
            return str.__str__(obj)
        self.check_text("converting this value to text", estimate_repr(obj, self.memory_limit))
        text = str(obj)
        return text if type(text) is str else str.__str__(text)

    # -- attribute and item access ----------------------------------------------------------

    def getattr(self, obj: Any, name: Any, *default: Any) -> Any:
        stop = self.stop
        if stop is not None:
            raise stop()
        if type(name) is not str:
            raise TypeError("attribute name must be a str")
        if is_blocked_name(name):
            if name in READABLE_DUNDERS and type(obj) not in BLOCKED_TYPES:
                text = getattr(obj, name, None)
                if text is None or type(text) is str:
                    return text
            if default:
                return default[0]
            deny(f'"{name}" is not accessible in the sandbox')
        tobj = type(obj)
        if tobj in BLOCKED_TYPES:
            deny(f"{tobj.__name__} objects are not accessible in the sandbox")
        if name in ("format", "format_map") and (
            isinstance(obj, str) or (isinstance(obj, type) and issubclass(obj, str))
        ):
            deny("str.format is not available in the sandbox; use f-strings or %")
        if name == "obj" and isinstance(obj, BaseException):
            deny('"obj" is not accessible in the sandbox')
        try:
            value = getattr(obj, name)
        except AttributeError:
            if default:
                return default[0]
            message = f"{tobj.__name__!r} object has no attribute {name!r}"
        else:
            tvalue = type(value)
            if tvalue is types.BuiltinMethodType and is_format_method(value):
                # str.format reached some other way, e.g. through super().
                deny("str.format is not available in the sandbox; use f-strings or %")
            if tvalue in MUTABLE_CONTAINER_TYPES and not self.is_model(obj):
                # A container held by a host class or module is shared by every
                # session (and the host): model code gets its own copy to change.
                return copy.copy(value)
            if name in WRAPPED_METHOD_NAMES:
                value = wrap_method(self, obj, name, value)
            return self._checked(value)
        raise AttributeError(message)

    def is_model(self, obj: Any) -> bool:
        """Whether ``obj`` is a class model code defined, or an instance of one."""
        return type(obj) in self.model_classes or (
            isinstance(obj, type) and obj in self.model_classes
        )

    def hasattr(self, obj: Any, name: Any) -> bool:
        try:
            self.getattr(obj, name)
        except (AttributeError, NotImplementedError):
            return False
        return True

    def _checked(self, value: Any) -> Any:
        t = type(value)
        if t in PLAIN_TYPES:
            return value
        if t in BLOCKED_TYPES or id(value) in DANGEROUS_IDS:
            deny("this object is not accessible in the sandbox")
        if isinstance(value, type):
            substitute = self.substitutes.get(id(value))
            if substitute is not None:
                return substitute
        return value

    def getitem(self, obj: Any, key: Any) -> Any:
        stop = self.stop
        if stop is not None:
            raise stop()
        value = obj[key]
        return value if type(value) in PLAIN_TYPES else self._checked(value)

    def getiter(self, obj: Any) -> Iterator[Any]:
        stop = self.stop
        if stop is not None:
            raise stop()
        return iter(obj)

    def writable(self, obj: Any) -> bool:
        return isinstance(obj, (dict, list, set, bytearray, collections.deque)) or self.is_model(
            obj
        )

    def write(self, obj: Any) -> Any:
        stop = self.stop
        if stop is not None:
            raise stop()
        if (
            type(obj) in MUTABLE_CONTAINER_TYPES
            or self.writable(obj)
            or isinstance(obj, ModuleView)
        ):  # a view refuses by itself
            return obj
        return _ReadOnly(obj)

    def setattr(self, obj: Any, name: Any, value: Any) -> None:
        if type(name) is not str or is_blocked_name(name):
            deny(f"attribute {name!r} cannot be set in the sandbox")
        setattr(self.write(obj), name, value)

    def delattr(self, obj: Any, name: Any) -> None:
        if type(name) is not str or is_blocked_name(name):
            deny(f"attribute {name!r} cannot be deleted in the sandbox")
        delattr(self.write(obj), name)

    # -- operators --------------------------------------------------------------------------

    def binop(self, op: str, a: Any, b: Any) -> Any:
        stop = self.stop
        if stop is not None:
            raise stop()
        if op == "*":
            self.check_mult(a, b)
            return a * b
        if op == "**":
            self.check_pow(a, b)
            return a**b
        if op == "<<":
            if type(a) in (int, bool) and type(b) in (int, bool) and b > 0:
                self.check_int_bits(f"x << {b}", a.bit_length() + b)
            elif isinstance(a, int) and isinstance(b, int) and b > 0:
                self.check_int_bits("x << n", int(a).bit_length() + int(b))
            return a << b
        # "%"
        if isinstance(a, (str, bytes, bytearray)):
            self.check_percent(a, b)
        return a % b

    def inplace(self, op: str, x: Any, y: Any) -> Any:
        return self._aug_value(op, x, y)

    def aug_item(self, obj: Any, key: Any, op: str, value: Any) -> None:
        if type(obj) in MUTABLE_CONTAINER_TYPES and op == "+=":  # counts[k] += 1, the common case
            stop = self.stop
            if stop is not None:
                raise stop()
            obj[key] += value
            return
        target = self.write(obj)
        current = self.getitem(obj, key)
        target[key] = self._aug_value(op, current, value)

    def aug_attr(self, obj: Any, name: str, op: str, value: Any) -> None:
        current = self.getattr(obj, name)
        self.setattr(obj, name, self._aug_value(op, current, value))

    def _aug_value(self, op: str, current: Any, value: Any) -> Any:
        binary = op[:-1]
        if binary in ("*", "**", "<<", "%"):
            if binary == "*":
                self.check_mult(current, value)
                return _INPLACE[op](current, value)
            return self.binop(binary, current, value)
        self.check()
        return _INPLACE[op](current, value)

    def format_value(self, value: Any, conversion: int, spec: str) -> str:
        stop = self.stop
        if stop is not None:
            raise stop()
        if conversion == ord("r"):
            value = self.repr(value)
        elif conversion == ord("a"):
            value = self.ascii(value)
        elif conversion == ord("s"):
            value = self.to_str(value)
        return self.format(value, spec)

    def format(self, value: Any, spec: Any = "") -> str:
        if not isinstance(spec, str):
            raise TypeError("format() argument 2 must be str")
        if spec:
            widths = [int(n) for n in re.findall(r"\d+", spec)]
            widest = max(widths, default=0)
            if widest > MAX_FORMAT_WIDTH:
                raise MemoryError(
                    f"a format width or precision of {widest:,} is over the sandbox's limit "
                    f"of {MAX_FORMAT_WIDTH:,}"
                )
            if isinstance(value, decimal.Decimal) and value.is_finite():
                self.check_text("formatting this Decimal", abs(value.adjusted()) + widest)
        elif type(value) is str:
            return value
        if not isinstance(value, (str, int, float, complex, decimal.Decimal, fractions.Fraction)):
            self.check_text("formatting this value", estimate_repr(value, self.memory_limit))
        text = format(value, spec)
        return text if type(text) is str else str.__str__(text)

    def repr(self, value: Any) -> str:
        self.check()
        self.check_text("repr() of this value", estimate_repr(value, self.memory_limit))
        text = repr(value)
        return text if type(text) is str else str.__str__(text)

    def ascii(self, value: Any) -> str:
        self.check()
        # ascii() escapes each non-ASCII character in up to 10 characters.
        self.check_text("ascii() of this value", 10 * estimate_repr(value, self.memory_limit))
        return ascii(value)

    def display(self, value: Any) -> None:
        """Show a cell's trailing expression, like a REPL."""
        if value is not None:
            sink = self.output
            if not sink.full:
                sink.write(self.repr(value) + "\n")

    def catch(self, spec: Any) -> Any:
        """What an ``except`` clause may name: Exception subclasses, never a stop."""
        stop = self.stop
        if stop is not None:
            raise stop()
        classes = spec if isinstance(spec, tuple) else (spec,)
        for cls in classes:
            if not (isinstance(cls, type) and issubclass(cls, Exception)):
                raise TypeError(
                    f"the sandbox only lets 'except' name Exception subclasses, not {cls!r}"
                )
        return spec

    # -- classes ------------------------------------------------------------------------

    def make_class(self, name: str, bases: tuple[Any, ...], namespace: dict[str, Any]) -> type:
        """The metaclass of every class statement in model code."""
        self.check()
        allowed = {"__module__", "__qualname__", "__doc__", "__classcell__", "__annotations__"}
        for key in namespace:
            if key.startswith("_") and key not in allowed and key not in ALLOWED_FUNC_NAMES:
                raise TypeError(f"class attribute {key!r} is not allowed in the sandbox")
        for base in bases:
            if not isinstance(base, type) or issubclass(base, type):
                raise TypeError(f"{base!r} cannot be a base class in the sandbox")
            if issubclass(base, BaseException) and not issubclass(base, Exception):
                raise TypeError("exception classes must derive from Exception in the sandbox")
        cls = type(name, bases, namespace)
        self.model_classes.add(cls)
        return cls

    # -- builtins ---------------------------------------------------------------------------

    def type_of(self, obj: Any) -> Any:
        """``type(obj)``, one argument only; the type of a class is this function itself.

        So ``type(int) is type`` still holds, while no metaclass (which could build
        classes with any dunder method) is ever handed out.
        """
        t = type(obj)
        if issubclass(t, type):
            return self.builtins["type"]
        substitute = self.substitutes.get(id(t))
        return t if substitute is None else substitute

    def standin(self, real: type, check: Callable[..., None]) -> type:
        """A class that ``isinstance``/``issubclass`` treat as ``real``, whose calls are checked.

        Calling it runs ``check(*args, **kwargs)`` and returns a plain ``real`` instance;
        subclasses made from it by model code behave like subclasses of ``real``.
        """
        # Any: its methods are called unbound, with the class as the first argument.
        meta_base: Any = type(real)

        def __call__(cls: type, *args: Any, **kwargs: Any) -> Any:
            if cls is stand:
                check(*args, **kwargs)
                return real(*args, **kwargs)
            return meta_base.__call__(cls, *args, **kwargs)

        # By the MRO rather than isinstance(x, real): for an ABC such as Fraction,
        # the ABC's own check asks its subclasses -- this stand-in among them.
        def __instancecheck__(cls: type, instance: Any) -> bool:
            if cls is stand:
                return real in type(instance).__mro__
            return bool(meta_base.__instancecheck__(cls, instance))

        def __subclasscheck__(cls: type, sub: Any) -> bool:
            if cls is stand:
                return isinstance(sub, type) and real in sub.__mro__
            return bool(meta_base.__subclasscheck__(cls, sub))

        meta = types.new_class(
            f"{real.__name__}_meta",
            (meta_base,),
            exec_body=lambda ns: ns.update(
                __call__=__call__,
                __instancecheck__=__instancecheck__,
                __subclasscheck__=__subclasscheck__,
            ),
        )
        stand: type = meta(real.__name__, (real,), {"__module__": "builtins", "__slots__": ()})
        stand.__qualname__ = real.__qualname__
        self._standins[real] = stand
        return stand


def _no_modules(name: str) -> ModuleView:
    raise ImportError(f"module {name!r} is not available: these guards have no module views")


class _ReadOnly:
    """What ``_write_`` hands back for objects model code may not modify."""

    __slots__ = ("_what",)
    _what: str

    def __init__(self, obj: Any) -> None:
        object.__setattr__(self, "_what", type(obj).__name__)

    def _refuse(self, *_args: Any) -> NoReturn:
        raise TypeError(
            f"{self._what} objects cannot be modified in the sandbox; "
            "build a dict, list or your own class instead"
        )

    __setattr__ = __delattr__ = __setitem__ = __delitem__ = _refuse


_INPLACE: dict[str, Callable[[Any, Any], Any]] = {
    "+=": operator.iadd,
    "-=": operator.isub,
    "*=": operator.imul,
    "/=": operator.itruediv,
    "%=": operator.imod,
    "**=": operator.ipow,
    "<<=": operator.ilshift,
    ">>=": operator.irshift,
    "|=": operator.ior,
    "^=": operator.ixor,
    "&=": operator.iand,
    "//=": operator.ifloordiv,
    "@=": operator.imatmul,
}
