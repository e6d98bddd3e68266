"""Issue 23 end to end: the generate flow reuses its dataset only while nothing it renders changed. A judge
template edited between two runs (its system line) gives a new stage key and new verdicts, where the old key
(styles only) said "unchanged inputs" and kept the old ones. The teacher is a small fake OpenAI endpoint; the
flow runs on Prefect's temporary local API, as in test_pipeline_stages."""

from __future__ import annotations

import json
import time

import pytest
from aiohttp import web

from flows.config import PipelineConfig
from loopback import LoopbackApp
from tests.flows.test_pipeline_stages import prefect_api  # noqa: F401 (fixture)


@pytest.fixture
def fake_teacher():
    """Answers "2" to every prompt; as a judge, 5 when its system line asks for leniency, else 1."""
    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        system = next((m["content"] for m in body["messages"] if m["role"] == "system"), "")
        if "grader" in system:
            text = json.dumps({"reason": "fine" if "lenient" in system else "bad", "score": 5 if "lenient" in system else 1})
        else:
            text = "2"
        return web.json_response({
            "id": "x", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
            "choices": [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                        for i in range(body.get("n") or 1)],
            "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}})

    async def make() -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        return app

    server = LoopbackApp(make)
    port = server.start()
    yield f"http://127.0.0.1:{port}/v1"
    server.stop()


def test_editing_the_judge_template_reruns_generate(tmp_path, fake_teacher, prefect_api):  # noqa: F811
    from flows.pipeline import generate_flow

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"id": f"s{i}", "instruction": "What is 1 plus 1?", "answer": "2"}) + "\n"
                             for i in range(3)))
    judge = tmp_path / "judge.jinja"
    judge.write_text("{% block system %}You are a strict grader.{% endblock %}"
                     "{% block user %}{{ instruction }}\n{{ response }}{% endblock %}")
    cfg = PipelineConfig.model_validate({
        "run": {"stages": ["generate"]},
        "teacher": {"backend": "openai", "model": "m", "base_url": fake_teacher, "cache_path": str(tmp_path / "c.sqlite"),
                    "max_retries": 0},
        "generate": {"seeds": str(seeds), "styles": ["instruct"], "validation_fraction": 0.0,
                     "filters": {"judge": {"template": str(judge), "min_score": 3}}}})

    def run(name: str) -> tuple[dict, dict]:
        (tmp_path / name).mkdir()
        out = generate_flow(cfg.model_dump_json(), str(tmp_path / name))
        return out, json.loads((tmp_path / name / "dataset" / "stats.json").read_text())

    first, stats = run("run1")
    assert not first["cached"] and stats["judge"]["score_counts"]["1"] == 3 and stats["rows"]["train"] == 0
    again, _ = run("run2")
    assert again["cached"] and again["key"] == first["key"]  # nothing changed: reused
    judge.write_text(judge.read_text().replace("a strict grader", "a lenient grader"))
    edited, stats = run("run3")
    assert not edited["cached"] and edited["key"] != first["key"]
    assert stats["judge"]["score_counts"]["5"] == 3 and stats["rows"]["train"] == 3  # the new verdicts
