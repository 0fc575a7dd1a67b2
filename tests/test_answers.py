"""Final answers that cannot be lost, and structured answers checked against a schema."""

from __future__ import annotations

from typing import Any

import pytest

from rlm import RLM
from rlm.answers import AnswerSchema, answer_schema
from rlm.errors import ConfigurationError
from rlm.testing import OfflineModelServer
from tests.support import ROOT_MODEL, make_config

BACKENDS = ["restricted", pytest.param("docker", marks=pytest.mark.docker)]
POINT = {
    "type": "object",
    "properties": {"x": {"type": "integer"}, "label": {"type": "string"}},
    "required": ["x", "label"],
    "additionalProperties": False,
}


def cell(code: str) -> str:
    return f"```repl\n{code}\n```"


async def run(script: list[str], backend: str = "restricted", **kwargs: Any) -> Any:
    with OfflineModelServer(scripts={ROOT_MODEL: script}) as server:
        result = await RLM(make_config(server, backend=backend)).acompletion("ctx", "q", **kwargs)
        result.seen = list(server.stats.prompts)
        result.systems = server.stats.systems.get(ROOT_MODEL, set())
        return result


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
async def test_final_inside_a_loop_ends_the_run_with_that_object(backend: str) -> None:
    script = [
        cell(
            "for i in range(10):\n"
            "    if i == 3:\n"
            "        FINAL({'found': i, 'items': [1, 2.5, None, True]})\n"
            "print('the cell still ends normally')"
        ),
        cell("print('never run')"),
        "FINAL(not this)",
    ]
    result = await run(script, backend)
    assert result.value == {"found": 3, "items": [1, 2.5, None, True]}
    assert result.answer == '{"found": 3, "items": [1, 2.5, null, true]}'
    assert result.iterations == 1 and result.status == "answered"


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
async def test_final_var_and_the_answer_dict_work_in_cells(backend: str) -> None:
    by_var = await run([cell("total = sum(range(5))\nFINAL_VAR('total')"), "FINAL(no)"], backend)
    assert (by_var.value, by_var.answer) == (10, "10")
    by_dict = await run(
        [cell("answer = {'content': 'from the dict', 'ready': True}"), "FINAL(no)"], backend
    )
    assert by_dict.answer == "from the dict"
    not_ready = await run(
        [cell("answer = {'content': 'draft', 'ready': False}"), "FINAL(done)"], backend
    )
    assert not_ready.answer == "done"


async def test_a_final_inside_a_code_block_is_code_not_the_end() -> None:
    # The text FINAL(...) inside the block is a call in the cell; the reply's own
    # final answer is the line outside it.
    script = [cell("x = 'FINAL(fake)'\nprint(x)") + "\nFINAL(real)"]
    result = await run(script)
    assert result.answer == "real"


async def test_a_schema_violating_answer_is_retried_then_validated() -> None:
    script = [
        cell("FINAL({'x': 'three', 'label': 'a'})"),
        cell("FINAL({'x': 3, 'label': 'a'})"),
        "FINAL(unused)",
    ]
    result = await run(script, answer_schema=POINT)
    assert result.value == {"x": 3, "label": "a"}
    assert result.status == "answered" and result.iterations == 2
    problems = [e["problem"] for e in result.trajectory if e["event"] == "invalid_answer"]
    assert problems == ["['x']: 'three' is not of type 'integer'"]
    # The model was told what was wrong, and shown the schema.
    assert any("'three' is not of type 'integer'" in p for p in result.seen)
    assert any('"required"' in s for s in result.systems)


async def test_text_final_answers_are_parsed_as_json() -> None:
    result = await run(['FINAL({"x": 1, "label": "b"})'], answer_schema=POINT)
    assert result.value == {"x": 1, "label": "b"}


async def test_an_answer_still_invalid_after_the_retries_says_so() -> None:
    script = [cell("FINAL({'x': 1})")]  # played every turn: never has a label
    result = await run(script, answer_schema=POINT)
    assert result.status == "invalid_answer" and result.exit_code == 3
    assert result.value is None
    assert "'label' is a required property" in (result.invalid_answer or "")
    assert len([e for e in result.trajectory if e["event"] == "invalid_answer"]) == 3


async def test_a_pydantic_style_model_class_builds_the_value() -> None:
    # A stand-in with Pydantic's two methods: rlm does not depend on Pydantic.
    class Point:
        def __init__(self, x: int, label: str) -> None:
            self.x, self.label = x, label

        @classmethod
        def model_json_schema(cls) -> dict[str, Any]:
            return POINT

        @classmethod
        def model_validate(cls, value: dict[str, Any]) -> Point:
            return cls(**value)

    result = await run([cell("FINAL({'x': 7, 'label': 'p'})")], answer_schema=Point)
    assert isinstance(result.value, Point) and (result.value.x, result.value.label) == (7, "p")


def test_bad_schemas_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="not a valid JSON Schema"):
        answer_schema({"type": "no-such-type"})
    with pytest.raises(ConfigurationError, match="a JSON Schema"):
        answer_schema("not a schema")
    assert answer_schema(None) is None
    schema = AnswerSchema({"type": "string"})
    assert schema.check("plain text").value == "plain text"
