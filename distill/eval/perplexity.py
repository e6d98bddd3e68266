"""The perplexity protocol, the text it is measured on, and parameter counts.

Protocol (fixed so numbers from different runs and stages compare):

* tokenize the whole text once, without special tokens;
* cut the ids into non-overlapping windows of ``window`` tokens and drop the last partial window;
* QUICK protocol: score only the first ``max_windows`` windows (default 16 x 512 tokens, seconds on a
  CPU for a 135M model); FULL protocol: ``max_windows=None`` scores every window;
* each window is scored on its own (no context carried over) on all of its ``window - 1`` next-token
  predictions; perplexity = ``exp(total NLL / total predicted tokens)``.

This is the non-overlapping ("stride = window") variant of the Hugging Face perplexity guide
(https://huggingface.co/docs/transformers/perplexity), as used for WikiText-2 in e.g. GPTQ (Frantar et
al. 2023). Non-overlapping windows give somewhat higher perplexity than a sliding window, so only compare
numbers measured with the same window size. Scoring runs under ``torch.no_grad`` and, for
``dtype="bfloat16"``, under ``torch.autocast`` on the model's device.

The text: :func:`find_eval_text` (a configured file, else WikiText-2 test from the shared data, else the
dataset's held-out teacher outputs). Also :func:`count_parameters` and :func:`teacher_agreement`.

May import: torch, ``distill.config`` and ``distill.models``; function-local, ``datasets`` and
``distill.train.run`` (the validation pass). Re-exported by :mod:`distill.evaluate`, the stage, which it never imports.
Run: ``python -c "from distill.evaluate import perplexity; ..."``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from distill.config import ConfigError, shared_data_dir
from distill.models import resolve_dtype

log = logging.getLogger("distill.evaluate")  # the evaluate stage's logger: its lines read as before the split

DTYPES = ("float32", "bfloat16")
WIKITEXT_TEST = "wikitext-2/wiki.test.tokens"  # under ../shared/data (or $EAKD_DATA_DIR)
VALIDATION_TEXT = "dataset validation split (teacher outputs)"


def load_eval_text(path: str | Path) -> str:
    """Read a WikiText-style raw text file as is (UTF-8)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"eval text {p} not found; set eval.text_path to a raw text file "
                          "(e.g. WikiText-2 wiki.test.raw) or pass the text directly")
    text = p.read_text(encoding="utf-8")
    if not text.strip():
        raise ConfigError(f"eval text {p} is empty; point eval.text_path at a file with text in it")
    return text


def count_parameters(model: nn.Module) -> dict[str, int]:
    """``{"total", "nonzero"}`` over the model's unique parameters (a tied weight counts once)."""
    total = nonzero = 0
    for p in model.parameters():  # parameters() already yields a shared Parameter only once
        total += p.numel()
        nonzero += int(torch.count_nonzero(p.detach()))
    return {"total": total, "nonzero": nonzero}


def window_ids(ids: Tensor, window: int, max_windows: int | None) -> Tensor:
    """``ids`` [n] -> [w, window]: consecutive non-overlapping windows, partial tail dropped, first ``max_windows``."""
    n_full = ids.numel() // window
    if max_windows is not None:
        n_full = min(n_full, max_windows)
    return ids[: n_full * window].view(n_full, window)


def window_nll(logits: Tensor, ids: Tensor) -> Tensor:
    """Summed next-token NLL: ``logits`` [T, V] predicting ``ids`` [T] (position t predicts t+1) -> scalar fp32."""
    return torch.nn.functional.cross_entropy(logits[:-1].float(), ids[1:], reduction="sum")


