"""The restricted backend, for real: RestrictedPython, worker threads, injected stops.

Sub-calls go through a real :class:`SessionBridge` to a small fake batcher, so the
bridge's validation and limits apply; the end-to-end tests elsewhere use the real
batcher and the offline model server over HTTP.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.to_thread
import pytest

from rlm.backends.restricted import RestrictedSandbox
from rlm.backends.restricted_guards import ALLOWED_MODULES
from rlm.bridge import SessionBridge
from rlm.errors import SandboxError, VariableNotFound
from rlm.session import SessionLimits, SessionState
from rlm.subcalls.batcher import SubResult

CANARY = "CANARY-5f1d0c2e-never-reachable"
MARK = "GOT" + "THROUGH"  # built here so no cell's source contains it


class FakeBatcher:
    """Answers prompts at once: ``fail:...`` fails, ``hang`` blocks, shielded, for a while."""

    def __init__(self) -> None:
        self.secret = CANARY
        self.calls: list[list[str]] = []
        self.hang_s = 3.0

    async def run(
        self, session: SessionState, model: str, prompts: list[str], max_concurrent: int | None
    ) -> list[SubResult]:
        self.calls.append(list(prompts))
        if "hang" in prompts:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(self.hang_s)
        if "slow" in prompts:
            await anyio.sleep(30)
        return [
            SubResult(error=p[5:], kind="provider")
            if p.startswith("fail:")
            else SubResult(text=f"echo:{p}")
            for p in prompts
        ]


def make_sandbox(**kwargs: Any) -> tuple[RestrictedSandbox, FakeBatcher, SessionBridge]:
    batcher = FakeBatcher()
    session = SessionState(sub_model="sub", limits=SessionLimits(max_batch_size=5))
    bridge = SessionBridge(batcher, session)  # type: ignore[arg-type]
    kwargs.setdefault("output_limit", 10_000)
    return RestrictedSandbox(bridge, **kwargs), batcher, bridge


@pytest.fixture
async def box() -> AsyncIterator[RestrictedSandbox]:
    sandbox, _batcher, _bridge = make_sandbox()
    await sandbox.start()
    await sandbox.load_context("The capital of Atlantis is Poseidonia.\n" * 10)
    yield sandbox
    await sandbox.close()


async def run(box: RestrictedSandbox, code: str, timeout: float = 10.0) -> Any:
    return await box.execute(code, timeout)


async def run_beside_a_ticker(
    box: RestrictedSandbox, code: str, timeout: float, every: float
) -> tuple[Any, int]:
    """Run a cell while a task ticks every ``every`` s: the ticks show the loop ran."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(every)
            ticks += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        result = await run(box, code, timeout=timeout)
        tg.cancel_scope.cancel()
    return result, ticks


async def refused(box: RestrictedSandbox, code: str, timeout: float = 10.0) -> str:
    """Run an attack: it must end in an error, without printing the marker."""
    result = await run(box, code, timeout)
    assert MARK not in result.stdout, result
    assert result.error, f"expected an error, got {result}"
    return str(result.error)


# -- the basics -----------------------------------------------------------------------


async def test_state_persists_and_print_is_captured(box: RestrictedSandbox) -> None:
    first = await run(box, "x = 41\nprint('hello', x)")
    assert first.stdout == "hello 41\n" and first.error is None
    second = await run(box, "x += 1\nprint(x, len(context) > 0)")
    assert second.stdout == "42 True\n"
    shown = await run(box, "[x, 'y']")
    assert shown.stdout == "[42, 'y']\n"


async def test_functions_and_classes_work_across_cells(box: RestrictedSandbox) -> None:
    await run(
        box,
        "class Counter2:\n"
        "    def __init__(self):\n"
        "        self.n = 0\n"
        "    def bump(self):\n"
        "        self.n += 1\n"
        "        return self.n\n"
        "def twice(f):\n"
        "    f()\n"
        "    return f()\n"
        "c = Counter2()\n",
    )
    result = await run(box, "d = {'k': 1}\nd['k'] += 2\nprint(twice(c.bump), d, type(c).__name__)")
    assert result.error is None, result.error
    assert result.stdout == "2 {'k': 3} Counter2\n"


