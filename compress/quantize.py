"""Round-to-nearest (RTN) weight quantization: the int8 per-channel baseline and a generic grouped RTN.

Each output row ``w[o, :]`` gets one fp32 scale ``s[o] = max|w[o, :]| / 127`` and integer codes
``q = round(w / s)`` in [-127, 127]; the weight is stored as ``q`` (int8) and ``s`` (fp32) and used as
``q * s``. This is the RTN baseline of Dettmers et al. 2022 ("LLM.int8()") and Frantar et al. 2023
("GPTQ", Table 1): no calibration data, no outlier handling, worst-case error ``s / 2`` per weight.

:func:`quantize_model` writes the dequantized values back into the model, so evaluating the model
afterwards measures exactly what the int8 artifact (see :mod:`compress.artifact`) holds.

The generic RTN below (:func:`quantize_weight`, :func:`fake_quantize`, :func:`quantize_model_rtn`) covers
2..8 bits, per-channel or grouped along the input dimension (the ``g128`` of GPTQ/AWQ papers), symmetric
or asymmetric with an integer zero point. It is also the grid :mod:`compress.gptq` and :mod:`compress.awq`
round onto, so their codes dequantize with :func:`dequantize_weight`. Hand-written: it is a few lines of
tensor code, and llm-compressor (which has one) is far too heavy a dependency for it.

Run: ``python -c "from compress.quantize import quantize_model; ..."`` — normally via ``eakd compress``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from compress.linears import target_linears

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


# --- generic RTN: any bit width, per-channel or grouped, symmetric or asymmetric ----------------------
#
# Grid conventions (those of the GPTQ reference code and compressed-tensors, so codes port over):
# * symmetric:  q = clamp(round(w / s), -2^(b-1), 2^(b-1) - 1) stored as int8, s = max|w| / ((2^b - 1) / 2),
#   no zero point; w ~ q * s. (The full signed range: one more level than the [-127, 127] grid above.)
# * asymmetric: q = clamp(round(w / s) + z, 0, 2^b - 1) stored as uint8 (unsigned: 8-bit codes reach
#   255), s = (max(w, 0) - min(w, 0)) / (2^b - 1), integer zero point z = round(-min / s) stored as uint8;
#   w ~ (q - z) * s.
# ``scale``/``zero`` are [out, n_groups]; group g covers input columns [g * group_size, (g + 1) * group_size),
# and ``group_size=None`` means one group per output row (per-channel).


def check_quant_args(bits: int, group_size: int | None, in_features: int | None = None) -> None:
    """Raise ValueError unless ``bits`` is in [2, 8] and ``group_size`` (if any) divides ``in_features``."""
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"quantize.bits must be an int in [2, 8], got {bits!r}")
    if group_size is None:
        return
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"quantize.group_size must be a positive int or None (per channel), got {group_size!r}")
    if in_features is not None and in_features % group_size != 0:
        raise ValueError(f"quantize.group_size={group_size} does not divide the input dimension {in_features}; "
                         "pick a divisor of every layer's in_features or group_size=None (per channel)")


def _grouped(w: Tensor, group_size: int | None) -> Tensor:
    """[out, in] -> [out, n_groups, group_size] (a view)."""
    return w.reshape(w.shape[0], 1 if group_size is None else -1, w.shape[1] if group_size is None else group_size)


def compute_qparams(w: Tensor, bits: int, symmetric: bool) -> tuple[Tensor, Tensor | None]:
    """Scale and zero point for each row of ``w`` [..., n] -> ``(scale fp32 [...], zero fp32 [...] | None)``.

    ``zero`` holds integers (as floats) in [0, 2^bits - 1]; it is None when ``symmetric``. All-zero rows
    get scale 1 so they quantize to exact zeros.
    """
    w = w.to(torch.float32)
    if symmetric:
        amax = w.abs().amax(dim=-1)
        scale = amax / ((2 ** bits - 1) / 2)
        return torch.where(amax > 0, scale, torch.ones_like(scale)), None
    lo = w.amin(dim=-1).clamp(max=0.0)  # the range always holds 0, so zeros (pruned weights) stay exact
    hi = w.amax(dim=-1).clamp(min=0.0)
    scale = (hi - lo) / (2 ** bits - 1)
    scale = torch.where(hi > lo, scale, torch.ones_like(scale))
    zero = torch.clamp(torch.round(-lo / scale), 0, 2 ** bits - 1)
    return scale, zero


def quantize_to_codes(w: Tensor, scale: Tensor, zero: Tensor | None, bits: int) -> Tensor:
    """Codes of ``w`` [..., n] on the grid ``scale``/``zero`` [...] (fp32 integers; see the conventions above)."""
    x = torch.round(w.to(torch.float32) / scale[..., None])
    if zero is None:
        return torch.clamp(x, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return torch.clamp(x + zero[..., None], 0, 2 ** bits - 1)


def codes_to_weight(codes: Tensor, scale: Tensor, zero: Tensor | None) -> Tensor:
    """Inverse of :func:`quantize_to_codes`: ``(codes - zero) * scale`` in fp32, shapes as there."""
    codes = codes.to(torch.float32)
    if zero is not None:
        codes = codes - zero.to(torch.float32)[..., None]
    return codes * scale.to(torch.float32)[..., None]


def quantize_weight(w: Tensor, bits: int = 4, group_size: int | None = 128,
                    symmetric: bool = True) -> tuple[Tensor, Tensor, Tensor | None]:
    """RTN-quantize ``w`` [out, in] -> ``(q [out, in], scale fp32 [out, n_groups], zero [out, n_groups] | None)``.

    ``q`` is int8 in [-2^(b-1), 2^(b-1) - 1] when ``symmetric`` (``zero`` None), else uint8 in [0, 2^b - 1]
    with a uint8 ``zero``. ``n_groups = in / group_size`` (1 when ``group_size`` is None). Guarantees
    ``|w - dequantize_weight(...)| <= scale / 2`` within each group.
    """
    if w.dim() != 2:
        raise ValueError(f"quantize_weight expects a 2-D [out, in] weight, got shape {tuple(w.shape)}")
    check_quant_args(bits, group_size, w.shape[1])
    wg = _grouped(w.detach().to(torch.float32), group_size)
    scale, zero = compute_qparams(wg, bits, symmetric)
    codes = quantize_to_codes(wg, scale, zero, bits).reshape(w.shape)
    if zero is None:
        return codes.to(torch.int8), scale, None
    return codes.to(torch.uint8), scale, zero.to(torch.uint8)


def dequantize_weight(q: Tensor, scale: Tensor, zero: Tensor | None, group_size: int | None,
                      dtype: torch.dtype = torch.float32) -> Tensor:
    """``q`` [out, in], ``scale``/``zero`` [out, n_groups] (layout of :func:`quantize_weight`) -> weight [out, in]."""
    w = codes_to_weight(_grouped(q, group_size), scale, zero)
    return w.reshape(q.shape).to(dtype)


def fake_quantize(w: Tensor, bits: int = 4, group_size: int | None = 128, symmetric: bool = True) -> Tensor:
    """``dequantize_weight(quantize_weight(w))`` [out, in] in ``w``'s dtype: what the quantized layer computes with."""
    q, scale, zero = quantize_weight(w, bits, group_size, symmetric)
    return dequantize_weight(q, scale, zero, group_size, w.dtype)


