"""Fault tolerance of the openai backend: a fault-injecting proxy in front of the real vLLM server.

Transient faults (429s, 5xx, hangs, resets, malformed and empty bodies), truncated answers, and a
server that is killed mid-run and started again: every record ends up present exactly once, and
nothing the server answered is paid for twice.
"""

import json
import os
import signal
import threading
import time

import pytest

from distill.teacher.cache import ResponseCache
from distill.teacher.query import TeacherConfig, TeacherRequest, TeacherStats, query_teacher
from faultproxy import FaultProxy, summary

pytestmark = [pytest.mark.integration, pytest.mark.reliability]


def _requests(n: int) -> list[TeacherRequest]:
    return [TeacherRequest(messages=[{"role": "user", "content": f"Write the number {i} in words."}],
                           model="SmolLM2-135M-Instruct", style="instruct", template="t", template_sha="t",
                           max_tokens=8) for i in range(n)]


def test_200_requests_with_a_quarter_faulted_lose_nothing(vllm_server, tmp_path, reliability):
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
    faults = sum(v for k, v in proxy.counts.items() if k not in ("forwarded", "answered"))
    print("proxy:", summary(proxy.counts), "client:", stats.failures)
    attempts = sum(v for k, v in proxy.counts.items() if k != "answered")
    assert faults >= 0.2 * attempts and faults >= 40  # at least a fifth of all attempts
    assert all(r.error is None for r in faulty), [r.error for r in faulty if r.error][:3]
    assert [r.key for r in faulty] == [r.key() for r in reqs]  # every record present, in order, once
    assert len(ResponseCache(tmp_path / "faulty.sqlite")) == 200  # no duplicates, none lost
    assert proxy.counts["forwarded"] == 200  # the server answered each request exactly once: nothing paid twice
    assert [r.choices[0].text for r in faulty] == [r.choices[0].text for r in clean]  # same records as fault-free
    assert stats.retries == faults and sum(stats.failures.values()) == faults
    assert {"timeout", "connection", "malformed", "http_429", "http_503"} <= set(stats.failures)
    reliability["faults_injected"] += faults
    reliability["records_checked"] += len(reqs)
    reliability["records_lost"] += sum(r.error is not None for r in faulty)
    reliability["records_duplicated"] += proxy.counts["forwarded"] - len(reqs)


def test_truncated_answers_are_kept_in_the_removed_split(vllm_server, repo_root, tmp_path, reliability):
    from datasets import load_from_disk

    from distill.data.dataset import GenerateConfig, generate_dataset

    upstream = vllm_server.rsplit("/v1", 1)[0]
    with FaultProxy(upstream, rate=0.3, seed=3, faults=("length",)) as proxy:
        teacher = TeacherConfig(backend="openai", model="bundled", base_url=proxy.base_url, max_concurrency=8,
                                cache_path=str(tmp_path / "cache.sqlite"))
        gen = GenerateConfig(seeds=str(repo_root / "flows/configs/demo_seeds.jsonl"), limit=20, styles=["instruct"],
                             sampling={"max_tokens": 64}, validation_fraction=0.0)
        out = generate_dataset(gen, teacher, tmp_path / "ds")
    dd = load_from_disk(str(out))
    rows = list(dd["train"]) + list(dd["removed"])
    truncated = [r for r in rows if r["quality"]["finish_reason"] == "length"]
    assert proxy.counts["length"] >= 3 and len(truncated) >= proxy.counts["length"]
    assert all(r["removed_reason"] == "truncated" and r["raw_output"] for r in truncated)  # kept, marked, with the text
    assert sorted(r["seed_id"] for r in rows) == sorted({r["seed_id"] for r in rows})  # each seed exactly once
    assert len(rows) == 20 and json.loads((out / "stats.json").read_text())["removed_by_reason"]["truncated"] == len(truncated)
    reliability["faults_injected"] += proxy.counts["length"]
    reliability["records_checked"] += 20
    reliability["records_lost"] += 20 - len({r["seed_id"] for r in rows})
    reliability["records_duplicated"] += len(rows) - len({r["seed_id"] for r in rows})


def test_a_server_that_dies_and_comes_back_loses_nothing(bundled_dir, tmp_path, reliability):
    """kill -9 the vLLM server mid-run, start it again on the same port: the run either rides the
    outage out on retries or marks what it could not get; a rerun completes exactly those."""
    from distill.teacher.serve import free_port, start_server, stop_server, wait_ready

    port = free_port()
    upstream = f"http://127.0.0.1:{port}"
    server = start_server("bundled", port, log_file=tmp_path / "vllm.log", kv_cache_gib=1)
    try:
        wait_ready(upstream + "/v1", server, timeout_s=600)
        reqs = _requests(48)
        with FaultProxy(upstream, rate=0.0) as proxy:
            cfg = TeacherConfig(backend="openai", model="bundled", base_url=proxy.base_url, max_concurrency=4,
                                adaptive_concurrency=False, timeout_s=20, max_retries=6,
                                cache_path=str(tmp_path / "cache.sqlite"))
            result: dict = {}
            worker = threading.Thread(target=lambda: result.update(out=query_teacher(reqs, cfg, TeacherStats())))
            worker.start()
            deadline = time.time() + 300
            while proxy.counts["answered"] < 12:
                assert time.time() < deadline and worker.is_alive(), "no progress before the kill"
                time.sleep(0.1)
            os.killpg(server.pid, signal.SIGKILL)  # the server dies mid-run, requests in flight
            server.wait()
            answered_before = proxy.counts["answered"]
            time.sleep(2)
            server = start_server("bundled", port, log_file=tmp_path / "vllm.log", kv_cache_gib=1)
            wait_ready(upstream + "/v1", server, timeout_s=600)
            worker.join(900)
            assert not worker.is_alive()
            first = result["out"]
            failed = [r for r in first if r.error is not None]
            assert all(("connection" in r.error or "http_5" in r.error or "timeout" in r.error) for r in failed), \
                [r.error for r in failed][:3]
            stats = TeacherStats()
            again = query_teacher(reqs, cfg, stats)  # the rerun sends only what the outage cost
            assert stats.sent == len(failed) and stats.cache_hits == len(reqs) - len(failed)
        assert all(r.error is None and r.choices for r in again)
        assert [r.key for r in again] == [r.key() for r in reqs]
        assert len(ResponseCache(tmp_path / "cache.sqlite")) == len(reqs)
        assert proxy.counts["answered"] == len(reqs)  # every answer the server delivered was used once
        assert proxy.counts["upstream_down"] >= 1 and answered_before < len(reqs)
        print(f"answered before the kill {answered_before}, failed in the first run {len(failed)}, proxy {summary(proxy.counts)}")
        reliability["faults_injected"] += 1
        reliability["crashes_survived"] += 1
        reliability["records_checked"] += len(reqs)
        reliability["records_lost"] += sum(r.error is not None for r in again)
        reliability["records_duplicated"] += proxy.counts["answered"] - len(reqs)
    finally:
        stop_server(server)