async def test_output_is_capped_with_a_note(box: RestrictedSandbox) -> None:
    sandbox, _b, _br = make_sandbox(output_limit=1_000)
    await sandbox.start()
    result = await sandbox.execute("for i in range(10_000):\n    print('line', i)", 10)
    assert len(result.stdout) == 1_000 and result.truncated
    assert "output truncated" in result.stderr
    assert result.error is None
    await sandbox.close()


async def test_errors_show_only_the_cells_own_frames(box: RestrictedSandbox) -> None:
    await run(box, "def inner(v):\n    return v['missing']\n")
    result = await run(box, "data = {}\ninner(data)")
    assert result.error is not None
    assert result.error.startswith("Traceback (most recent call last):")
    assert 'File "<cell 2>", line 2, in <module>' in result.error
    assert "return v['missing']" in result.error
    assert result.error.rstrip().endswith("KeyError: 'missing'")
    for host_detail in ("rlm/", "site-packages", "restricted", ".py"):
        assert host_detail not in result.error


async def test_syntax_errors_and_refusals_are_results(box: RestrictedSandbox) -> None:
    bad = await run(box, "x = (")
    assert bad.error is not None and "SyntaxError" in bad.error
    refusal = await run(box, "y = ().__class__")
    assert refusal.error is not None and "__class__" in refusal.error


async def test_load_context_binds_without_copying(box: RestrictedSandbox) -> None:
    big = "x" * (100 * 1024 * 1024)
    await box.load_context(big)
    assert await box.get_variable("context") is big
    result = await run(box, "print(len(context), context[:3])")
    assert result.stdout == f"{len(big)} xxx\n"


async def test_list_and_dict_contexts_are_the_sandboxes_own_copy() -> None:
    sandbox, _b, _br = make_sandbox()
    await sandbox.start()
    docs = {"docs": ["a", "b"], "n": 2}
    await sandbox.load_context(docs)
    result = await sandbox.execute(
        "context['docs'].append('c')\ncontext.clear()\nprint(context)", 5
    )
    assert result.stdout == "{}\n"
    assert docs == {"docs": ["a", "b"], "n": 2}
    with pytest.raises(TypeError):
        await sandbox.load_context(b"bytes")
    with pytest.raises(TypeError):
        await sandbox.load_context({"x": object()})
    await sandbox.close()


async def test_output_with_lone_surrogates_is_valid_utf8(box: RestrictedSandbox) -> None:
    result = await run(box, "print('a\\ud800b')\nraise ValueError('\\udfff')")
    assert result.stdout == "a?b\n"
    result.stdout.encode("utf-8")
    assert result.error is not None
    result.error.encode("utf-8")


async def test_get_variable(box: RestrictedSandbox) -> None:
    await run(box, "s = 'plain text'\nn = [1, 2]\nimport datetime\nd = datetime.date(2024, 1, 2)")
    assert await box.get_variable("s") == "plain text"
    assert await box.get_variable("n") == "[1, 2]"
    assert await box.get_variable("d") == "2024-01-02"
    with pytest.raises(VariableNotFound):
        await box.get_variable("nope")
    with pytest.raises(VariableNotFound):
        await box.get_variable("_print")
    with pytest.raises(VariableNotFound):
        await box.get_variable("__builtins__")


async def test_get_variable_of_a_huge_value_is_capped(box: RestrictedSandbox) -> None:
    await run(box, "big = list(range(100_000))")
    text = await box.get_variable("big")
    assert text.startswith("[0, 1, 2") and "truncated" in text and len(text) < 10_100


async def test_close_twice_and_use_after_close() -> None:
    sandbox, _b, _br = make_sandbox()
    await sandbox.start()
    await sandbox.close()
    await sandbox.close()
    with pytest.raises(SandboxError):
        await sandbox.execute("1", 1)


# -- imports --------------------------------------------------------------------------


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


# -- escapes --------------------------------------------------------------------------

