"""The openai backend against vLLM's real OpenAI-compatible server on 127.0.0.1. Nothing mocked."""

import httpx
import pytest

from distill.teacher.query import TeacherConfig, TeacherRequest, TeacherStats, query_teacher
from distill.teacher.types import TeacherUnavailable

pytestmark = pytest.mark.integration


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of the sockets listening on ``port`` (Linux /proc/net/tcp{,6}; state 0A = LISTEN)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.rsplit(":", 1)
            if state == "0A" and int(hexport, 16) == port:
                found.add(addr)
    return found


def test_server_binds_loopback_and_lists_the_model(vllm_server):
    assert vllm_server.startswith("http://127.0.0.1:")
    port = int(vllm_server.rsplit(":", 1)[1].split("/")[0])
    addrs = _listening_addresses(port)
    if addrs:  # where /proc/net is readable: the socket itself listens on 127.0.0.1 only, not 0.0.0.0 / ::
        assert addrs == {"0100007F"}, addrs
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
        assert r.completion_tokens == r.choices[0].logprobs["n"] and r.prompt_tokens > 0  # packed by bytes
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
    from distill.teacher.serve import free_port

    cfg = TeacherConfig(backend="openai", base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=1,
                        timeout_s=2, cache_path=str(cache_path))
    req = TeacherRequest(messages=[{"role": "user", "content": "hi"}], model="m", style="instruct",
                         template="instruct", template_sha="t", max_tokens=4)
    stats = TeacherStats()
    [resp] = query_teacher([req], cfg, stats)
    assert resp.error and resp.error.startswith("connection") and resp.attempts == 2
    assert stats.failures == {"connection": 2} and stats.retries == 1


def test_cost_cap_stops_cleanly_and_the_rerun_resumes(vllm_server, cache_path):
    from distill.teacher.budget import Budget
    from distill.teacher.types import BudgetExceeded

    # $1 per completion token, prompts free: a request's worst case is exactly its max_tokens
    capped = TeacherConfig(backend="openai", model="bundled", base_url=vllm_server, max_concurrency=4,
                           cache_path=str(cache_path), price_prompt_per_mtok=0.0, price_completion_per_mtok=1e6,
                           max_cost_usd=40.0)
    reqs = [TeacherRequest(messages=[{"role": "user", "content": f"Write a sentence about the number {i}."}],
                           model=capped.model_id(), style="instruct", template="instruct", template_sha="t",
                           max_tokens=16) for i in range(12)]
    budget = Budget.from_config(capped)
    with pytest.raises(BudgetExceeded, match="max_cost_usd=40.0.*re-run the same command"):
        query_teacher(reqs, capped, TeacherStats(), budget)
    assert budget.spent_cost <= 40.0 and budget.spent_completion > 0  # never past the cap
    assert budget.reserved_tokens == 0 and budget.refused > 0
    from distill.teacher.cache import ResponseCache

    cache = ResponseCache(cache_path)
    answered = len(cache.get_many([r.key() for r in reqs]))
    cache.close()
    assert 2 <= answered < 12  # two fit at once; more as answers come back under their worst case
    # without the cap, the same requests resume: only the unanswered ones are sent
    stats = TeacherStats()
    out = query_teacher(reqs, capped.model_copy(update={"max_cost_usd": None}), stats)
    assert stats.sent == 12 - answered and stats.cache_hits == answered
    assert all(r.error is None for r in out)


def test_structured_outputs_over_http_and_the_fallback_for_servers_without_them(vllm_server, tmp_path):
    import json

    from distill.data.selfinstruct import instructions_schema
    from faultproxy import FaultProxy

    schema = instructions_schema(3)
    ask = [{"role": "user", "content": "Write 3 new task instructions for an assistant."}]
    reqs = [TeacherRequest(messages=ask, model="SmolLM2-135M-Instruct", style="self_instruct", template="t",
                           template_sha="t", max_tokens=160, json_schema=schema),
            TeacherRequest(messages=ask, model="SmolLM2-135M-Instruct", style="self_instruct", template="t",
                           template_sha="t", max_tokens=6, json_schema=schema)]
    cfg = TeacherConfig(backend="openai", model="bundled", base_url=vllm_server, cache_path=str(tmp_path / "a.sqlite"))
    stats = TeacherStats()
    ok, cut = query_teacher(reqs, cfg, stats)
    assert ok.choices[0].schema_error is None and json.loads(ok.choices[0].text)["instructions"]
    assert cut.choices[0].schema_error.startswith("not JSON") and stats.schema_invalid == 1
    # a server that rejects response_format: the client asks in words, validates, and marks what fails
    with FaultProxy(vllm_server.rsplit("/v1", 1)[0], rate=0.0, reject_response_format=True) as proxy:
        fb_cfg = cfg.model_copy(update={"base_url": proxy.base_url, "cache_path": str(tmp_path / "b.sqlite")})
        fb_stats = TeacherStats()
        out = query_teacher(reqs, fb_cfg, fb_stats)
    assert proxy.counts["rejected_response_format"] >= 1 and proxy.counts["forwarded"] == 2
    assert all(r.error is None for r in out) and out[1].choices[0].schema_error is not None
    assert fb_stats.schema_invalid == sum(c.schema_error is not None for r in out for c in r.choices)
