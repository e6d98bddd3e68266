"""Activation-aware low-rank factorization (ASVD, SVD-LLM) with a global per-layer rank allocation.

Plain truncated SVD (:mod:`compress.factorize`) minimises ``||W - W_r||_F``, but what the model needs
preserved is the layer's *output* on real inputs, ``||(W - W_r) X||_F`` (``X`` [in, tokens]). Two fixes:

* **ASVD** (Yuan et al. 2023, "ASVD: Activation-aware Singular Value Decomposition for Compressing Large
  Language Models", arXiv 2312.05821): scale input channel ``j`` by ``S_jj = mean|x_j|^alpha`` before the
  SVD, ``W S = U Σ V^T``, and undo it on the down factor: ``W ≈ (U_r √Σ_r)(√Σ_r V_r^T S^-1)``. Channels
  that carry large activations keep more of their weights. A heuristic: it does not minimise the output
  error exactly.
* **SVD-LLM** (Wang et al. 2024, "SVD-LLM: Truncation-aware Singular Value Decomposition for Large Language
  Model Compression", arXiv 2403.07378, Sec. 3.1): with the Gram ``H = X X^T = L L^T`` (Cholesky),
  ``||(W - W') X||_F = ||(W - W') L||_F``, so truncating the SVD of ``W L = U Σ V^T`` and mapping back,
  ``W' = U_r Σ_r V_r^T L^-1``, is the exact minimiser over rank-``r`` ``W'`` (Eckart–Young applied to
  ``W L``; ``L`` is invertible), and each dropped ``σ_i^2`` is exactly the output error it adds.

Factors are stored as a plain :class:`compress.factorize.LowRankLinear` (``up = U_r √Σ_r``,
``down = √Σ_r V_r^T T^-1`` for the transform ``T`` = ``S`` or ``L``), so artifacts need nothing beyond the
manifest's ``factorized: {name: rank}``.

**Rank allocation**: :func:`compress.factorize.allocate_ranks` on the spectrum each method truncates
(``W``, ``W S`` or ``W L``) — ``allocation="energy"``; for SVD-LLM's spectrum the kept energy fraction is
exactly one minus the layer's relative squared output error on the calibration data. ``"fisher"`` instead
weighs every dropped component by an estimate of the *loss* increase it causes (:func:`component_losses`:
its output error weighted by the empirical-Fisher diagonal of the layer's output, measured with one extra
backward pass), which is comparable across layers without a per-layer normalisation.

**Calibration** (:mod:`compress.lowrank_calibration`, re-exported here): one full forward on the *original*
model (:func:`compress.calibrate.collect_input_stats`), not :func:`compress.calibrate.run_sequential`: the
global allocation needs every layer's spectrum before any layer is factorized, SVD-LLM's Algorithm 1 whitens
with the original model's activations, and one pass costs one forward instead of one per block. Layers that read the same tensor (q/k/v; gate/up in Llama)
share one Gram. Written by hand: the reference code of both papers is research scripts tied to their own
model loaders, and neither torch nor transformers offers these decompositions.

Run: ``python -c "from compress.lowrank_aware import factorize_model_aware; ..."`` (see the function).
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from typing import Literal

import torch
from torch import Tensor, nn
from tqdm import tqdm

from compress.calibrate import InputStats
from compress.factorize import allocate_ranks, allocated_params, low_rank_from_factors, svd_factors
from compress.linears import replace_module, target_linears
from compress.lowrank_calibration import (  # noqa: F401 (collect_output_fisher: re-exported, public here)
    LayerCalibration,
    calibrate_layers,
    collect_output_fisher,
)

log = logging.getLogger(__name__)

Method = Literal["svd", "asvd", "svdllm"]
METHODS = ("svd", "asvd", "svdllm")
Allocation = Literal["auto", "energy", "fisher", "uniform", "per_layer"]
ALLOCATIONS = ("auto", "energy", "fisher", "uniform", "per_layer")


def _check_weight(weight: Tensor, rank: int, what: str) -> None:
    if weight.dim() != 2:
        raise ValueError(f"{what} expects a 2-D [out, in] weight, got shape {tuple(weight.shape)}")
    if rank < 1:
        raise ValueError(f"{what} rank must be >= 1, got {rank}")


def _split(u: Tensor, s: Tensor, vh: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Truncated SVD ``U Σ V^T`` -> ``(U_r √Σ_r [out, r], √Σ_r V_r^T [r, in])``."""
    r = min(rank, s.numel())
    root = s[:r].sqrt()
    return u[:, :r] * root[None, :], root[:, None] * vh[:r, :]


