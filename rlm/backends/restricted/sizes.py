"""Size checks: refuse, before the C call, what would be too big to build.

One C call can build a huge object without ever returning to the interpreter --
``"x" * 10**12``, ``10 ** 10**9``, ``" ".join(...)``, ``"%.*f"`` with a huge
precision, ``repr`` of a list holding one big string 10**5 times -- and the thread
cannot be stopped meanwhile. So those operations first estimate what they would
build and raise a ``MemoryError`` (with a message that says what was refused) when
it would not fit the sandbox's memory limit or the bounds in :mod:`.limits`.
:class:`SizeLimits` holds the checks of one namespace epoch; the guards build on it.
"""

from __future__ import annotations

import collections
import decimal
import fractions
import functools
import re
from collections.abc import Callable
from typing import Any

from rlm.backends.restricted.limits import MAX_FORMAT_WIDTH, MAX_INT_BITS

_SEQUENCE_TYPES: tuple[type[Any], ...] = (
    list,
    tuple,
    set,
    frozenset,
    collections.deque,
    type({}.keys()),
    type({}.values()),
    type({}.items()),
)


def estimate_repr(obj: Any, limit: int) -> int:
    """About how many characters ``repr(obj)`` has, or ``limit + 1`` once it exceeds it.

    Counts every occurrence of a shared object, which is what makes
    ``str([big] * 10**5)`` dangerous; each distinct container is walked once.
    """
    memo: dict[int, int] = {}

    def size(o: Any, depth: int) -> int:
        t = type(o)
        if t is str or t is bytes or t is bytearray:
            return len(o) + 3
        if t is int:
            bits: int = o.bit_length()
            return bits // 3 + 2
        if t is float or t is bool or o is None or t is complex:
            return 24
        key = id(o)
        known = memo.get(key)
        if known is not None:
            return known
        if depth > 200:
            return 10
        memo[key] = 5  # a container that contains itself prints as [...]
        if isinstance(o, (str, bytes, bytearray)):
            total = len(o) + 3
        elif isinstance(o, dict):
            total = 16 + len(type(o).__name__)
            for k, v in o.items():
                total += size(k, depth + 1) + size(v, depth + 1) + 4
                if total > limit:
                    break
        elif isinstance(o, _SEQUENCE_TYPES):
            total = 16 + len(type(o).__name__)
            for item in o:
                total += size(item, depth + 1) + 2
                if total > limit:
                    break
        elif isinstance(o, BaseException):
            total = 16 + size(o.args, depth + 1)
        elif isinstance(o, (collections.UserDict, collections.UserList, collections.UserString)):
            total = 16 + size(o.data, depth + 1)
        elif isinstance(o, collections.ChainMap):
            total = 16 + size(o.maps, depth + 1)
        elif isinstance(o, functools.partial):
            total = 32 + size(o.args, depth + 1) + size(o.keywords, depth + 1)
        elif isinstance(o, slice):
            total = 16 + size((o.start, o.stop, o.step), depth + 1)
        elif isinstance(o, int):
            total = o.bit_length() // 3 + 2
        else:
            total = 100
        memo[key] = total
        return total

    return min(size(obj, 0), limit + 1)


