"""AWQ: activation-aware weight quantization — scale salient input channels up before rounding.

Source: Lin, Tang, Tang, Yang, Chen, Wang, Xiao, Dang, Gan & Han 2024, "AWQ: Activation-aware Weight
Quantization for LLM Compression and Acceleration" (arXiv 2306.00978), Sec. 3 and the reference code
(github.com/mit-han-lab/llm-awq, ``auto_scale.py`` / ``auto_clip.py``).

Input channels with large activations matter most, and multiplying a weight column by ``s > 1``
(and its input by ``1 / s``) shrinks that column's relative rounding error. For every group of
linears sharing one input, AWQ tries per-input-channel scales ``s = mean|x|^alpha`` (normalised by
``sqrt(max s * min s)``) for ``alpha`` in ``{0, 0.05, ..., 0.95}`` and keeps the one whose quantized
layers reproduce the float outputs best. ``1 / s`` is folded into whatever produces the input, so the
float model is unchanged:

===========================  ============================  ==========================================
input producer (``1 / s``)   linears (``* s`` on columns)  note
===========================  ============================  ==========================================
``input_layernorm``          ``q_proj, k_proj, v_proj``    RMSNorm gain divided by ``s``
``self_attn.v_proj``         ``o_proj``                    only if ``v_proj.out == o_proj.in`` (no GQA)
``post_attention_layernorm`` ``gate_proj, up_proj``
``mlp.up_proj``              ``down_proj``                 ``up_proj`` output rows divided by ``s``
===========================  ============================  ==========================================

After scaling, AWQ's clipping search shrinks each (row, group)'s range to ``r * max|w|`` with ``r`` in
``{1, 0.95, ..., 0.55}`` where that lowers the group's output error (not for ``q_proj``/``k_proj``, as in
the reference), then every linear is RTN-quantized on the grid of :func:`compress.quantize.quantize_weight`.

Where this differs from the reference: the search objective is the summed *layer*-output error
``sum_l ||W_l X - Q_l X||^2`` (the reference uses the attention/MLP module output for q/k/v and
gate/up), computed exactly from the calibration Gram matrix ``X X^T`` that
:mod:`compress.calibrate` already collects — over every calibration token, without storing tokens or
re-running the block 20 times per group. Blocks are processed with
:func:`compress.calibrate.run_sequential`, so each block is calibrated on the outputs of the already
quantized ones (the reference feeds float-but-scaled outputs).

Hand-written in PyTorch: the packaged versions (llm-awq, AutoAWQ, llm-compressor) each bring their own
model wrappers and kernels for what is ~150 lines of tensor code here.

Run::

    from compress.awq import awq_model
    results = awq_model(model, calibration_batches(tok, text, 128, 512), bits=4, group_size=64)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm import tqdm

from compress.calibrate import InputStats, decoder_blocks, run_sequential
from compress.quantize import (
    check_model_quant_args,
    codes_to_weight,
    compute_qparams,
    dequantize_weight,
    fake_quantize,
    quantize_to_codes,
    quantize_weight,
    relative_output_error,
)

log = logging.getLogger(__name__)

N_GRID = 20  # alpha in {0, 1/20, ..., 19/20}, the reference grid
CLIP_RATIOS = [1.0 - i / 20 for i in range(10)]  # 1.0 .. 0.55: the reference's max_shrink=0.5, n_grid=20
NO_CLIP = ("q_proj", "k_proj")  # the reference skips them: q.k^T makes their errors matter non-linearly


@dataclass(frozen=True)
class ScaleGroup:
    """Linears sharing one input, and the module that produces that input (names relative to a block)."""

    prev: str  # a norm (weight [in]) or an nn.Linear whose output rows are the input channels
    linears: tuple[str, ...]


LLAMA_GROUPS = (
    ScaleGroup("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    ScaleGroup("self_attn.v_proj", ("self_attn.o_proj",)),
    ScaleGroup("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
    ScaleGroup("mlp.up_proj", ("mlp.down_proj",)),
)


def _output_error(w: Tensor, w_hat: Tensor, gram: Tensor) -> Tensor:
    """``||W X - W_hat X||^2`` (summed over rows) from the Gram ``X X^T``; ``w``, ``w_hat`` [out, in]."""
    d = w - w_hat
    return ((d @ gram) * d).sum()


def awq_scales(abs_mean: Tensor, alpha: float) -> Tensor:
    """Per-input-channel scales [in] from the mean |activation| [in]: ``mean|x|^alpha``, geometric-mean 1."""
    s = abs_mean.to(torch.float32).pow(alpha).clamp(min=1e-4)
    return s / (s.max() * s.min()).sqrt()


@torch.no_grad()
def search_scale(weights: list[Tensor], stats: InputStats, bits: int, group_size: int | None,
                 symmetric: bool, n_grid: int = N_GRID) -> tuple[Tensor, float, float]:
    """Best AWQ scales for linears sharing one input -> ``(s [in], alpha, error ratio vs alpha=0)``.

    ``weights``: each [out_l, in]. The objective is ``sum_l ||W_l X - Q(W_l diag(s)) diag(s)^-1 X||^2``
    over the calibration inputs ``X`` (via ``stats.gram``). ``alpha = 0`` (``s = 1``) is plain RTN and
    is on the grid, so the result is never worse than RTN on this objective.
    """
    w = torch.cat([x.detach().to(torch.float32) for x in weights], dim=0)
    gram = stats.gram.to(torch.float32)
    best = (float("inf"), 0.0, torch.ones(w.shape[1], device=w.device))
    base = None
    for k in range(n_grid):
        alpha = k / n_grid
        s = awq_scales(stats.abs_mean, alpha)
        err = float(_output_error(w, fake_quantize(w * s, bits, group_size, symmetric) / s, gram))
        base = err if base is None else base
        if err < best[0]:
            best = (err, alpha, s)
    return best[2], best[1], best[0] / base if base else 1.0


@torch.no_grad()
def search_clip(w: Tensor, gram: Tensor, bits: int, group_size: int | None, symmetric: bool) -> Tensor:
    """AWQ clipping: per (row, group) the range ``r * max|w|`` minimising that group's output error.

    ``w`` [out, in], ``gram`` [in, in] (of the inputs this weight sees). Returns the clamped weight
    [out, in] (fp32) to quantize; ``r = 1`` everywhere returns ``w`` itself.
    """
    out_f, in_f = w.shape
    gs = in_f if group_size is None else group_size
    ng = in_f // gs
    wg = w.to(torch.float32).reshape(out_f, ng, gs)
    blocks = torch.stack([gram[g * gs:(g + 1) * gs, g * gs:(g + 1) * gs] for g in range(ng)]).to(torch.float32)
    amax = wg.abs().amax(dim=-1, keepdim=True)
    best_err = torch.full((out_f, ng), float("inf"), device=w.device)
    best_w = wg.clone()
    for r in CLIP_RATIOS:
        cw = torch.maximum(torch.minimum(wg, r * amax), -r * amax)
        scale, zero = compute_qparams(cw, bits, symmetric)
        d = wg - codes_to_weight(quantize_to_codes(cw, scale, zero, bits), scale, zero)
        err = torch.einsum("ogi,gij,ogj->og", d, blocks, d)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_w = torch.where(better[..., None], cw, best_w)
    return best_w.reshape(out_f, in_f)


@torch.no_grad()
def fold_scales(block: nn.Module, group: ScaleGroup, s: Tensor) -> None:
    """Divide ``group.prev``'s output channels by ``s`` [in] and multiply the linears' input columns by it.

    The block computes the same function afterwards (up to float rounding): ``W diag(s) (x / s) = W x``.
    """
    prev = block.get_submodule(group.prev)
    if isinstance(prev, nn.Linear):
        prev.weight.copy_((prev.weight.float() / s[:, None]).to(prev.weight.dtype))
    elif "Gemma" in type(prev).__name__:  # Gemma's RMSNorm computes (1 + weight) * x: dividing weight is wrong
        raise ValueError(f"awq cannot fold scales into {type(prev).__name__} ({group.prev})")
    else:
        prev.weight.copy_((prev.weight.float() / s).to(prev.weight.dtype))
    if getattr(prev, "bias", None) is not None:
        prev.bias.copy_((prev.bias.float() / s).to(prev.bias.dtype))
    for name in group.linears:
        linear = block.get_submodule(name)
        linear.weight.copy_((linear.weight.float() * s[None, :]).to(linear.weight.dtype))


def usable_groups(block: nn.Module, stats: dict[str, InputStats],
                  groups: tuple[ScaleGroup, ...] = LLAMA_GROUPS) -> list[ScaleGroup]:
    """The groups of ``groups`` this block supports: all linears present and calibrated, shapes foldable."""
    names = dict(block.named_modules())
    usable = []
    for g in groups:
        if g.prev not in names or not all(n in stats and isinstance(names.get(n), nn.Linear) for n in g.linears):
            log.debug("awq: group %s -> %s not applicable in this block, skipped", g.prev, g.linears)
            continue
        n_in = names[g.linears[0]].in_features
        prev = names[g.prev]
        n_prev = prev.out_features if isinstance(prev, nn.Linear) else getattr(prev, "weight", torch.empty(0)).numel()
        if n_prev != n_in:
            log.debug("awq: %s has %d outputs but %s takes %d inputs (grouped-query attention?): %s -> %s not "
                      "scaled", g.prev, n_prev, g.linears[0], n_in, g.prev, g.linears)
            continue
        usable.append(g)
    return usable


@torch.no_grad()
def awq_block(block: nn.Module, stats: dict[str, InputStats], bits: int = 4, group_size: int | None = 128,
              symmetric: bool = True, clip: bool = True,
              groups: tuple[ScaleGroup, ...] = LLAMA_GROUPS) -> dict[str, tuple]:
    """AWQ one decoder block in place: search and fold scales, clip, RTN-quantize every linear in ``stats``.

    Returns ``{name relative to the block: (q, scale, zero, info)}``; ``info`` has ``alpha`` (None when the
    layer was not scaled), ``rel_error`` and ``rtn_rel_error`` (``||(W - Q) X||^2 / ||W X||^2`` for AWQ
    and for plain RTN of the original weight).
    """
    original = {n: block.get_submodule(n).weight.detach().float().clone() for n in stats}
    chosen: list[tuple[ScaleGroup, Tensor, float]] = []
    for g in usable_groups(block, stats, groups):  # all searches on the unscaled weights, as the reference
        weights = [block.get_submodule(n).weight for n in g.linears]
        s, alpha, ratio = search_scale(weights, stats[g.linears[0]], bits, group_size, symmetric)
        chosen.append((g, s, alpha))
        log.debug("awq %s -> %s: alpha %.2f, output error x%.3f of RTN", g.prev, ",".join(g.linears), alpha, ratio)
    in_scale: dict[str, tuple[Tensor, float]] = {}
    out_scale: dict[str, Tensor] = {}  # producer linears' rows were divided by these
    for g, s, alpha in chosen:
        fold_scales(block, g, s)
        in_scale.update({n: (s, alpha) for n in g.linears})
        out_scale[g.prev] = s

    out: dict[str, tuple] = {}
    for name, st in stats.items():
        linear = block.get_submodule(name)
        s, alpha = in_scale.get(name, (torch.ones(linear.in_features, device=linear.weight.device), None))
        gram_scaled = st.gram / (s[:, None] * s[None, :])  # the Gram of the scaled inputs x / s
        w = linear.weight.detach().float()
        if clip and name.rsplit(".", 1)[-1] not in NO_CLIP:
            w = search_clip(w, gram_scaled, bits, group_size, symmetric)
        q, scale, zero = quantize_weight(w, bits, group_size, symmetric)
        w_hat = dequantize_weight(q, scale, zero, group_size)
        linear.weight.copy_(w_hat.to(linear.weight.dtype))
        rtn = fake_quantize(original[name], bits, group_size, symmetric)
        rows = out_scale.get(name, torch.ones(linear.out_features, device=w_hat.device))
        unscaled = w_hat * rows[:, None] / s[None, :]  # back to the original basis, to compare with RTN
        info = {"alpha": alpha, "rel_error": relative_output_error(original[name], unscaled, st.gram),
                "rtn_rel_error": relative_output_error(original[name], rtn, st.gram)}
        out[name] = (q, scale, zero, info)
    return out


@torch.no_grad()
def awq_model(model: nn.Module, batches: Tensor, bits: int = 4, group_size: int | None = 128,
              symmetric: bool = True, clip: bool = True, skip: tuple[str, ...] = ("lm_head",),
              batch_size: int = 8) -> dict[str, tuple]:
    """AWQ every decoder block, block by block, on calibration ``batches`` [n, T] long.

    The model is modified in place: norms and producer linears absorb ``1 / s``, and every linear
    holds its dequantized (scaled) weight. Returns ``{qualified name: (q, scale, zero, info)}`` (see
    :func:`awq_block`); the codes encode the *scaled* weights, so saving them needs the modified norm
    weights too (they are in the model's state dict). Raises ValueError before any work when
    ``group_size`` does not divide some layer's input dimension.
    """
    def keep(name: str, _m: nn.Linear) -> bool:
        return name.rsplit(".", 1)[-1] not in skip

    blocks = decoder_blocks(model)
    check_model_quant_args([(n, m) for b in blocks for n, m in b.named_modules()
                            if isinstance(m, nn.Linear) and keep(n, m)], bits, group_size)
    prefixes = {id(m): n for n, m in model.named_modules()}
    results: dict[str, tuple] = {}
    bar = tqdm(total=len(blocks), desc="awq", unit="block")

    def compress_block(i: int, block: nn.Module, stats: dict[str, InputStats]) -> None:
        for name, value in awq_block(block, stats, bits, group_size, symmetric, clip).items():
            results[f"{prefixes[id(block)]}.{name}"] = value
        bar.update(1)

    try:
        run_sequential(model, batches, compress_block, linear_filter=keep, batch_size=batch_size)
    finally:
        bar.close()
    unscaled = sorted({n.rsplit(".", 1)[-1] for n, r in results.items() if r[3]["alpha"] is None})
    if unscaled:
        log.info("awq: no scale search for %s (no foldable input producer, e.g. v_proj -> o_proj under "
                 "grouped-query attention); they are clipped and RTN-quantized only", ", ".join(unscaled))
    if results:
        errs = [r[3]["rel_error"] for r in results.values()]
        rtn = [r[3]["rtn_rel_error"] for r in results.values()]
        log.info("awq: int%d %s %s clip=%s, %d layers, mean rel output error %.4g (rtn %.4g)", bits,
                 "per-channel" if group_size is None else f"g{group_size}", "sym" if symmetric else "asym",
                 clip, len(results), sum(errs) / len(errs), sum(rtn) / len(rtn))
    return results
