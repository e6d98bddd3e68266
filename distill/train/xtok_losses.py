"""Cross-tokenizer offline KD losses (pure torch functions): the teacher's vocabulary is not the student's.

Both read the per-position targets that :func:`distill.train.xtok_align.encode_xtok_row` builds from a dataset's
byte-level teacher logprobs (``topk-bytes/v1``); conventions are :mod:`distill.train.losses`' (``[B, L, V]`` student
logits, ``[B, L]`` labels with ``-100`` = ignore, fp32 math, ``reduction`` "mean" over valid positions or "sum",
``chunk_size`` positions at a time under activation checkpointing, 0.0 with zero gradients when nothing is valid).

* :func:`aligned_kd_loss` — approximate likelihood matching (Minixhofer, Vulić & Ponti 2025, "Cross-Tokenizer
  Distillation via Approximate Likelihood Matching"). Over a chunk of text that both tokenizations cover with whole
  tokens, the teacher's chunk probability ``p = exp(sum of its token logprobs)`` and the student's ``q`` (the
  product of its own tokens' probabilities) are probabilities of the same event; the loss is the binarised KL
  ``KL(Bern(p) || Bern(q))`` (their binarised f-divergence with f = KL). Where a chunk is one token on both sides
  the teacher's top-k distribution is used instead, mapped onto student ids by bytes: the top-k + tail bucket
  KL of :func:`distill.train.losses.topk_kd_loss`. With identical tokenizations every chunk is such a token, and the
  loss *is* ``topk_kd_loss``. A chunk's term is attributed to its last student position, so "mean" divides by
  the number of student positions, as the same-tokenizer loss does.
* :func:`uld_loss` — the Universal Logit Distillation baseline (Boizard et al. 2024, "Towards Cross-Tokenizer
  Distillation: the Universal Logit Distillation Loss for LLMs"): the Wasserstein-1 distance between the two
  distributions' *sorted* probabilities, which needs no vocabulary mapping. With only the teacher's top-k cached,
  the sorted top-k of both sides are compared (``sum_i |p_(i) - q_(i)|``). ULD pairs positions by index; here
  each student position is paired with the teacher token that holds its first byte (the caller's arrays).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from distill.train.losses import IGNORE_INDEX, LOGP_FLOOR, TOPK_TAIL_FLOOR, Reduction, _check_common, _kl, _reduce_rows

# A chunk probability is kept below 1 by this much in log space, so log(1 - q) stays finite.
CHUNK_LOGP_CEIL = -1e-6


def _topk_bucket_kl(s_lp: Tensor, k_ids: Tensor, k_lp: Tensor, method: str, temperature: float) -> Tensor:
    """Top-k + tail bucket divergence per row: student log-probs ``[n, V]``, mapped ids/logprobs ``[n, K]``
    (absent: id < 0 or logprob -inf) -> ``[n]`` (0 where nothing is present). Same math as ``topk_kd_loss``."""
    n, vocab = s_lp.shape
    pres = (k_ids >= 0) & (k_lp > float("-inf"))
    any_present = pres.any(-1)
    s_k = s_lp.gather(-1, k_ids.clamp(0, vocab - 1)).masked_fill(~pres, float("-inf"))
    listed = torch.zeros(n, vocab + 1, dtype=torch.bool, device=s_lp.device)
    listed.scatter_(1, torch.where(pres, k_ids, vocab), True)
    listed = listed[:, :vocab]
    empty = listed.all(-1)
    s_tail = torch.logsumexp(s_lp.masked_fill(listed & ~empty[:, None], float("-inf")), -1).masked_fill(empty, float("-inf"))
    t_k = k_lp.detach().float().masked_fill(~pres, float("-inf"))  # the teacher is a constant target
    t_mass = torch.logsumexp(t_k, -1).clamp_max(0.0)
    t_tail = torch.log((-torch.expm1(t_mass)).clamp_min(TOPK_TAIL_FLOOR)).masked_fill(empty, float("-inf"))
    # Rows with nothing listed compare two one-bucket distributions (KL 0); keep them finite for backward.
    t_tail = torch.where(any_present, t_tail, torch.zeros_like(t_tail))
    logp = F.log_softmax(torch.cat([t_k, t_tail[:, None]], -1) / temperature, -1).clamp_min(LOGP_FLOOR)
    logq = F.log_softmax(torch.cat([s_k, s_tail[:, None]], -1) / temperature, -1).clamp_min(LOGP_FLOOR)
    div = _kl(logp, logq) if method == "forward_kl" else _kl(logq, logp)
    return torch.where(any_present, div, torch.zeros_like(div))


def _log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, stable at both ends."""
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def binary_kl(logp: Tensor, logq: Tensor) -> Tensor:
    """``KL(Bern(p) || Bern(q))`` from log-probabilities (any shape, elementwise), both capped below 0."""
    logp, logq = logp.clamp(LOGP_FLOOR, CHUNK_LOGP_CEIL), logq.clamp(LOGP_FLOOR, CHUNK_LOGP_CEIL)
    return logp.exp() * (logp - logq) + (-torch.expm1(logp)) * (_log1mexp(logp) - _log1mexp(logq))