ESCAPES = {
    "subclasses": "print('{m}', ().__class__.__bases__[0].__subclasses__())",
    "subclasses-getattr": (
        "c = getattr((), '__cla' + 'ss__')\nprint('{m}', getattr(c, '__subclasses__')())"
    ),
    "mro": "print('{m}', int.mro()[-1])",
    "mro-getattr": "print('{m}', getattr(int, 'm' + 'ro')())",
    "type-of-class": "t = type(int)\nprint('{m}', t('X', (), {{}}))",
    "type-three-args": "print('{m}', type('X', (), {{}}))",
    "metaclass-keyword": "class X(metaclass=type):\n    pass\nprint('{m}')",
    "metaclass-base": "class M(type(int)):\n    pass\nprint('{m}')",
    "gen-frame-cve": (
        "g = None\nleak = None\ndef test():\n    global g, leak\n"
        "    leak = g.gi_frame.f_back.f_back\n    yield leak\n"
        "g = test()\ng.send(None)\nprint('{m}', leak.f_builtins)"
    ),
    "gen-frame-dynamic": (
        "def gen():\n    yield 1\ng = gen()\nnext(g)\n"
        "f = getattr(g, 'gi_' + 'frame')\nprint('{m}', getattr(f, 'f_' + 'back'))"
    ),
    "genexp-self-frame": (
        "q = (getattr(q, 'gi_' + 'frame') for x in (1,))\nfr = list(q)[0]\nprint('{m}', fr)"
    ),
    "gen-code": "g = (x for x in [1])\nc = getattr(g, 'gi_' + 'code')\nprint('{m}', c)",
    "async-def": "async def f():\n    pass\nprint('{m}', getattr(f(), 'cr_' + 'frame'))",
    "traceback-frame": (
        "try:\n    1 / 0\nexcept Exception as e:\n"
        "    tb = getattr(e, '__trace' + 'back__')\n    print('{m}', tb.tb_frame)"
    ),
    "traceback-frame-static": (
        "try:\n    1 / 0\nexcept Exception as e:\n    print('{m}', e.__traceback__.tb_frame)"
    ),
    "exception-context": (
        "try:\n    1 / 0\nexcept Exception as e:\n    print('{m}', getattr(e, '__context__'))"
    ),
    "attribute-error-obj": (
        "import json\ntry:\n    json.nothing\nexcept AttributeError as e:\n    print('{m}', e.obj)"
    ),
    "format-class": "print('{m}', '{{0.__class__}}'.format(1))",
    "format-globals": "print('{m}', '{{0.__globals__}}'.format(llm_query))",
    "format-map": "print('{m}', '{{x.__class__}}'.format_map({{'x': 1}}))",
    "format-unbound": "print('{m}', str.format('{{0.__class__}}', 1))",
    "format-getattr": "f = getattr('{{0.__class__}}', 'for' + 'mat')\nprint('{m}', f(1))",
    "format-llmerror": "print('{m}', LLMError.format('{{0.__class__}}', 1))",
    "formatter": "import string\nprint('{m}', string.Formatter().format('{{0.__class__}}', 1))",
    "formatter-get-field": (
        "import string\nprint('{m}', string.Formatter().get_field('0.__class__', [1], {{}}))"
    ),
    "fstring-dunder": "print(f'{m} {{(1).__class__}}')",
    "query-globals": "print('{m}', getattr(llm_query, '__glo' + 'bals__'))",
    "query-closure": "print('{m}', getattr(llm_query, '__clo' + 'sure__'))",
    "query-code": "print('{m}', getattr(llm_query, '__co' + 'de__'))",
    "query-func-globals": "print('{m}', getattr(llm_query, 'func_' + 'globals'))",
    "query-static": "print('{m}', llm_query.__globals__['__builtins__'])",
    "batch-defaults": "print('{m}', getattr(llm_batch, '__defaults__'))",
    "print-self": "print('{m}', getattr(print, '__self__'))",
    "builtins-name": "print('{m}', __builtins__)",
    "builtin-self": "print('{m}', getattr(len, '__self__'))",
    "import-dunder": "os = __import__('os')\nprint('{m}', os)",
    "eval": "print('{m}', eval('1'))",
    "exec": "exec('x = 1')\nprint('{m}')",
    "compile": "print('{m}', compile('1', 'x', 'eval'))",
    "open": "print('{m}', open('/etc/passwd').read())",
    "globals": "print('{m}', globals())",
    "vars": "print('{m}', vars())",
    "dunder-name-store": "__import__ = 1\nprint('{m}')",
    "decorator-globals": (
        "def deco(f):\n    return getattr(f, '__glo' + 'bals__')\n"
        "@deco\ndef g():\n    pass\nprint('{m}', g)"
    ),
    "decorator-class-dict": (
        "def deco(c):\n    return getattr(c, '__di' + 'ct__')\n"
        "@deco\nclass C:\n    pass\nprint('{m}', C)"
    ),
    "class-dunder-method": (
        "class C:\n    def __getattr__(self, n):\n        return n\nprint('{m}')"
    ),
    "class-dunder-setattr": "class C:\n    pass\nsetattr(C, '__repr__', lambda s: 1)\nprint('{m}')",
    "class-base-exception": ("class E(BaseException):\n    pass\nprint('{m}')"),
    "try-star": "try:\n    pass\nexcept* Exception:\n    pass\nprint('{m}')",
    "bare-except": "try:\n    pass\nexcept:\n    pass\nprint('{m}')",
    "except-base-exception": ("try:\n    1 / 0\nexcept (Exception, type(None)):\n    print('{m}')"),
    "yield-in-try": (
        "def g():\n    try:\n        yield 1\n    finally:\n        pass\nprint('{m}')"
    ),
    "finally-continue": (
        "for i in range(3):\n    try:\n        pass\n    finally:\n        continue\nprint('{m}')"
    ),
    "finally-return": (
        "def f():\n    try:\n        pass\n    finally:\n        return 1\nprint('{m}')"
    ),
    "write-function-attr": "llm_query.x = 1\nprint('{m}')",
    "setattr-dunder": "class C:\n    pass\nc = C()\nsetattr(c, '__class__', int)\nprint('{m}')",
    "dir-underscore": "print('{m}', [n for n in dir(llm_query) if n.startswith('_')] or 1 / 0)",
    "exception-group": "print('{m}', ExceptionGroup, BaseException, SystemExit, KeyboardInterrupt)",
    "super-dunder": "print('{m}', getattr(super(int, 1), '__self_class__'))",
    "format-via-super": (
        "class S(str):\n    pass\ns = S('{{0.__class__}}')\nprint('{m}', super(S, s).format(1))"
    ),
    "format-via-llmerror-super": (
        "e = LLMError('{{0.__class__}}', 'k')\nprint('{m}', super(LLMError, e).format(1))"
    ),
    "format-map-via-super": (
        "class S(str):\n    pass\nf = getattr(super(S, S('{{x.__class__}}')), 'format_map')\n"
        "print('{m}', f({{'x': 1}}))"
    ),
    "functools-partial-func": (
        "import functools\np = functools.partial(getattr, llm_query)\n"
        "print('{m}', p('__globals__'))"
    ),
    "namedtuple-module": (
        "import collections\nT = collections.namedtuple('T', ['__class__'])\nprint('{m}')"
    ),
}


