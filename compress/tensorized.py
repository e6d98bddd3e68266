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

As a compress step (``method: cp`` / ``tucker``, ``param_reduction``: every decoder linear keeps
``1 - param_reduction`` of its weights), :func:`tensorize_model` swaps each linear for a
:class:`TensorizedLinear` that stores only the factors (and the Tucker core) and applies them to the input by
contraction, never building ``W``; the artifact's manifest records ``tensorized: {name: {"format", "ranks"}}``
and :func:`apply_tensorized_structure` rebuilds the modules at load.

Run: ``python bench/compress_tensor_decomp.py``; as a step, ``eakd compress`` with ``{method: tucker}``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from compress.linears import manifest_linear, replace_module, target_linears
from compress.quantize import relative_output_error

FORMATS = ("cp", "tucker")


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


def dense_weight(factors: list[Tensor], core: Tensor | None) -> Tensor:
    """The 4-way tensor ``[o1, o2, i1, i2]`` of a CP (``core`` None; factors [n_k, R]) or Tucker form."""
    if core is None:
        return torch.einsum("ar,br,ir,jr->abij", *factors)
    return torch.einsum("stpq,as,bt,ip,jq->abij", core, *factors)


def tucker_weight(weight: Tensor, param_ratio: float) -> tuple[Tensor, dict]:
    """Tucker approximation of ``weight`` [out, in] with at most ``param_ratio * out * in`` parameters.

    Returns ``(W' [out, in] fp32, {"shape", "ranks", "params"})``."""
    factors, core, ranks = _decompose(weight, "tucker", param_ratio)
    shape = tensor_shape(*weight.shape)
    return (dense_weight(factors, core).reshape(weight.shape),
            {"shape": list(shape), "ranks": ranks, "params": tucker_params(shape, tuple(ranks))})


def cp_weight(weight: Tensor, param_ratio: float) -> tuple[Tensor, dict]:
    """CP approximation of ``weight`` [out, in] with at most ``param_ratio * out * in`` parameters (ALS).

    Returns ``(W' [out, in] fp32, {"shape", "rank", "params"})``."""
    factors, _, (rank,) = _decompose(weight, "cp", param_ratio)
    shape = tensor_shape(*weight.shape)
    return dense_weight(factors, None).reshape(weight.shape), {"shape": list(shape), "rank": rank,
                                                              "params": rank * sum(shape)}


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


