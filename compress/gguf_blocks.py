"""ggml weight blocks for :mod:`compress.gguf`: eakd integer codes packed bit-exactly, floats quantized.

ggml stores a quantized matrix row by row, each row cut into blocks of 32 weights along the input
dimension (``ggml-common.h``; ``gguf.quants`` in the ``gguf`` package reads and writes the same bytes):

* ``Q8_0`` (34 bytes): f16 ``d``, then 32 int8 ``q``; ``w = q * d``.
* ``Q4_0`` (18 bytes): f16 ``d``, then 16 bytes of nibbles, byte ``j`` holding ``q[j]`` (low) and
  ``q[j + 16]`` (high), ``q`` in [0, 15]; ``w = (q - 8) * d``.
* ``Q4_1`` (20 bytes): f16 ``d``, f16 ``m``, then the nibbles as in Q4_0; ``w = q * d + m``.

eakd's grouped codes (:mod:`compress.quantize`) are ``w = (q - z) * s`` with one fp32 scale per group of
``group_size`` input columns (or per row). When every 32-block lies inside one group (``group_size`` a
multiple of 32, or per-channel) and the codes fit the block type's integers, the codes carry over
unchanged (:func:`pack_codes`): symmetric int2-4 -> Q4_0 (``q + 8``), symmetric int2-8 -> Q8_0, any int2-4
-> Q4_1 (``d = s``, ``m = -z * s``). Only the scale is rounded, fp32 -> f16 (relative error <= 2^-11, or
worse for scales below f16's normal range, 6.1e-5); :func:`pack_codes` measures it. Anything else is
dequantized and re-quantized from floats with ``gguf.quants.quantize`` (llama.cpp's reference rounding,
:func:`quantize_floats`). Hand-written because ``gguf.quants`` only quantizes floats: re-quantizing eakd's
dequantized weights would re-derive each block's scale from its own max and move weights off the grid
GPTQ/AWQ chose.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

BLOCK = 32  # weights per block in every type here


@dataclass(frozen=True)
class CodeGrid:
    """An eakd quantized linear: ``codes`` [out, in] (int16; signed when ``zero`` is None), ``scale`` fp32
    [out, n_groups] and ``zero`` [out, n_groups] or None, ``group_size`` None meaning one group per row."""

    codes: Tensor
    scale: Tensor
    zero: Tensor | None
    bits: int
    group_size: int | None

    def rows(self, order: Tensor) -> "CodeGrid":
        """The same grid with its output rows reordered by ``order`` [out] (scales and zeros follow)."""
        return CodeGrid(self.codes[order], self.scale[order], None if self.zero is None else self.zero[order],
                        self.bits, self.group_size)

    def dequantize(self) -> Tensor:
        """fp32 weight [out, in] (what eakd computes with)."""
        from compress.quantize import dequantize_weight

        return dequantize_weight(self.codes, self.scale, self.zero, self.group_size, torch.float32)


def exact_reason(grid: CodeGrid, qtype: str) -> str | None:
    """None when ``grid``'s codes map onto ``qtype`` ("Q4_0", "Q4_1", "Q8_0") unchanged; else why not."""
    if qtype not in ("Q4_0", "Q4_1", "Q8_0"):
        return f"{qtype} is a float type"
    in_features = grid.codes.shape[1]
    if in_features % BLOCK:
        return f"{in_features} input columns are not a multiple of the {BLOCK}-weight block"
    if grid.group_size is not None and grid.group_size % BLOCK:
        return f"group size {grid.group_size} is not a multiple of {BLOCK} (a block would need two scales)"
    symmetric = grid.zero is None
    if qtype == "Q4_0" and not (symmetric and grid.bits <= 4):
        return f"Q4_0 holds symmetric codes of <= 4 bits, these are {'symmetric' if symmetric else 'asymmetric'} int{grid.bits}"
    if qtype == "Q8_0" and not (symmetric and grid.bits <= 8):
        return f"Q8_0 holds symmetric codes, these are asymmetric int{grid.bits}"
    if qtype == "Q4_1" and grid.bits > 4:
        return f"Q4_1 holds codes of <= 4 bits, these are int{grid.bits}"
    return None


