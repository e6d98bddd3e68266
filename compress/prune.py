"""Pruning of the decoder's linear layers: magnitude (unstructured and N:M) and Wanda.

* **Magnitude** — in each layer the ``round(sparsity * numel)`` weights with the smallest absolute value
  are set to zero (Han et al. 2015, "Learning both Weights and Connections for Efficient Neural
  Networks"; the one-shot, no-retraining baseline of Frantar & Alistarh 2023, "SparseGPT"). Pruning per
  layer rather than globally keeps every layer at the same sparsity, so no layer is emptied by a scale
  mismatch.
* **N:M semi-structured** — in every group of ``m`` consecutive input weights of a row keep the ``n``
  largest scores (2:4 is the pattern NVIDIA Ampere sparse tensor cores execute; Mishra et al. 2021,
  "Accelerating Sparse Deep Neural Networks").
* **Wanda** (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language Models",
  arXiv 2306.11695) — score ``|W_ij| * ||X_j||_2`` where ``||X_j||`` is the norm of input channel ``j``
  over the calibration tokens, compared *per output row* (the paper's choice, Sec. 3 "comparison
  group"), no weight update. :func:`wanda_model` calibrates block by block on the outputs of the
  already-pruned blocks (:func:`compress.calibrate.run_sequential`), as the reference code does.

* **OWL layer-wise sparsity** (Yin et al. 2024, "Outlier Weighed Layerwise Sparsity", arXiv 2310.05175) —
  instead of the same sparsity in every block, :func:`owl_block_sparsities` gives blocks with many
  *outlier* Wanda scores (``> m`` times their layer's mean) less sparsity and the others more, within
  ``target ± lam`` and at the same global budget; ``allocation="owl"`` on :func:`wanda_model` and
  :func:`compress.sparsegpt.sparsegpt_model`. The outlier ratios come from one forward of the dense model.

Written by hand: a mask is a top-k per row or per group — a few lines of torch — and the libraries that
ship these methods (llm-compressor, the papers' repos) bring their own model loading and session state.

The zeros are stored densely (safetensors has no sparse format), so pruning alone does not shrink files;
it shows up as fewer nonzero parameters and composes with quantization.

Run: ``python -c "from compress.prune import wanda_model; ..."`` — normally via ``eakd compress``.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from compress.calibrate import InputStats, collect_input_stats, decoder_blocks, run_sequential
from compress.linears import target_linears

log = logging.getLogger(__name__)


def magnitude_mask(weight: Tensor, sparsity: float) -> Tensor:
    """Keep-mask for ``weight`` (any shape): False at the ``round(sparsity * numel)`` smallest ``|w|``.

    Exactly that many entries are False even when magnitudes tie (ties are broken by position), so the
    realized sparsity is ``round(sparsity * numel) / numel``.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    n = weight.numel()
    k = int(round(sparsity * n))
    mask = torch.ones(n, dtype=torch.bool, device=weight.device)
    if k > 0:
        drop = torch.topk(weight.detach().abs().flatten().float(), k, largest=False, sorted=False).indices
        mask[drop] = False
    return mask.view_as(weight)


@torch.no_grad()
def prune_model(model: nn.Module, sparsity: float, skip: tuple[str, ...] = ("lm_head",)) -> dict:
    """Zero the smallest-magnitude weights of every decoder ``nn.Linear`` in place.

    Returns ``{"sparsity_target", "sparsity_realized", "layers", "zeros", "weights"}`` where the realized
    sparsity counts all zeros in the pruned layers (zeros that were already there included).
    """
    layers = zeros = total = 0
    for _name, linear in target_linears(model, skip=skip):
        mask = magnitude_mask(linear.weight, sparsity)
        linear.weight.mul_(mask.to(linear.weight.dtype))
        layers += 1
        zeros += int((linear.weight == 0).sum())
        total += linear.weight.numel()
    realized = zeros / total if total else 0.0
    log.info("magnitude: pruned %d linear layers to sparsity %.4f (target %.4f)", layers, realized, sparsity)
    return {"sparsity_target": sparsity, "sparsity_realized": realized, "layers": layers,
            "zeros": zeros, "weights": total}


