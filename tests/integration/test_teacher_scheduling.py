"""Replicas, adaptive concurrency and rate limits of the openai backend, against the real vLLM server.

Replicas are fault proxies in front of the one real server (the proxies count what each replica was
sent); a dead replica is a loopback port nobody listens on.
"""

import time

import pytest

from distill.teacher.query import TeacherConfig, TeacherRequest, TeacherStats, query_teacher
from distill.teacher.serve import free_port
from faultproxy import FaultProxy

pytestmark = pytest.mark.integration


def _requests(n: int, tag: str, max_tokens: int = 4) -> list[TeacherRequest]:
    return [TeacherRequest(messages=[{"role": "user", "content": f"{tag}: say the number {i}."}],
                           model="SmolLM2-135M-Instruct", style="instruct", template="t", template_sha="t",
                           max_tokens=max_tokens) for i in range(n)]


def test_replicas_share_the_load_and_a_dead_one_loses_nothing(vllm_server, tmp_path):
    upstream = vllm_server.rsplit("/v1", 1)[0]
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with FaultProxy(upstream, rate=0.0) as a, FaultProxy(upstream, rate=0.0) as b:
        cfg = TeacherConfig(backend="openai", model="bundled", base_url=a.base_url, base_urls=[b.base_url, dead],
                            max_concurrency=4, max_retries=8, cache_path=str(tmp_path / "c.sqlite"))
        stats = TeacherStats()
        out = query_teacher(_requests(60, "replicas"), cfg, stats)
    assert all(r.error is None for r in out)
    assert a.counts["forwarded"] + b.counts["forwarded"] == 60  # each request answered once
    assert min(a.counts["forwarded"], b.counts["forwarded"]) >= 15  # spread by load, not all on one
    assert stats.replicas[a.base_url] + stats.replicas[b.base_url] == 60 and stats.replicas[dead] == 0
    assert stats.failures.get("connection", 0) >= 1  # the dead replica was tried, then sat out


def test_pushback_shrinks_the_window_and_it_recovers(vllm_server, tmp_path):
    upstream = vllm_server.rsplit("/v1", 1)[0]
    with FaultProxy(upstream, rate=0.0, faults=("429",), fault_first=24) as proxy:
        cfg = TeacherConfig(backend="openai", model="bundled", base_url=proxy.base_url, max_concurrency=16,
                            max_retries=10, cache_path=str(tmp_path / "c.sqlite"))
        stats = TeacherStats()
        out = query_teacher(_requests(160, "aimd", max_tokens=2), cfg, stats)
    assert all(r.error is None for r in out) and proxy.counts["forwarded"] == 160
    assert stats.failures == {"http_429": 24} and stats.pushbacks >= 1
    assert stats.concurrency_lowest is not None and stats.concurrency_lowest <= 8
    assert stats.concurrency_final is not None and stats.concurrency_final > stats.concurrency_lowest


def test_requests_per_minute_limit_paces_the_run(vllm_server, tmp_path):
    cfg = TeacherConfig(backend="openai", model="bundled", base_url=vllm_server, max_concurrency=8, rpm=240,
                        cache_path=str(tmp_path / "c.sqlite"))  # 4/s with a 10 s (40 request) burst
    stats = TeacherStats()
    t = time.perf_counter()
    out = query_teacher(_requests(60, "rpm", max_tokens=2), cfg, stats)
    took = time.perf_counter() - t
    assert all(r.error is None for r in out)
    assert took >= 4.5 and stats.rate_limited_s >= 4.0  # 20 requests past the burst at 4/s
