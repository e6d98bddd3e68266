"""Fault tolerance of the openai backend: a fault-injecting proxy in front of the real vLLM server."""

import pytest
from faultproxy import FaultProxy, summary

from distill.cache import ResponseCache
from distill.teacher import TeacherConfig, TeacherRequest, TeacherStats, query_teacher

pytestmark = pytest.mark.integration


def _requests(n: int) -> list[TeacherRequest]:
    return [TeacherRequest(messages=[{"role": "user", "content": f"Write the number {i} in words."}],
                           model="SmolLM2-135M-Instruct", style="instruct", template="t", template_sha="t",
                           max_tokens=8) for i in range(n)]


def test_200_requests_with_a_quarter_faulted_lose_nothing(vllm_server, tmp_path):
    reqs = _requests(200)
    clean_cfg = TeacherConfig(backend="openai", model="bundled", base_url=vllm_server, max_concurrency=16,
                              cache_path=str(tmp_path / "clean.sqlite"))
    clean = query_teacher(reqs, clean_cfg)
    assert all(r.error is None for r in clean)

    upstream = vllm_server.rsplit("/v1", 1)[0]
    with FaultProxy(upstream, rate=0.25, seed=1, hang_s=15) as proxy:
        cfg = TeacherConfig(backend="openai", model="bundled", base_url=proxy.base_url, max_concurrency=16,
                            timeout_s=10, max_retries=12, cache_path=str(tmp_path / "faulty.sqlite"))
        stats = TeacherStats()
        faulty = query_teacher(reqs, cfg, stats)
    faults = sum(v for k, v in proxy.counts.items() if k != "forwarded")
    print("proxy:", summary(proxy.counts), "client:", stats.failures)
    assert faults >= 0.2 * sum(proxy.counts.values()) and faults >= 40  # at least a fifth of all attempts
    assert all(r.error is None for r in faulty), [r.error for r in faulty if r.error][:3]
    assert [r.key for r in faulty] == [r.key() for r in reqs]  # every record present, in order, once
    assert len(ResponseCache(tmp_path / "faulty.sqlite")) == 200  # no duplicates, none lost
    assert proxy.counts["forwarded"] == 200  # the server answered each request exactly once: nothing paid twice
    assert [r.choices[0].text for r in faulty] == [r.choices[0].text for r in clean]  # same records as fault-free
    assert stats.retries == faults and sum(stats.failures.values()) == faults
    assert {"timeout", "connection", "malformed", "http_429", "http_503"} <= set(stats.failures)
