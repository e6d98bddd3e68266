"""Truncated-SVD low-rank factorization of the decoder's linear layers.

A weight ``W`` [out, in] with SVD ``U S V^T`` is replaced by the best rank-``r`` approximation
(Eckart–Young) ``(U_r sqrt(S_r)) (sqrt(S_r) V_r^T)``: an ``in -> r`` projection followed by ``r -> out``
(Denton et al. 2014, "Exploiting Linear Structure Within Convolutional Networks for Efficient
Evaluation"; Sainath et al. 2013 for speech models). Splitting ``sqrt(S)`` evenly keeps both factors at
a similar scale, which matters once they are quantized.

The rank is ``r = max(1, round(rank_ratio * min(out, in)))``. A layer is only factorized when that saves
parameters, ``r * (in + out) < in * out``; for a square layer that means ``rank_ratio < 0.5``.

The activation-aware variants (ASVD, SVD-LLM) live in :mod:`compress.lowrank_aware`; they produce the same
:class:`LowRankLinear` (``down``/``up``), so an artifact's manifest only needs ``factorized: {name: rank}``
and :func:`apply_low_rank_structure` rebuilds any of them.

**Rank allocation** (:func:`allocate_ranks`): one parameter budget for all decoder linears, split to
maximise ``Σ_l log E_l(r_l)``, the objective of Zhang et al. 2016 ("Accelerating Very Deep Convolutional
Networks for Classification and Detection", TPAMI, Sec. 3.5), with ``E_l(r) = Σ_{i<=r} σ_i^2 / Σ_i σ_i^2``
the kept energy of the spectrum the method truncates (``W``; ``W S`` for ASVD; ``W L`` for SVD-LLM, where
``1 - E_l(r)`` is exactly the layer's relative squared output error on calibration data). Each layer's
options are the ranks below break-even (``r (in + out) < in * out``) and "dense", which past break-even
costs less *and* is exact (square 576x576 layers only save weights below rank 288). Solved with a
Lagrange multiplier (every layer picks ``argmax log E - tau * cost``, ``tau`` bisected to the budget), then
Zhang et al.'s greedy — the rank step with the largest log-energy gain per weight next — on the leftover.
``"loss"`` runs the same solver on additive per-component loss estimates instead (the Fisher-weighted
allocation of :mod:`compress.lowrank_aware`, which measured far better than the energy objective).
Baselines: ``"uniform"``, one ``rank_ratio`` for every layer (as :func:`factorize_model`) bisected to the
budget; ``"per_layer"``, every layer keeps the same fraction of its weights (the setting of the ASVD and
SVD-LLM papers' experiments).

Run: ``python -c "from compress.factorize import factorize_model; ..."`` — normally via ``eakd compress``.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections import Counter
from typing import Literal

import torch
from torch import Tensor, nn

from compress.linears import LowRankLinear, manifest_linear, replace_module, target_linears

log = logging.getLogger(__name__)

Strategy = Literal["energy", "loss", "uniform", "per_layer"]
STRATEGIES = ("energy", "loss", "uniform", "per_layer")


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
    up_w, down_w = svd_factors(linear.weight, rank)
    return low_rank_from_factors(linear, up_w, down_w)


def low_rank_from_factors(linear: nn.Linear, up_w: Tensor, down_w: Tensor) -> LowRankLinear:
    """A :class:`LowRankLinear` with ``up_w`` [out, r] and ``down_w`` [r, in] as weights and ``linear``'s bias."""
    w = linear.weight
    rank = up_w.shape[1]
    if up_w.shape != (linear.out_features, rank) or down_w.shape != (rank, linear.in_features):
        raise ValueError(f"factors {tuple(up_w.shape)} @ {tuple(down_w.shape)} do not fit a linear "
                         f"[{linear.out_features}, {linear.in_features}]")
    lr = LowRankLinear(linear.in_features, linear.out_features, rank, bias=linear.bias is not None,
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
        linear = manifest_linear(model, name, "factorized")
        w = linear.weight
        replace_module(model, name, LowRankLinear(linear.in_features, linear.out_features, int(rank),
                                                  bias=linear.bias is not None, dtype=w.dtype, device=w.device))


def break_even(out_f: int, in_f: int) -> int:
    """The smallest rank at which ``rank * (in + out) >= in * out`` (factorizing no longer saves weights)."""
    return -(-out_f * in_f // (out_f + in_f))


def allocated_params(layers: dict[str, tuple[int, int, Tensor]], ranks: dict[str, int | None]) -> int:
    """Weights of the layers under ``ranks``: ``r (in + out)`` when factorized, ``in * out`` when None (dense)."""
    return sum(o * i if ranks[n] is None else ranks[n] * (o + i) for n, (o, i, _) in layers.items())


def _uniform_ranks(layers: dict[str, tuple[int, int, Tensor]], budget: int) -> dict[str, int | None]:
    def ranks_at(ratio: float) -> dict[str, int | None]:
        ranks: dict[str, int | None] = {}
        for name, (o, i, _) in layers.items():
            r = rank_for(o, i, ratio)
            ranks[name] = r if r < break_even(o, i) else None
        return ranks

    lo, hi = 0.0, 1.0  # largest ratio whose ranks fit the budget; the weight count rises with the ratio
    if allocated_params(layers, ranks_at(lo)) > budget:
        raise ValueError("target_param_ratio is below what rank 1 everywhere costs")
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if allocated_params(layers, ranks_at(mid)) <= budget else (lo, mid)
    return ranks_at(lo)


def allocate_ranks(layers: dict[str, tuple[int, int, Tensor]], target_param_ratio: float,
                   strategy: Strategy = "energy") -> dict[str, int | None]:
    """Per-layer ranks so the layers' weights total at most ``target_param_ratio`` x their dense count.

    ``layers``: ``{name: (out, in, values [min(out, in)])}``; the values are the singular values of the matrix
    each method truncates, except for ``"loss"``. Returns ``{name: rank}``, or ``None`` for a layer left dense
    (never a rank at or past break-even). ``strategy="energy"``: maximise ``Σ log E_l(r_l)`` (module
    docstring) — a Lagrangian pick per layer, then Zhang et al. 2016's greedy on the leftover; the total ends
    within one rank step (``in + out`` of some layer) below the budget. ``"loss"``: the same solver, but the
    values are additive estimates ``Δ_i >= 0`` of the loss increase from dropping component ``i`` (in
    truncation order) and the objective is ``-Σ_l Σ_{i > r_l} Δ_{l,i}``. ``"uniform"``: one rank ratio for
    all layers, bisected (layers past break-even stay dense). ``"per_layer"``: every layer keeps the same
    fraction of its weights, ``r = floor(ratio * in * out / (in + out))`` — the "compression ratio" of the
    ASVD and SVD-LLM papers' experiments; it factorizes square layers too.
    Raises ValueError when the target is outside (0, 1] or below what rank 1 everywhere costs.
    """
    if not 0.0 < target_param_ratio <= 1.0:
        raise ValueError(f"target_param_ratio must be in (0, 1], got {target_param_ratio}")
    if not layers:
        raise ValueError("allocate_ranks got no layers")
    dense_total = sum(o * i for o, i, _ in layers.values())
    budget = math.floor(target_param_ratio * dense_total)
    if strategy not in STRATEGIES:
        raise ValueError(f"rank allocation strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if strategy == "uniform":
        return _uniform_ranks(layers, budget)
    if strategy == "per_layer":
        ranks = {n: max(1, math.floor(target_param_ratio * o * i / (o + i))) for n, (o, i, _) in layers.items()}
        ranks = {n: r if r < break_even(*layers[n][:2]) else None for n, r in ranks.items()}
        if allocated_params(layers, ranks) > budget:
            raise ValueError(f"target_param_ratio {target_param_ratio} is below what rank 1 everywhere costs")
        return ranks

    value: dict[str, Tensor] = {}  # [min(out, in)]: the objective's term for the layer at rank r is value[r - 1]
    for name, (o, i, s) in layers.items():
        if s.dim() != 1 or s.numel() != min(o, i):
            raise ValueError(f"layer {name}: expected {min(o, i)} values, got shape {tuple(s.shape)}")
        s = s.detach().double()
        if strategy == "loss":
            if not torch.isfinite(s).all() or (s < 0).any():
                raise ValueError(f"layer {name}: per-component losses must be finite and >= 0")
            value[name] = s.cumsum(0)  # loss kept away: Σ_{i<=r} Δ_i (= a constant minus the loss incurred)
        else:
            cum = torch.sort(s.abs(), descending=True).values.pow(2).cumsum(0)
            value[name] = (cum + 1e-300).log()  # +tiny: an all-zero weight gains nothing, not NaN
    smallest = {n: 1 if break_even(o, i) > 1 else None for n, (o, i, _) in layers.items()}
    if allocated_params(layers, smallest) > budget:
        raise ValueError(f"target_param_ratio {target_param_ratio} is below the rank-1 minimum "
                         f"{allocated_params(layers, smallest) / dense_total:.4f}")
    return _greedy_fill(layers, value, _lagrangian_ranks(layers, value, budget), budget)


def _lagrangian_ranks(layers: dict[str, tuple[int, int, Tensor]], value: dict[str, Tensor],
                      budget: int) -> dict[str, int | None]:
    """Each layer picks ``argmax_r value(r) - tau * cost(r)`` over ranks below break-even and "dense"; ``tau``
    is bisected to the smallest price whose picks fit the budget.

    This Lagrangian step matters because of the break-even: going from rank ``r`` straight to dense can be
    worth far more per weight than the next single rank (a 576x576 layer at rank 250 has dropped 326 of
    its 576 singular values; the weights of 38 more rank steps restore all of them). Its result is optimal
    among allocations that spend no more weights than it does (Everett 1963, "Generalized Lagrange
    Multiplier Method for Solving Problems of Optimum Allocation of Resources"), so only the leftover
    below the budget is then filled greedily.
    """
    options: dict[str, tuple[Tensor, Tensor]] = {}  # name -> (cost [k], value [k]); the last option is dense
    for name, (o, i, _) in layers.items():
        rb = break_even(o, i)
        costs = torch.tensor([r * (o + i) for r in range(1, rb)] + [o * i], dtype=torch.float64)
        options[name] = (costs, torch.cat([value[name][: rb - 1], value[name][-1:]]))

    def pick(tau: float) -> tuple[dict[str, int | None], int]:
        ranks: dict[str, int | None] = {}
        for name, (costs, values) in options.items():
            k = int(torch.argmax(values - tau * costs))  # ties -> the first, i.e. the cheaper option
            ranks[name] = k + 1 if k < costs.numel() - 1 else None
        return ranks, allocated_params(layers, ranks)

    lo, hi = 0.0, 1e-6
    while pick(hi)[1] > budget:  # terminates: a high enough price picks the cheapest option everywhere
        lo, hi = hi, hi * 10
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if pick(mid)[1] <= budget else (mid, hi)
    return pick(hi)[0]


def _greedy_fill(layers: dict[str, tuple[int, int, Tensor]], value: dict[str, Tensor],
                 ranks: dict[str, int | None], budget: int) -> dict[str, int | None]:
    """Raise ranks one step at a time, largest value gain per weight first, while steps fit the budget.

    Zhang et al. 2016's greedy; from the Lagrangian solution it only spends the leftover, and it stops
    with less than one rank step (``in + out`` of some layer) unspent.
    """
    ranks = dict(ranks)
    spent = allocated_params(layers, ranks)

    def next_step(name: str) -> tuple[float, int]:
        """(value gain per weight, weight cost) of raising ``name`` one rank, or to dense at break-even."""
        o, i, _ = layers[name]
        r, val = ranks[name], value[name]
        if r + 1 >= break_even(o, i):
            cost = o * i - r * (o + i)
            return float(val[-1] - val[r - 1]) / max(cost, 1), cost
        return float(val[r] - val[r - 1]) / (o + i), o + i

    heap = []
    for order, name in enumerate(layers):
        if ranks[name] is not None:
            gain, cost = next_step(name)
            heap.append((-gain, order, name, cost))
    heapq.heapify(heap)
    while heap:
        _, order, name, cost = heapq.heappop(heap)
        if spent + cost > budget:
            continue  # this layer's next step does not fit, so none of its later ones are reached either
        spent += cost
        o, i, _ = layers[name]
        if ranks[name] + 1 >= break_even(o, i):
            ranks[name] = None
            continue
        ranks[name] += 1
        gain, cost = next_step(name)
        heapq.heappush(heap, (-gain, order, name, cost))
    return ranks
