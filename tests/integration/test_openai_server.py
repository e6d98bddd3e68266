"""The openai backend against vLLM's real OpenAI-compatible server on 127.0.0.1. Nothing mocked."""

import httpx
import pytest

from distill.teacher import TeacherConfig, TeacherRequest, TeacherStats, query_teacher
from distill.teacher_openai import TeacherUnavailable

pytestmark = pytest.mark.integration


def test_server_binds_loopback_and_lists_the_model(vllm_server):
    assert vllm_server.startswith("http://127.0.0.1:")
    models = httpx.get(f"{vllm_server}/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["SmolLM2-135M-Instruct"]


def test_openai_backend_concurrent_requests_and_cache(vllm_server, cache_path):
    cfg = TeacherConfig(backend="openai", model="bundled", base_url=vllm_server, max_concurrency=8,
                        cache_path=str(cache_path))
    reqs = [TeacherRequest(messages=[{"role": "user", "content": f"What is {i} + {i}?"}], model=cfg.model_id(),
                           style="instruct", template="instruct", template_sha="t", max_tokens=16, top_logprobs=2)
            for i in range(12)]
    stats = TeacherStats()
    out = query_teacher(reqs, cfg, stats)
    assert stats.sent == 12 and not stats.failures
    assert [r.key for r in out] == [r.key() for r in reqs]  # order preserved
    for r in out:
        assert r.error is None and r.engine == "openai" and r.choices[0].text
        assert r.completion_tokens == len(r.choices[0].logprobs) and r.prompt_tokens > 0
    assert stats.completion_tokens == sum(r.completion_tokens for r in out)
    stats2 = TeacherStats()
    again = query_teacher(reqs, cfg, stats2)
    assert stats2.sent == 0 and [r.choices[0].text for r in again] == [r.choices[0].text for r in out]


def test_unknown_model_stops_the_run_with_a_clear_error(vllm_server, cache_path):
    cfg = TeacherConfig(backend="openai", model="no-such-model", base_url=vllm_server, cache_path=str(cache_path))
    req = TeacherRequest(messages=[{"role": "user", "content": "hi"}], model="no-such-model", style="instruct",
                         template="instruct", template_sha="t", max_tokens=4)
    with pytest.raises(TeacherUnavailable, match="404"):
        query_teacher([req], cfg)


def test_unreachable_url_is_marked_not_lost(cache_path):
    from distill.serve import free_port

    cfg = TeacherConfig(backend="openai", base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=1,
                        timeout_s=2, cache_path=str(cache_path))
    req = TeacherRequest(messages=[{"role": "user", "content": "hi"}], model="m", style="instruct",
                         template="instruct", template_sha="t", max_tokens=4)
    stats = TeacherStats()
    [resp] = query_teacher([req], cfg, stats)
    assert resp.error and resp.error.startswith("connection") and resp.attempts == 2
    assert stats.failures == {"connection": 2} and stats.retries == 1
