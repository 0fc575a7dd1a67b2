"""Escapes: nothing model code can reach leads to the host, or is shared with it."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from rlm.backends.restricted import ALLOWED_MODULES, RestrictedSandbox
from tests.backends.restricted.support import MARK, make_sandbox, refused, run

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

    from rlm.backends.restricted import new_guards

    guards = new_guards(memory_limit=2**31, output_limit=100)
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