def activation_scale(abs_mean: Tensor, alpha: float = 0.5) -> Tensor:
    """ASVD's ``diag(S)`` [in] (float64): ``mean|x_j|^alpha``, channels floored at 1e-5 x the largest.

    The floor keeps ``S^-1`` finite for dead channels (mean 0 on the calibration text); their columns are
    then approximated as in plain SVD instead of being scaled to nothing and divided back up.
    """
    if abs_mean.dim() != 1:
        raise ValueError(f"abs_mean must be 1-D [in], got shape {tuple(abs_mean.shape)}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"asvd alpha must be in [0, 1], got {alpha}")
    a = abs_mean.detach().to(torch.float64)
    if not torch.isfinite(a).all() or (a < 0).any():
        raise ValueError("abs_mean must be finite and >= 0 (a mean of |x|)")
    top = a.max()
    if top <= 0:
        log.warning("asvd: activation scale is all zero (layer saw no input); using plain SVD for it")
        return torch.ones_like(a)
    return a.clamp_min(1e-5 * top).pow(alpha)


def asvd_factors(weight: Tensor, abs_mean: Tensor, rank: int, alpha: float = 0.5) -> tuple[Tensor, Tensor]:
    """ASVD: ``weight`` [out, in], ``abs_mean`` [in] -> ``(up [out, r], down [r, in])``, ``r = min(rank, out, in)``.

    ``W S = U Σ V^T`` with ``S = diag(abs_mean^alpha)``; ``up = U_r √Σ_r``, ``down = √Σ_r V_r^T S^-1``.
    Computed in float64, returned in ``weight``'s dtype; exact (to rounding) at full rank.
    """
    _check_weight(weight, rank, "asvd_factors")
    if abs_mean.shape != (weight.shape[1],):
        raise ValueError(f"abs_mean must have shape [{weight.shape[1]}] (= in), got {tuple(abs_mean.shape)}")
    scale = activation_scale(abs_mean, alpha).to(weight.device)
    u, s, vh = torch.linalg.svd(weight.detach().to(torch.float64) * scale[None, :], full_matrices=False)
    up, down = _split(u, s, vh, rank)
    return up.to(weight.dtype), (down / scale[None, :]).to(weight.dtype)


def cholesky_whitening(gram: Tensor, damp: float = 0.0) -> Tensor:
    """Lower-triangular ``L`` [in, in] (float64) with ``L L^T = gram + λ I``, ``λ = damp * mean(diag(gram))``.

    ``damp > 0`` is a ridge: it minimises ``||(W - W')X||^2 + λ ||W - W'||^2``, which keeps directions the
    calibration text never excites close to ``W`` instead of arbitrary. The Gram is only positive
    *semi*-definite: it is singular when there are fewer tokens than input features or dead (always-zero)
    channels, and fp32 accumulation of activation outliers can push tiny eigenvalues below zero. When the
    Cholesky fails, the diagonal is shifted by ``-λ_min + 1e-6 * mean(diag)`` — the fix in SVD-LLM's reference
    code, whose absolute ``1e-6`` is made relative to the Gram's scale here — growing 10x until it
    succeeds; a warning names the shift.
    """
    if gram.dim() != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"gram must be square [in, in], got shape {tuple(gram.shape)}")
    if damp < 0:
        raise ValueError(f"svdllm damp must be >= 0, got {damp}")
    h = gram.detach().to(torch.float64)
    h = (h + h.T) / 2  # addmm accumulation leaves round-off asymmetry; Cholesky reads one triangle only
    scale = h.diagonal().mean()
    if not torch.isfinite(h).all() or scale <= 0:
        raise ValueError("gram must be finite with a positive diagonal; did the layer see any non-zero input?")
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    lam = damp * scale
    factor, info = torch.linalg.cholesky_ex(h + lam * eye)
    if int(info) == 0:
        return factor
    shift = lam + (-torch.linalg.eigvalsh(h)[0]).clamp_min(0) + 1e-6 * scale
    for _ in range(6):
        factor, info = torch.linalg.cholesky_ex(h + shift * eye)
        if int(info) == 0:
            log.warning("svdllm: Gram [%d, %d] is not positive definite; added %.3g (= %.2g x mean diag) to "
                        "its diagonal", h.shape[0], h.shape[1], float(shift), float(shift / scale))
            return factor
        shift = shift * 10
    raise ValueError(f"Gram [{h.shape[0]}, {h.shape[1]}] stays indefinite after a {float(shift):.3g} shift; "
                     "it is not a Gram matrix (sum of x x^T)")


