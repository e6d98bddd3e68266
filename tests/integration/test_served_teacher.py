"""Online and on-policy logit KD from a served teacher (``train.kd.teacher`` = the vLLM server's URL): the
server's prompt_logprobs top-k against the same model in transformers, a short on-policy training run that
scores every batch over HTTP, the same run through a proxy that injects 5xx and resets, and the same run through
the proxy killed with SIGKILL after its first checkpoint and resumed (issue 24).

One module on the session's ``vllm_server`` (the bundled SmolLM2-135M-Instruct, fp32 on CPU under the tests'
``EAKD_CPU_AUTO_DTYPE=float32``); the student is the 2-layer ``tiny_model`` with the bundled tokenizer.
"""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from byte_models import byte_tokenizer
from distill.config import ConfigError
from distill.models import load_causal_lm, load_tokenizer
from distill.teacher.cache import ResponseCache
from distill.train.config import KDConfig, TrainConfig
from distill.train.data import tokenize_row
from distill.train.run import train_student
from distill.train.served import load_served_teacher
from faultproxy import FaultProxy, summary

pytestmark = [pytest.mark.integration]

CHAT = [{"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris."}]
TOP = 5  # ids compared position by position (where the local model's gap to the next one is no near-tie)
SEED = 12  # its on-policy draws for the 3 steps: student, dataset, student (the kill test needs one either side)
LOGPROB_TOL = 5e-4  # fp32 on both sides (measured max 6e-5): vLLM's CPU kernels sum in another order


def test_the_servers_top_k_is_the_local_models_log_softmax_top_k(vllm_server, bundled_dir, tmp_path):
    tok = load_tokenizer(bundled_dir)
    with pytest.raises(ConfigError, match="train.kd.teacher: .* tokenizes differently from the student"):
        load_served_teacher(KDConfig(enabled=True, teacher=vllm_server, served_cache_path=str(tmp_path / "x.sqlite")),
                            byte_tokenizer())
    served = load_served_teacher(KDConfig(enabled=True, teacher=vllm_server, served_top_k=20,
                                          served_cache_path=str(tmp_path / "scores.sqlite")), tok)
    ids, _ = tokenize_row(tok, CHAT, 512)
    [positions] = served.score([ids])
    assert positions[0] is None and len(positions) == len(ids)

    with torch.no_grad():
        local = torch.log_softmax(load_causal_lm(bundled_dir).eval()(torch.tensor([ids])).logits[0].float(), -1)
    worst, compared = 0.0, 0
    for t in range(1, len(ids)):
        got_ids, got_lps = positions[t]
        want = local[t - 1].topk(TOP + 1)
        assert ids[t] in got_ids  # the prompt's own token is listed too
        for j in range(TOP):
            if want.values[j] - want.values[j + 1] > LOGPROB_TOL:  # no near-tie: the order is the model's
                assert got_ids[j] == want.indices[j].item(), (t, j)
                compared += 1
        worst = max(worst, max(abs(lp - local[t - 1, i].item()) for i, lp in zip(got_ids, got_lps)))
    print(f"\nserved vs local top-k: {compared} ranks compared over {len(ids) - 1} positions, "
          f"max |logprob diff| {worst:.2e}", file=sys.stderr)
    assert compared > 3 * len(ids) and worst < LOGPROB_TOL, (compared, worst)
    assert served.requests == 1
    served.score([ids])  # cached: not asked again
    assert served.requests == 1
    served.close()


def _train(server_url: str, student, dataset, out, cache) -> dict:
    kd = {"enabled": True, "teacher": server_url, "on_policy": 0.5, "on_policy_max_new_tokens": 8,
          "served_top_k": 8, "served_cache_path": str(cache)}
    cfg = TrainConfig(student=str(student), kd=kd, max_steps=3, batch_size=2, lr=1e-3, max_length=64, log_every=1,
                      dtype="float32", device="cpu", seed=SEED)
    return json.loads((train_student(cfg, dataset, out) / "metrics.json").read_text())


