"""Calibration: seeded windows, and the block-by-block replay equals one full forward."""

from __future__ import annotations

import pytest
import torch

from compress.calibrate import calibration_batches, collect_input_stats, run_sequential
from distill.models import load_causal_lm, load_tokenizer

TEXT = " ".join(f"word{i % 97} and token{i % 13}." for i in range(3000))


def test_calibration_batches_are_seeded_windows(tiny_model):
    tok = load_tokenizer(tiny_model)
    a = calibration_batches(tok, TEXT, n_samples=5, seq_len=32, seed=3)
    b = calibration_batches(tok, TEXT, n_samples=5, seq_len=32, seed=3)
    c = calibration_batches(tok, TEXT, n_samples=5, seq_len=32, seed=4)
    assert a.shape == (5, 32) and torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="seq_len"):
        calibration_batches(tok, "too short", n_samples=1, seq_len=32)


def test_sequential_replay_matches_full_forward(tiny_model):
    model, tok = load_causal_lm(tiny_model), load_tokenizer(tiny_model)
    batches = calibration_batches(tok, TEXT, n_samples=3, seq_len=24)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n}
    full = collect_input_stats(model, batches, linears, batch_size=2)
    seq = {}

    def record(i, _block, stats):
        seq.update({f"model.layers.{i}.{n}": s for n, s in stats.items()})

    run_sequential(model, batches, record, batch_size=2)
    assert set(seq) == set(full) and len(full) == 14
    for name, s in full.items():
        assert s.count == 3 * 24
        torch.testing.assert_close(seq[name].gram, s.gram, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(seq[name].abs_mean, s.abs_mean, rtol=1e-4, atol=1e-4)
        assert torch.allclose(s.sq_norm, torch.diagonal(s.gram))


def test_sequential_sees_compressed_inputs(tiny_model):
    """Zeroing block 0 changes what block 1 is calibrated on (its inputs come from the compressed block)."""
    model, tok = load_causal_lm(tiny_model), load_tokenizer(tiny_model)
    batches = calibration_batches(tok, TEXT, n_samples=2, seq_len=16)
    plain = {}
    run_sequential(model, batches, lambda i, b, s: plain.setdefault(i, s["mlp.down_proj"].gram.clone()))
    model = load_causal_lm(tiny_model)

    def zero_first(i, block, stats):
        if i == 0:
            block.mlp.down_proj.weight.zero_()
        return stats["mlp.down_proj"].gram.clone()

    grams = run_sequential(model, batches, zero_first)
    assert torch.allclose(grams[0], plain[0]) and not torch.allclose(grams[1], plain[1])


def test_stats_without_the_gram_keep_the_per_channel_figures(tiny_model):
    """gram=False (Wanda's statistics): no [in, in] matrix is held, and the per-channel figures equal the
    Gram's diagonal and the same |x| means; asking such statistics for a Hessian is refused."""
    model, tok = load_causal_lm(tiny_model), load_tokenizer(tiny_model)
    batches = calibration_batches(tok, TEXT, n_samples=3, seq_len=24)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n}
    full = collect_input_stats(model, batches, linears, batch_size=2)
    lean = collect_input_stats(model, batches, linears, batch_size=2, gram=False)
    assert set(lean) == set(full)
    for name, s in lean.items():
        assert s.gram is None and s.count == full[name].count
        torch.testing.assert_close(s.sq_norm, torch.diagonal(full[name].gram), rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(s.abs_mean, full[name].abs_mean)
    with pytest.raises(ValueError, match="gram=True"):
        next(iter(lean.values())).hessian()