def _per_position(student_logits: Tensor, labels: Tensor, topk_ids: Tensor, topk_logprobs: Tensor,
                  method: str, temperature: float, chunk_size: int | None) -> tuple[Tensor, Tensor, Tensor]:
    """``(coords [N, labels.dim()], label log-prob [N], top-k bucket KL [N])`` at the valid positions, built
    ``chunk_size`` positions at a time (under checkpointing with autograd on)."""
    coords = (labels != IGNORE_INDEX).nonzero()
    n_valid = coords.shape[0]
    step = max(1, n_valid if chunk_size is None else chunk_size)
    use_ckpt = chunk_size is not None and torch.is_grad_enabled() and student_logits.requires_grad

    def part(cc: Tensor, s_all: Tensor) -> Tensor:
        ix = tuple(cc.unbind(1))
        s_lp = F.log_softmax(s_all[ix].float(), dim=-1)
        lab_lp = s_lp.gather(-1, labels[ix].unsqueeze(-1)).squeeze(-1)
        return torch.stack([lab_lp, _topk_bucket_kl(s_lp, topk_ids[ix], topk_logprobs[ix], method, temperature)])

    parts = [student_logits[tuple(coords[:0].unbind(1))].float().sum(-1).expand(2, 0)]
    for start in range(0, n_valid, step):
        cc = coords[start:start + step]
        parts.append(checkpoint(part, cc, student_logits, use_reentrant=False, preserve_rng_state=False)
                     if use_ckpt else part(cc, student_logits))
    both = torch.cat(parts, 1)
    return coords, both[0], both[1]


