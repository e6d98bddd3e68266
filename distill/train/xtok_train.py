"""Offline logit KD for a student whose tokenizer is not the teacher's: encoding, batching and the loss.

:func:`distill.train.loop.run_training` comes here when ``train.kd.enabled`` holds no online teacher, the dataset's
teacher logprobs are byte-level (``topk-bytes/v1``, :mod:`distill.logprobs`) and the student's tokenizer does not
reproduce the teacher's token ids. The student trains on *its own* tokenization of the answer (the same rows as
sequence-level KD), and the teacher's distribution reaches it through byte alignment (:mod:`distill.train.xtok_align`)
and one of two losses (:mod:`distill.train.xtok_losses`), chosen by ``train.kd.cross_tokenizer``:
``aligned`` (approximate likelihood matching with top-k at one-token chunks) or ``uld`` (sorted top-k Wasserstein).
A row whose texts do not align (a structured CoT answer rebuilt from JSON, a tokenizer that does not spell its
text) trains on its CE term alone and is counted in the run's metrics.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Any

import torch

from distill.logprobs import unpack_topk_bytes, vocab_strings
from distill.train.config import KDConfig
from distill.train.data import IGNORE, render_turns, tokenize_row
from distill.train.xtok_align import XtokRow, encode_xtok_row, string_index

log = logging.getLogger(__name__)


def encode_xtok_split(tok: Any, split: Any, k: int, max_length: int) -> tuple[list[tuple], dict[str, int]]:
    """``(rows, stats)``: each row ``(input_ids, labels, XtokRow)`` on the student's own tokens; ``stats`` counts
    rows, rows without targets and the labelled positions covered by one-token chunks / multi-token chunks."""

    vocab = vocab_strings(tok)
    index = string_index(vocab)
    rows, stats = [], Counter()
    for messages, raw, lp_json in zip(split["messages"], split["raw_output"], split["teacher_logprobs"]):
        enc = tokenize_row(tok, messages, max_length)
        if enc is None:
            continue
        ids, labels = enc
        n = sum(1 for y in labels if y != IGNORE)
        _, answer_text = render_turns(tok, messages)
        answer_ids = tok(answer_text, add_special_tokens=False)["input_ids"]
        target = encode_xtok_row(unpack_topk_bytes(json.loads(lp_json)), raw, messages[-1]["content"], answer_ids,
                                 answer_text, vocab, index, n, k)
        if target is None:
            stats["rows_without_targets"] += 1
            target = _empty(n, k)
        stats["rows"] += 1
        stats["positions"] += n
        stats["topk_positions"] += target.stats.get("single", 0)
        stats["chunk_positions"] += target.stats.get("covered", 0) - target.stats.get("single", 0)
        rows.append((ids, labels, target))
    return rows, dict(stats)


def _empty(n: int, k: int) -> XtokRow:
    return XtokRow(topk_ids=[[-1] * (k + 1)] * n, topk_logprobs=[[float("-inf")] * (k + 1)] * n, chunk=[-1] * n,
                   chunk_logprobs=[], uld_logprobs=[[float("-inf")] * k] * n)


def collate_xtok(targets: list[XtokRow]) -> dict[str, torch.Tensor]:
    """The rows' targets concatenated in label order (as the labelled positions are): chunk ids made global."""
    chunk, offset = [], 0
    for t in targets:
        chunk += [c + offset if c >= 0 else -1 for c in t.chunk]
        offset += len(t.chunk_logprobs)
    return {"xt_ids": torch.tensor([r for t in targets for r in t.topk_ids], dtype=torch.long),
            "xt_lp": torch.tensor([r for t in targets for r in t.topk_logprobs], dtype=torch.float32),
            "xt_chunk": torch.tensor(chunk, dtype=torch.long),
            "xt_chunk_lp": torch.tensor([x for t in targets for x in t.chunk_logprobs], dtype=torch.float32),
            "xt_uld": torch.tensor([r for t in targets for r in t.uld_logprobs], dtype=torch.float32)}


def xtok_kd_term(logits: torch.Tensor, targets: torch.Tensor, batch: dict[str, torch.Tensor], kd: KDConfig) -> torch.Tensor:
    """The cross-tokenizer KD term (mean over the ``N`` labelled positions): ``logits`` ``[N, V]``, ``targets`` ``[N]``."""
    from distill.train.xtok_losses import aligned_kd_loss, uld_loss

    if kd.cross_tokenizer == "uld":
        return uld_loss(logits[None], batch["xt_uld"][None], targets[None], chunk_size=kd.chunk_size)
    return aligned_kd_loss(logits[None], targets[None], batch["xt_ids"][None], batch["xt_lp"][None],
                           batch["xt_chunk"][None], batch["xt_chunk_lp"], method=kd.method,
                           temperature=kd.temperature, chunk_size=kd.chunk_size)
