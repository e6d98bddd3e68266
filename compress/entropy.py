"""Entropy coding of quantized weights: how many bits the integer codes really carry, and storing them that way.

Deep Compression (Han et al. 2016, arXiv 1510.00149) ends its pipeline with Huffman coding of the quantized
weights: round-to-nearest codes of a bell-shaped weight distribution are far from uniform (int4 codes near
zero are much more frequent than the extremes), so a variable-length code stores them in fewer bits than
the fixed-width packed format. Measured here per tensor and per model:

* :func:`code_histogram` and :func:`shannon_bits` — the empirical entropy ``H = -sum p log2 p`` of the codes,
  the lower bound for any code that treats weights independently;
* :func:`huffman_lengths` — the optimal prefix code's length per symbol (what Deep Compression stores),
  so ``sum(count * length) / n`` is Huffman's bits per weight (within 1 bit of ``H``, usually far closer);
* :func:`encode_codes` / :func:`decode_codes` — the bytes actually written: the unsigned codes, one per byte,
  compressed with Zstandard (``zstandard``, the well-kept binding; its literals are Huffman-coded and its
  sequences FSE/ANS-coded), stored in the safetensors file as a flat uint8 tensor, so artifacts still
  load from safetensors only. Lossless: decoding gives back exactly the codes.

The Huffman lengths are hand-written (a dozen lines of ``heapq``): they are a measurement, not the storage
path, and no maintained library computes just the lengths.

Run: ``python bench/compress_entropy.py`` (bytes vs packed, load time), or set ``entropy_coding: zstd`` on
an ``rtn``/``gptq``/``awq``/``qat`` step of ``eakd compress``.
"""

from __future__ import annotations

import heapq
import math

import torch
from torch import Tensor

ZSTD_LEVEL = 19  # the codes are written once and read many times: spend the time at save


def unsigned_codes(q: Tensor, bits: int, symmetric: bool) -> Tensor:
    """Codes ``q`` [...] (signed in [-2^(b-1), 2^(b-1)-1] when ``symmetric``, else in [0, 2^b-1]) -> uint8 [...]
    in [0, 2^b - 1] (symmetric codes offset by 2^(b-1))."""
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in 2..8, got {bits}")
    u = q.to(torch.int16) + (2 ** (bits - 1) if symmetric else 0)
    if u.numel() and (int(u.min()) < 0 or int(u.max()) >= 2 ** bits):
        raise ValueError(f"codes out of range for {bits}-bit {'symmetric' if symmetric else 'asymmetric'} "
                         f"quantization: [{int(q.min())}, {int(q.max())}]")
    return u.to(torch.uint8)


def code_histogram(q: Tensor, bits: int, symmetric: bool) -> list[int]:
    """Counts of each of the ``2^bits`` code values in ``q`` [...] (index = unsigned code)."""
    return torch.bincount(unsigned_codes(q, bits, symmetric).flatten().to(torch.int64),
                          minlength=2 ** bits).tolist()


def shannon_bits(counts: list[int]) -> float:
    """Empirical entropy in bits per symbol of a histogram (0 for an empty or one-symbol histogram)."""
    n = sum(counts)
    return 0.0 if n == 0 else -sum(c / n * math.log2(c / n) for c in counts if c)


def huffman_lengths(counts: list[int]) -> list[int]:
    """Optimal prefix-code length per symbol of a histogram (0 for unused symbols; 1 when only one is used).

    Ties are broken by symbol index, so the lengths are deterministic. ``sum(c * l) / sum(c)`` is within
    one bit of :func:`shannon_bits` and never below it.
    """
    heap = [(c, i, [i]) for i, c in enumerate(counts) if c > 0]
    lengths = [0] * len(counts)
    if len(heap) == 1:
        lengths[heap[0][1]] = 1
        return lengths
    heapq.heapify(heap)
    tiebreak = len(counts)
    while len(heap) > 1:
        c1, _, s1 = heapq.heappop(heap)
        c2, _, s2 = heapq.heappop(heap)
        for s in s1 + s2:  # every symbol under the merged node sinks one level
            lengths[s] += 1
        heapq.heappush(heap, (c1 + c2, tiebreak, s1 + s2))
        tiebreak += 1
    return lengths


def huffman_bits(counts: list[int]) -> float:
    """Bits per symbol of the Huffman code of a histogram (table excluded: 2^bits lengths, negligible)."""
    n = sum(counts)
    return 0.0 if n == 0 else sum(c * length for c, length in zip(counts, huffman_lengths(counts))) / n


def encode_codes(q: Tensor, bits: int, symmetric: bool, level: int = ZSTD_LEVEL) -> Tensor:
    """Codes ``q`` [out, in] -> zstd-compressed unsigned codes, one byte per code before compression, as a
    flat uint8 tensor (what the artifact stores)."""
    import zstandard

    raw = unsigned_codes(q, bits, symmetric).contiguous().numpy().tobytes()
    blob = zstandard.ZstdCompressor(level=level).compress(raw)
    return torch.frombuffer(bytearray(blob), dtype=torch.uint8)


def decode_codes(blob: Tensor, shape: tuple[int, int], bits: int, symmetric: bool) -> Tensor:
    """Inverse of :func:`encode_codes` -> codes [out, in] (int16, signed when ``symmetric``).

    Raises ValueError when the blob is damaged or does not hold ``out * in`` codes."""
    import zstandard

    n = shape[0] * shape[1]
    try:
        raw = zstandard.ZstdDecompressor().decompress(blob.contiguous().numpy().tobytes(), max_output_size=n)
    except zstandard.ZstdError as exc:
        raise ValueError(f"entropy-coded weights are damaged: {exc}") from None
    if len(raw) != n:
        raise ValueError(f"entropy-coded weights hold {len(raw)} codes, the layer needs {shape[0]}x{shape[1]} = {n}")
    u = torch.frombuffer(bytearray(raw), dtype=torch.uint8).reshape(shape).to(torch.int16)
    return u - (2 ** (bits - 1) if symmetric else 0)


def packed_bytes(n: int, bits: int) -> int:
    """Bytes of ``n`` codes in eakd's fixed-width format: two per byte up to 4 bits, else one per byte."""
    return math.ceil(n / 2) if bits <= 4 else n


def coding_report(codes: dict[str, tuple], bits: int, symmetric: bool) -> dict:
    """Per-model summary of ``{name: (q [out, in], ...)}``: codes, Shannon and Huffman bits per code, the
    fixed-width packed bytes and the zstd bytes (actually encoded), totals over all layers."""
    total = [0] * (2 ** bits)
    packed = zstd = n = 0
    layers = {}
    for name, entry in codes.items():
        q = entry[0]
        counts = code_histogram(q, bits, symmetric)
        total = [a + b for a, b in zip(total, counts)]
        z = encode_codes(q, bits, symmetric).numel()
        layers[name] = {"codes": q.numel(), "shannon_bits": round(shannon_bits(counts), 4),
                        "huffman_bits": round(huffman_bits(counts), 4), "zstd_bits": round(8 * z / q.numel(), 4)}
        packed += packed_bytes(q.numel(), bits)
        zstd += z
        n += q.numel()
    return {"codes": n, "bits": bits, "shannon_bits": round(shannon_bits(total), 4),
            "huffman_bits": round(huffman_bits(total), 4), "zstd_bits": round(8 * zstd / max(1, n), 4),
            "packed_bytes": packed, "zstd_bytes": zstd, "layers": layers}