@pytest.mark.parametrize("name", sorted(ESCAPES))
async def test_escape_classics_are_blocked(box: RestrictedSandbox, name: str) -> None:
    await refused(box, ESCAPES[name].format(m=MARK))


# Objects that calls hand out, walked too (module attributes alone miss them).
INSTANCES = r"""
class Mine:
    def __init__(self):
        self.v = 1
def gen():
    yield 1
def fn(x):
    return x
g = gen()
next(g)
try:
    1 / 0
except Exception as caught:
    error = caught
queue += [
    re.compile(r'(\w)'), re.search(r'(\w)', 'ab'), collections.Counter('ab'),
    collections.deque([1]), collections.defaultdict(list), collections.OrderedDict(a=1),
    collections.ChainMap({}), collections.namedtuple('T', 'a')(1), datetime.datetime(2024, 1, 1),
    datetime.timedelta(1), decimal.Decimal('1.5'), decimal.getcontext(), decimal.localcontext(),
    fractions.Fraction(1, 3), g, (x for x in [1]), error, LLMError('m', 'k'), Mine(), Mine,
    textwrap.TextWrapper(), difflib.SequenceMatcher(None, 'a', 'b'), difflib.Differ(),
    random.Random(1), json.JSONDecoder(), json.JSONEncoder(), statistics.NormalDist(),
    string.Template('$x'), functools.partial(fn, 1), functools.lru_cache(fn), fn,
    functools.cached_property(fn), itertools.count(), iter([1]), iter(range(3)), range(10**9),
    map(fn, [1]), zip([1]), enumerate([1]), reversed([1]), {1: 2}.keys(), {1: 2}.items(),
    property(fn), staticmethod(fn), classmethod(fn),
    super(Mine, Mine()), slice(1, 2), object(), type(fn), type(g), type(error), type(range(1)),
    'text'.upper, [].append, {}.get, print, sorted,
]
"""


