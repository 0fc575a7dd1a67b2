"""Plain copies: one function, two callers (context, sub-call arguments), each its own words."""

from __future__ import annotations

from typing import Any

import pytest
from rlm_sandbox.api import RLMCallError

from rlm.backends.restricted.plain import CONTEXT, SUB_CALL, PlainRules, plain_copy
from tests.backends.restricted.support import make_sandbox


class Sneaky(str):
    def __eq__(self, other: object) -> bool:
        raise AssertionError("host code called a method of the model's class")

    __hash__ = str.__hash__


class MyInt(int):
    pass


class MyList(list[Any]):
    def __iter__(self) -> Any:
        raise AssertionError("host code called a method of the model's class")


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("rules", [CONTEXT, SUB_CALL], ids=["context", "sub-call"])
def test_copies_are_made_of_exact_json_types(rules: PlainRules) -> None:
    source = {"s": Sneaky("a"), "n": MyInt(3), "t": (1, 2.5, True, None), "l": MyList(["x"])}
    copy = plain_copy(source, rules)
    assert copy == {"s": "a", "n": 3, "t": [1, 2.5, True, None], "l": ["x"]}
    assert type(copy["s"]) is str and type(copy["n"]) is int and type(copy["t"]) is list
    assert type(copy["l"]) is list and copy["l"] is not source["l"]
    text = "shared, not copied"
    assert plain_copy([text], rules)[0] is text


def test_the_context_says_no_with_type_errors() -> None:
    assert plain_copy(nested(100), CONTEXT) == nested(100)
    with pytest.raises(TypeError, match=r"^context is nested more than 100 levels deep$"):
        plain_copy(nested(101), CONTEXT)
    with pytest.raises(TypeError, match=r"^context must hold only JSON-like data, not object$"):
        plain_copy({"x": object()}, CONTEXT)
    with pytest.raises(TypeError, match=r"^context keys must be JSON-like, not tuple$"):
        plain_copy({(1, 2): "x"}, CONTEXT)


def test_sub_call_arguments_say_no_with_rlm_call_errors() -> None:
    assert plain_copy(nested(20), SUB_CALL) == nested(20)
    with pytest.raises(RLMCallError, match=r"^the sub-call's arguments are nested too deeply$"):
        plain_copy(nested(21), SUB_CALL)
    with pytest.raises(RLMCallError, match=r"^a sub-call argument of type object cannot be sent$"):
        plain_copy({"prompt": object()}, SUB_CALL)
    # Keys are copied like values: a key of the wrong type is refused in the same words.
    with pytest.raises(RLMCallError, match=r"^a sub-call argument of type bytes cannot be sent$"):
        plain_copy({b"k": "v"}, SUB_CALL)


async def test_load_context_refuses_in_the_contexts_words() -> None:
    sandbox, _b, _br = make_sandbox()
    await sandbox.start()
    with pytest.raises(TypeError, match=r"^context must hold only JSON-like data, not object$"):
        await sandbox.load_context({"x": [object()]})
    with pytest.raises(TypeError, match=r"^context keys must be JSON-like, not frozenset$"):
        await sandbox.load_context({frozenset(): 1})
    with pytest.raises(TypeError, match=r"^context is nested more than 100 levels deep$"):
        await sandbox.load_context(nested(101))
    await sandbox.close()
