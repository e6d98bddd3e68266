"""Truncated-SVD low-rank factorization of the decoder's linear layers.

A weight ``W`` [out, in] with SVD ``U S V^T`` is replaced by the best rank-``r`` approximation
(Eckart–Young) ``(U_r sqrt(S_r)) (sqrt(S_r) V_r^T)``: an ``in -> r`` projection followed by ``r -> out``
(Denton et al. 2014, "Exploiting Linear Structure Within Convolutional Networks for Efficient
Evaluation"; Sainath et al. 2013 for speech models). Splitting ``sqrt(S)`` evenly keeps both factors at
a similar scale, which matters once they are quantized.

The rank is ``r = max(1, round(rank_ratio * min(out, in)))``. A layer is only factorized when that saves
parameters, ``r * (in + out) < in * out``; for a square layer that means ``rank_ratio < 0.5``.

Run: ``python -c "from compress.factorize import factorize_model; ..."`` — normally via ``eakd compress``.
"""

from __future__ import annotations

import logging
from collections import Counter

import torch
from torch import Tensor, nn

from compress import replace_module, target_linears

log = logging.getLogger(__name__)


class LowRankLinear(nn.Module):
    """``x [..., in] -> up(down(x)) [..., out]`` with ``down: in -> rank`` and ``up: rank -> out``."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False, dtype=dtype, device=device)
        self.up = nn.Linear(rank, out_features, bias=bias, dtype=dtype, device=device)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(self.down(x))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


def svd_factors(weight: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """``weight`` [out, in] -> ``(up_w [out, rank], down_w [rank, in])`` with ``up_w @ down_w ≈ weight``.

    Computed in fp32 and returned in ``weight``'s dtype; exact (to rounding) when ``rank >= min(out, in)``.
    """
    if weight.dim() != 2:
        raise ValueError(f"svd_factors expects a 2-D [out, in] weight, got shape {tuple(weight.shape)}")
    if rank < 1:
        raise ValueError(f"svd rank must be >= 1, got {rank}")
    u, s, vh = torch.linalg.svd(weight.detach().to(torch.float32), full_matrices=False)
    r = min(rank, s.numel())
    root = s[:r].sqrt()
    up = u[:, :r] * root[None, :]
    down = root[:, None] * vh[:r, :]
    return up.to(weight.dtype), down.to(weight.dtype)


def rank_for(out_features: int, in_features: int, rank_ratio: float) -> int:
    """``max(1, round(rank_ratio * min(out, in)))``."""
    return max(1, int(round(rank_ratio * min(out_features, in_features))))


def low_rank_from_linear(linear: nn.Linear, rank: int) -> LowRankLinear:
    """A :class:`LowRankLinear` holding the rank-``rank`` SVD of ``linear`` (bias copied unchanged)."""
    w = linear.weight
    up_w, down_w = svd_factors(w, rank)
    lr = LowRankLinear(linear.in_features, linear.out_features, up_w.shape[1], bias=linear.bias is not None,
                       dtype=w.dtype, device=w.device)
    with torch.no_grad():
        lr.down.weight.copy_(down_w)
        lr.up.weight.copy_(up_w)
        if linear.bias is not None:
            lr.up.bias.copy_(linear.bias)
    return lr


@torch.no_grad()
def factorize_model(model: nn.Module, rank_ratio: float, skip: tuple[str, ...] = ("lm_head",)) -> dict:
    """Replace every decoder ``nn.Linear`` where it saves parameters by a :class:`LowRankLinear`.

    Returns ``{"rank_ratio", "factorized": {name: rank}, "skipped": {name: reason},
    "params_before", "params_after"}`` (parameter counts over the touched layers' weights).
    """
    if not 0.0 < rank_ratio <= 1.0:
        raise ValueError(f"rank_ratio must be in (0, 1], got {rank_ratio}")
    factorized: dict[str, int] = {}
    skipped: dict[str, str] = {}
    before = after = 0
    for name, linear in target_linears(model, skip=skip, include_low_rank=False):
        out_f, in_f = linear.weight.shape
        r = rank_for(out_f, in_f, rank_ratio)
        dense = out_f * in_f
        before += dense
        if r * (in_f + out_f) >= dense:
            skipped[name] = (f"rank {r} of [{out_f}, {in_f}] would need {r * (in_f + out_f)} >= {dense} "
                             f"weights; needs rank_ratio < {dense / (in_f + out_f) / min(out_f, in_f):.3f}")
            after += dense
            continue
        replace_module(model, name, low_rank_from_linear(linear, r))
        factorized[name] = r
        after += r * (in_f + out_f)
    # One line per skipped shape, not per layer: a 30-layer model would otherwise log 60 identical lines.
    for reason, count in Counter(skipped.values()).items():
        log.info("svd: left %d layer(s) dense: %s", count, reason)
    log.info("svd: factorized %d linear layers at rank_ratio %.3f (%d -> %d weights)",
             len(factorized), rank_ratio, before, after)
    return {"rank_ratio": rank_ratio, "factorized": factorized, "skipped": skipped,
            "params_before": before, "params_after": after}


def apply_low_rank_structure(model: nn.Module, ranks: dict[str, int]) -> None:
    """Swap each ``nn.Linear`` named in ``ranks`` for an (uninitialized) :class:`LowRankLinear` of that rank.

    Used when loading an artifact: the tensors are loaded into the new modules afterwards.
    """
    for name, rank in ranks.items():
        try:
            linear = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"manifest names factorized module {name!r}, which this model does not have; "
                             "the artifact's config.json and eakd_compression.json disagree") from None
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"manifest names factorized module {name!r}, but it is a "
                             f"{type(linear).__name__}, not nn.Linear")
        w = linear.weight
        replace_module(model, name, LowRankLinear(linear.in_features, linear.out_features, int(rank),
                                                  bias=linear.bias is not None, dtype=w.dtype, device=w.device))