async def test_nothing_reachable_leads_to_the_host(box: RestrictedSandbox) -> None:
    """Walk every attribute and item model code can reach; none is a host object."""
    sandbox, batcher, bridge = make_sandbox()
    await sandbox.start()
    await sandbox.load_context({"k": ["v"]})
    assert sandbox._epoch is not None
    roots = [n for n in sandbox._epoch.guards.builtins if not n.startswith("_")]
    roots = [n for n in roots if n not in ("None", "True", "False")]
    code = f"""
import {", ".join(ALLOWED_MODULES)}
queue = [llm_query, llm_batch, LLMError, RLMCallError, context,
         {", ".join(ALLOWED_MODULES)}, {", ".join(roots)}]
{INSTANCES}
seen = set()
keep = []
kinds = set()
canary = []
while queue and len(seen) < 60000:
    obj = queue.pop()
    if id(obj) in seen:
        continue
    seen.add(id(obj))
    keep.append(obj)
    kinds.add(type(obj).__name__)
    if isinstance(obj, str):
        if 'CANARY' in obj:
            canary.append(obj)
        continue
    if isinstance(obj, (int, float, bytes)):
        continue
    for name in dir(obj):
        try:
            queue.append(getattr(obj, name))
        except Exception:
            pass
    if isinstance(obj, dict):
        queue.extend(list(obj.keys()))
        queue.extend(list(obj.values()))
    elif isinstance(obj, (list, tuple, set, frozenset)):
        queue.extend(list(obj))
ids = ','.join(str(i) for i in seen)
kinds = sorted(kinds)
print(len(seen), canary)
"""
    result = await sandbox.execute(code, 120)
    assert result.error is None, result.error
    count, found = result.stdout.split(" ", 1)
    assert int(count) > 1_000  # the walk went somewhere
    assert found == "[]\n"
    reached = {int(i) for i in (await sandbox.get_variable("ids")).split(",")}
    forbidden = [sandbox, batcher, bridge, bridge.session, batcher.calls, sandbox._epoch]
    forbidden += [sandbox._epoch.guards, sandbox._epoch.namespace, sandbox._epoch.guards.builtins]
    forbidden += [m for m in list(sys.modules.values()) if m is not None]
    forbidden += [vars(m) for m in list(sys.modules.values()) if m is not None]
    forbidden += [eval, exec, compile, open, __import__, globals, vars, type, getattr, setattr]
    leaked = [repr(obj)[:80] for obj in forbidden if id(obj) in reached]
    assert leaked == []
    kinds = await sandbox.get_variable("kinds")
    for kind in ("module", "frame", "code", "traceback", "cell", "function_globals"):
        assert f"'{kind}'" not in kinds
    await sandbox.close()


async def test_host_shared_objects_cannot_be_changed(box: RestrictedSandbox) -> None:
    import textwrap

    before = dict(textwrap.TextWrapper.unicode_whitespace_trans)
    result = await run(
        box,
        "import textwrap, json, collections\n"
        "textwrap.TextWrapper.unicode_whitespace_trans.clear()\n"
        "textwrap.TextWrapper().unicode_whitespace_trans.update({1: 2})\n"
        "try:\n    textwrap.TextWrapper.width = 1\nexcept TypeError as e:\n    print(e)\n"
        "try:\n    collections.Counter.most_common = len\nexcept TypeError as e:\n    print(e)\n"
        "try:\n    json.loads = len\nexcept TypeError as e:\n    print(e)",
    )
    assert result.error is None, result.error
    assert textwrap.TextWrapper.unicode_whitespace_trans == before
    assert not hasattr(textwrap.TextWrapper, "width")
    assert result.stdout.count("cannot be modified") == 2 and "read-only" in result.stdout