def svdllm_factors(weight: Tensor, gram: Tensor, rank: int, damp: float = 0.0) -> tuple[Tensor, Tensor]:
    """SVD-LLM: ``weight`` [out, in], ``gram`` [in, in] = Σ x x^T -> ``(up [out, r], down [r, in])``.

    ``W L = U Σ V^T`` (``L`` from :func:`cholesky_whitening`); ``up = U_r √Σ_r``, ``down = √Σ_r V_r^T L^-1``
    (a triangular solve, not an explicit inverse). ``up @ down`` minimises ``||(W - W') X||_F`` over
    rank-``r`` ``W'``. Computed in float64, returned in ``weight``'s dtype.
    """
    _check_weight(weight, rank, "svdllm_factors")
    if gram.shape != (weight.shape[1], weight.shape[1]):
        raise ValueError(f"gram must have shape [{weight.shape[1]}, {weight.shape[1]}] (= [in, in]), "
                         f"got {tuple(gram.shape)}")
    chol = cholesky_whitening(gram.to(weight.device), damp)
    u, s, vh = torch.linalg.svd(weight.detach().to(torch.float64) @ chol, full_matrices=False)
    up, down = _split(u, s, vh, rank)
    down = torch.linalg.solve_triangular(chol, down, upper=False, left=False)  # down @ L = √Σ_r V_r^T
    return up.to(weight.dtype), down.to(weight.dtype)


def layer_spectrum(weight: Tensor, method: Method, stats: InputStats | None = None, alpha: float = 0.5,
                   damp: float = 0.0) -> Tensor:
    """Singular values [min(out, in)] (float64, descending) of the matrix ``method`` truncates:
    ``W`` (svd), ``W S`` (asvd) or ``W L`` (svdllm)."""
    if method != "svd" and stats is None:
        raise ValueError(f"layer_spectrum: method {method!r} needs the layer's InputStats")
    w = weight.detach().to(torch.float64)
    if method == "asvd":
        w = w * activation_scale(stats.abs_mean, alpha).to(w.device)[None, :]
    elif method == "svdllm":
        w = w @ cholesky_whitening(stats.gram.to(w.device), damp)
    return torch.linalg.svdvals(w)


def component_losses(weight: Tensor, method: Method, stats: InputStats, fisher: Tensor, alpha: float = 0.5,
                     damp: float = 0.0) -> Tensor:
    """Estimated loss increase ``Δ_i`` [min(out, in)] (float64) from dropping component ``i`` of the SVD the
    method truncates, in truncation order: ``Δ_i = ½ σ_i² (v_i^T M v_i) (u_i^T diag(f) u_i)``.

    ``A = W T = U Σ V^T`` with the method's transform ``T`` (``I``, ``S`` or ``L``); dropping component ``i``
    changes the output of token ``t`` by ``u_i σ_i (v_i^T T^-1 x_t)``, whose calibration energy is
    ``σ_i² v_i^T M v_i`` with ``M = T^-1 H T^-T`` (= ``I`` for undamped SVD-LLM). A second-order expansion of
    the loss in the layer output with the empirical-Fisher diagonal ``f`` [out] as curvature (Optimal Brain
    Damage, LeCun et al. 1990; output-side Fisher weighting as in FWSVD, Hsu et al. 2022, "Language Model
    Compression with Weighted Low-Rank Factorization") then gives ``Δ_i``, assuming gradients and errors
    independent across tokens and ignoring cross terms between components. Unlike the kept energy, ``Δ``
    is in the same unit (loss) for every layer, so it needs no per-layer normalisation.
    """
    if fisher.shape != (weight.shape[0],):
        raise ValueError(f"fisher must have shape [{weight.shape[0]}] (= out), got {tuple(fisher.shape)}")
    w, h = weight.detach().to(torch.float64), stats.gram.to(torch.float64)
    if method == "svd":
        a, m = w, h
    elif method == "asvd":
        scale = activation_scale(stats.abs_mean, alpha)
        a, m = w * scale[None, :], h / scale[:, None] / scale[None, :]
    else:
        chol = cholesky_whitening(h, damp)
        half = torch.linalg.solve_triangular(chol, h, upper=False)  # L^-1 H
        a, m = w @ chol, torch.linalg.solve_triangular(chol, half.T, upper=False)  # L^-1 H L^-T
    u, s, vh = torch.linalg.svd(a, full_matrices=False)
    through = ((vh @ m) * vh).sum(1)
    sensitivity = (u.square() * fisher.to(torch.float64)[:, None]).sum(0)
    return 0.5 * s.square() * through.clamp_min(0) * sensitivity