class TensorizedLinear(nn.Module):
    """``x [..., in] -> y [..., out]`` through a CP or Tucker form of the weight reshaped to
    ``[o1, o2, i1, i2]`` (:func:`tensor_shape`); the input is contracted with the factors, ``W`` is never built.

    ``factors[k]`` is [n_k, r_k] (CP: every ``r_k = R``); Tucker adds ``core`` [r1, r2, r3, r4]."""

    def __init__(self, in_features: int, out_features: int, fmt: str, ranks: list[int], bias: bool,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> None:
        super().__init__()
        if fmt not in FORMATS:
            raise ValueError(f"tensor format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        self.in_features, self.out_features, self.fmt = in_features, out_features, fmt
        self.shape = tensor_shape(out_features, in_features)
        self.ranks = [int(r) for r in ranks] if fmt == "tucker" else [int(ranks[0])] * 4
        if len(self.ranks) != 4 or min(self.ranks) < 1:
            raise ValueError(f"{fmt} ranks must be {'four' if fmt == 'tucker' else 'one'} positive int(s), got {ranks}")
        kw = {"dtype": dtype, "device": device}
        self.factors = nn.ParameterList(nn.Parameter(torch.empty(n, r, **kw)) for n, r in zip(self.shape, self.ranks))
        self.core = nn.Parameter(torch.empty(*self.ranks, **kw)) if fmt == "tucker" else None
        self.bias = nn.Parameter(torch.zeros(out_features, **kw)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        _, _, i1, i2 = self.shape
        a, b, c, d = self.factors
        xt = x.reshape(*x.shape[:-1], i1, i2)
        if self.core is None:  # CP: W[a,b,i,j] = sum_r A[a,r] B[b,r] C[i,r] D[j,r]
            y = torch.einsum("...r,ar,br->...ab", torch.einsum("...ij,ir,jr->...r", xt, c, d), a, b)
        else:  # Tucker: W[a,b,i,j] = sum G[s,t,p,q] A[a,s] B[b,t] C[i,p] D[j,q]
            z = torch.einsum("...pq,stpq->...st", torch.einsum("...ij,ip,jq->...pq", xt, c, d), self.core)
            y = torch.einsum("...st,as,bt->...ab", z, a, b)
        y = y.reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    @torch.no_grad()
    def weight_matrix(self) -> Tensor:
        """The dense weight [out, in] this module applies (for checks; the forward never builds it)."""
        return dense_weight(list(self.factors), self.core).reshape(self.out_features, self.in_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.fmt} ranks={self.ranks}"


def _decompose(weight: Tensor, fmt: str, param_ratio: float) -> tuple[list[Tensor], Tensor | None, list[int]]:
    """tensorly's CP (ALS) or Tucker (HOOI) of ``weight`` [out, in] within ``param_ratio`` of its weights."""
    import tensorly as tl
    from tensorly.decomposition import parafac, tucker

    out_f, in_f = weight.shape
    shape = tensor_shape(out_f, in_f)
    budget = int(param_ratio * out_f * in_f)
    t = weight.detach().float().reshape(shape)
    with tl.backend_context("pytorch"):
        if fmt == "cp":
            rank = cp_rank(shape, budget)
            weights, factors = parafac(t, rank=rank, init="random", n_iter_max=20, random_state=0, tol=1e-7)
            return [factors[0] * weights[None, :], *factors[1:]], None, [rank]
        ranks = tucker_ranks(shape, budget)
        core, factors = tucker(t, rank=list(ranks), init="svd", n_iter_max=10, random_state=0)
        return list(factors), core, list(ranks)


@torch.no_grad()
def tensorize_model(model: nn.Module, fmt: str, param_reduction: float,
                    skip: tuple[str, ...] = ("lm_head",)) -> dict:
    """Replace every decoder ``nn.Linear`` with a :class:`TensorizedLinear` (``fmt``: ``"cp"`` or ``"tucker"``)
    keeping at most ``1 - param_reduction`` of its weights; modifies ``model``.

    Returns ``{"format", "tensorized": {name: {"format", "ranks"}}, "params_before", "params_after"}`` (the
    touched layers' weights)."""
    if fmt not in FORMATS:
        raise ValueError(f"tensor format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if not 0.0 < param_reduction < 1.0:
        raise ValueError(f"param_reduction must be in (0, 1), got {param_reduction}")
    linears = target_linears(model, skip=skip, include_low_rank=False)
    if not linears:
        raise ValueError("the model has no decoder nn.Linear layers left to decompose")
    done, before, after = {}, 0, 0
    for name, linear in linears:
        w = linear.weight
        factors, core, ranks = _decompose(w, fmt, 1.0 - param_reduction)
        module = TensorizedLinear(linear.in_features, linear.out_features, fmt, ranks, linear.bias is not None,
                                  dtype=w.dtype, device=w.device)
        for p, f in zip(module.factors, factors):
            p.copy_(f)
        if core is not None:
            module.core.copy_(core)
        if linear.bias is not None:
            module.bias.copy_(linear.bias)
        replace_module(model, name, module)
        done[name] = {"format": fmt, "ranks": ranks}
        before += w.numel()
        after += sum(f.numel() for f in factors) + (0 if core is None else core.numel())
    return {"format": fmt, "tensorized": done, "params_before": before, "params_after": after}


def apply_tensorized_structure(model: nn.Module, entries: dict[str, dict]) -> None:
    """Swap each ``nn.Linear`` named in ``entries`` (a manifest's ``tensorized``) for an uninitialized
    :class:`TensorizedLinear` of that format and ranks; the tensors are loaded into it afterwards."""
    for name, entry in entries.items():
        linear = manifest_linear(model, name, "tensorized")
        w = linear.weight
        replace_module(model, name, TensorizedLinear(linear.in_features, linear.out_features, entry["format"],
                                                     entry["ranks"], linear.bias is not None, dtype=w.dtype,
                                                     device=w.device))
