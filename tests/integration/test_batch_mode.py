"""Batch mode through vLLM's real batch runner: same records as the online path, failures resumed alone."""

import json

import pytest

from distill.config import ConfigError
from distill.teacher.batch import journal_path
from distill.teacher.cache import ResponseCache
from distill.teacher.query import TeacherConfig, TeacherRequest, TeacherStats, query_teacher
from distill.teacher.types import BatchPending

pytestmark = pytest.mark.integration

QUESTIONS = ["What is 7 times 6?", "Name a primary colour.", "Give a synonym of quick.", "What is the capital of Italy?",
             "Spell 'cat' backwards.", "How many legs does a spider have?"]


def test_local_batch_equals_online_and_resubmits_only_what_failed(vllm_server, tmp_path):
    model = "SmolLM2-135M-Instruct"
    reqs = [TeacherRequest(messages=[{"role": "user", "content": q}], model=model, style="instruct", template="t",
                           template_sha="t", max_tokens=24, top_logprobs=2) for q in QUESTIONS]
    # the runner refuses this one: more completion tokens than the 1024-token context holds
    too_long = TeacherRequest(messages=[{"role": "user", "content": "Write a story."}], model=model, style="instruct",
                              template="t", template_sha="t", max_tokens=4000)
    online = query_teacher(reqs, TeacherConfig(backend="openai", model="bundled", base_url=vllm_server,
                                               cache_path=str(tmp_path / "online.sqlite")))
    bcfg = TeacherConfig(backend="vllm", model="bundled", batch=True, max_model_len=1024,
                         cache_path=str(tmp_path / "batch.sqlite"))
    stats = TeacherStats()
    out = query_teacher(reqs + [too_long], bcfg, stats)
    assert [r.choices[0].text for r in out[:-1]] == [r.choices[0].text for r in online]  # temperature 0: same records
    assert all(r.engine == "vllm-batch" and r.completion_tokens > 0 for r in out[:-1])
    assert [r.choices[0].logprobs["n"] for r in out[:-1]] == [r.completion_tokens for r in out[:-1]]
    assert out[-1].error and "status 400" in out[-1].error and stats.failures == {"batch": 1}
    again = TeacherStats()
    query_teacher(reqs + [too_long], bcfg, again)
    assert again.sent == 1 and again.cache_hits == len(reqs)  # only the failed custom_id is resubmitted


def _reqs(model="SmolLM2-135M-Instruct"):
    return [TeacherRequest(messages=[{"role": "user", "content": q}], model=model, style="instruct", template="t",
                           template_sha="t", max_tokens=24) for q in QUESTIONS]


def test_remote_batch_api_resumes_an_expired_batch_and_line_errors_without_paying_twice(vllm_server, tmp_path):
    from batchapi import BatchAPI

    reqs = _reqs()
    online = query_teacher(reqs, TeacherConfig(backend="openai", model="bundled", base_url=vllm_server,
                                               cache_path=str(tmp_path / "online.sqlite")))
    upstream = vllm_server.removesuffix("/v1")
    keys = [r.key() for r in reqs]
    # batch 1: line 0 gets a 500 (retryable), the last request a 400 (kept), and it expires after 4 lines
    with BatchAPI(upstream, expire_after=4, fail_first=1, bad_ids=frozenset({keys[-1]})) as api:
        cfg = TeacherConfig(backend="openai", model="bundled", base_url=api.base_url, batch=True, batch_poll_s=0.2,
                            cache_path=str(tmp_path / "batch.sqlite"))
        stats = TeacherStats()
        out = query_teacher(reqs, cfg, stats)
        assert len(api.batches) == 2  # the expired batch, then one with only what it left unanswered
        second = api.files[api.batches["batch-2"]["input_file_id"]].decode().splitlines()
        assert sorted(json.loads(x)["custom_id"] for x in second) == sorted([keys[0]] + keys[4:])
    assert [r.choices[0].text for r in out[:-1]] == [r.choices[0].text for r in online[:-1]]
    assert all(r.engine == "openai-batch" for r in out[:-1])
    assert out[-1].error and "status 400" in out[-1].error  # a bad request is kept on its record, not retried
    assert max(api.forwarded.values()) == 1 and len(api.forwarded) == len(reqs) - 1  # no line paid for twice
    assert stats.failures == {"batch": 2}  # the 500 in batch 1, the 400 in batch 2 (batch 1 expired before it)
    assert not journal_path(ResponseCache(cfg.cache_path)).read_text().strip("{}\n ")  # every batch collected


def test_remote_batch_still_running_is_reattached_not_resubmitted(vllm_server, tmp_path):
    from batchapi import BatchAPI

    reqs = _reqs()[:3]
    with BatchAPI(vllm_server.removesuffix("/v1"), hold_s=3.0) as api:
        cfg = TeacherConfig(backend="openai", model="bundled", base_url=api.base_url, batch=True, batch_poll_s=0.2,
                            batch_wait_s=0.5, cache_path=str(tmp_path / "batch.sqlite"))
        with pytest.raises(BatchPending, match="re-running the same command collects it"):
            query_teacher(reqs, cfg)
        journal = json.loads(journal_path(ResponseCache(cfg.cache_path)).read_text())
        assert list(journal) == ["batch-1"]
        cfg.batch_wait_s = 60
        stats = TeacherStats()
        out = query_teacher(reqs, cfg, stats)
        assert len(api.batches) == 1 and all(r.choices and r.error is None for r in out)
        assert max(api.forwarded.values()) == 1
        assert json.loads(journal_path(ResponseCache(cfg.cache_path)).read_text()) == {}


def test_batch_to_an_endpoint_without_batch_api_is_a_config_error(vllm_server, tmp_path):
    cfg = TeacherConfig(backend="openai", model="bundled", base_url=vllm_server, batch=True,
                        cache_path=str(tmp_path / "c.sqlite"))
    with pytest.raises(ConfigError, match="has no Batch API"):
        query_teacher(_reqs()[:1], cfg)
