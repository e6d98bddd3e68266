"""Sequence-level KD on a tiny random model: masking, depth pruning, and a loss that goes down."""

import json

import pytest
import torch

from distill.config import ConfigError
from distill.logprobs import pack_topk
from distill.models import load_causal_lm, load_tokenizer
from distill.train.run import IGNORE, KDConfig, TrainConfig, depth_prune, tokenize_row, train_student


def test_labels_cover_only_the_assistant_turn(tiny_model):
    tok = load_tokenizer(tiny_model)
    ids, labels = tokenize_row(tok, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}], 512)
    assert len(ids) == len(labels)
    target = [t for t in labels if t != IGNORE]
    assert tok.decode(target).startswith("Hello there")
    n_prompt = labels.index(target[0])
    assert all(t == IGNORE for t in labels[:n_prompt])


def test_depth_prune_keeps_ends(tiny_model, tmp_path):
    from distill.models import build_tiny_model

    m = load_causal_lm(build_tiny_model(tmp_path / "m", tiny_model, layers=6))
    first, last = m.model.layers[0], m.model.layers[-1]
    depth_prune(m, 3)
    assert len(m.model.layers) == 3 and m.config.num_hidden_layers == 3
    assert m.model.layers[0] is first and m.model.layers[-1] is last
    m(torch.tensor([[1, 2, 3]]))  # still runs
    with pytest.raises(ConfigError, match="only 3 layers"):
        depth_prune(m, 5)


@pytest.mark.parametrize("lora", [True, False])
def test_train_student_loss_goes_down(tiny_model, tmp_path, lora, sft_dataset):
    ds = sft_dataset
    cfg = TrainConfig(student=str(tiny_model), lora={"enabled": lora, "r": 8, "alpha": 32}, max_steps=60 if lora else 25, batch_size=4,
                      lr=1e-2 if lora else 1e-3, log_every=5, dtype="float32", device="cpu")
    out = train_student(cfg, ds, tmp_path / "student")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["loss_last"] < metrics["loss_first"] - 0.2  # nats; a random tiny model starts near ln(V)
    assert metrics["val_loss_after"] < metrics["val_loss_before"]
    assert (out / "model.safetensors").exists() and not list(out.glob("*.bin"))
    assert (out / "train_config.yaml").exists()
    load_causal_lm(out)  # merged, loadable as a plain model
    with pytest.raises(ConfigError, match="already holds a trained student"):
        train_student(cfg, ds, out)


def test_train_rejects_non_dataset(tiny_model, tmp_path):
    with pytest.raises(ConfigError, match="not an eakd dataset"):
        train_student(TrainConfig(student=str(tiny_model)), tmp_path, tmp_path / "out")


def test_kd_refuses_logprobs_given_as_token_strings(tiny_model, tmp_path):
    from datasets import Dataset, DatasetDict

    rows = [{"id": "0", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
             "teacher_token_ids": [900], "teacher_logprobs": json.dumps([{"tokens": ["hello"], "logprobs": [0.0]}])}]
    DatasetDict({"train": Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "ds"))
    cfg = TrainConfig(student=str(tiny_model), kd={"enabled": True}, max_steps=1, device="cpu")
    with pytest.raises(ConfigError, match="token strings"):
        train_student(cfg, tmp_path / "ds", tmp_path / "out")


