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

import logging

from torch import nn

log = logging.getLogger(__name__)


def target_linears(model: nn.Module, skip: tuple[str, ...] = ("lm_head",),
                   include_low_rank: bool = True) -> list[tuple[str, nn.Linear]]:
    """The ``nn.Linear`` layers compression may touch, as ``(qualified name, module)`` in model order.

    Excludes the output embedding (whatever it is called), any module whose last name component is in
    ``skip``, and — when ``include_low_rank`` is False — the ``down``/``up`` factors of a
    :class:`compress.factorize.LowRankLinear` (factorizing a factor again makes no sense).
    """
    from compress.factorize import LowRankLinear

    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    low_rank_children: set[int] = set()
    if not include_low_rank:
        for module in model.modules():
            if isinstance(module, LowRankLinear):
                low_rank_children.update((id(module.down), id(module.up)))
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or module is output:
            continue
        if name.rsplit(".", 1)[-1] in skip or id(module) in low_rank_children:
            continue
        out.append((name, module))
    return out


def manifest_linear(model: nn.Module, name: str, kind: str) -> nn.Linear:
    """The ``nn.Linear`` at ``name`` that an artifact's manifest lists as ``kind`` (e.g. "factorized");
    ValueError when the model has no such module or it is not a plain linear."""
    try:
        linear = model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"manifest names {kind} module {name!r}, which this model does not have; "
                         "the artifact's config.json and eakd_compression.json disagree") from None
    if not isinstance(linear, nn.Linear):
        raise ValueError(f"manifest names {kind} module {name!r}, but it is a {type(linear).__name__}, not nn.Linear")
    return linear


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Swap the submodule at dotted ``name`` for ``new``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