@pytest.fixture(scope="module")
def clean_run(vllm_server, tiny_model, tmp_path_factory):
    """Three on-policy (lambda 0.5) steps against the server directly; (metrics, the score cache's path)."""
    from datasets import Dataset, DatasetDict

    root = tmp_path_factory.mktemp("served")
    rows = [{"id": str(i), "messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                                        {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(8)]
    DatasetDict({"train": Dataset.from_list(rows[:6]), "validation": Dataset.from_list(rows[6:])}).save_to_disk(
        str(root / "ds"))
    return _train(vllm_server, tiny_model, root / "ds", root / "student", root / "scores.sqlite"), root


def test_on_policy_kd_from_the_served_teacher_trains(clean_run):
    metrics, root = clean_run
    assert metrics["mode"] == "logit_kd_served_forward_kl" and metrics["kd_loss"] == "served_topk"
    assert metrics["on_policy_batches"] > 0
    kd = [h["kd"] for h in metrics["history"]]
    assert len(kd) == 3 and all(x is not None and math.isfinite(x) and x > 0 for x in kd)
    assert metrics["teacher_agreement_after"]["kl_topk"] is not None  # validation rows were scored too
    # every train micro-batch and the validation rows went to the server: 3 steps x 2 rows + 2 rows at least
    assert len(ResponseCache(root / "scores.sqlite")) >= 8


def test_injected_faults_leave_the_run_and_its_losses_unchanged(clean_run, vllm_server, tiny_model):
    metrics, root = clean_run
    with FaultProxy(vllm_server.rsplit("/v1", 1)[0], rate=0.3, seed=2, faults=("500", "502", "503", "reset")) as proxy:
        faulty = _train(proxy.base_url, tiny_model, root / "ds", root / "student-faults", root / "faults.sqlite")
    injected = sum(proxy.counts[f] for f in ("500", "502", "503", "reset"))
    print(f"\nproxy: {summary(proxy.counts)}; losses {[h['loss'] for h in faulty['history']]}", file=sys.stderr)
    assert injected >= 2, summary(proxy.counts)
    for a, b in zip(metrics["history"], faulty["history"]):
        assert (a["loss"], a["kd"]) == pytest.approx((b["loss"], b["kd"]), abs=1e-5)
    assert faulty["val_loss_after"] == pytest.approx(metrics["val_loss_after"], abs=1e-4)


@pytest.mark.reliability
def test_kill_9_mid_run_resumes_the_same_trajectory_without_rescoring(clean_run, vllm_server, tiny_model, repo_root,
                                                                       tmp_path, reliability):
    """``clean_run``'s three on-policy steps again, through the fault proxy, saving after every step, in a child
    process killed (SIGKILL) once its first checkpoint is complete; the rerun resumes from it, ends on the
    uninterrupted run's losses (steps 1 and 3 train on the student's samples, see SEED), and sends the
    server none of the sequences the killed run had scored (the score cache answers for them)."""
    import sqlite3
    import subprocess
    import time
    from contextlib import closing

    from distill.teacher.scoring import score_key
    from distill.train.checkpoint import checkpoint_root, latest_checkpoint

    metrics, root = clean_run
    out, cache, steps = tmp_path / "student", tmp_path / "scores.sqlite", len(metrics["history"])
    faults = ("429_retry_after", "500", "502", "503", "reset", "malformed")  # no hang: CI minutes
    # seed 1: faults on both sides of the kill (on /models and /tokenize as well as the scoring requests)
    with FaultProxy(vllm_server.rsplit("/v1", 1)[0], rate=0.3, seed=1, faults=faults) as proxy:
        kd = {"enabled": True, "teacher": proxy.base_url, "on_policy": 0.5, "on_policy_max_new_tokens": 8,
              "served_top_k": 8, "served_cache_path": str(cache)}  # as _train, plus a checkpoint per step
        cfg = TrainConfig(student=str(tiny_model), kd=kd, max_steps=steps, batch_size=2, lr=1e-3, max_length=64,
                          log_every=1, dtype="float32", device="cpu", seed=SEED, save_every=1)
        script = ("import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stderr)\n"
                  "from distill.train.run import TrainConfig, train_student\n"
                  f"train_student(TrainConfig.model_validate_json({cfg.model_dump_json()!r}), "
                  f"{str(root / 'ds')!r}, {str(out)!r})\n")
        with open(tmp_path / "child.log", "w") as log_file:
            proc = subprocess.Popen([sys.executable, "-c", script], cwd=repo_root, stderr=log_file)
            while proc.poll() is None and latest_checkpoint(checkpoint_root(out)) is None:
                time.sleep(0.02)
            proc.kill()  # SIGKILL: no cleanup, no atexit
            proc.wait(timeout=60)
        assert proc.returncode == -9, (tmp_path / "child.log").read_text()[-3000:]
        assert not out.exists()
        done = int(latest_checkpoint(checkpoint_root(out)).name.removeprefix("step-"))
        with closing(sqlite3.connect(cache)) as db:  # the keys scored before the kill (the rerun adds its own)
            scored_before = {key for (key,) in db.execute("SELECT key FROM responses")}
        model, before = next(b["model"] for b in proxy.forwarded if "model" in b), len(proxy.forwarded)

        resumed = json.loads((train_student(cfg, root / "ds", out) / "metrics.json").read_text())
    asked = [b["prompt"] for b in proxy.forwarded[before:] if "prompt_logprobs" in b]
    rescored = scored_before & {score_key(model, ids, 8) for prompt in asked for ids in prompt}
    injected = sum(proxy.counts[f] for f in faults)
    print(f"\nkilled after checkpoint {done}/{steps}; proxy: {summary(proxy.counts)}; resumed run asked "
          f"{len(asked)} scoring requests", file=sys.stderr)
    assert resumed["resumed_from_step"] == done and not checkpoint_root(out).exists()
    assert [(h["loss"], h["kd"]) for h in resumed["history"]] == [(h["loss"], h["kd"]) for h in metrics["history"]]
    assert resumed["val_loss_after"] == metrics["val_loss_after"]
    assert resumed["on_policy_batches"] == metrics["on_policy_batches"] == 2  # step 1's came back from the checkpoint
    assert not rescored, "the resumed run asked the server again for sequences scored before the kill"
    assert len(asked) <= steps - done
    assert injected >= 2, summary(proxy.counts)
    reliability["crashes_survived"] += 1
    reliability["faults_injected"] += injected
    reliability["records_checked"] += steps  # steps whose loss was compared with the uninterrupted run's
