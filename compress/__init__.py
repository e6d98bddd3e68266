"""Post-training compression of a distilled student: quantize, prune, factorize — chained or side by side.

* quantize: :mod:`compress.quantize` (RTN int8 per channel; grouped RTN 2-8 bit), :mod:`compress.gptq`
  (Frantar et al. 2023), :mod:`compress.awq` (Lin et al. 2024), :mod:`compress.qat` (quantization-aware
  training through the same grid), :mod:`compress.qaf` (LoftQ-started adapters trained beside a frozen
  quantized base); :mod:`compress.entropy` stores the codes entropy-coded (zstd) and
  measures their Shannon/Huffman bits; :mod:`compress.export` writes compressed-tensors folders that vLLM
  and transformers load.
* prune: :mod:`compress.prune` (magnitude, Han et al. 2015; Wanda, Sun et al. 2023; N:M; OWL per-block
  sparsity, Yin et al. 2024),
  :mod:`compress.sparsegpt` (Frantar & Alistarh 2023), :mod:`compress.structured` (depth by angular
  distance, Gromov et al. 2024; width by activation importance, Minitron 2024).
* factorize: :mod:`compress.factorize` (truncated SVD), :mod:`compress.lowrank_aware` (ASVD, SVD-LLM,
  per-layer rank allocation), :mod:`compress.tensorized` (CP and Tucker of reshaped weights, measured
  against SVD); :mod:`compress.recover` distils the compressed model from the original (logits, optionally
  FitNets hints, TinyBERT attention maps and an adversarial discriminator).
* :mod:`compress.calibrate` gives the data-aware methods their activation statistics;
  :mod:`compress.artifact` saves/loads safetensors plus a JSON manifest (no pickle); :mod:`compress.eval`
  measures; :mod:`compress.stage` runs the configured steps with quality gates.

Only the ``nn.Linear`` layers of the decoder blocks are touched: embeddings and the LM head are tied in
the models eakd uses, so compressing one would silently compress the other.

Run: ``python -c "from compress.stage import compress_student; ..."`` — normally reached through ``eakd``.
"""

from __future__ import annotations

from compress.linears import LowRankLinear, manifest_linear, replace_module, target_linears

__all__ = ["LowRankLinear", "manifest_linear", "replace_module", "target_linears"]
