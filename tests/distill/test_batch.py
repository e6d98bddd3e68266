"""Batch mode's file format (the runner itself is covered by the integration tests)."""

import json

from distill.data.selfinstruct import instructions_schema
from distill.teacher.batch import batch_line, read_batch_output, write_batch_file
from distill.teacher.openai_backend import _body
from distill.teacher.query import TeacherRequest


def req(content, **kw):
    return TeacherRequest(messages=[{"role": "user", "content": content}], model="M", style="instruct", template="t",
                          template_sha="s", max_tokens=16, **kw)


def test_lines_carry_the_online_body_and_the_cache_key(tmp_path):
    a, b = req("one"), req("two", repetition_penalty=1.1, top_logprobs=3)
    line = batch_line(a, "M")
    assert line == {"custom_id": a.key(), "method": "POST", "url": "/v1/chat/completions", "body": _body(a, "M")}
    lb = batch_line(b, "M")
    assert "extra_body" not in lb["body"] and lb["body"]["repetition_penalty"] == 1.1 and lb["body"]["top_logprobs"] == 3
    path = tmp_path / "in.jsonl"
    assert write_batch_file([a, b, a], "M", path) == 2  # a repeated request is sent once
    assert [json.loads(x)["custom_id"] for x in path.read_text().splitlines()] == [a.key(), b.key()]


def out_line(key, n, text=None, status=200, error=None):
    body = {"model": "M", "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                       "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3}} if text is not None else {"message": "bad request"}
    return json.dumps({"id": f"b{n}", "custom_id": key, "response": {"status_code": status, "request_id": "r",
                                                                     "body": body}, "error": error})


def test_output_is_read_back_by_custom_id_with_failures_named(tmp_path):
    ok, bad, shaped = req("one"), req("two"), req("three", json_schema=instructions_schema(2))
    stranger = "f" * 64
    path = tmp_path / "out.jsonl"
    path.write_text("\n".join([out_line(ok.key(), 1, "Hello."), out_line(bad.key(), 2, status=400),
                               out_line(shaped.key(), 3, '{"instructions": ['), out_line(stranger, 4, "x"), "{broken"]))
    answers, errors = read_batch_output(path, {r.key(): r for r in (ok, bad, shaped)}, "vllm-batch", "M")
    by = {a.key: a for a in answers}
    assert set(by) == {ok.key(), shaped.key()} and stranger not in by
    assert by[ok.key()].choices[0].text == "Hello." and by[ok.key()].prompt_tokens == 7
    assert by[ok.key()].engine == "vllm-batch" and by[ok.key()].choices[0].schema_error is None
    assert by[shaped.key()].choices[0].schema_error.startswith("not JSON")  # kept and marked
    assert list(errors) == [bad.key()] and "status 400" in errors[bad.key()]


def test_line_errors_carry_their_status_so_only_retryable_ones_are_resubmitted():
    from distill.teacher.batch import _retryable, parse_batch_output

    r = TeacherRequest(messages=[{"role": "user", "content": "x"}], model="M", style="instruct", template="t", template_sha="t")
    line = {"custom_id": r.key(), "response": {"status_code": 429, "body": {"error": {"message": "slow down"}}}}
    answers, errors = parse_batch_output(json.dumps(line), {r.key(): r}, "openai-batch", "M")
    assert answers == [] and errors[r.key()][0] == 429 and "slow down" in errors[r.key()][1]
    assert _retryable(429) and _retryable(503) and _retryable(None) and not _retryable(400) and not _retryable(422)


def test_a_corrupt_batch_journal_is_refused_not_overwritten(tmp_path):
    import pytest

    from distill.teacher.batch import _load_journal

    path = tmp_path / "teacher.batches.json"
    path.write_text('{"batch-1": {"custom_ids": [')
    with pytest.raises(RuntimeError, match="not overwritten: fix or remove it"):
        _load_journal(path)
    assert path.read_text() == '{"batch-1": {"custom_ids": ['