def test_every_reachable_container_is_the_models_own() -> None:
    """Walk what model code can reach: each mutable container is a fresh copy."""
    import collections

    from rlm.backends.restricted_guards import Guards

    guards = Guards(memory_limit=2**31, output_limit=100)
    queue: list[tuple[Any, str, Any]] = [(guards.module(m), m, None) for m in ALLOWED_MODULES] + [
        (v, n, None) for n, v in guards.builtins.items() if not n.startswith("_")
    ]
    seen: set[int] = set()
    keep: list[Any] = []
    shared: list[str] = []
    mutable = (dict, list, set, bytearray, collections.deque)
    while queue and len(seen) < 100_000:
        obj, path, parent = queue.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        keep.append(obj)
        if isinstance(obj, mutable) and parent is not None:
            owner, name = parent
            if guards.getattr(owner, name) is obj:
                shared.append(path)
        if isinstance(obj, (str, bytes, int, float)):
            continue
        for name in dir(obj):
            try:
                value = guards.getattr(obj, name)
            except BaseException:
                continue
            queue.append((value, f"{path}.{name}", (obj, name)))
        if isinstance(obj, dict):
            queue.extend((v, f"{path}[]", None) for v in list(obj.values()))
        elif isinstance(obj, (list, tuple, set, frozenset)):
            queue.extend((v, f"{path}[]", None) for v in list(obj))
    assert len(seen) > 1_000
    assert shared == []


# -- stopping runaway cells -----------------------------------------------------------


async def test_infinite_loop_is_stopped_and_the_session_survives(box: RestrictedSandbox) -> None:
    await run(box, "kept = 'still here'")
    result, ticks = await run_beside_a_ticker(box, "while True:\n    pass", 0.5, every=0.02)
    assert result.timed_out and not result.state_lost
    assert result.error is not None and "time limit" in result.error
    assert ticks > 0  # the event loop kept running meanwhile
    after = await run(box, "print(kept)")
    assert after.stdout == "still here\n" and after.error is None


@pytest.mark.parametrize(
    "code",
    [
        "while True:\n    try:\n        while True:\n            pass\n"
        "    except Exception:\n        pass",
        "while True:\n    try:\n        while True:\n            pass\n"
        "    except (Exception, ArithmeticError) as e:\n        continue",
        "def f():\n    while True:\n        try:\n            f()\n        except RecursionError:\n"
        "            pass\nf()",
        "while True:\n    try:\n        while True:\n            pass\n    finally:\n        x = 1",
        "while True:\n    try:\n        while True:\n            pass\n"
        "    except undefined_name:\n        pass\n    except NameError:\n        pass",
        "import itertools\nsum(itertools.count())",
        "sum(range(10**15))",
        "sum(iter(int, 1))",
        "import itertools\n-1 in itertools.repeat(0)",
        "import itertools\nmax(map(abs, itertools.count()))",
        "import collections\nsum(collections.Counter({1: 10**15}).elements())",
        "import functools, itertools\nfunctools.reduce(max, itertools.count())",
        "import itertools\nlist(itertools.islice(itertools.cycle([1]), 10**15, None))",
        "import itertools\nsorted(itertools.count(), key=abs)",
        "while True:\n    print('x' * 100)",
    ],
)
async def test_runaway_cells_are_stopped(box: RestrictedSandbox, code: str) -> None:
    await run(box, "kept = 1")
    result = await run(box, code, timeout=0.5)
    assert result.timed_out, result
    assert not result.state_lost
    after = await run(box, "print(kept)")
    assert after.stdout == "1\n"


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


async def test_a_stop_during_a_sub_call_cancels_it(box: RestrictedSandbox) -> None:
    result = await run(box, "r = llm_query('slow')", timeout=0.5)
    assert result.timed_out and not result.state_lost
    assert (await run(box, "print(1)")).stdout == "1\n"


