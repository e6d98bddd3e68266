"""Which token windows calibrate the data-aware steps: calibration text, an eakd dataset's conversations, or a mix.

Owns the choice of the calibration source from ``compress.calibration`` (:class:`compress.config.CalibrationConfig`:
``data``, ``text_path``, ``dataset``) and its error messages; :mod:`compress.calibrate` cuts the windows
(:func:`compress.calibrate.calibration_batches`) and renders the conversations.

May import: :mod:`compress.calibrate`, :mod:`compress.config`, :mod:`distill.config`, :mod:`distill.evaluate`
(the eval-text reader). Not :mod:`compress.stage`, which imports it.

Run: through :func:`compress.stage.compress_student` (``bench/compress_llmcompressor.py`` calls
:func:`calibration_windows` directly).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from compress.calibrate import calibration_batches, conversation_text
from compress.config import CalibrationConfig
from distill.config import ConfigError, shared_data_dir
from distill.evaluate import load_eval_text


def calibration_windows(cfg: CalibrationConfig, tokenizer: Any, text: str | None, source: str | None,
                        dataset: str | Path | None = None) -> tuple[Tensor, str]:
    """The calibration batch [n_samples, seq_len] and where its windows came from (``cfg.data``)."""
    if cfg.data == "text":
        return _text_windows(cfg, cfg.n_samples, tokenizer, text, source)
    folder = cfg.dataset or dataset
    if folder is None:
        raise ConfigError(f"compress.calibration.data: {cfg.data} needs an eakd dataset; set "
                          "compress.calibration.dataset to its folder (the pipeline passes its generated one)")
    try:
        convo = conversation_text(tokenizer, folder)
        part = calibration_batches(tokenizer, convo, cfg.n_samples if cfg.data == "dataset" else cfg.n_samples // 2,
                                   cfg.seq_len, cfg.seed) if cfg.data == "dataset" or cfg.n_samples > 1 else None
    except ValueError as exc:
        raise ConfigError(f"compress.calibration (data: {cfg.data}, dataset {folder}): {exc}") from None
    if cfg.data == "dataset":
        return part, f"dataset conversations ({folder})"
    rest, text_from = _text_windows(cfg, cfg.n_samples - (0 if part is None else len(part)), tokenizer, text, source)
    batch = rest if part is None else torch.cat([part, rest])
    return batch, f"mix: dataset conversations ({folder}) + {text_from}"


def _text_windows(cfg: CalibrationConfig, n_samples: int, tokenizer: Any, text: str | None,
                  source: str | None) -> tuple[Tensor, str]:
    """``n_samples`` windows of the calibration text (text_path, else the caller's, else WikiText-2 valid)."""
    if cfg.text_path is not None:
        text, source = load_eval_text(cfg.text_path), cfg.text_path
    elif text is None:
        data = shared_data_dir()
        path = data / "wikitext-2" / "wiki.valid.tokens" if data else None
        if path is None or not path.is_file():
            raise ConfigError("compress.calibration.text_path: a data-aware step needs calibration text and "
                              "../shared/data/wikitext-2/wiki.valid.tokens is absent; set it to a text file")
        text, source = load_eval_text(path), "wikitext-2/wiki.valid.tokens"
    try:
        batch = calibration_batches(tokenizer, text, n_samples, cfg.seq_len, cfg.seed)
    except ValueError as exc:
        raise ConfigError(f"compress.calibration: {exc}") from None
    return batch, source or "passed in by the caller"