def _resolve_allocation(method: Method, param_reduction: float, allocation: Allocation, batches: Tensor | None,
                        calibration: LayerCalibration | None) -> tuple[str, bool]:
    """Validate the settings of :func:`factorize_model_aware` -> ``(allocation, needs_data)``, ``"auto"``
    resolved; raises ValueError before any work when calibration data is needed and missing."""
    if method not in METHODS:
        raise ValueError(f"low-rank method must be one of {', '.join(METHODS)}, got {method!r}")
    if not 0.0 < param_reduction < 1.0:
        raise ValueError(f"param_reduction must be in (0, 1), got {param_reduction}")
    if allocation not in ALLOCATIONS:
        raise ValueError(f"allocation must be one of {', '.join(ALLOCATIONS)}, got {allocation!r}")
    if allocation == "auto":
        has_fisher = calibration.fisher is not None if calibration is not None else batches is not None
        allocation = "fisher" if has_fisher else "energy"
    needs_data = method != "svd" or allocation == "fisher"
    if needs_data and calibration is None and (batches is None or batches.dim() != 2 or batches.numel() == 0):
        raise ValueError(f"method {method!r} with allocation {allocation!r} needs calibration batches [n, T] of "
                         f"token ids (or a calibration), got {None if batches is None else tuple(batches.shape)}")
    return allocation, needs_data


def _layer_stats(model: nn.Module, linears: dict[str, nn.Linear], batches: Tensor | None, allocation: str,
                 needs_data: bool, batch_size: int, skip: tuple[str, ...], calibration: LayerCalibration | None
                 ) -> tuple[dict[str, InputStats], dict[str, Tensor] | None]:
    """``(stats, fisher)`` for ``linears``: from ``calibration``, else measured on ``batches`` [n, T] when the
    method or allocation needs data (``fisher`` [out] per layer only for allocation ``"fisher"``).

    Raises ValueError when a given ``calibration`` lacks some layer or the Fisher diagonal it needs.
    """
    if needs_data and calibration is None:
        calibration = calibrate_layers(model, batches, fisher=allocation == "fisher", batch_size=batch_size,
                                       skip=skip)
    stats = calibration.stats if calibration is not None else {}
    fisher = calibration.fisher if calibration is not None else None
    missing = [n for n in linears if needs_data and n not in stats]
    if missing or (allocation == "fisher" and (fisher is None or any(n not in fisher for n in linears))):
        raise ValueError(f"the calibration lacks layers (e.g. {(missing or list(linears))[0]!r}) or, for "
                         "allocation 'fisher', the Fisher diagonal; run calibrate_layers on this model")
    return stats, fisher


def _layer_scores(linears: dict[str, nn.Linear], method: Method, allocation: str, stats: dict[str, InputStats],
                  fisher: dict[str, Tensor] | None, alpha: float, damp: float) -> dict[str, tuple[int, int, Tensor]]:
    """``{name: (out, in, scores [min(out, in)])}`` for :func:`compress.factorize.allocate_ranks`: each
    component's estimated loss increase (:func:`component_losses`) for allocation ``"fisher"``, else the
    singular values the method truncates (:func:`layer_spectrum`)."""
    if allocation == "fisher":
        return {name: (*lin.weight.shape, component_losses(lin.weight, method, stats[name], fisher[name], alpha,
                                                           damp))
                for name, lin in tqdm(linears.items(), desc=f"{method} losses", unit="layer", leave=False)}
    return {name: (*lin.weight.shape, layer_spectrum(lin.weight, method, stats.get(name), alpha, damp))
            for name, lin in tqdm(linears.items(), desc=f"{method} spectra", unit="layer", leave=False)}


def _replace_with_factors(model: nn.Module, linears: dict[str, nn.Linear], ranks: dict[str, int | None],
                          method: Method, stats: dict[str, InputStats], alpha: float, damp: float) -> dict[str, int]:
    """Replace each of ``linears`` with an allocated rank (None: it stays dense) by a
    :class:`compress.factorize.LowRankLinear` of the method's factors, in ``model``; -> ``{name: rank}``."""
    factorized: dict[str, int] = {}
    for name, rank in tqdm(ranks.items(), desc=f"{method} factors", unit="layer", leave=False):
        if rank is None:
            continue
        w = linears[name].weight
        if method == "svd":
            up, down = svd_factors(w, rank)
        elif method == "asvd":
            up, down = asvd_factors(w, stats[name].abs_mean, rank, alpha)
        else:
            up, down = svdllm_factors(w, stats[name].gram, rank, damp)
        replace_module(model, name, low_rank_from_factors(linears[name], up, down))
        factorized[name] = rank
    return factorized


