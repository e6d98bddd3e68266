"""The train stage's first phase: a dataset's splits -> token rows for the loss the config asks for.

One function per kind of row, chosen by :func:`encode_splits`:

* sequence-level KD (SFT) and online logit KD: :func:`distill.train.data.tokenize_row` on each conversation
  (with ``train.rationale_multitask``, each CoT row first becomes an answer task and an explain task:
  :func:`rationale_tasks`);
* offline top-k KD, same tokenizer: :func:`distill.train.data.tokenize_row_kd` with the teacher's cached ids
  and top-k (the tokenizers are checked to match first);
* offline KD across tokenizers (byte-level top-k from a teacher with another vocabulary):
  :func:`distill.train.xtok_train.encode_xtok_split`.

A dataset that cannot serve the configured loss is refused here, in one line that says what to change, before
any model is loaded. Run: ``python -c "from distill.train.encode import rationale_tasks; help(rationale_tasks)"``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from distill.config import ConfigError
from distill.logprobs import is_byte_level, is_packed
from distill.train.config import TrainConfig
from distill.train.data import check_same_tokenizer, same_tokenizer, tokenize_row, tokenize_row_kd
from distill.train.xtok_train import encode_xtok_split

log = logging.getLogger(__name__)

ANSWER_TAG, EXPLAIN_TAG = "[answer]", "[explain]"


def rationale_tasks(conversations: list[list[dict]], styles: list[str | None],
                    answers: list[str | None]) -> list[list[dict]]:
    """Distilling step-by-step (Hsieh et al. 2023, arXiv 2305.02301) as data: each CoT conversation with a
    parsed answer becomes two, the user turn prefixed with a task tag — ``[answer]`` -> the answer alone,
    ``[explain]`` -> the teacher's rationale (its whole CoT answer). Other rows pass through unchanged.
    At inference the student is asked with ``[answer]``: no rationale to generate, the point of the method."""
    out = []
    for conv, style, answer in zip(conversations, styles, answers):
        if style != "cot" or not answer or len(conv) < 2 or conv[-1]["role"] != "assistant" or conv[-2]["role"] != "user":
            out.append(conv)
            continue
        head, user = conv[:-2], conv[-2]
        out.append(head + [{"role": "user", "content": f"{ANSWER_TAG} {user['content']}"},
                           {"role": "assistant", "content": str(answer)}])
        out.append(head + [{"role": "user", "content": f"{EXPLAIN_TAG} {user['content']}"}, conv[-1]])
    return out


def encode_splits(cfg: TrainConfig, dd, ds_path: Path, tok, model_path: str | Path) -> tuple[list, list, dict[str, dict]]:
    """``(train rows, validation rows, cross-tokenizer stats per split)`` of the DatasetDict ``dd``."""
    xtok_stats: dict[str, dict] = {}
    rows = {split: _encode_split(cfg, dd, split, ds_path, tok, model_path, xtok_stats)
            for split in ("train", "validation")}
    return rows["train"], rows["validation"], xtok_stats


def _encode_split(cfg: TrainConfig, dd, split: str, ds_path: Path, tok, model_path: str | Path,
                  xtok_stats: dict[str, dict]) -> list:
    if split not in dd or "messages" not in dd[split].column_names:
        return []
    d = dd[split]
    if not cfg.kd.enabled or cfg.kd.teacher is not None:  # SFT, or online KD: the teacher scores the tokens
        return _sequence_rows(cfg, d, tok)
    if cfg.rationale_multitask:
        raise ConfigError("train.rationale_multitask with offline logit KD: the answer-only task has no cached "
                          "teacher top-k; use sequence-level KD (train.kd.enabled=false) or online KD (train.kd.teacher)")
    if d.num_rows == 0:
        return []
    lps = d["teacher_logprobs"] if "teacher_logprobs" in d.column_names else [None]
    byte_level = all(x is not None for x in lps) and all(is_byte_level(json.loads(lp)) for lp in lps[:8])
    if not byte_level and ("teacher_token_ids" not in d.column_names or any(x is None for x in d["teacher_token_ids"])
                           or any(x is None for x in lps)):
        raise ConfigError(f"train.kd.enabled: {ds_path} split {split!r} lacks teacher token ids/top-k logprobs; "
                          "generate with teacher.backend=vllm and generate.sampling.top_logprobs=K")
    packed = [json.loads(lp) for lp in d["teacher_logprobs"][:8]]
    if _crosses_tokenizers(cfg, d, packed, tok, model_path):
        rows, stats = encode_xtok_split(tok, d, _top_k(packed), cfg.max_length)
        xtok_stats[split] = stats
        log.info("cross-tokenizer KD (%s) on %s: %s", cfg.kd.cross_tokenizer, split, stats)
        return rows
    if not all(is_packed(p) for p in packed):
        raise ConfigError(f"train.kd.enabled: {ds_path} split {split!r} holds teacher logprobs as token strings "
                          "(an OpenAI-compatible endpoint), not token ids; generate with teacher.backend=vllm "
                          "for logit KD, or set train.kd.enabled=false for sequence-level KD")
    check_same_tokenizer(tok, d["teacher_token_ids"], [m[-1]["content"] for m in d["messages"]])
    k = _top_k(packed)
    rows = (tokenize_row_kd(tok, m, t, lp, cfg.max_length, k)
            for m, t, lp in zip(d["messages"], d["teacher_token_ids"], d["teacher_logprobs"]))
    return [r for r in rows if r]


def _top_k(packed: list[dict[str, Any]]) -> int:
    """The k of the cached top-k (the largest over the sampled rows; at least 1)."""
    return max(int(p["k"]) for p in packed) or 1


def _sequence_rows(cfg: TrainConfig, d, tok) -> list:
    """SFT / online-KD rows: each conversation tokenized, after the rationale multi-task split if asked."""
    convs = d["messages"]
    if cfg.rationale_multitask:
        convs = rationale_tasks(convs, d["style"] if "style" in d.column_names else [None] * d.num_rows,
                                d["answer"] if "answer" in d.column_names else [None] * d.num_rows)
    return [r for r in (tokenize_row(tok, m, cfg.max_length) for m in convs) if r]


def _crosses_tokenizers(cfg: TrainConfig, d, packed: list[dict[str, Any]], tok, model_path: str | Path) -> bool:
    """Whether this split's offline KD crosses tokenizers: byte-level logprobs, and the teacher's ids (if any)
    are not the student's. Refuses a mismatch the dataset cannot serve, in one line."""
    ids = d["teacher_token_ids"] if "teacher_token_ids" in d.column_names else None
    same = ids is not None and all(x is not None for x in ids) and all(is_packed(p) for p in packed) \
        and same_tokenizer(tok, ids, [m[-1]["content"] for m in d["messages"]])[0]
    if same or not all(is_byte_level(p) for p in packed):
        return False  # the same-tokenizer path (and its errors)
    if cfg.kd.cross_tokenizer == "off":
        raise ConfigError(f"train.kd.cross_tokenizer=off but the student's tokenizer ({model_path}) is not the "
                          "teacher's; set train.kd.cross_tokenizer=aligned (or uld), or train.kd.enabled=false")
    return True