def check_model_quant_args(linears: list[tuple[str, nn.Linear]], bits: int, group_size: int | None) -> None:
    """Validate ``bits``/``group_size`` against every layer before anything is modified (fail fast)."""
    check_quant_args(bits, group_size)
    for name, linear in linears:
        try:
            check_quant_args(bits, group_size, linear.in_features)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None


@torch.no_grad()
def quantize_model_rtn(model: nn.Module, bits: int = 4, group_size: int | None = 128, symmetric: bool = True,
                       skip: tuple[str, ...] = ("lm_head",)) -> dict[str, tuple[Tensor, Tensor, Tensor | None]]:
    """RTN every :func:`compress.target_linears` layer; returns ``{name: (q, scale, zero)}``.

    The weights are overwritten in place with their dequantized values (in their own dtype), so the
    model computes exactly what the codes encode. Raises ValueError before touching any layer when
    ``group_size`` does not divide some layer's input dimension.
    """
    linears = target_linears(model, skip=skip)
    check_model_quant_args(linears, bits, group_size)
    out: dict[str, tuple[Tensor, Tensor, Tensor | None]] = {}
    for name, linear in linears:
        q, scale, zero = quantize_weight(linear.weight, bits, group_size, symmetric)
        linear.weight.copy_(dequantize_weight(q, scale, zero, group_size, linear.weight.dtype))
        out[name] = (q, scale, zero)
    log.info("rtn: int%d %s %s, quantized %d linear layers", bits,
             "per-channel" if group_size is None else f"g{group_size}", "sym" if symmetric else "asym", len(out))
    return out


def relative_output_error(w: Tensor, w_hat: Tensor, gram: Tensor) -> float:
    """``||W X - W_hat X||^2 / ||W X||^2`` from the Gram ``X X^T`` [in, in] (or any multiple of it).

    ``w``, ``w_hat`` [out, in]. Exact over every calibration token, without keeping the tokens.
    """
    w, w_hat, gram = w.to(torch.float32), w_hat.to(torch.float32), gram.to(torch.float32)
    d = w - w_hat
    num = ((d @ gram) * d).sum()
    den = ((w @ gram) * w).sum()
    return float(num / den) if den > 0 else float(num)
