"""Measure a (compressed) model: parameters, bytes on disk and perplexity.

Perplexity comes from :func:`distill.evaluate.perplexity` (its docstring documents the protocol), so the
numbers compare with those of the distillation stages. Bytes are the ``*.safetensors`` files of the saved
artifact — the honest size measure, since pruning zeros are stored densely and int8 only shrinks files.

Run: ``python -c "from compress.eval import measure; ..."`` — normally via :mod:`compress.stage`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from compress.artifact import safetensors_bytes
from distill.evaluate import count_parameters, perplexity

if TYPE_CHECKING:
    from compress.stage import EvalConfig

log = logging.getLogger(__name__)


def measure(model: nn.Module, tokenizer: Any, text: str, out_dir: Path | None,
            eval_cfg: EvalConfig) -> dict[str, Any]:
    """``{"params_total", "params_nonzero", "bytes_on_disk" (None without out_dir), "perplexity", "nll",
    "tokens", "windows", "seconds", "tokens_per_s"}``."""
    params = count_parameters(model)
    ppl = perplexity(model, tokenizer, text, window=eval_cfg.window, max_windows=eval_cfg.max_windows,
                     dtype=eval_cfg.dtype)
    return {
        "params_total": params["total"],
        "params_nonzero": params["nonzero"],
        "bytes_on_disk": safetensors_bytes(out_dir) if out_dir is not None else None,
        "perplexity": ppl["perplexity"],
        "nll": ppl["nll"],
        "tokens": ppl["tokens"],
        "windows": ppl["windows"],
        "dtype": ppl["dtype"],  # the resolved compute dtype ("auto" never reaches a report)
        "seconds": ppl["seconds"],
        "tokens_per_s": ppl["tokens_per_s"],
    }
