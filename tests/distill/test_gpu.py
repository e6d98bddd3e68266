"""CUDA paths (run where a GPU is visible; skipped elsewhere): training with bf16 autocast, perplexity."""

import json

import pytest

from distill.train.run import TrainConfig, train_student

pytestmark = pytest.mark.gpu


def test_train_on_cuda_bf16(tiny_model, tmp_path, sft_dataset):
    cfg = TrainConfig(student=str(tiny_model), lora={"r": 8, "alpha": 32}, max_steps=60, batch_size=4, lr=1e-2,
                      device="cuda", dtype="auto")
    out = train_student(cfg, sft_dataset, tmp_path / "student")
    m = json.loads((out / "metrics.json").read_text())
    assert m["device"] == "cuda" and m["autocast"] == "bfloat16"
    assert m["loss_last"] < m["loss_first"] - 0.2


def test_perplexity_cuda_matches_cpu(tiny_model):
    from distill.evaluate import perplexity
    from distill.models import load_causal_lm, load_tokenizer

    tok = load_tokenizer(tiny_model)
    text = "The quick brown fox jumps over the lazy dog. " * 40
    cpu = perplexity(load_causal_lm(tiny_model), tok, text, window=64, max_windows=4, dtype="float32")
    gpu = perplexity(load_causal_lm(tiny_model, device="cuda"), tok, text, window=64, max_windows=4, dtype="float32")
    assert gpu["perplexity"] == pytest.approx(cpu["perplexity"], rel=1e-3)
