"""The numbers that bound what one operation in a cell may build or compute.

The cell runs on a thread of the host process, and a thread can be stopped only
between bytecodes: one C call that multiplies huge ints, converts a huge number or
walks a huge range holds the GIL until it ends. These limits keep each such call
short; the guards (:mod:`.guards`, :mod:`.sizes`, :mod:`.builtins`, :mod:`.modules`)
check them before the call is made.
"""

from __future__ import annotations

import decimal

#: Largest int (in bits) one operation may produce: beyond this, C-level arithmetic
#: (a multiplication, a division, a conversion) takes seconds without a checkpoint.
MAX_INT_BITS = 1_000_000
#: Longest digit string ``int()`` converts (Python's own default limit).
MAX_INT_DIGITS = 4300
#: Largest width or precision in a format spec (``f"{x:>N}"``, ``"%.Nf"``).
MAX_FORMAT_WIDTH = 10_000_000
#: Ranges longer than this iterate in Python, so C consumers such as ``sum`` can be
#: stopped; shorter ones are real ``range`` objects (at most ~0.3 s of C work).
REAL_RANGE_LIMIT = 10_000_000
#: Largest decimal exponent a Decimal or Fraction may be built with.
MAX_DECIMAL_EXPONENT = 100_000
#: Largest precision a decimal context may have.
MAX_DECIMAL_PREC = 100_000

#: Largest ``repeat`` x inputs for itertools.product, and ``n`` for itertools.tee: both
#: are allocated up front, in C.
MAX_ITERTOOLS_FANOUT = 100_000


def sandbox_decimal_context() -> decimal.Context:
    """The decimal context cells run in: the default one, with capped exponents."""
    return decimal.Context(prec=28, Emax=MAX_DECIMAL_EXPONENT, Emin=-MAX_DECIMAL_EXPONENT)