def _log_ranks(method: Method, allocation: str, ranks: dict[str, int | None], n_factorized: int, n_skipped: int,
               before: int, after: int, param_reduction: float) -> None:
    """One INFO line for the whole model, then one per layer kind (``q_proj``, ...) with its rank range."""
    by_kind: dict[str, list[int | None]] = defaultdict(list)
    for name, rank in ranks.items():
        by_kind[name.rsplit(".", 1)[-1]].append(rank)
    log.info("%s/%s: %d layers factorized, %d dense; weights %d -> %d (%.1f%% fewer, target %.1f%%)", method,
             allocation, n_factorized, n_skipped, before, after, 100 * (1 - after / before),
             100 * param_reduction)
    for kind, kind_ranks in by_kind.items():
        kept = [r for r in kind_ranks if r is not None]
        span = f"rank {min(kept)}-{max(kept)}, mean {sum(kept) / len(kept):.0f}" if kept else "-"
        log.info("  %-10s %3d dense, %3d factorized (%s)", kind, len(kind_ranks) - len(kept), len(kept), span)


@torch.no_grad()
def factorize_model_aware(model: nn.Module, batches: Tensor | None, method: Method = "svdllm",
                          param_reduction: float = 0.2, allocation: Allocation = "auto", alpha: float = 0.5,
                          damp: float = 0.0, batch_size: int = 8, skip: tuple[str, ...] = ("lm_head",),
                          calibration: LayerCalibration | None = None) -> dict:
    """Factorize the decoder linears so their weights shrink by ``param_reduction``; modifies ``model``.

    ``batches`` [n, T] token ids for calibration; may be None for ``method="svd"`` with a spectral allocation,
    or when ``calibration`` (from :func:`calibrate_layers` on this unmodified model) is given. ``method``:
    ``"svd"`` (plain), ``"asvd"`` (``alpha``: activation exponent) or ``"svdllm"`` (``damp``: ridge, see
    :func:`cholesky_whitening`). ``allocation``: ``"energy"``, ``"uniform"``, ``"per_layer"`` (see
    :func:`compress.factorize.allocate_ranks`) or ``"fisher"`` (its ``"loss"`` strategy on
    :func:`component_losses`; one extra forward + backward pass, ~3x the statistics pass). ``"auto"``:
    ``"fisher"`` when calibration data is given (``batches``, or a ``calibration`` with a Fisher diagonal),
    else ``"energy"`` — so a data-free plain SVD stays data-free. Fisher was best measured on SmolLM2-135M.
    Returns ``{"method", "allocation", "param_reduction", "factorized": {name: rank}, "skipped": {name:
    reason}, "params_before", "params_after", "params_target", "seconds"}`` — counts over the touched
    layers' weights, as :func:`compress.factorize.factorize_model` reports them.
    """
    allocation, needs_data = _resolve_allocation(method, param_reduction, allocation, batches, calibration)
    start = time.perf_counter()
    linears = dict(target_linears(model, skip=skip, include_low_rank=False))
    if not linears:
        raise ValueError("the model has no decoder nn.Linear layers left to factorize")
    stats, fisher = _layer_stats(model, linears, batches, allocation, needs_data, batch_size, skip, calibration)
    calibrated = time.perf_counter()

    layers = _layer_scores(linears, method, allocation, stats, fisher, alpha, damp)
    ranks = allocate_ranks(layers, 1.0 - param_reduction, "loss" if allocation == "fisher" else allocation)
    factorized = _replace_with_factors(model, linears, ranks, method, stats, alpha, damp)
    skipped = {n: "its allocated rank reached break-even (rank * (in + out) >= in * out): dense is smaller "
                  "and exact" for n, r in ranks.items() if r is None}
    before = sum(o * i for o, i, _ in layers.values())
    after = allocated_params(layers, ranks)
    _log_ranks(method, allocation, ranks, len(factorized), len(skipped), before, after, param_reduction)
    done = time.perf_counter()
    return {"method": method, "allocation": allocation, "param_reduction": param_reduction,
            "factorized": factorized, "skipped": skipped, "params_before": before, "params_after": after,
            "params_target": math.floor((1.0 - param_reduction) * before),
            "seconds": {"calibrate": calibrated - start, "factorize": done - calibrated}}
