"""Masks and whole-model pruning: N:M exactness, Wanda's definition, exact realized sparsity (CPU, fast)."""

from __future__ import annotations

import pytest
import torch

from compress.calibrate import calibration_batches
from compress.prune import magnitude_mask, magnitude_model, nm_mask, resolve_sparsity, row_mask, wanda_mask, wanda_model
from distill.models import load_causal_lm, load_tokenizer

TEXT = " ".join(f"word{i % 97} and token{i % 13}." for i in range(2000))


def block_linears(model):
    return [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n]


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8), (3, 3)])
def test_nm_mask_exactly_n_per_group_and_keeps_largest(n, m):
    score = torch.randn(16, 8 * m).abs()
    mask = nm_mask(score, n, m)
    groups, s = mask.view(16, 8, m), score.view(16, 8, m)
    assert torch.all(groups.sum(-1) == n)
    kept_min = torch.where(groups, s, torch.inf).amin(-1)
    dropped_max = torch.where(~groups, s, -torch.inf).amax(-1)
    assert torch.all(kept_min >= dropped_max)
    ties = nm_mask(torch.ones(3, 8), n=min(n, m), m=m if 8 % m == 0 else 4)
    assert torch.all(ties.view(3, -1, m if 8 % m == 0 else 4).sum(-1) == min(n, m))


def test_nm_mask_rejects_bad_shapes():
    with pytest.raises(ValueError, match="multiple of m=4"):
        nm_mask(torch.randn(4, 10), 2, 4)
    with pytest.raises(ValueError, match="0 < n <= m"):
        nm_mask(torch.randn(4, 8), 5, 4)
    assert resolve_sparsity(0.5, (2, 4)) == 0.5
    assert resolve_sparsity(0.5, (1, 4)) == 0.75  # the pattern overrides a disagreeing sparsity


def test_wanda_with_constant_norms_is_per_row_magnitude():
    w = torch.randn(24, 64)
    const = torch.full((64,), 3.7)
    assert torch.equal(wanda_mask(w, const, 0.5), row_mask(w.abs(), 0.5))
    assert torch.equal(wanda_mask(w, const, 0.5, nm=(2, 4)), nm_mask(w.abs(), 2, 4))
    # and per row it is the magnitude mask of that row
    for r in range(w.shape[0]):
        assert torch.equal(wanda_mask(w, const, 0.5)[r], magnitude_mask(w[r], 0.5))


def test_wanda_uses_activation_norms():
    w = torch.ones(2, 4)
    sq = torch.tensor([1.0, 4.0, 0.25, 9.0])  # ||X_j|| = 1, 2, 0.5, 3
    mask = wanda_mask(w, sq, 0.5)
    assert mask.tolist() == [[False, True, False, True]] * 2


def test_row_mask_exact_per_row():
    mask = row_mask(torch.randn(7, 30), 0.4)
    assert torch.all((~mask).sum(1) == 12)


def test_magnitude_model_nm(tiny_model):
    model = load_causal_lm(tiny_model)
    head = model.lm_head.weight.clone()
    stats = magnitude_model(model, 0.5, nm=(2, 4))
    assert stats["sparsity_realized"] == pytest.approx(0.5)
    for lin in block_linears(model):
        assert torch.all((lin.weight != 0).view(lin.out_features, -1, 4).sum(-1) == 2)
    assert torch.equal(model.lm_head.weight, head)  # the tied embedding / LM head is never pruned


@pytest.mark.parametrize("sparsity,nm", [(0.5, None), (0.3, None), (0.5, (2, 4))])
def test_wanda_model_exact_sparsity(tiny_model, sparsity, nm):
    model, tok = load_causal_lm(tiny_model), load_tokenizer(tiny_model)
    batches = calibration_batches(tok, TEXT, n_samples=2, seq_len=32)
    stats = wanda_model(model, batches, sparsity, nm=nm, batch_size=2)
    assert stats["layers"] == 14 and stats["method"] == "wanda"
    for lin in block_linears(model):
        zeros_per_row = (lin.weight == 0).sum(1)
        assert torch.all(zeros_per_row == round(sparsity * lin.in_features))
        if nm:
            assert torch.all((lin.weight != 0).view(lin.out_features, -1, nm[1]).sum(-1) == nm[0])
    expected = sum(lin.out_features * round(sparsity * lin.in_features) for lin in block_linears(model))
    assert stats["zeros"] == expected and stats["sparsity_realized"] == pytest.approx(sparsity, abs=0.01)
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=batches[:1]).logits).all()


def test_owl_allocation_keeps_the_budget_and_favours_outlier_blocks():
    import random

    from compress.prune import allocate_owl, outlier_ratio

    assert allocate_owl([0.01] * 4, [10] * 4, 0.5) == [0.5] * 4
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(2, 40)
        ratios = [rng.random() * 0.05 for _ in range(n)]
        sizes = [rng.randint(1, 100) for _ in range(n)]
        target, lam = rng.uniform(0.1, 0.9), rng.uniform(0.0, 0.2)
        s = allocate_owl(ratios, sizes, target, lam)
        assert sum(a * b for a, b in zip(s, sizes)) / sum(sizes) == pytest.approx(target, abs=1e-6)
        assert all(0.0 <= x <= 0.99 for x in s) and max(s) - min(s) <= 2 * lam + 1e-9
        order = sorted(range(n), key=lambda i: ratios[i])  # more outliers -> never more sparsity
        assert all(s[order[i]] >= s[order[i + 1]] - 1e-12 for i in range(n - 1))
    score = torch.ones(10, 10)
    score[0, :3] = 100.0  # mean 3.97: the 3 big ones exceed 5x the mean
    assert outlier_ratio(score, 5.0) == pytest.approx(0.03)
    with pytest.raises(ValueError, match="lambda"):
        allocate_owl([0.1, 0.2], [1, 1], 0.5, 1.5)


def test_wanda_owl_prunes_blocks_unevenly_at_the_same_budget(tiny_model):
    model, tok = load_causal_lm(tiny_model), load_tokenizer(tiny_model)
    batches = calibration_batches(tok, TEXT, n_samples=2, seq_len=32)
    stats = wanda_model(model, batches, 0.5, batch_size=2, allocation="owl", owl_lambda=0.1, owl_m=3.0)
    per_block = stats["block_sparsity"]
    assert stats["allocation"] == "owl" and len(per_block) == len(model.model.layers)
    assert stats["sparsity_realized"] == pytest.approx(0.5, abs=0.01) and max(per_block) > min(per_block)
    for block, target in zip(model.model.layers, per_block):
        lins = [m for m in block.modules() if isinstance(m, torch.nn.Linear)]
        zeros = sum(int((m.weight == 0).sum()) for m in lins) / sum(m.weight.numel() for m in lins)
        assert zeros == pytest.approx(target, abs=0.01)
    with pytest.raises(ValueError, match="N:M"):
        wanda_model(load_causal_lm(tiny_model), batches, 0.5, nm=(2, 4), allocation="owl")
