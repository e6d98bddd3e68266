"""Quantization-aware fine-tuning (QAF): a frozen quantized base plus trained low-rank adapters (QLoRA/LoftQ).

QAT (:mod:`compress.qat`) trains every weight through the quantizer; QAF keeps the base weights frozen on
their integer grid and trains only a LoRA pair ``B [out, r] @ A [r, in]`` per linear beside them (QLoRA,
Dettmers et al. 2023, arXiv 2305.14314), so a layer computes ``dequant(q) x + B A x``. The adapters start
from the quantization error, not from zero (LoftQ, Li et al. 2023, arXiv 2310.08659): alternate ``T`` times

    q      <- RTN(W - B A)                 (the grid the base will keep)
    B, A   <- best rank-r fit of W - dequant(q)   (truncated SVD, sqrt(S) on each side)

so before any training ``dequant(q) + B A`` is already closer to W than ``dequant(q)`` alone (the best of the
``T`` iterates is kept: at 2-3 bits the alternation can move away again). ``T = 0`` is
QLoRA's own start: plain RTN codes, ``B = 0`` and a small random ``A``. Training signal: forward KL from the
pre-quantization model on the calibration windows, through the same loop as recovery distillation
(:func:`compress.recover.recover`), with every other parameter frozen.

Stored (see :mod:`compress.artifact`): the base's codes exactly as for RTN, plus ``<name>.lora_A`` (bf16
[r, in]) and ``<name>.lora_B`` (bf16 [out, r]) with the manifest entry's ``lora_rank``. The trained pair is
rounded to bf16 before the model is measured, and loading rebuilds the weight as ``dequant(q) + B @ A`` with
the same fp32 operation, so the artifact reloads bit for bit to what was measured.

Hand-written rather than peft's LoftQ: peft's ``LoftQConfig`` quantizes through bitsandbytes, which needs
CUDA and uses NF4, not the grid eakd's artifact, export and evaluation share. The adapter is a
``torch.nn.utils.parametrize`` term on each weight (not a peft wrapper), so every layer keeps the name the
rest of :mod:`compress` addresses it by.

Run: a ``qaf`` step of ``eakd compress`` (``bits``, ``group_size``, ``symmetric``, ``lora_rank``,
``loftq_iters``, ``recover_steps`` = training steps, ``recover_lr``), or ``python bench/compress_qat.py``.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from compress.linears import target_linears
from compress.quantize import check_model_quant_args, dequantize_weight, quantize_weight
from compress.recover import recover

log = logging.getLogger(__name__)


def loftq_init(w: Tensor, bits: int, group_size: int | None, symmetric: bool, rank: int,
               iters: int = 1, seed: int = 0) -> tuple[Tensor, Tensor, Tensor | None, Tensor, Tensor]:
    """LoftQ start for one weight ``w`` [out, in] -> ``(q, scale, zero, A [r, in], B [out, r])``, all fp32 but
    the codes (layout of :func:`compress.quantize.quantize_weight`), with ``w ~ dequant(q) + B @ A``.

    ``iters = 0``: QLoRA's start (RTN codes, ``B = 0``, ``A`` ~ N(0, 1/in)), so the product starts at zero.
    Otherwise the iterate with the lowest ``||w - dequant(q) - B A||`` of the ``iters`` is returned.
    """
    if rank < 1 or rank > min(w.shape):
        raise ValueError(f"lora_rank must be in 1..{min(w.shape)} for a {tuple(w.shape)} weight, got {rank}")
    if iters < 0:
        raise ValueError(f"loftq_iters must be >= 0, got {iters}")
    w = w.detach().to(torch.float32)
    if iters == 0:
        q, scale, zero = quantize_weight(w, bits, group_size, symmetric)
        gen = torch.Generator().manual_seed(seed)
        a = torch.randn(rank, w.shape[1], generator=gen) / w.shape[1] ** 0.5
        return q, scale, zero, a, torch.zeros(w.shape[0], rank)
    low = torch.zeros_like(w)
    best, best_err = None, float("inf")
    for _ in range(iters):
        q, scale, zero = quantize_weight(w - low, bits, group_size, symmetric)
        residual = w - dequantize_weight(q, scale, zero, group_size)
        u, s, vh = torch.linalg.svd(residual, full_matrices=False)
        root = s[:rank].sqrt()
        b, a = u[:, :rank] * root, root[:, None] * vh[:rank]
        low = b @ a
        err = float((residual - low).norm())
        if err < best_err:  # the alternation is not monotone at 2-3 bits (the grid moves with W - BA): keep the best
            best, best_err = (q, scale, zero, a.contiguous(), b.contiguous()), err
    return best


def merged_weight(q: Tensor, scale: Tensor, zero: Tensor | None, group_size: int | None, a: Tensor,
                  b: Tensor) -> Tensor:
    """``dequant(q) + B @ A`` [out, in] fp32: the one expression training, saving and loading all use."""
    return dequantize_weight(q, scale, zero, group_size, torch.float32) + b @ a


class LoRAOnFrozen(nn.Module):
    """Parametrization ``w -> base + B @ A``: ``base`` [out, in] is a frozen buffer (the dequantized codes),
    ``A`` [r, in] and ``B`` [out, r] are the trained parameters; the original weight is ignored."""

    def __init__(self, base: Tensor, a: Tensor, b: Tensor):
        super().__init__()
        self.register_buffer("base", base)
        self.a, self.b = nn.Parameter(a.clone()), nn.Parameter(b.clone())

    def forward(self, w: Tensor) -> Tensor:
        return self.base + self.b @ self.a


def qaf_model(model: nn.Module, teacher: nn.Module, batches: Tensor, bits: int = 4, group_size: int | None = 128,
              symmetric: bool = True, rank: int = 16, loftq_iters: int = 1, steps: int = 50, lr: float = 1e-4,
              batch_size: int = 4, seed: int = 0) -> tuple[dict[str, tuple], dict]:
    """QAF ``model`` in place against ``teacher`` on ``batches`` [n, T] ids.

    Returns ``({name: (q, scale, zero, A, B)}, training stats of compress.recover.recover plus the LoftQ
    start's relative weight error)``. Each target linear's weight is left as :func:`merged_weight` of its
    entry, bit for bit what the artifact reloads to; every parameter's ``requires_grad`` is restored.
    """
    if teacher is None:
        raise ValueError("qaf needs the pre-quantization model as its teacher")
    if steps < 1:
        raise ValueError(f"qaf needs recover_steps >= 1 (the adapters' training steps), got {steps}")
    linears = target_linears(model)
    check_model_quant_args(linears, bits, group_size)
    trainable = {name: p.requires_grad for name, p in model.named_parameters()}
    model.requires_grad_(False)
    entries: dict[str, tuple] = {}
    err_rtn = err_start = total = 0.0
    try:
        for i, (name, linear) in enumerate(linears):
            w = linear.weight.detach().to(torch.float32)
            q, scale, zero, a, b = loftq_init(w, bits, group_size, symmetric, rank, loftq_iters, seed + i)
            base = dequantize_weight(q, scale, zero, group_size, torch.float32)
            rtn = dequantize_weight(*quantize_weight(w, bits, group_size, symmetric), group_size, torch.float32)
            err_rtn += float((w - rtn).square().sum())
            err_start += float((w - base - b @ a).square().sum())
            total += float(w.square().sum())
            parametrize.register_parametrization(linear, "weight", LoRAOnFrozen(base, a, b))
            entries[name] = (q, scale, zero)
        stats = recover(model, teacher, batches, steps, lr, batch_size=batch_size, seed=seed)
    finally:
        codes: dict[str, tuple] = {}
        for name, linear in linears:
            if not parametrize.is_parametrized(linear, "weight"):
                continue
            term = linear.parametrizations.weight[0]
            # rounded to bf16 values, as stored: half the bytes of fp32, and what is measured is what is saved
            a, b = (term.a.detach().to(torch.bfloat16).float(), term.b.detach().to(torch.bfloat16).float())
            parametrize.remove_parametrizations(linear, "weight", leave_parametrized=False)
            q, scale, zero = entries[name]
            with torch.no_grad():
                linear.weight.copy_(merged_weight(q, scale, zero, group_size, a, b).to(linear.weight.dtype))
            codes[name] = (q, scale, zero, a, b)
        for name, p in model.named_parameters():
            p.requires_grad_(trainable.get(name, True))
    stats["weight_error_rtn"] = round((err_rtn / total) ** 0.5, 6)
    stats["weight_error_start"] = round((err_start / total) ** 0.5, 6)
    log.info("qaf: int%d %s + rank-%d adapters (LoftQ x%d: relative weight error %.4f vs RTN %.4f), %d steps, "
             "KD %.4f -> %.4f", bits, "per-channel" if group_size is None else f"g{group_size}", rank, loftq_iters,
             stats["weight_error_start"], stats["weight_error_rtn"], steps, stats["loss_first"], stats["loss_last"])
    return codes, stats
