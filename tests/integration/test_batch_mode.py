"""Batch mode through vLLM's real batch runner: same records as the online path, failures resumed alone."""

import pytest

from distill.teacher import TeacherConfig, TeacherRequest, TeacherStats, query_teacher

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
    assert [len(r.choices[0].logprobs) for r in out[:-1]] == [r.completion_tokens for r in out[:-1]]
    assert out[-1].error and "status 400" in out[-1].error and stats.failures == {"batch": 1}
    again = TeacherStats()
    query_teacher(reqs + [too_long], bcfg, again)
    assert again.sent == 1 and again.cache_hits == len(reqs)  # only the failed custom_id is resubmitted
