"""Size checks: what would be too big to build in one C call is refused up front."""

from __future__ import annotations

import pytest

from rlm.backends.restricted import RestrictedSandbox
from tests.backends.restricted.support import run


@pytest.mark.parametrize(
    "code",
    [
        "s = 'a' * 10**10",
        "s = [0] * 10**10",
        "s = (1, 2) * 10**10",
        "s = b'x' * 10**10",
        "s = 'ab' * 3 * 10**9",
        "s = 10 ** 10 ** 10",
        "s = 2 ** (2 ** 40)",
        "s = pow(10, 10**10)",
        "s = 1 << 10**10",
        "s = 7\ns **= 10**9",
        "s = 'x'\ns *= 10**10",
        "import math\ns = math.factorial(10**7)",
        "import math\ns = math.comb(10**8, 5 * 10**7)",
        "import math\ns = math.prod([10**4000] * 10**5)",
        "s = bytearray(10**10)",
        "s = bytes(10**10)",
        "s = ' '.ljust(10**10)",
        "s = '1'.zfill(10**10)",
        "s = '\\t'.expandtabs(10**10)",
        "s = 'x' * 10**6\nt = ''.join([s] * 10**4)",
        "s = 'x' * 10**6\nt = s.replace('', s)",
        "s = '%*s' % (10**10, 'x')",
        "s = '%.10000000000f' % 1.0",
        "s = f'{1:>10000000000}'",
        "s = format(1.0, '.10000000000f')",
        "s = 'x' * 10**6\nt = str([s] * 10**5)",
        "s = 'x' * 10**6\nt = repr([s] * 10**5)",
        "s = 'x' * 10**6\nt = f'{[s] * 10**5}'",
        "s = 'x' * 10**6\nprint([s] * 10**5)",
        "import json\ns = 'x' * 10**6\nt = json.dumps([s] * 10**5)",
        "s = (0).to_bytes(10**10, 'big')",
        "import random\ns = random.randbytes(10**10)",
        "import random\ns = random.getrandbits(10**11)",
        "import decimal\ns = int(decimal.Decimal('1e999999999'))",
        "import fractions\ns = fractions.Fraction('1e999999999')",
        "import decimal\nc = decimal.Context(prec=10**9)",
        "s = round(5, -10**9)",
        "import re\ns = re.sub('', 'x' * 10**6, 'y' * 10**5)",
        "import string\ns = 'x' * 10**6\nt = string.Template('$a' * 10**4).substitute(a=s)",
        "import itertools\ns = itertools.product('ab', repeat=10**9)",
        "import itertools\ns = itertools.tee([1], 10**9)",
        "s = int('9' * 100_000)",
        "s = str(7 ** 100_000)",
    ],
)
async def test_huge_allocations_are_refused_up_front(box: RestrictedSandbox, code: str) -> None:
    result = await run(box, code, timeout=20)
    assert result.error is not None, result
    assert not result.timed_out
    last = result.error.strip().splitlines()[-1]
    assert last.startswith(("MemoryError", "ValueError")), result.error
    assert (await run(box, "print('alive')")).stdout == "alive\n"


async def test_decimal_context_stays_bounded(box: RestrictedSandbox) -> None:
    result = await run(box, "import decimal\nd = decimal.Decimal(10) ** 999999")
    assert result.error is not None and "Overflow" in result.error
    ok = await run(box, "print(decimal.Decimal(1) / decimal.Decimal(7))")
    assert ok.stdout == "0.1428571428571428571428571429\n"
