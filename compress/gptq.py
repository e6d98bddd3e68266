"""GPTQ: post-training weight quantization that corrects each rounding error with the remaining weights.

Source: Frantar, Ashkboos, Hoefler & Alistarh 2023, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers" (arXiv 2210.17323), Algorithm 1. For one linear layer with weight
``W`` [out, in] and calibration inputs ``X`` [in, n], GPTQ minimises ``||W X - Q X||^2`` over weights
``Q`` on the quantization grid. It quantizes the columns one at a time; after rounding column ``j`` it
spreads the error over the not-yet-quantized columns with the inverse Hessian ``H^-1`` (``H = 2 X X^T / n``),
using the upper Cholesky factor of ``H^-1`` so every step is one row of a triangular matrix. Updates are
applied lazily in blocks of ``block_size`` columns (the paper's speed trick; the result is identical).

Details that follow the reference implementation (github.com/IST-DASLab/gptq):

* dampening: ``damp * mean(diag H)`` is added to the diagonal (``damp=0.01``), retried x10 if Cholesky fails
  (:func:`compress.hessian.inverse_cholesky_`, which does it inside the Hessian's own memory);
* dead inputs (``H_jj == 0``: the channel is always zero) get ``H_jj = 1`` and ``W[:, j] = 0``;
* act-order: columns are processed in order of decreasing ``H_jj`` (the most salient first). With groups,
  the group scales are then computed up front on the original columns ("static groups"), so the codes
  keep the plain grouped layout of :func:`compress.quantize.quantize_weight` (no ``g_idx`` permutation
  table); without act-order a group's scale is computed when its first column is reached, on the
  already-updated weights, as in the reference. ``act_order="auto"`` runs both orders per layer and keeps
  the one with the lower output error (static groups clip on layers with massive activations; on
  SmolLM2-135M that is 2 of 210 layers, and choosing per layer lowered int4 g64 perplexity 31.1 -> 30.4).

:func:`gptq_model` applies it block by block (:func:`compress.calibrate.run_sequential`): each block
is calibrated on the outputs of the already-quantized blocks before it.

Hand-written in PyTorch because it is ~100 lines and the packaged versions (llm-compressor, AutoGPTQ)
drag in their own model wrappers, kernels and session state.

Run::

    from compress.gptq import gptq_model
    results = gptq_model(model, calibration_batches(tok, text, 128, 512), bits=4, group_size=64,
                         act_order="auto")  # g64: 128 does not divide SmolLM2-135M's hidden size 576
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from compress.calibrate import InputStats, run_sequential
from compress.hessian import inverse_cholesky_, permute_symmetric_, quadratic_error, upper_rows
from compress.quantize import (
    check_model_quant_args,
    check_quant_args,
    codes_to_weight,
    compute_qparams,
    dequantize_weight,
    fake_quantize,
    quantize_to_codes,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Grid:
    """The grid one GPTQ run rounds to: ``bits``, ``symmetric``, ``group`` (columns per scale) and ``static``
    (all group scales fixed up front, as act-order needs, instead of when a group's first column is reached)."""

    bits: int
    symmetric: bool
    group: int
    static: bool


def _check_gptq_args(w: Tensor, H: Tensor, bits: int, group_size: int | None, damp: float,
                     block_size: int) -> None:
    """Raise ValueError unless ``w`` [out, in], ``H`` [in, in] and the settings fit together."""
    if w.dim() != 2 or H.shape != (w.shape[1], w.shape[1]):
        raise ValueError(f"gptq expects w [out, in] and H [in, in], got {tuple(w.shape)} and {tuple(H.shape)}")
    check_quant_args(bits, group_size, w.shape[1])
    if damp <= 0 or block_size < 1:
        raise ValueError(f"gptq.damp must be > 0 and block_size >= 1, got damp={damp}, block_size={block_size}")


def _drop_dead_inputs(w: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """A float32 copy of ``w`` [out, in] with dead inputs neutralised in it and in ``h`` [in, in] (in place), and
    ``dead`` [in] bool.

    A dead input (``H_jj == 0``: the channel is always zero) gets ``H_jj = 1`` so ``H`` stays invertible, and
    ``W[:, j] = 0`` since its weights never reach the output.
    """
    W = w.detach().to(torch.float32).clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    W[:, dead] = 0.0
    return W, dead


def _initial_qparams(W: Tensor, grid: _Grid) -> tuple[Tensor, Tensor | None]:
    """``scale``, ``zero`` [out, n_groups] float32 for ``W`` [out, in]; ``zero`` is None when symmetric.

    Static grids get every group's parameters now, from the original columns; otherwise the tensors are
    left unset and :func:`_gptq_block` fills each group when it reaches the group's first column.
    """
    n_out, n_in = W.shape
    n_groups = n_in // grid.group
    scale = torch.empty(n_out, n_groups, device=W.device)
    zero = None if grid.symmetric else torch.empty(n_out, n_groups, device=W.device)
    if grid.static:
        s, z = compute_qparams(W.reshape(n_out, n_groups, grid.group), grid.bits, grid.symmetric)
        scale.copy_(s)
        if zero is not None:
            zero.copy_(z)
    return scale, zero


def _gptq_block(W1: Tensor, later: Tensor, Hinv1: Tensor, first: int, group_of: Tensor, scale: Tensor,
                zero: Tensor | None, grid: _Grid) -> tuple[Tensor, Tensor]:
    """Quantize the columns of one block ``W1`` [out, b] in order -> ``(codes [out, b], err [out, b])``.

    After rounding column ``i`` its error, divided by ``Hinv1[i, i]``, is spread over the block's remaining
    columns with ``Hinv1`` [b, b] (the block's diagonal part of the upper Cholesky factor of ``H^-1``); the
    returned ``err`` is what the caller spreads over the later columns. ``later`` [out, >= 0]: the columns
    after the block, read only, for a new group's scale; ``first``: the block's first column (processing
    order); ``group_of`` [b]: each column's group. Updates ``W1`` and, unless the grid is static,
    ``scale``/``zero`` [out, n_groups] in place.
    """
    codes = torch.zeros_like(W1)
    err_block = torch.zeros_like(W1)
    for i in range(W1.shape[1]):
        g = int(group_of[i])
        if not grid.static and (first + i) % grid.group == 0:  # a new group: its scale from the updated weights
            cols = torch.cat([W1[:, i:], later], dim=1)[:, :grid.group]
            s, z = compute_qparams(cols, grid.bits, grid.symmetric)
            scale[:, g] = s
            if zero is not None:
                zero[:, g] = z
        zg = None if zero is None else zero[:, g]
        c = quantize_to_codes(W1[:, i:i + 1], scale[:, g], zg, grid.bits)
        q = codes_to_weight(c, scale[:, g], zg)[:, 0]
        codes[:, i] = c[:, 0]
        err = (W1[:, i] - q) / Hinv1[i, i]
        W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]  # spread the error over the block's rest
        err_block[:, i] = err
    return codes, err_block


def _gptq_columns(W: Tensor, Hinv: Tensor, group_of: Tensor, scale: Tensor, zero: Tensor | None, grid: _Grid,
                  block_size: int) -> Tensor:
    """Quantize ``W`` [out, in] column by column -> codes [out, in] (int8 symmetric, else uint8: the dtypes of
    :func:`compress.quantize.quantize_weight`); updates ``W`` in place.

    ``W``, ``Hinv`` [in, in] (upper Cholesky factor of the damped ``H^-1`` in its upper triangle, see
    :func:`compress.hessian.inverse_cholesky_`) and ``group_of`` [in] are in processing order. Each block of
    ``block_size`` columns is quantized by :func:`_gptq_block`; its errors reach the later columns in one matrix
    product per block (the paper's lazy batch update).
    """
    n_in = W.shape[1]
    codes = torch.zeros(W.shape, dtype=torch.int8 if grid.symmetric else torch.uint8, device=W.device)
    for i1 in range(0, n_in, block_size):
        i2 = min(i1 + block_size, n_in)
        rows = upper_rows(Hinv, i1, i2)  # [b, in - i1]; Hinv's lower triangle is not zero (compress.hessian)
        codes[:, i1:i2], err = _gptq_block(W[:, i1:i2].clone(), W[:, i2:], rows[:, : i2 - i1], i1,
                                           group_of[i1:i2], scale, zero, grid)
        W[:, i2:] -= err @ rows[:, i2 - i1:]  # ... and, lazily, over all later columns
    return codes




def _error_stats(w: Tensor, q: Tensor, scale: Tensor, zero: Tensor | None, grid: _Grid, group_size: int | None,
                 h: Tensor, diag: Tensor, order: Tensor | None) -> dict[str, float]:
    """``rel_error`` of the quantized weight (codes ``q``, ``scale``/``zero``) against ``w`` [out, in], and
    ``rtn_rel_error``, the same for plain round-to-nearest, for comparison: ``||(W - Q) X||^2 / ||W X||^2`` on the
    Hessian held in ``h``'s strict lower triangle and ``diag`` [in] (:func:`compress.hessian.quadratic_error`), in
    processing ``order`` (None: the identity). One error matrix at a time."""
    w = w.float()

    def quad(e: Tensor) -> Tensor:
        return quadratic_error(e if order is None else e[:, order], h, diag)

    den = quad(w)
    num = quad(w - dequantize_weight(q, scale, zero, group_size))
    num_rtn = quad(w - fake_quantize(w, grid.bits, group_size, grid.symmetric))
    return {"rel_error": float(num / den) if den > 0 else float(num),
            "rtn_rel_error": float(num_rtn / den) if den > 0 else float(num_rtn)}


@torch.no_grad()
def gptq_quantize_weight(w: Tensor, H: Tensor, bits: int = 4, group_size: int | None = 128,
                         symmetric: bool = True, damp: float = 0.01, act_order: bool | str = True,
                         block_size: int = 128, overwrite_h: bool = False) -> tuple[Tensor, Tensor, Tensor | None, dict[str, Any]]:
    """GPTQ one layer: ``w`` [out, in], Hessian ``H`` [in, in] -> ``(q, scale, zero, stats)``.

    ``q`` [out, in], ``scale``/``zero`` [out, n_groups] are on the grid of
    :func:`compress.quantize.quantize_weight` (same dtypes), so :func:`compress.quantize.dequantize_weight`
    turns them into the quantized weight. ``stats``: ``rel_error`` (``||(W - Q) X||^2 / ||W X||^2``),
    ``rtn_rel_error`` (the same for plain RTN, for comparison), ``dead_columns``, ``damp`` (after retries),
    ``act_order`` (the order used).

    ``act_order="auto"`` runs both orders and keeps the one with the lower ``rel_error``: with groups,
    act-order's static group scales are fixed before any update, so on layers with a few huge input
    channels (the "massive activations" of late down_proj layers) the updates push weights past their
    group's range and get clipped, and the original order wins there.

    Memory: one ``[in, in]`` matrix besides ``H`` (see :mod:`compress.hessian`); with ``overwrite_h`` none: the
    work happens inside a float32 ``H``, which is garbage afterwards (:func:`gptq_block` passes the Hessian it
    took from the statistics).
    """
    if act_order == "auto":  # the first run works on a copy: the second needs H
        runs = [gptq_quantize_weight(w, H, bits, group_size, symmetric, damp, order, block_size,
                                     overwrite_h=overwrite_h and not order) for order in (True, False)]
        return min(runs, key=lambda r: r[3]["rel_error"])
    if not isinstance(act_order, bool):
        raise ValueError(f"gptq.act_order must be true, false or 'auto', got {act_order!r}")
    _check_gptq_args(w, H, bits, group_size, damp, block_size)
    n_in = w.shape[1]
    gs = n_in if group_size is None else group_size
    grid = _Grid(bits, symmetric, gs, static=act_order)  # act-order fixes groups up front: plain layout
    h = H.detach().to(torch.float32, copy=not overwrite_h)  # the one [in, in] matrix held here
    W, dead = _drop_dead_inputs(w, h)
    scale, zero = _initial_qparams(W, grid)
    perm = torch.argsort(torch.diagonal(h), descending=True) if act_order else None
    if perm is not None:
        permute_symmetric_(h, perm)
    Hinv, diag, used_damp = inverse_cholesky_(h, damp, tries=4, method="gptq")  # Hinv is h on CPU
    if perm is not None:
        W = W[:, perm]  # processing order (the unpermuted copy goes)
    groups = (perm if perm is not None else torch.arange(n_in, device=W.device)) // gs
    q = _gptq_columns(W, Hinv, groups, scale, zero, grid, block_size)
    del W, Hinv
    if perm is not None:
        q = q[:, torch.argsort(perm)]
    zero_q = None if zero is None else zero.to(torch.uint8)  # the dtypes of quantize.quantize_weight
    diag[dead[perm] if perm is not None else dead] = 0.0  # the Hessian as given: dead inputs add no error
    stats: dict[str, Any] = _error_stats(w, q, scale, zero_q, grid, group_size, h, diag, perm)
    stats.update(dead_columns=int(dead.sum()), damp=used_damp, act_order=act_order)
    return q, scale, zero_q, stats


def _block_prefix(model: nn.Module, block: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is block:
            return name
    raise ValueError("block not found in model")


@torch.no_grad()
def gptq_block(block: nn.Module, stats: dict[str, InputStats], prefix: str, bits: int = 4,
               group_size: int | None = 128, symmetric: bool = True, damp: float = 0.01,
               act_order: bool | str = True, block_size: int = 128) -> dict[str, tuple]:
    """GPTQ the linears of one decoder ``block`` named in ``stats`` (its calibration statistics), in place.

    Returns ``{f"{prefix}.{name}": (q, scale, zero, stats)}`` as :func:`gptq_model` does (the per-block step of
    both :func:`gptq_model` and :mod:`compress.streamed`).
    """
    results: dict[str, tuple] = {}
    for name, st in stats.items():
        linear = block.get_submodule(name)
        start = time.perf_counter()
        q, scale, zero, info = gptq_quantize_weight(linear.weight, st.take_hessian(), bits, group_size, symmetric,
                                                    damp, act_order, block_size, overwrite_h=True)
        linear.weight.copy_(dequantize_weight(q, scale, zero, group_size, linear.weight.dtype))
        info["seconds"] = time.perf_counter() - start
        results[f"{prefix}.{name}"] = (q, scale, zero, info)
        log.debug("gptq %s.%s: rel err %.4g (rtn %.4g)", prefix, name, info["rel_error"], info["rtn_rel_error"])
    return results


@torch.no_grad()
def gptq_model(model: nn.Module, batches: Tensor, bits: int = 4, group_size: int | None = 128,
               symmetric: bool = True, damp: float = 0.01, act_order: bool | str = True, block_size: int = 128,
               skip: tuple[str, ...] = ("lm_head",), batch_size: int = 8) -> dict[str, tuple]:
    """GPTQ every ``nn.Linear`` of the decoder blocks, block by block, on calibration ``batches`` [n, T] long.

    Weights are overwritten in place with their dequantized values (in their own dtype). Returns
    ``{qualified name: (q, scale, zero, stats)}`` as :func:`gptq_quantize_weight` returns them, with
    ``stats["seconds"]`` added. Raises ValueError before any work when ``group_size`` does not divide
    some layer's input dimension. ``act_order``: see :func:`gptq_quantize_weight`.
    """
    from compress.calibrate import decoder_blocks

    def keep(name: str, _m: nn.Linear) -> bool:
        return name.rsplit(".", 1)[-1] not in skip

    if act_order not in (True, False, "auto"):
        raise ValueError(f"gptq.act_order must be true, false or 'auto', got {act_order!r}")
    blocks = decoder_blocks(model)
    check_model_quant_args([(n, m) for b in blocks for n, m in b.named_modules()
                            if isinstance(m, nn.Linear) and keep(n, m)], bits, group_size)
    results: dict[str, tuple] = {}
    bar = tqdm(total=len(blocks), desc="gptq", unit="block")

    def compress_block(i: int, block: nn.Module, stats: dict[str, InputStats]) -> None:
        results.update(gptq_block(block, stats, _block_prefix(model, block), bits, group_size, symmetric, damp,
                                  act_order, block_size))
        bar.update(1)

    try:
        run_sequential(model, batches, compress_block, linear_filter=keep, batch_size=batch_size)
    finally:
        bar.close()
    if results:
        errs = [r[3]["rel_error"] for r in results.values()]
        rtn = [r[3]["rtn_rel_error"] for r in results.values()]
        n_ao = sum(bool(r[3]["act_order"]) for r in results.values())
        log.info("gptq: int%d %s %s act_order=%s (used on %d/%d layers), mean rel output error %.4g (rtn %.4g)",
                 bits, "per-channel" if group_size is None else f"g{group_size}", "sym" if symmetric else "asym",
                 act_order, n_ao, len(results), sum(errs) / len(errs), sum(rtn) / len(rtn))
    return results

