"""Quantization-aware training (QAT): train the model through its own quantizer, then quantize for real.

Plain post-training RTN rounds each weight once and lives with the error. QAT (Jacob et al. 2018,
arXiv 1712.05877; for LLMs, LLM-QAT, Liu et al. 2023, arXiv 2305.17888, which distils from the
full-precision model) inserts fake quantization into the forward pass — every decoder linear computes with
``fake_quantize(w)``, exactly the grid :mod:`compress.quantize` writes — and trains the latent fp32 weights
with the straight-through estimator (the gradient passes through the rounding as if it were the identity).
The weights learn to sit where rounding hurts the outputs least. Training signal: forward KL from the
pre-quantization model on the calibration windows, the same recipe and loop as recovery distillation
(:func:`compress.recover.recover`). Afterwards the fake quantizers are removed, leaving the latent weights,
and :func:`compress.quantize.quantize_model_rtn` converts them to codes: the artifact holds exactly the
grid the model was trained on.

Hand-written rather than torchao's QAT flow: torchao is not in eakd's lock, its fake-quantizer would use
its own grid (scale rounding, zero points) that eakd's artifact, export and evaluation would then have to
mirror, and the whole mechanism here is a 10-line parametrization around the existing recovery loop.

Run: a ``qat`` step of ``eakd compress`` (``bits``, ``group_size``, ``symmetric``, ``recover_steps`` = QAT
steps, ``recover_lr``), or ``python bench/compress_qat.py``.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from compress.linears import target_linears
from compress.quantize import check_model_quant_args, fake_quantize, quantize_model_rtn
from compress.recover import recover

log = logging.getLogger(__name__)


class FakeQuantSTE(nn.Module):
    """Parametrization ``w [out, in] -> fake_quantize(w)`` in the forward pass, identity in the backward pass."""

    def __init__(self, bits: int, group_size: int | None, symmetric: bool):
        super().__init__()
        self.bits, self.group_size, self.symmetric = bits, group_size, symmetric

    def forward(self, w: Tensor) -> Tensor:
        q = fake_quantize(w.detach(), self.bits, self.group_size, self.symmetric)
        return w + (q - w).detach()  # value q, gradient d/dw = identity (straight-through)


def add_fake_quant(model: nn.Module, bits: int, group_size: int | None, symmetric: bool) -> list[str]:
    """Put a :class:`FakeQuantSTE` on the weight of every :func:`compress.target_linears` layer; returns their
    names. Raises ValueError before touching any layer when ``group_size`` does not divide one."""
    linears = target_linears(model)
    check_model_quant_args(linears, bits, group_size)
    for _, linear in linears:
        parametrize.register_parametrization(linear, "weight", FakeQuantSTE(bits, group_size, symmetric))
    return [name for name, _ in linears]


def remove_fake_quant(model: nn.Module) -> None:
    """Drop every fake quantizer, keeping the latent (unrounded) weights."""
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)


def qat_model(model: nn.Module, teacher: nn.Module, batches: Tensor, bits: int = 4, group_size: int | None = 128,
              symmetric: bool = True, steps: int = 50, lr: float = 2e-5, batch_size: int = 4,
              seed: int = 0) -> tuple[dict[str, tuple], dict]:
    """QAT ``model`` in place against ``teacher`` on ``batches`` [n, T] ids, then RTN it onto the trained grid.

    Returns ``({name: (q, scale, zero)}, training stats of compress.recover.recover)``; the weights are left
    dequantized (what the codes hold), as after :func:`compress.quantize.quantize_model_rtn`.
    """
    if teacher is None:
        raise ValueError("qat needs the pre-quantization model as its teacher")
    add_fake_quant(model, bits, group_size, symmetric)
    try:
        stats = recover(model, teacher, batches, steps, lr, batch_size=batch_size, seed=seed)
    finally:
        remove_fake_quant(model)
    with torch.no_grad():
        codes = quantize_model_rtn(model, bits, group_size, symmetric)
    log.info("qat: int%d %s, %d steps, KD %.4f -> %.4f", bits, "per-channel" if group_size is None else f"g{group_size}",
             steps, stats["loss_first"], stats["loss_last"])
    return codes, stats