class SizeLimits:
    """The size checks of one namespace epoch, against its memory limit."""

    def __init__(self, memory_limit: int) -> None:
        self.memory_limit = memory_limit

    def refuse_size(self, what: str, nbytes: float) -> None:
        if nbytes > self.memory_limit:
            raise MemoryError(
                f"{what} would need about {human(nbytes)}, more than this sandbox's "
                f"{human(self.memory_limit)}; work on smaller pieces"
            )

    def check_int_bits(self, what: str, bits: float) -> None:
        if bits > MAX_INT_BITS:
            raise MemoryError(
                f"{what} would be a number of about {int(bits):,} bits; the sandbox allows "
                f"{MAX_INT_BITS:,} bits per number"
            )

    def check_text(self, what: str, chars: float) -> None:
        # Up to 4 bytes per character: refuse what could not possibly fit.
        self.refuse_size(what, chars)

    def check_mult(self, a: Any, b: Any) -> None:
        ta, tb = type(a), type(b)
        if ta is int and tb is int:
            self.check_int_bits("this product", a.bit_length() + b.bit_length())
            return
        if ta is float or tb is float:
            return
        if isinstance(a, int) and not isinstance(b, int):
            a, b = b, a
        if isinstance(b, int) and not isinstance(a, (int, float, complex)):
            n = int(b)
            if n <= 1:
                return
            if isinstance(a, str):
                per = 1 if a.isascii() else 4
                self.refuse_size(f"repeating a str {n:,} times", len(a) * per * n)
            elif isinstance(a, (bytes, bytearray)):
                self.refuse_size(f"repeating bytes {n:,} times", len(a) * n)
            elif hasattr(type(a), "__len__"):
                self.refuse_size(f"repeating a {type(a).__name__} {n:,} times", len(a) * 8 * n)
            return
        if isinstance(a, fractions.Fraction) or isinstance(b, fractions.Fraction):
            self.check_int_bits("this product", rational_bits(a) + rational_bits(b))
        elif isinstance(a, int) and isinstance(b, int):
            self.check_int_bits("this product", int(a).bit_length() + int(b).bit_length())

    def check_pow(self, a: Any, b: Any, modulus: Any = None) -> None:
        if modulus is not None:
            return
        if isinstance(b, fractions.Fraction) and b.denominator == 1:
            b = b.numerator
        if not isinstance(b, int) or isinstance(a, (float, complex, decimal.Decimal)):
            return
        exponent = abs(int(b))
        if isinstance(a, int):
            base_bits = abs(int(a)).bit_length()
            if base_bits <= 1:  # 0, 1 and -1 stay small whatever the exponent
                return
            self.check_int_bits(f"x ** {exponent}", (base_bits - 1) * exponent)
        elif isinstance(a, fractions.Fraction):
            self.check_int_bits(f"x ** {exponent}", rational_bits(a) * exponent)

    def check_percent(self, fmt: Any, args: Any) -> None:
        text = fmt.decode("latin-1") if isinstance(fmt, (bytes, bytearray)) else fmt
        numbers = [
            int(n)
            for groups in re.findall(r"%(?:\([^)]*\))?[-#0 +]*(\d*)(?:\.(\d*))?", text)
            for n in groups
            if n
        ]
        if "*" in text:
            values = args if isinstance(args, tuple) else (args,)
            numbers += [abs(v) for v in values if type(v) is int]
        widest = max(numbers, default=0)
        if widest > MAX_FORMAT_WIDTH:
            raise MemoryError(
                f"a format width or precision of {widest:,} is over the sandbox's limit "
                f"of {MAX_FORMAT_WIDTH:,}"
            )
        values = args if isinstance(args, tuple) else (args,)
        if isinstance(args, dict):
            values = tuple(args.values())
        estimate = len(text) + sum(estimate_repr(v, self.memory_limit) for v in values)
        self.check_text("this % formatting", estimate)


def human(nbytes: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:,.0f} {unit}" if unit == "bytes" else f"{nbytes:,.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:,.1f} TiB"  # pragma: no cover


def rational_bits(x: Any) -> int:
    if isinstance(x, fractions.Fraction):
        return x.numerator.bit_length() + x.denominator.bit_length()
    if isinstance(x, int):
        return int(x).bit_length()
    return 64


# -- size checks for methods of str/bytes and friends ---------------------------------------


def _char_bytes(s: Any) -> int:
    return 1 if isinstance(s, (bytes, bytearray)) or s.isascii() else 4


def _check_width(g: SizeLimits, s: Any, width: Any = 0, *_: Any) -> None:
    if isinstance(width, int):
        g.refuse_size("padding to this width", int(width) * _char_bytes(s))


def _check_expandtabs(g: SizeLimits, s: Any, tabsize: Any = 8) -> None:
    if isinstance(tabsize, int) and tabsize > 1:
        tabs = s.count("\t" if isinstance(s, str) else b"\t")
        g.refuse_size("expanding tabs", (len(s) + tabs * int(tabsize)) * _char_bytes(s))


def _check_replace(g: SizeLimits, s: Any, old: Any = "", new: Any = "", count: Any = -1) -> None:
    if not hasattr(new, "__len__") or not hasattr(old, "__len__"):
        return
    grow = len(new) - len(old)
    if grow <= 0:
        return
    hits = len(s) + 1 if len(old) == 0 else s.count(old)
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    g.refuse_size("this replace()", (len(s) + hits * grow) * _char_bytes(s))


def _check_join(g: SizeLimits, sep: Any, iterable: Any) -> tuple[Any, ...]:
    items = iterable if isinstance(iterable, (list, tuple)) else list(iterable)
    total = len(sep) * max(len(items) - 1, 0)
    for item in items:
        if hasattr(item, "__len__"):
            total += len(item)
    per = 1 if isinstance(sep, (bytes, bytearray)) else 4
    if isinstance(sep, str) and sep.isascii():
        per = 2  # the items may not be ASCII; be only a little pessimistic
    g.refuse_size("this join()", total * per)
    return (items,)


def _check_translate(g: SizeLimits, s: Any, table: Any = None, *_: Any) -> None:
    if isinstance(table, dict) and table:
        longest = max((len(v) for v in table.values() if hasattr(v, "__len__")), default=1)
        g.refuse_size("this translate()", len(s) * max(longest, 1) * _char_bytes(s))


#: The checks above by method name: each is called with the size limits, the string
#: and the call's arguments; a check that returns something (join) hands back the
#: arguments to call the method with instead.
TEXT_METHOD_CHECKS: dict[str, Callable[..., Any]] = {
    "ljust": _check_width,
    "rjust": _check_width,
    "center": _check_width,
    "zfill": _check_width,
    "expandtabs": _check_expandtabs,
    "replace": _check_replace,
    "join": _check_join,
    "translate": _check_translate,
}
