"""compress.tensorized: reshaping, rank choice for a budget (property tests), and CP / Tucker / SVD recovering
weights that have exactly their structure (tensorly on the pytorch backend; tiny tensors, CPU, seconds)."""

from __future__ import annotations

import math
import random

import pytest
import torch

from compress.tensorized import (
    TensorizedLinear,
    compare_layer,
    cp_rank,
    cp_weight,
    factor_pair,
    svd_weight,
    tensor_shape,
    tensorize_model,
    tucker_params,
    tucker_ranks,
    tucker_weight,
)


def test_factor_pair_is_the_most_square_divisor_pair():
    rng = random.Random(0)
    for n in [1, 2, 7, 576, 1536, 192, 49152] + [rng.randint(1, 5000) for _ in range(200)]:
        a, b = factor_pair(n)
        assert a * b == n and 1 <= a <= b
        assert not any(n % d == 0 for d in range(a + 1, math.isqrt(n) + 1))
    assert tensor_shape(1536, 576) == (32, 48, 24, 24)
    with pytest.raises(ValueError):
        factor_pair(0)


def test_ranks_fill_but_never_exceed_the_budget():
    rng = random.Random(1)
    for _ in range(200):
        shape = tuple(rng.randint(2, 40) for _ in range(4))
        total = math.prod(shape)
        budget = rng.randint(sum(shape) + 1, total)
        ranks = tucker_ranks(shape, budget)
        assert tucker_params(shape, ranks) <= budget and all(1 <= r <= n for r, n in zip(ranks, shape))
        assert cp_rank(shape, budget) * sum(shape) <= budget
    with pytest.raises(ValueError, match="rank-1"):
        tucker_ranks((10, 10, 10, 10), 5)


def test_each_method_recovers_a_weight_with_its_own_structure():
    g = torch.Generator().manual_seed(0)
    low = torch.randn(24, 4, generator=g) @ torch.randn(4, 36, generator=g)  # matrix rank 4
    approx, info = svd_weight(low, 0.5)
    assert info["rank"] >= 4 and torch.allclose(approx, low, atol=1e-4)
    factors = [torch.randn(n, 3, generator=g) for n in tensor_shape(24, 36)]  # CP rank 3 after reshaping
    cp = torch.einsum("ar,br,cr,dr->abcd", *factors).reshape(24, 36)
    approx, info = cp_weight(cp, 0.5)
    assert info["rank"] >= 3 and float((approx - cp).norm() / cp.norm()) < 1e-2
    core = torch.randn(2, 2, 2, 2, generator=g)  # Tucker ranks (2, 2, 2, 2)
    us = [torch.linalg.qr(torch.randn(n, 2, generator=g))[0] for n in tensor_shape(24, 36)]
    tk = torch.einsum("pqrs,ap,bq,cr,ds->abcd", core, *us).reshape(24, 36)
    approx, info = tucker_weight(tk, 0.3)
    assert all(r >= 2 for r in info["ranks"]) and float((approx - tk).norm() / tk.norm()) < 1e-4


def test_compare_layer_reports_errors_at_the_same_budget():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(32, 48, generator=g)
    x = torch.randn(48, 200, generator=g)
    res = compare_layer(w, x @ x.T, 0.5)
    assert set(res) == {"svd", "tucker", "cp"}
    for m, r in res.items():
        assert r["param_ratio"] <= 0.5 and 0 < r["weight_error"] < 1 and 0 < r["output_error"] < 1.5, (m, r)
    assert compare_layer(w, None, 0.5, ("svd",))["svd"]["output_error"] is None


@pytest.mark.parametrize("fmt", ["cp", "tucker"])
def test_tensorized_linear_applies_the_decomposition_without_building_the_weight(fmt):
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(36, 24, bias=True))
    w, b = model[0].weight.detach().clone(), model[0].bias.detach().clone()
    stats = tensorize_model(model, fmt, 0.5, skip=())
    layer = model[0]
    assert isinstance(layer, TensorizedLinear) and stats["tensorized"]["0"]["format"] == fmt
    stored = sum(p.numel() for n, p in layer.named_parameters() if n != "bias")
    assert stored == stats["params_after"] <= 0.5 * w.numel() and stats["params_before"] == w.numel()
    expected = (cp_weight if fmt == "cp" else tucker_weight)(w, 0.5)[0]  # the same decomposition, densified
    assert torch.allclose(layer.weight_matrix(), expected, atol=1e-4)
    x = torch.randn(2, 5, 36)
    assert torch.allclose(layer(x), x @ expected.T + b, atol=1e-4)


def test_tensorized_linear_rejects_bad_formats_and_ranks():
    with pytest.raises(ValueError, match="tensor format"):
        TensorizedLinear(36, 24, "tt", [2], bias=False)
    with pytest.raises(ValueError, match="ranks"):
        TensorizedLinear(36, 24, "tucker", [2, 2], bias=False)
    with pytest.raises(ValueError, match="param_reduction"):
        tensorize_model(torch.nn.Sequential(torch.nn.Linear(4, 4)), "cp", 1.0, skip=())