def _check_args(window: int, max_windows: int | None, dtype: str) -> None:
    if window < 2:
        raise ConfigError(f"eval.window must be >= 2 (one prediction needs two tokens), got {window}")
    if max_windows is not None and max_windows < 1:
        raise ConfigError(f"eval.max_windows must be >= 1 or null (= all windows), got {max_windows}")
    if dtype not in DTYPES:
        raise ConfigError(f"eval.dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


def perplexity(model: nn.Module, tokenizer: Any, text: str, window: int = 512, max_windows: int | None = 16,
               dtype: str = "auto") -> dict[str, Any]:
    """Score ``text`` with the protocol above.

    Returns ``{"perplexity", "nll" (mean per predicted token, nats), "tokens" (predicted tokens),
    "windows", "window", "dtype", "seconds", "tokens_per_s"}``.
    """
    device = next(model.parameters()).device
    if dtype == "auto":
        dtype = resolve_dtype(dtype, device.type)
    _check_args(window, max_windows, dtype)
    ids = torch.tensor(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"], dtype=torch.long)
    windows = window_ids(ids, window, max_windows)
    if windows.shape[0] == 0:
        raise ConfigError(f"eval text has {ids.numel()} tokens, fewer than one window of {window}; "
                          "use a longer text or a smaller eval.window")
    autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if dtype == "bfloat16"
                else contextlib.nullcontext())
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64)
    start = time.perf_counter()
    try:
        with torch.no_grad(), autocast:
            for row in windows:
                row = row.to(device)
                logits = model(input_ids=row[None, :], use_cache=False).logits[0]
                total += window_nll(logits, row).double().cpu()
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - start
    tokens = windows.shape[0] * (window - 1)
    nll = float(total) / tokens
    result = {"perplexity": math.exp(nll), "nll": nll, "tokens": tokens, "windows": int(windows.shape[0]),
              "window": window, "dtype": dtype, "seconds": seconds,
              "tokens_per_s": windows.numel() / seconds if seconds > 0 else float("inf")}
    log.debug("perplexity %.3f over %d windows of %d (%s, %.1fs)", result["perplexity"], result["windows"],
              window, dtype, seconds)
    return result


def teacher_agreement(model: nn.Module, rows: list, pad_id: int, batch_size: int = 8) -> dict[str, Any] | None:
    """How closely the student follows the teacher on held-out teacher completions.

    ``rows`` are training rows from :mod:`distill.train.run` (``(ids, labels)`` or, with cached top-k,
    ``(ids, labels, topk_ids, topk_logprobs)``); the labels are the teacher's own tokens. Returns
    ``{"top1_agreement"`` (share of positions where the student's argmax is the teacher's token — its
    top-1 at temperature 0), ``"kl_topk"`` (mean KL(teacher || student) over the top-k + tail buckets,
    None without cached top-k), ``"tokens"}``; None when there are no rows. One forward pass, shared
    with the validation loss (:func:`distill.train.run.eval_rows`).
    """
    from distill.train.run import eval_rows

    return eval_rows(model, rows, pad_id, batch_size, None, None)["agreement"]


def find_eval_text(text_path: str | None, dataset_dir: str | Path | None,
                   setting: str = "evaluate.text_path") -> tuple[str, str]:
    """(text, source) for perplexity: the configured file, else WikiText-2 test from the shared data, else the
    dataset's held-out teacher outputs. ``setting`` names the config key in the error when none is found."""
    if text_path:
        return load_eval_text(text_path), text_path
    data = shared_data_dir()
    if data and (data / WIKITEXT_TEST).is_file():
        return load_eval_text(data / WIKITEXT_TEST), WIKITEXT_TEST
    if dataset_dir is not None and (Path(dataset_dir) / "dataset_dict.json").is_file():
        from datasets import load_from_disk

        dd = load_from_disk(str(dataset_dir))
        val = dd.get("validation")
        texts = [m[-1]["content"] for m in val["messages"] if m] if val is not None and "messages" in val.column_names else []
        if texts:
            return "\n\n".join(texts), VALIDATION_TEXT
    raise ConfigError(f"{setting}: no evaluation text found; set it to a text file")
