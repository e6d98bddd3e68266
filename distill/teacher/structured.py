"""Structured outputs: a JSON schema on a teacher request, and the check every answer goes through.

The decoding itself is the engines' (vLLM's structured-output backends in-process, ``response_format``
with a ``json_schema`` over HTTP); validation uses ``jsonschema``. What is written here is only the
glue no library has: turning a pydantic model into a schema, the fallback instruction for servers
without ``response_format``, and a one-line, stored verdict per answer (``Choice.schema_error``), so an
invalid answer is kept and marked, never dropped.
"""

from __future__ import annotations

import json
from typing import Any

SCHEMA_NAME = "eakd_output"

# An LLM-as-judge verdict (generate.filters.judge): the reason first, so the score follows from it. The
# reason is capped at 300 characters, so under structured decoding the verdict closes within the judge's
# default 256 tokens, where an uncapped reason from a small judge rambles past max_tokens.
JUDGE_SCHEMA = {"type": "object", "properties": {"reason": {"type": "string", "maxLength": 300},
                                                 "score": {"type": "integer", "minimum": 1, "maximum": 5}},
                "required": ["reason", "score"], "additionalProperties": False}


def cot_schema(max_tokens: int) -> dict:
    """Chain of thought with the reasoning and the final answer in separate fields (generate.structured_cot).

    The rationale is capped at 2 characters per token of ``max_tokens`` less 48 for the JSON and the
    answer, so under structured decoding the JSON closes within ``max_tokens`` unless the rationale
    averages under 2 characters per token (digit-by-digit arithmetic can); such an answer is kept as
    ``truncated`` like any other."""
    return {"type": "object",
            "properties": {"rationale": {"type": "string", "maxLength": max(120, 2 * (max_tokens - 48))},
                           "answer": {"type": "string", "maxLength": 120}},
            "required": ["rationale", "answer"], "additionalProperties": False}


def schema_of(model_or_schema: Any) -> dict:
    """A JSON schema from a dict (returned as is) or a pydantic model class."""
    if isinstance(model_or_schema, dict):
        return model_or_schema
    if hasattr(model_or_schema, "model_json_schema"):
        return model_or_schema.model_json_schema()
    raise TypeError(f"expected a JSON schema dict or a pydantic model class, got {type(model_or_schema).__name__}")


def check_schema(schema: dict) -> None:
    """Raise ``ValueError`` naming the problem when ``schema`` is not a valid JSON schema."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise ValueError(f"not a valid JSON schema: {exc.message}") from None


def validate_output(text: str, schema: dict) -> tuple[Any | None, str | None]:
    """(parsed value, None) when ``text`` is JSON matching ``schema``; else (value or None, the reason).

    A JSON object inside a ```json fence is accepted (servers without structured decoding add them).
    """
    from jsonschema import Draft202012Validator

    raw = text.strip()
    if raw.startswith("```"):
        raw = raw.split("\n", 1)[1] if "\n" in raw else ""
        raw = raw.rsplit("```", 1)[0]
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        return None, f"not JSON: {exc.msg} at char {exc.pos}"
    errors = sorted(Draft202012Validator(schema).iter_errors(value), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = "/".join(str(p) for p in e.absolute_path) or "(root)"
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        return value, f"schema: {e.message} at {where}{more}"
    return value, None


def fallback_instruction(schema: dict) -> dict[str, str]:
    """The system message sent instead of ``response_format`` to servers that do not support it."""
    return {"role": "system",
            "content": "Answer with one JSON value only (no prose, no code fence) that matches this JSON schema:\n"
                       + json.dumps(schema, separators=(",", ":"))}


def response_format(schema: dict) -> dict:
    """The OpenAI ``response_format`` for ``schema``."""
    return {"type": "json_schema", "json_schema": {"name": SCHEMA_NAME, "schema": schema, "strict": True}}


def merge_reasked(choices: list, fresh: list, schema: dict) -> None:
    """Replace, in place, each failing choice by its re-asked counterpart (validated here) when that one
    passes or is no shorter; passing choices are left as they were."""
    for i, c in enumerate(choices):
        if c.schema_error and i < len(fresh):
            new = fresh[i]
            new.schema_error = validate_output(new.text, schema)[1]
            if new.schema_error is None or len(new.text) >= len(c.text):
                choices[i] = new
