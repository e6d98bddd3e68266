"""SparseGPT: beats magnitude and Wanda on layer reconstruction, exact sparsity, N:M respected (CPU, fast)."""

from __future__ import annotations

import pytest
import torch

from compress.calibrate import calibration_batches
from compress.prune import magnitude_mask, nm_mask, wanda_mask
from compress.sparsegpt import sparsegpt_model, sparsegpt_prune_weight
from distill.models import load_causal_lm, load_tokenizer

TEXT = " ".join(f"word{i % 97} and token{i % 13}." for i in range(2000))


def correlated_inputs(n_in: int = 192, tokens: int = 3000, seed: int = 0) -> torch.Tensor:
    """``X`` [tokens, in] with correlated channels and a spread of channel scales (like LLM activations)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(n_in, n_in, generator=g) / n_in ** 0.5 + torch.eye(n_in)
    latent = torch.randn(tokens, 32, generator=g) @ torch.randn(32, n_in, generator=g)  # shared factors
    scale = torch.logspace(-1, 1, n_in)[torch.randperm(n_in, generator=g)]
    return (torch.randn(tokens, n_in, generator=g) @ mix + latent) * scale


def recon_error(w: torch.Tensor, wp: torch.Tensor, x: torch.Tensor) -> float:
    return float(((w - wp) @ x.T).norm())


@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_sparsegpt_beats_magnitude_and_wanda(nm):
    x = correlated_inputs()
    w = torch.randn(96, x.shape[1], generator=torch.Generator().manual_seed(1))
    H = 2 * x.T @ x / x.shape[0]
    wp, stats = sparsegpt_prune_weight(w, H, 0.5, nm=nm, block_size=64)
    mag = w * (nm_mask(w.abs(), *nm) if nm else magnitude_mask(w, 0.5))
    wanda = w * wanda_mask(w, (x ** 2).sum(0), 0.5, nm)
    e_sgpt, e_mag, e_wanda = recon_error(w, wp, x), recon_error(w, mag, x), recon_error(w, wanda, x)
    assert e_sgpt < 0.9 * e_wanda < e_mag, (e_sgpt, e_wanda, e_mag)
    assert stats["sparsity"] == 0.5 and int((wp == 0).sum()) == w.numel() // 2
    if nm:
        assert torch.all((wp != 0).view(96, -1, 4).sum(-1) <= 2)


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.77])
def test_sparsegpt_exact_sparsity(sparsity):
    w, x = torch.randn(50, 70), torch.randn(400, 70)
    wp, stats = sparsegpt_prune_weight(w, x.T @ x, sparsity, block_size=16)
    assert int((wp == 0).sum()) == round(sparsity * w.numel()) == stats["target_zeros"]
    assert wp.dtype == w.dtype and wp.shape == w.shape


def test_sparsegpt_identity_hessian_is_magnitude():
    """With uncorrelated unit inputs there is nothing to compensate: one block = plain magnitude pruning."""
    w = torch.randn(32, 48)
    wp, _ = sparsegpt_prune_weight(w, torch.eye(48), 0.5, block_size=48)
    assert torch.equal(wp, w * magnitude_mask(w, 0.5))
    same, _ = sparsegpt_prune_weight(w, torch.eye(48) * 2, 0.0)
    assert torch.equal(same, w)


def test_sparsegpt_dead_columns_and_errors():
    w, x = torch.randn(8, 16), torch.randn(100, 16)
    x[:, 3] = 0  # an input channel the calibration never activates
    wp, stats = sparsegpt_prune_weight(w, x.T @ x, 0.5)
    assert stats["dead"] == 1 and torch.all(wp[:, 3] == 0) and int((wp == 0).sum()) == 64
    with pytest.raises(ValueError, match="multiple of m=4"):
        sparsegpt_prune_weight(torch.randn(4, 10), torch.eye(10), 0.5, nm=(2, 4))
    with pytest.raises(ValueError, match=r"H \[in, in\]"):
        sparsegpt_prune_weight(w, torch.eye(15), 0.5)


def test_sparsegpt_model_nm(tiny_model):
    model, tok = load_causal_lm(tiny_model), load_tokenizer(tiny_model)
    batches = calibration_batches(tok, TEXT, n_samples=2, seq_len=32)
    stats = sparsegpt_model(model, batches, 0.5, nm=(2, 4), batch_size=2)
    assert stats["layers"] == 14 and stats["sparsity_realized"] == pytest.approx(0.5)
    for name, lin in model.named_modules():
        if isinstance(lin, torch.nn.Linear) and ".layers." in name:
            assert torch.all((lin.weight != 0).view(lin.out_features, -1, 4).sum(-1) == 2), name
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=batches[:1]).logits).all()
