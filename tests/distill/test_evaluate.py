"""Tests for distill.evaluate: the perplexity protocol, eval text loading, parameter counts (CPU, < 2 s)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from byte_models import VOCAB, byte_tokenizer, tiny_llama  # noqa: F401
from distill.config import ConfigError
from distill.evaluate import count_parameters, load_eval_text, perplexity, window_ids


class UniformLM(nn.Module):
    """Logits all zero: every next token has probability 1 / VOCAB, so perplexity is exactly VOCAB."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids: torch.Tensor, **_: object) -> SimpleNamespace:
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, VOCAB) + 0 * self.dummy)


TEXT = "The quick brown fox jumps over the lazy dog. " * 20  # 900 byte tokens


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_uniform_logits_give_vocab_size(tok, dtype):
    out = perplexity(UniformLM(), tok, TEXT, window=64, max_windows=None, dtype=dtype)
    assert out["perplexity"] == pytest.approx(VOCAB, abs=1e-3)
    assert out["nll"] == pytest.approx(math.log(VOCAB), abs=1e-5)  # fp32 log_softmax
    assert out["windows"] == len(TEXT) // 64  # partial last window dropped
    assert out["tokens"] == out["windows"] * 63
    assert set(out) == {"perplexity", "nll", "tokens", "windows", "window", "dtype", "seconds", "tokens_per_s"}


def test_max_windows_limits_tokens(tok):
    quick = perplexity(UniformLM(), tok, TEXT, window=32, max_windows=3, dtype="float32")
    full = perplexity(UniformLM(), tok, TEXT, window=32, max_windows=None, dtype="float32")
    assert (quick["windows"], quick["tokens"]) == (3, 3 * 31)
    assert full["windows"] == len(TEXT) // 32 > 3


def test_window_ids_shape():
    ids = torch.arange(10)
    assert window_ids(ids, 3, None).tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert window_ids(ids, 3, 2).shape == (2, 3)


def test_matches_hf_loss_on_one_window(tok):
    model = tiny_llama()
    out = perplexity(model, tok, TEXT, window=48, max_windows=1, dtype="float32")
    ids = torch.tensor(tok(TEXT, add_special_tokens=False)["input_ids"][:48])[None]
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    assert out["nll"] == pytest.approx(loss, rel=1e-5)
    bf16 = perplexity(model, tok, TEXT, window=48, max_windows=1, dtype="bfloat16")
    assert bf16["perplexity"] == pytest.approx(out["perplexity"], rel=0.05)


def test_training_mode_restored(tok):
    model = tiny_llama().train()
    perplexity(model, tok, TEXT, window=32, max_windows=1, dtype="float32")
    assert model.training


def test_bad_arguments_raise_config_error(tok):
    with pytest.raises(ConfigError, match="fewer than one window of 4096"):
        perplexity(UniformLM(), tok, TEXT, window=4096)
    with pytest.raises(ConfigError, match="eval.window"):
        perplexity(UniformLM(), tok, TEXT, window=1)
    with pytest.raises(ConfigError, match="eval.dtype"):
        perplexity(UniformLM(), tok, TEXT, dtype="int8")


def test_load_eval_text(tmp_path):
    path = tmp_path / "wiki.test.raw"
    path.write_text(" = Title = \n\n Some text .\n")
    assert load_eval_text(path) == " = Title = \n\n Some text .\n"
    with pytest.raises(ConfigError, match="not found"):
        load_eval_text(tmp_path / "missing.txt")


def test_count_parameters_counts_tied_once():
    model = tiny_llama()
    counts = count_parameters(model)
    untied = sum(p.numel() for p in model.state_dict().values())
    assert counts["total"] == untied - model.lm_head.weight.numel()
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.zero_()
    assert count_parameters(model)["nonzero"] == counts["nonzero"] - 128 * 64


def test_teacher_agreement_is_one_for_a_model_that_predicts_the_labels():
    """A model whose argmax is always the next label agrees 100 %; KL over buckets is 0 for itself."""
    from distill.evaluate import teacher_agreement

    model = tiny_llama()
    ids = [5, 6, 7, 8, 9, 10]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    preds = logits.argmax(-1).tolist()  # what the model predicts after each prefix
    labels = [-100, -100] + preds[1:5]  # label t = the model's own argmax at t-1
    rows = [(ids, labels)]
    out = teacher_agreement(model, rows, pad_id=0)
    assert out == {"top1_agreement": 1.0, "kl_topk": None, "kl_full": None, "tokens": 4}
    lp = torch.log_softmax(logits.float(), -1)
    top = lp[1:5].topk(3, dim=-1)
    rows_k = [(ids, labels, top.indices.tolist(), top.values.tolist())]
    assert teacher_agreement(model, rows_k, pad_id=0)["kl_topk"] == pytest.approx(0.0, abs=1e-5)
