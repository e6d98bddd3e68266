"""CP and Tucker decompositions of linear weights reshaped as tensors, at a target parameter ratio.

Tensor methods compress a weight ``W`` [out, in] by reshaping it into a 4-way tensor
``[o1, o2, i1, i2]`` (``o1 * o2 = out``, ``i1 * i2 = in``, each pair as close to square as the sizes allow)
and storing a decomposition of that tensor instead of the matrix:

* **Tucker** (Tucker 1966; for network layers Kim et al. 2016, arXiv 1511.06530): a core ``[r1, r2, r3, r4]``
  and one factor ``[n_k, r_k]`` per mode; parameters ``prod(r) + sum(n_k r_k)``. Computed by HOOI
  (higher-order orthogonal iteration, SVD-initialised). The ranks are ``r_k = ceil(c * n_k)`` with the one
  scale ``c`` that fills the budget.
* **CP** (canonical polyadic; Lebedev et al. 2015, arXiv 1412.6553): ``R`` rank-one terms, one
  ``[n_k, R]`` factor per mode; parameters ``R * sum(n_k)``, so ``R = budget // sum(n_k)``. Computed by
  alternating least squares.

Both are compared with the truncated SVD of the matrix at the same parameter count
(:func:`compare_layer`): the Frobenius error, and the output error ``||(W - W') X||^2 / ||W X||^2`` on
calibration activations (from the Gram ``X X^T``, exact over every token). Eckart–Young makes the SVD the
best rank-constrained *matrix* approximation; the tensor formats trade that for a different structure, so
which wins on trained LLM weights is an empirical question this module measures rather than assumes.

The decompositions are tensorly's (``tensorly.decomposition.tucker`` / ``parafac``), the well-kept library
for them; only the reshaping, the rank choice for a budget and the comparison are written here.

Run: ``python bench/compress_tensor_decomp.py``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from compress.quantize import relative_output_error


def factor_pair(n: int) -> tuple[int, int]:
    """The divisor pair ``(a, b)``, ``a * b = n``, ``a <= b``, closest to ``sqrt(n)``."""
    if n < 1:
        raise ValueError(f"size must be >= 1, got {n}")
    a = math.isqrt(n)
    while n % a:
        a -= 1
    return a, n // a


def tensor_shape(out_features: int, in_features: int) -> tuple[int, int, int, int]:
    """``(o1, o2, i1, i2)`` for a weight [out, in] (see :func:`factor_pair`)."""
    return (*factor_pair(out_features), *factor_pair(in_features))


def tucker_params(shape: tuple[int, ...], ranks: tuple[int, ...]) -> int:
    return math.prod(ranks) + sum(n * r for n, r in zip(shape, ranks))


def tucker_ranks(shape: tuple[int, ...], budget: int) -> tuple[int, ...]:
    """The largest ranks ``ceil(c * n_k)`` (capped at ``n_k``, at least 1) whose Tucker form fits ``budget``."""
    lo, hi = 0.0, 1.0
    best = tuple(1 for _ in shape)
    if tucker_params(shape, best) > budget:
        raise ValueError(f"a budget of {budget} parameters cannot hold even a rank-1 Tucker form of {shape}")
    for _ in range(60):
        c = (lo + hi) / 2
        ranks = tuple(max(1, min(n, math.ceil(c * n))) for n in shape)
        if tucker_params(shape, ranks) <= budget:
            best, lo = ranks, c
        else:
            hi = c
    return best


def cp_rank(shape: tuple[int, ...], budget: int) -> int:
    """The CP rank whose factors fill ``budget`` parameters (at least 1)."""
    return max(1, budget // sum(shape))


def tucker_weight(weight: Tensor, param_ratio: float, n_iter: int = 10) -> tuple[Tensor, dict]:
    """Tucker approximation of ``weight`` [out, in] with at most ``param_ratio * out * in`` parameters.

    Returns ``(W' [out, in] fp32, {"shape", "ranks", "params"})``."""
    import tensorly as tl
    from tensorly.decomposition import tucker

    out_f, in_f = weight.shape
    shape = tensor_shape(out_f, in_f)
    ranks = tucker_ranks(shape, int(param_ratio * out_f * in_f))
    with tl.backend_context("pytorch"):  # restores the caller's backend afterwards
        core, factors = tucker(weight.detach().float().reshape(shape), rank=list(ranks), init="svd",
                               n_iter_max=n_iter, random_state=0)
        approx = tl.tucker_to_tensor((core, factors)).reshape(out_f, in_f)
    return approx, {"shape": list(shape), "ranks": list(ranks), "params": tucker_params(shape, ranks)}


def cp_weight(weight: Tensor, param_ratio: float, n_iter: int = 20) -> tuple[Tensor, dict]:
    """CP approximation of ``weight`` [out, in] with at most ``param_ratio * out * in`` parameters (ALS).

    Returns ``(W' [out, in] fp32, {"shape", "rank", "params"})``."""
    import tensorly as tl
    from tensorly.decomposition import parafac

    out_f, in_f = weight.shape
    shape = tensor_shape(out_f, in_f)
    rank = cp_rank(shape, int(param_ratio * out_f * in_f))
    with tl.backend_context("pytorch"):
        cp = parafac(weight.detach().float().reshape(shape), rank=rank, init="random", n_iter_max=n_iter,
                     random_state=0, tol=1e-7)
        approx = tl.cp_to_tensor(cp).reshape(out_f, in_f)
    return approx, {"shape": list(shape), "rank": rank, "params": rank * sum(shape)}


def svd_weight(weight: Tensor, param_ratio: float) -> tuple[Tensor, dict]:
    """Truncated SVD of ``weight`` [out, in] at the rank whose two factors fit ``param_ratio * out * in``."""
    out_f, in_f = weight.shape
    rank = max(1, min(min(out_f, in_f), int(param_ratio * out_f * in_f) // (out_f + in_f)))
    u, s, vh = torch.linalg.svd(weight.detach().float(), full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vh[:rank], {"rank": rank, "params": rank * (out_f + in_f)}


def compare_layer(weight: Tensor, gram: Tensor | None, param_ratio: float,
                  methods: tuple[str, ...] = ("svd", "tucker", "cp")) -> dict[str, dict]:
    """Each method's approximation of ``weight`` [out, in] at ``param_ratio``: its parameters, the relative
    Frobenius error ``||W - W'||^2 / ||W||^2`` and, with the input Gram ``gram`` [in, in], the relative output
    error (:func:`compress.quantize.relative_output_error`)."""
    fns = {"svd": svd_weight, "tucker": tucker_weight, "cp": cp_weight}
    w = weight.detach().float()
    out = {}
    for m in methods:
        approx, info = fns[m](w, param_ratio)
        out[m] = {**info, "param_ratio": info["params"] / w.numel(),
                  "weight_error": float((w - approx).pow(2).sum() / w.pow(2).sum()),
                  "output_error": None if gram is None else relative_output_error(w, approx, gram)}
    return out
