"""Structured outputs: the schema check every answer goes through, and how requests carry a schema."""

import pytest
from pydantic import BaseModel

from distill.data.selfinstruct import instructions_schema, structured_instructions
from distill.teacher.openai_backend import _body
from distill.teacher.query import Choice, TeacherRequest, TeacherResponse
from distill.teacher.structured import check_schema, schema_of, validate_output

SCHEMA = {"type": "object", "required": ["answer"], "additionalProperties": False,
          "properties": {"answer": {"type": "integer"}, "why": {"type": "string"}}}


@pytest.mark.parametrize("text, value, error", [
    ('{"answer": 4}', {"answer": 4}, None),
    ('```json\n{"answer": 4, "why": "2+2"}\n```', {"answer": 4, "why": "2+2"}, None),
    ('{"answer": "four"}', {"answer": "four"}, "schema: 'four' is not of type 'integer' at answer"),
    ('{"why": "x"}', {"why": "x"}, "schema: 'answer' is a required property at (root)"),
    ('{"answer": 4, "extra": 1}', {"answer": 4, "extra": 1}, "schema: Additional properties are not allowed"),
    ('{\n  "answer', None, "not JSON: Unterminated string"),  # what a token cap leaves
    ("The answer is 4.", None, "not JSON: Expecting value at char 0"),
])
def test_validate_output_table(text, value, error):
    got_value, got_error = validate_output(text, SCHEMA)
    assert got_value == value
    assert (got_error is None) if error is None else got_error.startswith(error), got_error


def test_schema_from_a_pydantic_model_and_bad_schemas():
    class Judge(BaseModel):
        score: int
        reason: str

    s = schema_of(Judge)
    assert s["required"] == ["score", "reason"] and validate_output('{"score": 3, "reason": "ok"}', s)[1] is None
    with pytest.raises(ValueError, match="not a valid JSON schema"):
        check_schema({"type": "no-such-type"})
    with pytest.raises(TypeError):
        schema_of(42)


def test_schema_is_part_of_the_cache_key():
    base = dict(messages=[{"role": "user", "content": "hi"}], model="m", style="instruct", template="t", template_sha="s")
    plain, a = TeacherRequest(**base), TeacherRequest(**base, json_schema=SCHEMA)
    b = TeacherRequest(**base, json_schema=SCHEMA | {"required": ["answer", "why"]})
    assert len({plain.key(), a.key(), b.key()}) == 3
    assert "json_schema" not in plain.canonical()  # keys cached before the field existed still hit


def test_body_uses_response_format_or_falls_back_to_words():
    r = TeacherRequest(messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
                       model="m", style="instruct", template="t", template_sha="s", json_schema=SCHEMA)
    body = _body(r, "m")
    assert body["response_format"]["json_schema"]["schema"] == SCHEMA and body["messages"] == r.messages
    fb = _body(r, "m", response_format_ok=False)
    assert "response_format" not in fb and len(fb["messages"]) == 2
    assert fb["messages"][0]["content"].startswith("Be brief.") and '"answer"' in fb["messages"][0]["content"]


def test_old_cache_entries_without_schema_error_still_load():
    d = {"key": "k", "choices": [{"text": "x", "finish_reason": "stop"}]}
    assert TeacherResponse.from_dict(d).choices[0] == Choice(text="x", finish_reason="stop")


def test_structured_bootstrap_answers():
    s = instructions_schema(3)
    assert structured_instructions('{"instructions": ["Write a haiku.", "  Name   a river. "]}', s) == \
        ["Write a haiku.", "Name a river."]
    assert structured_instructions('{"instructions": []}', s) == []  # minItems 1
    assert structured_instructions('{"instructions": ["a", "b", "c", "d"]}', s) == []  # maxItems 3
    assert structured_instructions('{"instructions": ["cut', s) == []