async def test_a_cell_that_cannot_be_stopped_loses_the_namespace_only() -> None:
    sandbox, batcher, _br = make_sandbox(stop_grace_s=0.3)
    batcher.hang_s = 2.0
    await sandbox.start()
    await sandbox.load_context("ctx")
    await sandbox.execute("x = 1", 5)
    # The shielded sub-call keeps the thread waiting outside Python: no stop lands.
    result = await sandbox.execute("llm_query('hang')", 0.3)
    assert result.timed_out and result.state_lost
    assert result.error is not None and "reset" in result.error
    after = await sandbox.execute("print(context)\nprint(x)", 5)
    assert after.stdout == "ctx\n"
    assert after.error is not None and "NameError" in after.error
    assert (await sandbox.execute("print(llm_query('hi'))", 5)).stdout == "echo:hi\n"
    await anyio.sleep(batcher.hang_s)
    # The abandoned thread ended once it was back in Python; worker threads are fine.
    for _ in range(20):
        assert await anyio.to_thread.run_sync(lambda: 42) == 42
    await sandbox.close()


async def test_cancelling_execute_stops_the_thread() -> None:
    sandbox, _b, _br = make_sandbox()
    await sandbox.start()
    with anyio.move_on_after(0.3):
        await sandbox.execute("n = 0\nwhile True:\n    n += 1", 60)
    await anyio.sleep(0.3)
    first = await sandbox.get_variable("n")
    await anyio.sleep(0.3)
    assert await sandbox.get_variable("n") == first  # nothing runs the loop any more
    await sandbox.close()


async def test_stops_never_reach_another_sessions_cell() -> None:
    boxes = [make_sandbox()[0] for _ in range(4)]
    for sandbox in boxes:
        await sandbox.start()
    results: dict[int, Any] = {}
    slow = "n = 0\nfor i in range(3_000_000):\n    n += 1\nprint(n)"

    async def one(i: int) -> None:
        code = "while True:\n    pass" if i % 2 else slow
        results[i] = await boxes[i].execute(code, 0.3 if i % 2 else 60)

    async with anyio.create_task_group() as tg:
        for i in range(len(boxes)):
            tg.start_soon(one, i)
    for i, result in results.items():
        if i % 2:
            assert result.timed_out and not result.state_lost
        else:
            assert result.error is None and result.stdout == "3000000\n", result
    for sandbox in boxes:
        await sandbox.close()


async def test_many_stops_leave_worker_threads_healthy(box: RestrictedSandbox) -> None:
    for _ in range(10):
        result = await run(box, "while True:\n    x = [1] * 10", timeout=0.05)
        assert result.timed_out or result.error is None
    results = [await anyio.to_thread.run_sync(lambda i=i: i * 2) for i in range(50)]
    assert results == [i * 2 for i in range(50)]


# -- resources ------------------------------------------------------------------------


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


async def test_memory_growth_is_stopped_by_the_watchdog() -> None:
    sandbox, _b, _br = make_sandbox(memory_limit_bytes=300 * 1024 * 1024)
    await sandbox.start()
    await sandbox.execute("kept = 1", 5)
    code = "x = []\nwhile True:\n    x.append(' ' * 10**6 + str(len(x)))"
    result = await sandbox.execute(code, 60)
    assert result.error is not None and "MemoryError" in result.error, result
    assert not result.timed_out and not result.state_lost
    after = await sandbox.execute("n = len(x)\ndel x\nprint(kept, n > 100)", 5)
    assert after.stdout == "1 True\n", after
    await sandbox.close()


async def test_one_huge_c_call_fails_with_memory_error() -> None:
    """The watchdog cannot run during one C call; the process ceiling catches it."""
    import resource

    before = resource.getrlimit(resource.RLIMIT_DATA)
    sandbox, _b, _br = make_sandbox(memory_limit_bytes=256 * 1024 * 1024)
    await sandbox.start()
    await sandbox.load_context("ab" * 50_000_000)
    # About 100 million 2-tuples built inside list(): several GB without the ceiling.
    result = await sandbox.execute("pairs = list(zip(context, context[1:]))", 60)
    assert result.error is not None and "MemoryError" in result.error, result
    assert resource.getrlimit(resource.RLIMIT_DATA) == before
    assert (await sandbox.execute("print(len(context))", 5)).stdout == "100000000\n"
    await sandbox.close()
    big = [0] * 10**8  # the host allocates freely again
    assert len(big) == 10**8


