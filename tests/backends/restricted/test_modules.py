"""The allowed modules: read-only views without gadgets, and ``re`` on a time-limited engine."""

from __future__ import annotations

import pytest

from rlm.backends.restricted import ALLOWED_MODULES, RestrictedSandbox
from tests.backends.restricted.support import MARK, refused, run, run_beside_a_ticker


async def test_allowed_modules_work(box: RestrictedSandbox) -> None:
    code = """
import re, json, math, collections, itertools, statistics, string, textwrap
import datetime, functools, heapq, bisect, random, difflib, unicodedata, fractions, decimal
from collections import Counter, defaultdict
out = [
    re.findall(r"\\d+", "a1b22"),
    json.loads(json.dumps({"a": [1, 2]})),
    math.isqrt(17),
    Counter("abca").most_common(1),
    list(itertools.islice(itertools.count(5), 3)),
    statistics.mean([1, 2, 3]),
    string.Template("$x!").substitute(x="hi"),
    textwrap.shorten("hello world again", 12),
    datetime.date(2024, 1, 2).isoformat(),
    functools.reduce(lambda a, b: a + b, [1, 2, 3]),
    heapq.nlargest(2, [3, 1, 4], key=abs),
    bisect.bisect([1, 3, 5], 4),
    difflib.get_close_matches("appel", ["apple", "pear"]),
    unicodedata.name("a"),
    str(fractions.Fraction(1, 3) * 3),
    str(decimal.Decimal("1.10") + decimal.Decimal("2.20")),
    sorted(collections.OrderedDict(b=1, a=2)),
]
r = random.Random(7)
out.append(r.randint(1, 1))
d = defaultdict(list)
d["k"].append(1)
out.append(dict(d))
print(out)
"""
    result = await run(box, code)
    assert result.error is None, result.error
    assert result.stdout == (
        "[['1', '22'], {'a': [1, 2]}, 4, [('a', 2)], [5, 6, 7], 2, 'hi!', 'hello [...]', "
        "'2024-01-02', 6, [4, 3], 2, ['apple'], 'LATIN SMALL LETTER A', '1', '3.30', "
        "['a', 'b'], 1, {'k': [1]}]\n"
    )


@pytest.mark.parametrize(
    "module",
    [
        "os",
        "sys",
        "subprocess",
        "operator",
        "inspect",
        "types",
        "gc",
        "ctypes",
        "importlib",
        "builtins",
        "threading",
        "asyncio",
        "socket",
        "pathlib",
        "collections.abc",
        "json.decoder",
    ],
)
async def test_other_imports_fail_clearly(box: RestrictedSandbox, module: str) -> None:
    error = await refused(box, f"import {module}\nprint('{MARK}')")
    if module == "builtins":  # refused by name before it runs
        assert '"builtins" is a reserved name' in error
        return
    assert "ImportError" in error and f"module {module!r} is not available" in error
    assert "you may import: " + ", ".join(ALLOWED_MODULES) in error


async def test_module_views_leak_no_modules(box: RestrictedSandbox) -> None:
    names = ", ".join(ALLOWED_MODULES)
    code = f"""
import {names}
bad = []
for m in [{names}]:
    for name in dir(m):
        value = getattr(m, name)
        if type(value).__name__ == 'module' or 'module' in repr(type(value)):
            bad.append(name)
print(bad)
"""
    result = await run(box, code)
    assert result.error is None, result.error
    assert result.stdout == "[]\n"


@pytest.mark.parametrize(
    "path",
    [
        "statistics.sys",
        "json.decoder",
        "json.codecs",
        "textwrap.re",
        "datetime.sys",
        "fractions.sys",
        "fractions.re",
        "re.enum",
        "re.functools",
        "collections.abc",
        "string.Formatter",
        "functools.update_wrapper",
        "functools.singledispatch",
        "random.getstate",
    ],
)
async def test_module_views_do_not_carry_modules_or_gadgets(
    box: RestrictedSandbox, path: str
) -> None:
    module = path.split(".")[0]
    error = await refused(box, f"import {module}\nx = {path}\nprint('{MARK}', x)")
    assert "AttributeError" in error


async def test_module_views_are_read_only(box: RestrictedSandbox) -> None:
    assert "read-only" in await refused(box, "import json\njson.loads = print")
    await refused(box, "import json\nsetattr(json, 'loads', print)")
    await refused(box, "import json\ndel json.dumps")


async def test_random_is_the_sessions_own(box: RestrictedSandbox) -> None:
    import random

    random.seed(12345)
    expected = random.random()
    random.seed(12345)
    await run(box, "import random\nrandom.seed(1)\nrandom.random()")
    assert random.random() == expected


@pytest.mark.parametrize(
    "code",
    [
        "import re\nre.search(r'(a|aa)+$', 'a' * 80 + 'b')",
        "import re\np = re.compile(r'(a|aa)+$')\np.findall('a' * 80 + 'b')",
        "import re\nlist(re.finditer(r'(a|aa)+$', 'a' * 80 + 'b'))",
        "import re\nre.sub(r'(a|aa)+$', 'x', 'a' * 80 + 'b')",
        "import re\nwhile True:\n    try:\n        re.match(r'(a|aa)+$', 'a' * 80 + 'b')\n"
        "    except Exception:\n        pass",
    ],
)
async def test_catastrophic_regexes_stop_without_freezing_the_host(
    box: RestrictedSandbox, code: str
) -> None:
    result, ticks = await run_beside_a_ticker(box, code, 1.0, every=0.05)
    assert result.timed_out and not result.state_lost, result
    assert ticks >= 5  # the event loop ran while the regex did
    assert (await run(box, "print('ok')")).stdout == "ok\n"


async def test_patterns_that_stall_pythons_engine_are_fast(box: RestrictedSandbox) -> None:
    code = (
        "import re\n"
        "print(re.match(r'(a+)+$', 'a' * 40 + 'b'), re.search(r'a*a*b', 'a' * 20000),"
        " re.search(r'.*x', 'a' * 20000))"
    )
    result = await run(box, code, timeout=10)
    assert result.stdout == "None None None\n", result


async def test_re_keeps_the_standard_interface(box: RestrictedSandbox) -> None:
    code = r"""
import re
p = re.compile(r'(?P<user>\w+)@(\w+)', re.IGNORECASE)
m = p.search('mail BOB@Host now')
print(m.group('user'), m.groups(), m.span(), m.start(2), p.pattern, p.groups)
print(re.findall(r'\d+', 'a1b22'), re.split(r'[,;]', 'a,b;c'), re.split(r',', 'a,b,c', 1))
print(re.sub(r'(\w)(\d)', r'\2\1', 'a1 b2'), re.subn('a', 'b', 'aaa'), re.escape('a.b'))
print(re.sub('o', lambda m: m.group(0).upper(), 'foo'))
print([x.group() for x in re.finditer('o', 'foo')])
print(re.fullmatch(r'\d+', '123') is not None, re.match('x', 'y'), isinstance(p, re.Pattern))
print(bool(re.search('^b', 'a\nb', re.M)), bool(re.search('a.b', 'a\nb', re.S)))
try:
    re.compile('(')
except re.error:
    print('error caught')
"""
    result = await run(box, code)
    assert result.error is None, result.error
    assert result.stdout.splitlines() == [
        r"BOB ('BOB', 'Host') (5, 13) 9 (?P<user>\w+)@(\w+) 2",
        "['1', '22'] ['a', 'b', 'c'] ['a', 'b,c']",
        r"1a 2b ('bbb', 3) a\.b",
        "fOO",
        "['o', 'o']",
        "True None True",
        "True True",
        "error caught",
    ]