# --- masks -------------------------------------------------------------------------------------------

def resolve_sparsity(sparsity: float, nm: tuple[int, int] | None) -> float:
    """Validate ``sparsity`` / ``nm=(n kept, m group)`` and return the target fraction of zeros.

    With ``nm`` the pattern decides: the sparsity is ``1 - n/m`` and a ``sparsity`` that disagrees is
    overridden with a warning (the stage config documents ``nm`` as overriding ``sparsity``).
    """
    if nm is None:
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
        return float(sparsity)
    if len(nm) != 2 or not 0 < int(nm[0]) <= int(nm[1]):
        raise ValueError(f"nm must be (n kept, m group size) with 0 < n <= m, got {nm}")
    implied = 1.0 - nm[0] / nm[1]
    if abs(sparsity - implied) > 1e-9:
        log.warning("sparsity=%g ignored: N:M %d:%d fixes the sparsity at %g", sparsity, nm[0], nm[1], implied)
    return implied


def nm_mask(score: Tensor, n: int = 2, m: int = 4) -> Tensor:
    """N:M keep-mask for ``score`` [out, in]: the ``n`` largest of every ``m`` consecutive inputs of a row.

    Exactly ``n`` True per group even when scores tie (ties go to the lower index). Raises ValueError
    when ``in`` is not a multiple of ``m``.
    """
    if score.dim() != 2:
        raise ValueError(f"nm_mask expects a 2-D score [out, in], got shape {tuple(score.shape)}")
    if not 0 < n <= m:
        raise ValueError(f"N:M needs 0 < n <= m, got n={n}, m={m}")
    out_f, in_f = score.shape
    if in_f % m:
        raise ValueError(f"N:M {n}:{m} needs the input size to be a multiple of m={m}, got {in_f}")
    groups = score.detach().float().reshape(out_f, in_f // m, m)
    keep = torch.topk(groups, n, dim=-1, sorted=False).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return mask.reshape(out_f, in_f)


def row_mask(score: Tensor, sparsity: float) -> Tensor:
    """Keep-mask for ``score`` [out, in] dropping the ``round(sparsity * in)`` lowest scores of each row.

    Every row ends with the same number of zeros (Wanda's per-output comparison group).
    """
    if score.dim() != 2:
        raise ValueError(f"row_mask expects a 2-D score [out, in], got shape {tuple(score.shape)}")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    k = int(round(sparsity * score.shape[1]))
    mask = torch.ones_like(score, dtype=torch.bool)
    if k > 0:
        drop = torch.topk(score.detach().float(), k, dim=1, largest=False, sorted=False).indices
        mask.scatter_(1, drop, False)
    return mask


def wanda_score(weight: Tensor, sq_norm: Tensor) -> Tensor:
    """Wanda's importance ``|W_ij| * ||X_j||_2`` [out, in] from ``sq_norm`` = ``||X_j||_2^2`` [in]."""
    if sq_norm.shape != (weight.shape[1],):
        raise ValueError(f"sq_norm must have shape ({weight.shape[1]},), got {tuple(sq_norm.shape)}")
    return weight.detach().float().abs() * sq_norm.float().clamp_min(0).sqrt()[None, :]


def wanda_mask(weight: Tensor, sq_norm: Tensor, sparsity: float, nm: tuple[int, int] | None = None) -> Tensor:
    """Wanda keep-mask [out, in]: per-row unstructured at ``sparsity``, or N:M when ``nm`` is given."""
    sparsity = resolve_sparsity(sparsity, nm)
    score = wanda_score(weight, sq_norm)
    return nm_mask(score, *nm) if nm is not None else row_mask(score, sparsity)


def outlier_ratio(score: Tensor, m: float = 5.0) -> float:
    """OWL's layer outlier ratio: the fraction of ``score`` [out, in] entries above ``m`` times their mean."""
    score = score.float()
    return float((score > m * score.mean()).float().mean())


def allocate_owl(ratios: list[float], sizes: list[int], target: float, lam: float = 0.08) -> list[float]:
    """Per-block sparsities from outlier ``ratios``: a linear map into ``[target - lam, target + lam]`` (most
    outliers -> least sparsity), then shifted so the ``sizes``-weighted mean is exactly ``target`` (and
    clipped to [0, 0.99]). Equal ratios give ``target`` everywhere."""
    if not 0 <= lam < 1:
        raise ValueError(f"owl lambda must be in [0, 1), got {lam}")
    lo, hi = min(ratios), max(ratios)
    if hi - lo <= 0:
        return [target] * len(ratios)
    raw = [target + lam - 2 * lam * (r - lo) / (hi - lo) for r in ratios]
    total = sum(sizes)
    for _ in range(50):  # shift until the weighted mean matches despite clipping
        mean = sum(s * n for s, n in zip(raw, sizes)) / total
        if abs(mean - target) < 1e-9:
            break
        raw = [min(0.99, max(0.0, s + target - mean)) for s in raw]
    return raw


@torch.no_grad()
def owl_block_sparsities(model: nn.Module, batches: Tensor, target: float, m: float = 5.0, lam: float = 0.08,
                         batch_size: int = 8) -> tuple[list[float], list[float]]:
    """``(per-block sparsity, per-block outlier ratio)`` for OWL: the Wanda scores of every block's linears on
    one forward of the (dense) model over ``batches`` [n, T]; a block's ratio is over all its weights."""
    blocks = decoder_blocks(model)
    names = {f"{i}.{n}": mod for i, block in enumerate(blocks) for n, mod in block.named_modules()
             if isinstance(mod, nn.Linear)}
    stats = collect_input_stats(model, batches, names, batch_size, gram=False)
    ratios, sizes = [], []
    for i in range(len(blocks)):
        outliers = weights = 0
        for key, lin in names.items():
            if key.split(".", 1)[0] != str(i):
                continue
            score = wanda_score(lin.weight, stats[key].sq_norm)
            outliers += outlier_ratio(score, m) * score.numel()
            weights += score.numel()
        ratios.append(outliers / max(1, weights))
        sizes.append(weights)
    return allocate_owl(ratios, sizes, target, lam), ratios


def sparsity_report(method: str, target: float, linears: list[nn.Linear], nm: tuple[int, int] | None) -> dict:
    """Count the zeros of ``linears`` after ``method`` pruned them; logs and returns the summary dict."""
    zeros = sum(int((lin.weight == 0).sum()) for lin in linears)
    total = sum(lin.weight.numel() for lin in linears)
    return sparsity_summary(method, target, len(linears), zeros, total, nm)


def sparsity_summary(method: str, target: float, layers: int, zeros: int, total: int,
                     nm: tuple[int, int] | None) -> dict:
    """The summary dict of :func:`sparsity_report` from counts (zeros among ``total`` weights of ``layers``)."""
    realized = zeros / total if total else 0.0
    log.info("%s: pruned %d linear layers to sparsity %.4f (target %.4f%s)", method, layers, realized,
             target, f", {nm[0]}:{nm[1]}" if nm else "")
    return {"method": method, "sparsity_target": target, "nm": list(nm) if nm else None,
            "sparsity_realized": realized, "layers": layers, "zeros": zeros, "weights": total}


# --- whole models -------------------------------------------------------------------------------------

@torch.no_grad()
def magnitude_model(model: nn.Module, sparsity: float = 0.5, nm: tuple[int, int] | None = None,
                    skip: tuple[str, ...] = ("lm_head",)) -> dict:
    """Magnitude-prune every decoder ``nn.Linear`` in place: per layer (as :func:`prune_model`) or N:M.

    Returns ``{"method", "sparsity_target", "nm", "sparsity_realized", "layers", "zeros", "weights"}``.
    """
    target = resolve_sparsity(sparsity, nm)
    linears = [lin for _name, lin in target_linears(model, skip=skip)]
    for lin in linears:
        mask = nm_mask(lin.weight.abs(), *nm) if nm is not None else magnitude_mask(lin.weight, target)
        lin.weight.mul_(mask.to(lin.weight.dtype))
    return sparsity_report("magnitude", target, linears, nm)


def block_progress(model: nn.Module, desc: str):
    """A progress bar over the decoder blocks (hidden when stderr is not a terminal)."""
    from tqdm.auto import tqdm

    from compress.calibrate import decoder_blocks

    return tqdm(total=len(decoder_blocks(model)), desc=desc, unit="block", disable=None)


@torch.no_grad()
def wanda_block(block: nn.Module, stats: dict[str, InputStats], sparsity: float,
                nm: tuple[int, int] | None = None) -> list[nn.Linear]:
    """Wanda-prune the linears of one decoder ``block`` named in ``stats`` in place; returns them (the per-block
    step of :func:`wanda_model` and :mod:`compress.streamed`)."""
    pruned = []
    for name, s in stats.items():
        lin = block.get_submodule(name)
        mask = wanda_mask(lin.weight, s.sq_norm, sparsity, nm)
        lin.weight.mul_(mask.to(lin.weight.dtype))
        pruned.append(lin)
    return pruned


@torch.no_grad()
def wanda_model(model: nn.Module, batches: Tensor, sparsity: float = 0.5, nm: tuple[int, int] | None = None,
                batch_size: int = 8, allocation: str = "uniform", owl_m: float = 5.0, owl_lambda: float = 0.08) -> dict:
    """Wanda-prune every linear of every decoder block in place, calibrating on ``batches`` [n, T] ids.

    Block ``i`` is calibrated on the outputs of the already-pruned blocks ``< i``. ``allocation="owl"``
    prunes block ``i`` to its :func:`owl_block_sparsities` share instead of ``sparsity`` (unstructured
    only). Returns the same dict as :func:`magnitude_model` (``method="wanda"``), plus ``block_sparsity``.
    """
    target = resolve_sparsity(sparsity, nm)
    per_block = block_sparsities(model, batches, target, nm, allocation, owl_m, owl_lambda, batch_size)
    pruned: list[nn.Linear] = []
    bar = block_progress(model, "wanda")

    def prune_block(i: int, block: nn.Module, stats: dict[str, InputStats]) -> None:
        pruned.extend(wanda_block(block, stats, per_block[i], nm))
        log.debug("wanda: block %d pruned (%d linears)", i, len(stats))
        bar.update(1)

    try:
        run_sequential(model, batches, prune_block, batch_size=batch_size, gram=False)
    finally:
        bar.close()
    return sparsity_report("wanda", target, pruned, nm) | {"allocation": allocation, "block_sparsity": per_block}


def block_sparsities(model: nn.Module, batches: Tensor, target: float, nm: tuple[int, int] | None,
                     allocation: str, owl_m: float = 5.0, owl_lambda: float = 0.08, batch_size: int = 8) -> list[float]:
    """The sparsity of each decoder block: ``target`` everywhere (``uniform``) or OWL's allocation (``owl``)."""
    n = len(decoder_blocks(model))
    if allocation == "uniform":
        return [target] * n
    if allocation != "owl":
        raise ValueError(f"sparsity allocation must be 'uniform' or 'owl', got {allocation!r}")
    if nm is not None:
        raise ValueError("allocation 'owl' sets a sparsity per block; N:M patterns have one fixed sparsity")
    sparsities, ratios = owl_block_sparsities(model, batches, target, owl_m, owl_lambda, batch_size)
    log.info("owl: outlier ratios %s -> block sparsities %s", [round(r, 4) for r in ratios],
             [round(s, 3) for s in sparsities])
    return sparsities