async def test_memory_growth_cannot_be_caught() -> None:
    sandbox, _b, _br = make_sandbox(memory_limit_bytes=300 * 1024 * 1024)
    await sandbox.start()
    code = (
        "x = []\nwhile True:\n    try:\n        x.append(' ' * 10**6 + str(len(x)))\n"
        "    except MemoryError:\n        pass\n    except Exception:\n        pass"
    )
    result = await sandbox.execute(code, 60)
    assert result.error is not None and "MemoryError" in result.error
    await sandbox.close()


async def test_deep_recursion_is_a_normal_error(box: RestrictedSandbox) -> None:
    limit = sys.getrecursionlimit()
    result = await run(box, "def f(n):\n    return f(n + 1)\nf(0)")
    assert result.error is not None and "RecursionError" in result.error
    assert "Previous line repeated" in result.error
    assert sys.getrecursionlimit() == limit
    nested = await run(box, "x = []\nfor i in range(100000):\n    x = [x]\ns = repr(x)")
    assert nested.error is not None and "RecursionError" in nested.error
    assert (await run(box, "print('ok')")).stdout == "ok\n"


async def test_decimal_context_stays_bounded(box: RestrictedSandbox) -> None:
    result = await run(box, "import decimal\nd = decimal.Decimal(10) ** 999999")
    assert result.error is not None and "Overflow" in result.error
    ok = await run(box, "print(decimal.Decimal(1) / decimal.Decimal(7))")
    assert ok.stdout == "0.1428571428571428571428571429\n"


# -- sub-calls ------------------------------------------------------------------------


async def test_llm_batch_keeps_order_and_fails_per_item() -> None:
    sandbox, batcher, _br = make_sandbox()
    await sandbox.start()
    code = """
rs = llm_batch(['a', 'fail:boom', 'c'], max_concurrent=2)
print(rs[0], rs[2])
print(isinstance(rs[1], LLMError), rs[1].failed, rs[1].kind, rs[1].message)
print([isinstance(r, LLMError) for r in rs])
print(llm_query('solo'))
"""
    result = await sandbox.execute(code, 10)
    assert result.error is None, result.error
    assert result.stdout == (
        "echo:a echo:c\nTrue True provider boom\n[False, True, False]\necho:solo\n"
    )
    assert batcher.calls == [["a", "fail:boom", "c"], ["solo"]]
    await sandbox.close()


async def test_refused_sub_calls_raise_rlm_call_error(box: RestrictedSandbox) -> None:
    code = """
try:
    llm_batch(['p'] * 6)
except RLMCallError as e:
    print('refused:', e)
try:
    llm_query('x', model='not-allowed')
except RLMCallError as e:
    print('refused:', e)
"""
    result = await run(box, code)
    assert result.error is None, result.error
    lines = result.stdout.splitlines()
    assert lines[0].startswith("refused: batch of 6 prompts is over this session's limit of 5")
    assert lines[1].startswith("refused: model 'not-allowed' is not permitted")


async def test_sub_call_arguments_reach_the_host_as_plain_values() -> None:
    sandbox, batcher, _br = make_sandbox()
    await sandbox.start()
    code = """
class Sneaky(str):
    def __eq__(self, other):
        while True:
            pass
r = llm_batch([Sneaky('a'), 'b'])
print(r)
"""
    result = await sandbox.execute(code, 10)
    assert result.error is None, result.error
    assert [type(p) for p in batcher.calls[0]] == [str, str]
    await sandbox.close()


async def test_host_failures_do_not_leak_details(box: RestrictedSandbox) -> None:
    assert box.bridge is not None

    async def broken(*_args: Any) -> Any:
        raise RuntimeError(f"internal {CANARY}")

    box.bridge.batcher.run = broken  # type: ignore[method-assign]
    result = await run(box, "try:\n    llm_query('x')\nexcept RLMCallError as e:\n    print(e)")
    assert result.stdout == "the host could not complete this sub-call (RuntimeError)\n"
    assert CANARY not in str(result)