def _per_block(t: Tensor, group_size: int | None, in_features: int) -> Tensor:
    """Per-group values [out, n_groups] -> one per 32-block [out, in / 32]."""
    repeat = in_features // BLOCK if group_size is None else group_size // BLOCK
    return t.repeat_interleave(repeat, dim=1)


def _f16_bytes(x: Tensor) -> np.ndarray:
    """fp32 [out, n_blocks] -> uint8 [out, n_blocks, 2] (little-endian f16)."""
    return x.to(torch.float16).numpy().view(np.uint8).reshape(*x.shape, 2)


def _nibbles(q: Tensor) -> np.ndarray:
    """Codes [out, n_blocks, 32] in [0, 15] -> uint8 [out, n_blocks, 16]: byte j = q[j] | q[j + 16] << 4."""
    u = q.to(torch.uint8)
    return (u[..., :16] | (u[..., 16:] << 4)).numpy()


def pack_codes(grid: CodeGrid, qtype: str) -> tuple[np.ndarray, dict[str, float | int]]:
    """Pack ``grid`` as ``qtype`` blocks without touching the codes -> (uint8 [out, in / 32 * bytes per
    block], scale record). The record counts the scales f16 holds exactly and the largest relative and
    absolute weight change the f16 rounding causes. Callers check :func:`exact_reason` first."""
    reason = exact_reason(grid, qtype)
    if reason is not None:
        raise ValueError(f"codes do not map onto {qtype}: {reason}")
    out, in_features = grid.codes.shape
    n_blocks = in_features // BLOCK
    d = _per_block(grid.scale.to(torch.float32), grid.group_size, in_features)  # [out, n_blocks]
    q = grid.codes.to(torch.int16).reshape(out, n_blocks, BLOCK)
    if grid.zero is not None:
        z = _per_block(grid.zero.to(torch.float32), grid.group_size, in_features)
    if qtype == "Q8_0":
        body = [_f16_bytes(d), q.to(torch.int8).numpy().view(np.uint8)]
    elif qtype == "Q4_0":
        body = [_f16_bytes(d), _nibbles(q + 8)]
    else:  # Q4_1: w = q * d + m
        unsigned, m = (q + 8, -8 * d) if grid.zero is None else (q, -z * d)
        body = [_f16_bytes(d), _f16_bytes(m), _nibbles(unsigned)]
    packed = np.concatenate(body, axis=-1).reshape(out, -1)
    scale = grid.scale.to(torch.float32)
    rounded = scale.to(torch.float16).to(torch.float32)
    exact = rounded == scale
    rel = ((rounded - scale).abs() / scale.abs().clamp_min(torch.finfo(torch.float32).tiny)).max()
    change = (dequantize_blocks(packed, qtype, grid.codes.shape) - grid.dequantize()).abs().max()
    return packed, {"scales": scale.numel(), "scales_exact_in_f16": int(exact.sum()),
                    "max_rel_scale_rounding": float(rel), "max_abs_weight_change": float(change)}


def quantize_floats(w: Tensor, qtype: str) -> np.ndarray:
    """fp32 weight [out, in] -> ``qtype`` bytes (uint8 [out, in / 32 * bytes]) or F16/BF16/F32 values
    [out, in], with llama.cpp's reference rounding (``gguf.quants.quantize``)."""
    import gguf

    if qtype == "F32":
        return w.to(torch.float32).numpy()
    if qtype == "F16":
        return w.to(torch.float16).numpy()
    return gguf.quants.quantize(w.to(torch.float32).numpy(), gguf.GGMLQuantizationType[qtype])


def dequantize_blocks(data: np.ndarray, qtype: str, shape: tuple[int, int]) -> Tensor:
    """Inverse of the packing: ``qtype`` data -> fp32 [out, in] (``gguf.quants.dequantize``)."""
    import gguf

    values = gguf.quants.dequantize(np.ascontiguousarray(data), gguf.GGMLQuantizationType[qtype])
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).reshape(shape)
