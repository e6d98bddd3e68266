"""Round-to-nearest (RTN) symmetric per-output-channel int8 weight quantization.

Each output row ``w[o, :]`` gets one fp32 scale ``s[o] = max|w[o, :]| / 127`` and integer codes
``q = round(w / s)`` in [-127, 127]; the weight is stored as ``q`` (int8) and ``s`` (fp32) and used as
``q * s``. This is the RTN baseline of Dettmers et al. 2022 ("LLM.int8()") and Frantar et al. 2023
("GPTQ", Table 1): no calibration data, no outlier handling, worst-case error ``s / 2`` per weight.

:func:`quantize_model` writes the dequantized values back into the model, so evaluating the model
afterwards measures exactly what the int8 artifact (see :mod:`compress.artifact`) holds.

Run: ``python -c "from compress.quantize import quantize_model; ..."`` — normally via ``eakd compress``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from compress import target_linears

log = logging.getLogger(__name__)

QMAX = 127
SCHEME = "rtn-sym-per-channel"
# 24-bit fp32 mantissa minus 7 bits for |q| <= 127: with the scale rounded to this many bits, q * s is
# exact in fp32 and re-quantizing dequantized weights returns the same (q, s), so save -> load is exact.
_SCALE_MANTISSA_BITS = 17


def _round_scale_up(scale: Tensor) -> Tensor:
    """Round positive fp32 ``scale`` [out] up to ``_SCALE_MANTISSA_BITS`` significant bits."""
    mantissa, exponent = torch.frexp(scale)  # scale = mantissa * 2**exponent, mantissa in [0.5, 1)
    step = 2.0 ** _SCALE_MANTISSA_BITS
    # Rounding up (not to nearest) keeps max|w| / s <= 127, so no weight is clipped.
    return torch.ldexp(torch.ceil(mantissa * step) / step, exponent)


def quantize_rtn_int8(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Quantize ``weight`` [out, in] to ``(q int8 [out, in], scale fp32 [out])``.

    Guarantees ``|weight - q * scale[:, None]| <= scale / 2`` elementwise. All-zero rows get scale 1
    (their codes are 0, so they dequantize exactly).
    """
    if weight.dim() != 2:
        raise ValueError(f"quantize_rtn_int8 expects a 2-D [out, in] weight, got shape {tuple(weight.shape)}")
    w = weight.detach().to(torch.float32)
    amax = w.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / QMAX, torch.ones_like(amax))
    scale = _round_scale_up(scale)
    q = torch.clamp(torch.round(w / scale[:, None]), -QMAX, QMAX).to(torch.int8)
    return q, scale


def dequantize(q: Tensor, scale: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """``q`` int8 [out, in], ``scale`` fp32 [out] -> weight [out, in] in ``dtype``."""
    return (q.to(torch.float32) * scale.to(torch.float32)[:, None]).to(dtype)


@torch.no_grad()
def quantize_model(model: nn.Module, skip: tuple[str, ...] = ("lm_head",),
                   names: Iterable[str] | None = None) -> dict[str, tuple[Tensor, Tensor]]:
    """RTN-int8 every decoder ``nn.Linear`` (or only ``names``); returns ``{name: (q, scale)}``.

    The model's weights are overwritten in place with the dequantized values (in their own dtype).
    """
    wanted = set(names) if names is not None else None
    out: dict[str, tuple[Tensor, Tensor]] = {}
    worst = 0.0
    for name, linear in target_linears(model, skip=skip):
        if wanted is not None and name not in wanted:
            continue
        q, scale = quantize_rtn_int8(linear.weight)
        deq = dequantize(q, scale, linear.weight.dtype)
        err = (linear.weight.float() - deq.float()).abs().max().item()
        worst = max(worst, err)
        linear.weight.copy_(deq)
        out[name] = (q, scale)
    log.info("rtn_int8: quantized %d linear layers (max abs weight error %.3g)", len(out), worst)
    return out


def is_on_int8_grid(weight: Tensor) -> bool:
    """True when ``weight`` [out, in] already equals its own RTN-int8 dequantization (re-saving is exact)."""
    q, scale = quantize_rtn_int8(weight)
    return bool(torch.equal(dequantize(q, scale, weight.dtype), weight.detach()))
