"""compress.hessian: the inverse-Hessian Cholesky factor computed inside the Hessian's own memory."""

import pytest
import torch

from compress.gptq import gptq_quantize_weight
from compress.hessian import inverse_cholesky_, permute_symmetric_, quadratic_error, upper_rows
from compress.sparsegpt import sparsegpt_prune_weight


def _hessian(n: int, tokens: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, n, generator=g) * torch.rand(n, generator=g) * 3
    return x.T @ x / tokens


def _torch_chain(h: torch.Tensor, damp: float) -> torch.Tensor:
    damped = h.clone()
    damped.diagonal().add_(damp * h.diagonal().mean())
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(damped)), upper=True)


def test_the_factor_is_torchs_and_lives_in_the_hessians_buffer_which_keeps_h_below_the_diagonal():
    H = _hessian(1100, 1500)  # > one 1024-row block of the blockwise helpers
    h = H.clone()
    u, diag, damp = inverse_cholesky_(h, 0.01, tries=4, method="test")
    expected = _torch_chain(H, 0.01)
    assert u.data_ptr() == h.data_ptr() and damp == 0.01
    assert torch.allclose(u.triu(), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    assert torch.equal(h.tril(-1), H.tril(-1)) and torch.equal(diag, H.diagonal())
    rows = upper_rows(u, 100, 300)
    assert torch.allclose(rows, expected[100:300, 100:], rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_quadratic_error_reads_the_hessian_left_below_the_factor():
    H = _hessian(1100, 1500, seed=1)
    h = H.clone()
    _, diag, _ = inverse_cholesky_(h, 0.01, tries=4, method="test")
    e = torch.randn(5, 1100, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(quadratic_error(e, h, diag), ((e @ H) * e).sum(), rtol=1e-4)


def test_a_singular_hessian_retries_with_more_damping_from_the_original_values():
    H = _hessian(64, 8)  # rank 8 of 64: indefinite at a tiny damp
    h = H.clone()
    u, diag, damp = inverse_cholesky_(h, 1e-12, tries=12, method="test")
    assert damp > 1e-12 and torch.equal(h.tril(-1), H.tril(-1)) and torch.equal(diag, H.diagonal())
    fresh, _, _ = inverse_cholesky_(H.clone(), damp, tries=1, method="test")  # started at the damp it ended with
    assert torch.equal(u.triu(), fresh.triu())
    with pytest.raises(ValueError, match="test: Hessian stays singular even with damp=1e-11"):
        inverse_cholesky_(H.clone(), 1e-12, tries=2, method="test")


def test_permute_symmetric_in_place_equals_indexing():
    H = _hessian(1100, 1200)
    perm = torch.randperm(1100, generator=torch.Generator().manual_seed(3))
    h = H.clone()
    permute_symmetric_(h, perm)
    assert torch.equal(h, H[perm][:, perm])


@pytest.mark.parametrize("act_order", [True, False, "auto"])
def test_gptq_and_sparsegpt_give_the_same_result_inside_the_callers_hessian(act_order):
    H = _hessian(256, 400, seed=4)
    H[7, :] = H[:, 7] = 0  # a dead input
    w = torch.randn(48, 256, generator=torch.Generator().manual_seed(5))
    q, scale, zero, stats = gptq_quantize_weight(w, H, 4, 64, False, act_order=act_order)
    q2, scale2, zero2, stats2 = gptq_quantize_weight(w, H.clone(), 4, 64, False, act_order=act_order, overwrite_h=True)
    assert torch.equal(q, q2) and torch.equal(scale, scale2) and torch.equal(zero, zero2) and stats == stats2
    before = H.clone()
    pruned, _ = sparsegpt_prune_weight(w, H, 0.5)
    assert torch.equal(H, before)  # without overwrite_h the caller's Hessian is left alone
    assert torch.equal(pruned, sparsegpt_prune_weight(w, H.clone(), 0.5, overwrite_h=True)[0])