def aligned_kd_loss(student_logits: Tensor, labels: Tensor, topk_ids: Tensor, topk_logprobs: Tensor,
                    chunk_ids: Tensor, chunk_logprobs: Tensor, *,
                    method: Literal["forward_kl", "reverse_kl"] = "forward_kl", temperature: float = 1.0,
                    scale_t2: bool = True, reduction: Reduction = "mean", chunk_size: int | None = None) -> Tensor:
    """Approximate likelihood matching with top-k targets at one-token chunks.  Returns ``[]`` fp32.

    Shapes: ``student_logits`` ``[B, L, V]``; ``labels`` ``[B, L]`` (the student's own tokens); ``topk_ids``
    ``[B, L, K]`` student ids of the teacher's top-k mapped by bytes, with ``topk_logprobs`` ``[B, L, K]``
    (absent: id < 0 or -inf; a position with none present has no top-k term); ``chunk_ids`` ``[B, L]`` long:
    the multi-token chunk ``c`` a position belongs to (-1: none), indexing ``chunk_logprobs`` ``[C]``, the
    teacher's log-likelihood of each chunk. A chunk's student log-likelihood is the sum of ``log q(label)`` over
    its positions; all of a chunk's positions must be valid (not -100). ``temperature``/``scale_t2`` apply to
    the top-k terms as in ``topk_kd_loss``; chunk terms are at T=1. ``method`` chooses ``KL(p||q)`` or
    ``KL(q||p)`` for both kinds of term.
    """
    _check_common(student_logits, labels, temperature, reduction, chunk_size)
    if method not in ("forward_kl", "reverse_kl"):
        raise ValueError(f"unknown method {method!r} for aligned_kd_loss; expected forward_kl or reverse_kl")
    want = tuple(labels.shape)
    if tuple(topk_ids.shape[:-1]) != want or tuple(topk_logprobs.shape) != tuple(topk_ids.shape):
        raise ValueError(f"topk_ids {tuple(topk_ids.shape)} and topk_logprobs {tuple(topk_logprobs.shape)} must be "
                         f"{want + ('K',)} for labels {want}")
    if tuple(chunk_ids.shape) != want or chunk_logprobs.dim() != 1:
        raise ValueError(f"chunk_ids {tuple(chunk_ids.shape)} must be {want} and chunk_logprobs 1-D, "
                         f"got {tuple(chunk_logprobs.shape)}")
    vocab = student_logits.shape[-1]
    if bool((topk_ids >= vocab).any()):
        raise ValueError(f"topk_ids contains ids >= vocab size {vocab}")
    coords, lab_lp, topk_kl = _per_position(student_logits, labels, topk_ids, topk_logprobs, method,
                                            temperature, chunk_size)
    t2 = temperature ** 2 if scale_t2 else 1.0
    total = t2 * topk_kl.sum()
    cid = chunk_ids[tuple(coords.unbind(1))]
    in_chunk = cid >= 0
    if bool(in_chunk.any()):
        n_chunks = chunk_logprobs.shape[0]
        s_chunk = lab_lp.new_zeros(n_chunks).index_add(0, cid[in_chunk], lab_lp[in_chunk])      # [C]
        used = torch.zeros(n_chunks, dtype=torch.bool, device=cid.device)
        used[cid[in_chunk]] = True
        t_chunk = chunk_logprobs.float().detach()
        div = binary_kl(t_chunk, s_chunk) if method == "forward_kl" else binary_kl(s_chunk, t_chunk)
        total = total + div[used].sum()
    n_valid = coords.shape[0]
    return total / max(n_valid, 1) if reduction == "mean" else total


def uld_loss(student_logits: Tensor, teacher_topk_logprobs: Tensor, labels: Tensor, *,
             reduction: Reduction = "mean", chunk_size: int | None = None) -> Tensor:
    """ULD: ``sum_i |p_(i) - q_(i)|`` over the sorted top-k probabilities of teacher and student.  Returns ``[]``.

    Shapes: ``student_logits`` ``[B, L, V]``; ``teacher_topk_logprobs`` ``[B, L, K]`` (the paired teacher
    position's top-k, any order; -inf = absent; a position with none present contributes 0); ``labels``
    ``[B, L]`` (only the mask is read). The student side is its own top-K probabilities.
    """
    _check_common(student_logits, labels, 1.0, reduction, chunk_size)
    if tuple(teacher_topk_logprobs.shape[:-1]) != tuple(labels.shape):
        raise ValueError(f"teacher_topk_logprobs shape {tuple(teacher_topk_logprobs.shape)} must be "
                         f"{tuple(labels.shape) + ('K',)}")
    k = teacher_topk_logprobs.shape[-1]

    def row_loss(s: Tensor, t_lp: Tensor, lab: Tensor) -> Tensor:  # s [n, V], t_lp [n, K]
        p = torch.sort(t_lp.detach().float().exp(), dim=-1, descending=True).values      # -inf -> 0
        q = torch.topk(F.softmax(s.float(), dim=-1), min(k, s.shape[-1]), dim=-1).values
        if q.shape[-1] < k:
            q = F.pad(q, (0, k - q.shape[-1]))
        present = (t_lp > float("-inf")).any(-1)
        return torch.where(present, (p - q).abs().sum(-1), torch.zeros_like(p[:, 0]))

    return _reduce_rows(row_loss, [student_logits, teacher_topk_logprobs], labels, reduction, chunk_size)