def make_kd_dataset(path, tok, n=12, k=5, seed=0):
    """Rows as `eakd generate` writes them with top_logprobs=k: teacher ids + per-token top-k (a peaked
    made-up teacher distribution: this tests the training math, not a teacher)."""
    import random

    from datasets import Dataset, DatasetDict

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        content = f"{i} plus {i} is {2 * i}."
        ids = tok(content, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        top_ids, top_lps = [], []
        for t in ids:
            top_ids.append([t] + rng.sample([x for x in range(5, 500) if x != t], k - 1))
            top_lps.append([-0.1] + [-3.0 - j for j in range(k - 1)])
        rows.append({"id": str(i), "messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                                                {"role": "assistant", "content": content}],
                     "teacher_token_ids": ids, "teacher_logprobs": json.dumps(pack_topk(top_ids, top_lps))})
    DatasetDict({"train": Dataset.from_list(rows[:-2]), "validation": Dataset.from_list(rows[-2:])}).save_to_disk(str(path))
    return path


def test_offline_topk_kd_trains_without_a_teacher(tiny_model, tmp_path):
    tok = load_tokenizer(tiny_model)
    ds = make_kd_dataset(tmp_path / "kd", tok)
    cfg = TrainConfig(student=str(tiny_model), lora={"enabled": False}, kd={"enabled": True, "alpha_ce": 0.5},
                      max_steps=25, batch_size=4, lr=1e-3, dtype="float32", device="cpu")
    m = json.loads((train_student(cfg, ds, tmp_path / "student") / "metrics.json").read_text())
    assert m["mode"] == "logit_kd_topk_forward_kl"
    assert m["val_loss_after"] < m["val_loss_before"] - 0.2
    before, after = m["teacher_agreement_before"], m["teacher_agreement_after"]
    assert after["kl_topk"] < before["kl_topk"] and after["top1_agreement"] > before["top1_agreement"]
    assert before["tokens"] == after["tokens"] > 0


def test_kd_rows_align_topk_with_teacher_tokens(tiny_model, tmp_path):
    from datasets import load_from_disk

    from distill.train.run import tokenize_row_kd

    tok = load_tokenizer(tiny_model)
    row = load_from_disk(str(make_kd_dataset(tmp_path / "kd", tok)))["train"][0]
    ids, labels, top_ids, top_lps = tokenize_row_kd(tok, row["messages"], row["teacher_token_ids"],
                                                    row["teacher_logprobs"], 512, k=6)
    targets = [t for t in labels if t != IGNORE]
    assert targets == row["teacher_token_ids"] and len(top_ids) == len(targets)
    assert [t[0] for t in top_ids] == targets  # the cached distribution at position t is for label t
    assert all(len(t) == 6 and t[-1] == -1 for t in top_ids) and all(lp[-1] == float("-inf") for lp in top_lps)


def test_kd_refuses_a_different_tokenizer(tiny_model, tmp_path):
    from datasets import Dataset, DatasetDict

    rows = [{"id": "0", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
             "teacher_token_ids": [900, 901, 2], "teacher_logprobs": json.dumps(pack_topk([[900], [901], [2]], [[0.0], [0.0], [0.0]]))}]
    DatasetDict({"train": Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "ds"))
    cfg = TrainConfig(student=str(tiny_model), kd={"enabled": True}, max_steps=1, device="cpu")
    with pytest.raises(ConfigError, match="sequence-level KD"):
        train_student(cfg, tmp_path / "ds", tmp_path / "out")


def test_kd_needs_cached_logprobs(tiny_model, sft_dataset, tmp_path):
    cfg = TrainConfig(student=str(tiny_model), kd={"enabled": True}, max_steps=1, device="cpu")
    with pytest.raises(ConfigError, match="top_logprobs"):
        train_student(cfg, sft_dataset, tmp_path / "out")


@pytest.mark.reliability
def test_kill_9_and_resume_reproduces_the_uninterrupted_run(tiny_model, sft_dataset, tmp_path, repo_root, reliability):
    import subprocess
    import sys

    from distill.train.checkpoint import checkpoint_root, latest_checkpoint

    base = dict(student=str(tiny_model), lora={"r": 8, "alpha": 32}, max_steps=12, batch_size=2, lr=1e-2,
                dtype="float32", device="cpu", log_every=1)
    ref = json.loads((train_student(TrainConfig(**base), sft_dataset, tmp_path / "ref") / "metrics.json").read_text())

    cfg = TrainConfig(**base, save_every=3)
    out = tmp_path / "student"
    script = (
        "import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stderr)\n"
        "from distill.train.run import TrainConfig, train_student\n"
        f"train_student(TrainConfig.model_validate_json({cfg.model_dump_json()!r}), {str(sft_dataset)!r}, {str(out)!r})\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=repo_root, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "step 8 |" in line:
            proc.kill()  # SIGKILL: no cleanup, no atexit
            break
    proc.wait(timeout=60)
    assert proc.returncode == -9, "the child finished before it could be killed"
    assert not out.exists() and latest_checkpoint(checkpoint_root(out)).name == "step-000006"

    with pytest.raises(ConfigError, match="different config or dataset"):
        train_student(TrainConfig(**(base | {"lr": 5e-3}), save_every=3), sft_dataset, out)
    resumed = json.loads((train_student(cfg, sft_dataset, out) / "metrics.json").read_text())
    assert resumed["resumed_from_step"] == 6
    # the same trajectory: a wrong sampler or RNG state would move the losses by ~1e-1. Not bit for bit: the reference
    # runs in this process and the first six steps in the child; on an Intel Xeon (AVX-512, MKL BLAS) one full-suite
    # run saw a loss differ in the 7th digit between the two processes (10.98831 vs 10.9883; alone, twice: equal)
    losses = [h["loss"] for h in resumed["history"]]
    assert losses == pytest.approx([h["loss"] for h in ref["history"]], rel=1e-5, abs=0)
    assert resumed["val_loss_after"] == pytest.approx(ref["val_loss_after"], rel=1e-5, abs=0)
    assert not checkpoint_root(out).exists()
    reliability["crashes_survived"] += 1


@pytest.mark.reliability
def test_a_half_written_checkpoint_is_never_read_as_complete(tmp_path):
    from distill.train.checkpoint import latest_checkpoint

    root = tmp_path / "checkpoints"
    for name, files in {"step-000003": ("meta.json", "state.safetensors"),  # complete
                        ".tmp-step-000006": ("meta.json", "state.safetensors"),  # killed before its rename
                        "step-000009": ("state.safetensors",)}.items():  # renamed by hand, meta missing
        (root / name).mkdir(parents=True)
        for f in files:
            (root / name / f).write_bytes(b"{}")
    assert latest_checkpoint(root).name == "step-000003"


def test_a_checkpoint_brings_back_the_sampler_and_the_on_policy_count(tmp_path):
    import random

    from distill.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    rng = random.Random(12)
    rng.random()
    save_checkpoint(tmp_path, 1, model, opt, rng, [[0, 1]], [{"step": 1}], {}, "fp", on_policy_batches=1)
    want = rng.random()
    meta = load_checkpoint(latest_checkpoint(tmp_path), model, opt, fresh := random.Random(0), "fp")
    assert meta["on_policy_batches"] == 1 and meta["queue"] == [[0, 1]]
    assert fresh.random() == want  # the next on-policy draw is the one the uninterrupted run makes


def test_rationale_multitask_splits_cot_rows_into_answer_and_explain_tasks(tiny_model, tmp_path):
    from datasets import Dataset, DatasetDict

    from distill.train.run import ANSWER_TAG, EXPLAIN_TAG, rationale_tasks

    cot = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "3 boxes of 4?"},
           {"role": "assistant", "content": "3 times 4 is 12.\nThe answer is 12."}]
    icl = [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris"}]
    out = rationale_tasks([cot, icl, cot], ["cot", "icl", "cot"], ["12", "Paris", None])
    assert out[0] == cot[:1] + [{"role": "user", "content": f"{ANSWER_TAG} 3 boxes of 4?"}, {"role": "assistant", "content": "12"}]
    assert out[1] == cot[:1] + [{"role": "user", "content": f"{EXPLAIN_TAG} 3 boxes of 4?"}, cot[-1]]
    assert out[2:] == [icl, cot]  # not CoT, or no parsed answer: unchanged
    rows = [{"id": str(i), "style": "cot", "answer": str(2 * i),
             "messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{i} and {i} make {2 * i}.\nThe answer is {2 * i}."}]} for i in range(8)]
    DatasetDict({"train": Dataset.from_list(rows[:6]), "validation": Dataset.from_list(rows[6:])}).save_to_disk(str(tmp_path / "ds"))
    cfg = TrainConfig(student=str(tiny_model), rationale_multitask=True, max_steps=2, batch_size=4, dtype="float32", device="cpu")
    m = json.loads((train_student(cfg, tmp_path / "ds", tmp_path / "s") / "metrics.json").read_text())
    assert (m["train_rows"], m["val_rows"]) == (12, 4)  # two tasks per CoT row
    with pytest.raises(ConfigError, match="rationale_multitask with offline logit KD"):
        train_student(cfg.model_copy(update={"kd": KDConfig(enabled=True)}), tmp_path / "ds", tmp_path / "k")
