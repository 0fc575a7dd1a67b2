"""``rlm run --answer-schema FILE``: a structured answer, checked against a JSON Schema,
and a schema file that is not one is a config error before anything runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlm.testing import OfflineModelServer
from tests.cli_support import assert_one_line_error, model_env, rlm

CITY = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["city", "population"],
    "additionalProperties": False,
}


def run_with_schema(
    server: OfflineModelServer, tmp_path: Path, schema_text: str, *extra: str
) -> tuple[int, str, str]:
    context = tmp_path / "ctx.txt"
    context.write_text("Oslo has 700000 people.\n")
    schema = tmp_path / "schema.json"
    schema.write_text(schema_text)
    proc = rlm(
        "run",
        "--context",
        str(context),
        "--query",
        "Which city, and how many people?",
        "--backend",
        "restricted",
        "--answer-schema",
        str(schema),
        *extra,
        env=model_env(server),
    )
    return proc.returncode, proc.stdout, proc.stderr


def test_the_checked_value_is_in_the_json_output(tmp_path: Path) -> None:
    reply = 'FINAL({"city": "Oslo", "population": 700000})'
    with OfflineModelServer(root_script=[reply]) as server:
        code, out, err = run_with_schema(server, tmp_path, json.dumps(CITY), "--json")
        told = "\n".join(s for seen in server.stats.systems.values() for s in seen)
    assert code == 0, err
    result = json.loads(out)
    assert result["status"] == "answered"
    assert result["value"] == {"city": "Oslo", "population": 700000}
    # The root model is shown the schema.
    assert '"population"' in told


def test_a_value_given_in_a_cell_is_checked_too(tmp_path: Path) -> None:
    reply = "```repl\nFINAL({'city': 'Oslo', 'population': 7 * 100_000})\n```"
    with OfflineModelServer(root_script=[reply]) as server:
        code, out, err = run_with_schema(server, tmp_path, json.dumps(CITY), "--json")
    assert code == 0, err
    assert json.loads(out)["value"] == {"city": "Oslo", "population": 700000}


def test_an_answer_that_never_fits_ends_invalid(tmp_path: Path) -> None:
    # The model keeps answering prose: it is told why, and the run ends saying so.
    with OfflineModelServer(root_script=["FINAL(Oslo, about 700k people)"]) as server:
        code, out, err = run_with_schema(server, tmp_path, json.dumps(CITY), "--json")
    result = json.loads(out)
    assert result["status"] == "invalid_answer", err
    assert code == result["exit_code"] == 3
    assert result["value"] is None
    assert result["invalid_answer"]


def test_without_json_the_answer_is_printed(tmp_path: Path) -> None:
    reply = 'FINAL({"city": "Oslo", "population": 700000})'
    with OfflineModelServer(root_script=[reply]) as server:
        code, out, err = run_with_schema(server, tmp_path, json.dumps(CITY))
    assert code == 0, err
    assert json.loads(out) == {"city": "Oslo", "population": 700000}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('{"type": "object",', ("--answer-schema", "is not JSON")),
        ('["a", "b"]', ("--answer-schema", "JSON Schema object", "array")),
        ('"a string"', ("--answer-schema", "JSON Schema object", "string")),
        ('{"type": "no-such-type"}', ("--answer-schema", "not a valid JSON Schema")),
        ('{"minLength": -1}', ("--answer-schema", "not a valid JSON Schema")),
    ],
)
def test_a_bad_schema_file_is_a_config_error(
    server: OfflineModelServer, tmp_path: Path, text: str, words: tuple[str, ...]
) -> None:
    code, _, err = run_with_schema(server, tmp_path, text)
    assert code == 2
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0]
    assert server.stats.requests == 0  # nothing ran


def test_a_bad_schema_is_refused_with_json_status(
    server: OfflineModelServer, tmp_path: Path
) -> None:
    code, out, _ = run_with_schema(server, tmp_path, "[]", "--json")
    assert code == 2
    assert json.loads(out)["status"] == "config_error"


def test_a_missing_schema_file_is_one_clear_line(tmp_path: Path) -> None:
    context = tmp_path / "ctx.txt"
    context.write_text("x")
    proc = rlm(
        "run",
        "--context",
        str(context),
        "--query",
        "q",
        "--answer-schema",
        str(tmp_path / "nope.json"),
        env={"OPENAI_API_KEY": "k", "RLM_MODEL": "m"},
    )
    assert_one_line_error(proc, "--answer-schema", "nope.json")


def test_the_schema_is_checked_before_the_context_is_read(tmp_path: Path) -> None:
    # A bad schema should not cost the reading of a big context first.
    schema = tmp_path / "schema.json"
    schema.write_text("not json")
    proc = rlm(
        "run",
        "--context",
        str(tmp_path / "missing-context.txt"),
        "--query",
        "q",
        "--answer-schema",
        str(schema),
        env={"OPENAI_API_KEY": "k", "RLM_MODEL": "m"},
    )
    assert_one_line_error(proc, "--answer-schema", "is not JSON")
