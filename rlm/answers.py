"""Structured answers: an answer schema, and checking a run's final value against it.

``completion(..., answer_schema=...)`` takes a JSON Schema (a dict) or, when the user
has Pydantic installed, a Pydantic model class (rlm does not depend on Pydantic: a
class is recognised by its ``model_validate`` and ``model_json_schema`` methods).
The root model is shown the schema; its final value (``FINAL(obj)`` in a cell, or
JSON text in ``FINAL(...)``) is validated on the host, and an answer that does not
validate goes back to the model with the validation error, a bounded number of
times.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import jsonschema
from jsonschema.exceptions import SchemaError, ValidationError

from rlm.errors import ConfigurationError

#: Characters of the schema shown to the root model.
_SCHEMA_CHARS = 20_000


@dataclass(frozen=True)
class Verdict:
    """What checking an answer found: the value to return, or what is wrong with it."""

    value: Any = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


class AnswerSchema:
    """A schema a run's answer must match (see :func:`answer_schema`)."""

    def __init__(self, schema: dict[str, Any], model: Any = None) -> None:
        self.schema = schema
        #: The Pydantic model class the user gave, if any: the value is built with it.
        self.model = model
        validator_class = jsonschema.validators.validator_for(schema)
        try:
            validator_class.check_schema(schema)
        except SchemaError as exc:
            raise ConfigurationError(
                f"answer_schema is not a valid JSON Schema: {exc.message}"
            ) from None
        self._validator = validator_class(schema)

    def describe(self) -> str:
        """The schema as the root model is shown it."""
        text = json.dumps(self.schema, indent=1, ensure_ascii=False)
        if len(text) > _SCHEMA_CHARS:
            text = text[:_SCHEMA_CHARS] + "\n... [schema truncated]"
        return text

    def check(self, value: Any) -> Verdict:
        """``value`` (a JSON value, or JSON text) checked against the schema."""
        if isinstance(value, str) and not _is_string_schema(self.schema):
            try:
                value = json.loads(value)
            except ValueError:
                return Verdict(problem="the answer is not JSON (give a JSON value, or FINAL(obj))")
        errors = sorted(self._validator.iter_errors(value), key=lambda e: list(e.path))
        if errors:
            return Verdict(problem=_describe(errors))
        if self.model is not None:
            try:
                return Verdict(value=self.model.model_validate(value))
            except Exception as exc:  # Pydantic's own checks beyond the schema
                return Verdict(problem=f"the answer does not fit {self.model.__name__}: {exc}")
        return Verdict(value=value)


def answer_schema(schema: Any) -> AnswerSchema | None:
    """What users pass as ``answer_schema=``, checked: a JSON Schema dict, a Pydantic
    model class, an :class:`AnswerSchema`, or None."""
    if schema is None or isinstance(schema, AnswerSchema):
        return schema
    if isinstance(schema, dict):
        return AnswerSchema(schema)
    if isinstance(schema, type) and hasattr(schema, "model_json_schema"):
        return AnswerSchema(schema.model_json_schema(), model=schema)
    raise ConfigurationError(
        "answer_schema must be a JSON Schema (a dict) or a Pydantic model class, "
        f"not {type(schema).__name__}"
    )


def _is_string_schema(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "string"


def _describe(errors: list[ValidationError]) -> str:
    lines = []
    for error in errors[:5]:
        where = "".join(f"[{p!r}]" for p in error.absolute_path) or "the answer"
        lines.append(f"{where}: {error.message[:300]}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(lines) + more
