"""Logit-level knowledge-distillation losses (pure torch functions).

Per-token divergences between the teacher distribution ``p`` and the student
distribution ``q`` over the vocabulary, reduced over the non-ignored label
positions.  Sources:

* Hinton, Vinyals & Dean 2015: temperature softening and the ``T**2`` factor
  (soft-target gradients shrink as ``1/T**2``; rescaling keeps them comparable
  across temperatures and to a hard-label term).
* Agarwal et al. 2024 (GKD, "On-Policy Distillation of Language Models"):
  generalized Jensen-Shannon divergence ``JSD(beta)``.
* Ko et al. 2024 (DistiLLM): skew KL ``KL(p || a p + (1-a) q)`` and skew
  reverse KL ``KL(q || a q + (1-a) p)`` (their ``skewed_forward_kl`` /
  ``skewed_reverse_kl``; their code drops the constant teacher entropy, we
  report the true KL, which has the same gradient).
* Gu et al. 2024 (MiniLLM): reverse KL ``KL(q || p)``.  MiniLLM optimises the
  *sequence-level* reverse KL with policy gradients; this module only gives the
  token-level term, as used by GKD/DistiLLM.

Conventions shared by every loss:

* ``student_logits``/``teacher_logits``: ``[B, L, V]`` (any leading dims work),
  ``labels``: ``[B, L]`` long.  Position ``t`` of the logits predicts
  ``labels[t]`` -- the caller has already shifted.  ``labels == -100`` marks
  positions that contribute nothing (their logits are never read).
* All math is fp32 via ``log_softmax``; inputs may be bf16/fp16.
* ``temperature=T`` divides both logits by ``T``; ``scale_t2`` multiplies the
  divergence by ``T**2`` (applied uniformly to every divergence).
* ``reduction="mean"``: sum of per-token losses / number of valid tokens.
  ``reduction="sum"``: the plain sum.  For gradient accumulation use "sum" on
  every micro-batch and divide by the valid-token count of the *whole* step:
  the result equals the "mean" loss of one big batch exactly, whereas averaging
  per-micro-batch means overweights tokens of short micro-batches.
* No valid token: the loss is ``0.0`` (never NaN) with zero gradients, so an
  all-masked micro-batch cannot poison a step.
* ``chunk_size=n``: the valid positions are processed ``n`` rows at a time, so
  the fp32 ``[n, V]`` intermediates are the largest tensors created; with
  autograd on, each chunk is wrapped in non-reentrant activation checkpointing
  (otherwise autograd would keep every chunk's intermediates alive until
  backward, i.e. the full-size fp32 tensors after all).  The value and the
  gradients equal the unchunked ones up to float summation order.
* Log-probabilities are clamped at ``-1e4`` before the divergence: ``exp``
  of that is exactly 0 in fp32, so finite supports are unaffected, while
  ``-inf`` logits (masked vocab entries) give ``0 * finite`` instead of NaN.
  A genuinely infinite divergence (e.g. reverse KL where the teacher has zero
  mass) therefore becomes a large finite one.
"""

from __future__ import annotations

import math
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100
LOGP_FLOOR = -1e4
# Smallest teacher tail mass used by the top-k loss when the listed tokens do not
# cover the vocab: cached fp32/bf16 log-probs can sum to >= 1 by rounding, and a
# zero tail would make the reverse KL infinite.  Far below what fp32 logprobs resolve.
TOPK_TAIL_FLOOR = 1e-6

Reduction = Literal["mean", "sum"]
RowFn = Callable[..., Tensor]


# ----------------------------------------------------------------- divergences
# Each takes fp32 log-probs ``logp`` (teacher) and ``logq`` (student), ``[N, V]``,
# already clamped at LOGP_FLOOR, and returns the per-row divergence ``[N]``.

def _kl(loga: Tensor, logb: Tensor) -> Tensor:
    """KL(a || b) per row, ``[N, V] -> [N]``."""
    return (loga.exp() * (loga - logb)).sum(-1)


def _log_mix_ratio(loga: Tensor, logb: Tensor, w: float) -> Tensor:
    """``log((w a + (1-w) b) / a)`` for ``w`` in (0, 1), ``[N, V] -> [N, V]``.

    Written as ``log w + softplus(log((1-w)/w) + log b - log a)`` so the small
    quantity ``log(m/a)`` is produced directly rather than as a difference of two
    O(1) logs; that is what keeps ``KL(q||m)/beta`` accurate for beta ~ 1e-4.
    """
    return math.log(w) + F.softplus((math.log1p(-w) - math.log(w)) + (logb - loga))


def _skew_kl(loga: Tensor, logb: Tensor, alpha: float) -> Tensor:
    """DistiLLM skew KL ``KL(a || alpha a + (1-alpha) b)``; alpha=0 is plain ``KL(a || b)``."""
    if alpha == 0.0:
        return _kl(loga, logb)
    return -(loga.exp() * _log_mix_ratio(loga, logb, alpha)).sum(-1)


def _div_generalized_jsd(logp: Tensor, logq: Tensor, beta: float = 0.5,
                         normalized: bool = True) -> Tensor:
    # Endpoints are defined explicitly (the interior formula needs 0 < beta < 1).
    # Both forms agree there: TRL's GKDTrainer special-cases beta=0 / beta=1 the same way.
    if beta == 0.0:
        return _kl(logp, logq)
    if beta == 1.0:
        return _kl(logq, logp)
    # m = beta p + (1-beta) q
    kl_p_m = -(logp.exp() * _log_mix_ratio(logp, logq, beta)).sum(-1)
    kl_q_m = -(logq.exp() * _log_mix_ratio(logq, logp, 1.0 - beta)).sum(-1)
    if normalized:
        # JSD_beta / (beta (1-beta)) = KL(p||m)/(1-beta) + KL(q||m)/beta
        return kl_p_m / (1.0 - beta) + kl_q_m / beta
    return beta * kl_p_m + (1.0 - beta) * kl_q_m


_DIVERGENCES: dict[str, tuple[RowFn, tuple[str, ...]]] = {
    "forward_kl": (lambda lp, lq: _kl(lp, lq), ()),
    "reverse_kl": (lambda lp, lq: _kl(lq, lp), ()),
    "generalized_jsd": (_div_generalized_jsd, ("beta", "normalized")),
    "total_variation": (lambda lp, lq: 0.5 * (lp.exp() - lq.exp()).abs().sum(-1), ()),
    "skew_forward_kl": (lambda lp, lq, alpha=0.1: _skew_kl(lp, lq, alpha), ("alpha",)),  # KL(p||a p+(1-a) q)
    "skew_reverse_kl": (lambda lp, lq, alpha=0.1: _skew_kl(lq, lp, alpha), ("alpha",)),  # KL(q||a q+(1-a) p)
}
METHODS: tuple[str, ...] = tuple(_DIVERGENCES)


# ------------------------------------------------------------------ validation

def _check_common(student_logits: Tensor, labels: Tensor, temperature: float,
                  reduction: str, chunk_size: int | None) -> None:
    if student_logits.dim() < 2:
        raise ValueError(f"student_logits must be [B, L, V]; got shape {tuple(student_logits.shape)}")
    if tuple(labels.shape) != tuple(student_logits.shape[:-1]):
        raise ValueError(f"labels shape {tuple(labels.shape)} does not match student_logits shape "
                         f"{tuple(student_logits.shape)} without its vocab dim")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")


def _check_unit(name: str, value: float, *, closed_right: bool = True) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
        0.0 <= value <= 1.0 if closed_right else 0.0 <= value < 1.0)
    if not ok:
        rng = "[0, 1]" if closed_right else "[0, 1)"
        raise ValueError(f"{name} must be in {rng}, got {value!r}")


def _check_method_kw(method: str, method_kw: dict) -> None:
    if method not in _DIVERGENCES:
        raise ValueError(f"unknown method {method!r}; expected one of: {', '.join(METHODS)}")
    allowed = _DIVERGENCES[method][1]
    extra = sorted(set(method_kw) - set(allowed))
    if extra:
        raise ValueError(f"method {method!r} got unexpected keyword(s) {extra}; "
                         f"allowed: {list(allowed) or 'none'}")
    if "beta" in method_kw:
        _check_unit("beta", method_kw["beta"])
    if "alpha" in method_kw:
        # alpha = 1 makes the skew divergence identically zero: almost surely a mistake.
        _check_unit("alpha", method_kw["alpha"], closed_right=False)


# ------------------------------------------------------------------- reduction

def _reduce_rows(row_loss: RowFn, tensors: list[Tensor], labels: Tensor,
                 reduction: str, chunk_size: int | None) -> Tensor:
    """Sum ``row_loss`` over valid positions, optionally chunked; returns ``[]`` fp32.

    ``tensors`` share the leading shape of ``labels`` (``[B, L, ...]``);
    ``row_loss(*rows, label_rows)`` gets ``[n, ...]`` slices of them and returns ``[n]``.
    """
    # [n_valid, labels.dim()] coordinates; indexing with them reads only the needed rows
    # (no flattening copy of non-contiguous inputs such as ``logits[:, :-1]``), and
    # masked rows are never read at all.
    coords = (labels != IGNORE_INDEX).nonzero()
    n_valid = coords.shape[0]
    step = n_valid if chunk_size is None else chunk_size
    use_ckpt = (chunk_size is not None and torch.is_grad_enabled()
                and any(t.requires_grad for t in tensors))

    def chunk_sum(cc: Tensor, *ts: Tensor) -> Tensor:
        ix = tuple(cc.unbind(1))
        return row_loss(*[t[ix] for t in ts], labels[ix]).sum()

    # 0.0 that is still attached to the graph, so backward() works with no valid token.
    total = tensors[0][tuple(coords[:0].unbind(1))].float().sum()
    for start in range(0, n_valid, max(step, 1)):
        cc = coords[start:start + step]
        if use_ckpt:
            part = checkpoint(chunk_sum, cc, *tensors, use_reentrant=False, preserve_rng_state=False)
        else:
            part = chunk_sum(cc, *tensors)
        total = total + part
    return total / max(n_valid, 1) if reduction == "mean" else total


def _log_probs(logits: Tensor, temperature: float) -> Tensor:
    z = logits.float()
    if temperature != 1.0:
        z = z / temperature
    return F.log_softmax(z, dim=-1)


# ------------------------------------------------------------------ dense API

def kd_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, *,
            method: str = "forward_kl", alpha_ce: float = 0.0, temperature: float = 1.0,
            scale_t2: bool = True, reduction: Reduction = "mean",
            chunk_size: int | None = None, **method_kw: float | bool) -> Tensor:
    """``(1 - alpha_ce) * divergence + alpha_ce * CE(student, labels)``, reduced over valid tokens.

    Shapes: ``student_logits``/``teacher_logits`` ``[B, L, V]``, ``labels`` ``[B, L]``
    (aligned, ``-100`` = ignore); returns a scalar ``[]`` fp32 tensor.  The divergence
    uses ``temperature`` (and ``T**2`` if ``scale_t2``); the CE term is always at T=1.
    ``method`` is one of :data:`METHODS`; ``method_kw`` are its options (``beta``,
    ``normalized`` for ``generalized_jsd``; ``alpha`` for the skew KLs).
    Raises ``ValueError`` on bad arguments.
    """
    _check_common(student_logits, labels, temperature, reduction, chunk_size)
    if tuple(teacher_logits.shape) != tuple(student_logits.shape):
        raise ValueError(f"teacher_logits shape {tuple(teacher_logits.shape)} != "
                         f"student_logits shape {tuple(student_logits.shape)}")
    _check_method_kw(method, method_kw)
    _check_unit("alpha_ce", alpha_ce)
    div_fn = _DIVERGENCES[method][0]
    w_div, t2 = 1.0 - alpha_ce, (temperature ** 2 if scale_t2 else 1.0)
    vocab = student_logits.shape[-1]
    if alpha_ce > 0:
        valid = labels[labels != IGNORE_INDEX]
        if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= vocab):
            raise ValueError(f"labels must be -100 or in [0, {vocab}) when alpha_ce > 0")

    def row_loss(s: Tensor, t: Tensor, lab: Tensor) -> Tensor:  # s, t: [n, V]; lab: [n]
        loss = s.new_zeros(s.shape[0], dtype=torch.float32)
        logq = None
        if w_div > 0:
            logq = _log_probs(s, temperature)
            logp = _log_probs(t, temperature)
            div = div_fn(logp.clamp_min(LOGP_FLOOR), logq.clamp_min(LOGP_FLOOR), **method_kw)
            loss = loss + (w_div * t2) * div
        if alpha_ce > 0:
            if logq is None or temperature != 1.0:
                logq = _log_probs(s, 1.0)  # CE is always at T=1
            loss = loss - alpha_ce * logq.gather(-1, lab.unsqueeze(-1)).squeeze(-1)
        return loss

    return _reduce_rows(row_loss, [student_logits, teacher_logits], labels, reduction, chunk_size)


def forward_kl(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, *,
               temperature: float = 1.0, scale_t2: bool = True, reduction: Reduction = "mean",
               chunk_size: int | None = None) -> Tensor:
    """Forward KL ``KL(p || q)`` (mass-covering; Hinton KD).  ``[B, L, V] x2, [B, L] -> []``."""
    return kd_loss(student_logits, teacher_logits, labels, method="forward_kl",
                   temperature=temperature, scale_t2=scale_t2, reduction=reduction, chunk_size=chunk_size)


def reverse_kl(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, *,
               temperature: float = 1.0, scale_t2: bool = True, reduction: Reduction = "mean",
               chunk_size: int | None = None) -> Tensor:
    """Reverse KL ``KL(q || p)`` (mode-seeking; MiniLLM's token-level term).  ``[B, L, V] x2, [B, L] -> []``."""
    return kd_loss(student_logits, teacher_logits, labels, method="reverse_kl",
                   temperature=temperature, scale_t2=scale_t2, reduction=reduction, chunk_size=chunk_size)


def total_variation(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, *,
                    temperature: float = 1.0, scale_t2: bool = True, reduction: Reduction = "mean",
                    chunk_size: int | None = None) -> Tensor:
    """Total variation ``0.5 * sum_v |p_v - q_v|`` (in [0, 1] before ``T**2``).  ``[B, L, V] x2, [B, L] -> []``."""
    return kd_loss(student_logits, teacher_logits, labels, method="total_variation",
                   temperature=temperature, scale_t2=scale_t2, reduction=reduction, chunk_size=chunk_size)


def generalized_jsd(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, *,
                    beta: float = 0.5, normalized: bool = True, temperature: float = 1.0,
                    scale_t2: bool = True, reduction: Reduction = "mean",
                    chunk_size: int | None = None) -> Tensor:
    """GKD's generalized JSD.  ``[B, L, V] x2, [B, L] -> []``; ``beta`` in [0, 1].

    With ``m = beta p + (1-beta) q``, GKD defines
    ``JSD_beta = beta KL(p||m) + (1-beta) KL(q||m)``, which tends to 0 at both
    ends.  Expanding ``m = q + beta (p - q)``: ``KL(q||m) = beta^2/2 chi2(p||q) + O(beta^3)``
    and ``KL(p||m) = KL(p||q) + O(beta)``, so ``JSD_beta = beta KL(p||q) + O(beta^2)``;
    symmetrically ``JSD_beta = (1-beta) KL(q||p) + O((1-beta)^2)`` near 1.

    ``normalized=True`` (default) returns ``JSD_beta / (beta (1-beta))
    = KL(p||m)/(1-beta) + KL(q||m)/beta``, which by the expansions above tends to
    forward KL ``KL(p||q)`` as beta -> 0 and reverse KL ``KL(q||p)`` as beta -> 1
    (error O(beta) / O(1-beta); its chi-square-like constant is large where ``q << p``:
    ~0.4% off at beta=1e-4 for peaked random logits).  The endpoints are defined as
    exactly those KLs, so the loss is continuous on [0, 1].  ``beta (1-beta)`` is the
    one symmetric factor removing both vanishing rates, and it keeps the scale
    comparable across beta (``beta=0.5`` gives ``4 * JSD``).

    ``normalized=False`` is GKD's / TRL ``GKDTrainer.generalized_jsd_loss``'s
    definition, including TRL's special-casing of beta=0 (forward KL) and
    beta=1 (reverse KL), so it is discontinuous at the ends; in the interior
    ``JSD_0.5 <= ln 2`` (before any ``T**2`` factor).
    """
    return kd_loss(student_logits, teacher_logits, labels, method="generalized_jsd",
                   beta=beta, normalized=normalized, temperature=temperature,
                   scale_t2=scale_t2, reduction=reduction, chunk_size=chunk_size)


def skew_forward_kl(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, *,
                    alpha: float = 0.1, temperature: float = 1.0, scale_t2: bool = True,
                    reduction: Reduction = "mean", chunk_size: int | None = None) -> Tensor:
    """DistiLLM skew KL ``KL(p || alpha p + (1-alpha) q)``, alpha in [0, 1); 0 = forward KL.

    ``[B, L, V] x2, [B, L] -> []``.  Gradients flow through the mixture, as in DistiLLM.
    """
    return kd_loss(student_logits, teacher_logits, labels, method="skew_forward_kl", alpha=alpha,
                   temperature=temperature, scale_t2=scale_t2, reduction=reduction, chunk_size=chunk_size)


def skew_reverse_kl(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, *,
                    alpha: float = 0.1, temperature: float = 1.0, scale_t2: bool = True,
                    reduction: Reduction = "mean", chunk_size: int | None = None) -> Tensor:
    """DistiLLM skew reverse KL ``KL(q || alpha q + (1-alpha) p)``, alpha in [0, 1); 0 = reverse KL.

    ``[B, L, V] x2, [B, L] -> []``.
    """
    return kd_loss(student_logits, teacher_logits, labels, method="skew_reverse_kl", alpha=alpha,
                   temperature=temperature, scale_t2=scale_t2, reduction=reduction, chunk_size=chunk_size)


# ------------------------------------------------------------------ top-k API

def topk_kd_loss(student_logits: Tensor, teacher_topk_ids: Tensor, teacher_topk_logprobs: Tensor,
                 labels: Tensor, *, method: Literal["forward_kl", "reverse_kl"] = "forward_kl",
                 temperature: float = 1.0, scale_t2: bool = True, reduction: Reduction = "mean",
                 chunk_size: int | None = None, teacher_topk_mask: Tensor | None = None) -> Tensor:
    """KD against cached teacher top-k log-probs (no teacher forward).  Returns ``[]``.

    Shapes: ``student_logits`` ``[B, L, V]``; ``teacher_topk_ids`` ``[B, L, K]`` long;
    ``teacher_topk_logprobs`` ``[B, L, K]`` (log-probs of the full-vocab teacher at T=1);
    ``labels`` ``[B, L]``; optional ``teacher_topk_mask`` ``[B, L, K]`` bool (True = present).
    An entry is absent if its id is < 0, its logprob is -inf (or NaN), or its mask is
    False -- use this to pad positions with fewer than K tokens.  Present ids in a row
    must be distinct and < V.

    Both distributions are collapsed onto K+1 buckets: the K listed tokens plus a tail
    bucket for every other token.  Teacher tail = ``1 - sum_k p_k`` (floored at
    ``TOPK_TAIL_FLOOR``); student listed buckets = its log-probs at the ids and its
    tail = logsumexp of its log-probs over the *unlisted* tokens (exact, no
    ``log(1 - sum)`` cancellation).  If the listed ids cover the whole vocab the tail
    bucket is empty for both, and the loss equals the dense loss exactly.

    Temperature: cached log-probs are at T=1, and exact tempering needs the teacher's
    full normaliser, which the cache lacks.  We temper the bucket distributions: the
    K+1 bucket log-probs of *both* sides are divided by T and renormalised over the
    buckets (the tail behaves like one pseudo-token).  Exact for T=1 and whenever the
    tail is empty; for T != 1 with a tail it approximates (true tempering of a tail
    spread over many tokens gives it more mass for T > 1, less for T < 1).  Because the
    same bijective map is applied to both sides, the loss is still 0 exactly when the
    student's buckets match the teacher's.  (Simply exponentiating ``logp/T`` for the
    top-k does not sum to <= 1 when T > 1 and moves mass into the tail when T < 1.)
    """
    _check_common(student_logits, labels, temperature, reduction, chunk_size)
    if method not in ("forward_kl", "reverse_kl"):
        raise ValueError(f"unknown method {method!r} for topk_kd_loss; expected one of: forward_kl, reverse_kl")
    want = tuple(student_logits.shape[:-1])
    ids, tlp = teacher_topk_ids, teacher_topk_logprobs
    if ids.dim() != len(want) + 1 or tuple(ids.shape[:-1]) != want or tuple(tlp.shape) != tuple(ids.shape):
        raise ValueError(f"teacher_topk_ids shape {tuple(ids.shape)} and teacher_topk_logprobs shape "
                         f"{tuple(tlp.shape)} must both be {want + ('K',)} for student_logits shape "
                         f"{tuple(student_logits.shape)}")
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(f"teacher_topk_ids must be an integer tensor, got {ids.dtype}")
    present = (ids >= 0) & (tlp > float("-inf"))
    if teacher_topk_mask is not None:
        if tuple(teacher_topk_mask.shape) != tuple(ids.shape):
            raise ValueError(f"teacher_topk_mask shape {tuple(teacher_topk_mask.shape)} != "
                             f"teacher_topk_ids shape {tuple(ids.shape)}")
        present = present & teacher_topk_mask.bool()
    vocab = student_logits.shape[-1]
    if bool((ids[present] >= vocab).any()):
        raise ValueError(f"teacher_topk_ids contains ids >= vocab size {vocab}")
    t2 = temperature ** 2 if scale_t2 else 1.0

    def row_loss(s: Tensor, k_ids: Tensor, k_lp: Tensor, pres: Tensor, lab: Tensor) -> Tensor:
        # s: [n, V]; k_ids, k_lp, pres: [n, K]; lab unused (masking is done by _reduce_rows).
        n = s.shape[0]
        s_lp = F.log_softmax(s.float(), dim=-1)                                     # [n, V]
        s_k = s_lp.gather(-1, k_ids.clamp(0, vocab - 1)).masked_fill(~pres, float("-inf"))  # [n, K]
        # Which vocab entries are listed; absent entries scatter into a dropped extra column.
        listed = torch.zeros(n, vocab + 1, dtype=torch.bool, device=s.device)
        listed.scatter_(1, torch.where(pres, k_ids, vocab), True)
        listed = listed[:, :vocab]
        empty = listed.all(-1)                                                      # [n]
        # For empty-tail rows keep the logits finite so logsumexp's backward is not NaN.
        s_tail = torch.logsumexp(s_lp.masked_fill(listed & ~empty[:, None], float("-inf")), -1)
        s_tail = s_tail.masked_fill(empty, float("-inf"))
        t_k = k_lp.float().masked_fill(~pres, float("-inf"))
        t_mass = torch.logsumexp(t_k, -1).clamp_max(0.0)
        t_tail = torch.log((-torch.expm1(t_mass)).clamp_min(TOPK_TAIL_FLOOR))      # log(1 - sum p_k)
        t_tail = t_tail.masked_fill(empty, float("-inf"))
        # Renormalising also absorbs rounding in the cached log-probs (sum slightly != 1).
        logp = F.log_softmax(torch.cat([t_k, t_tail[:, None]], -1) / temperature, -1)
        logq = F.log_softmax(torch.cat([s_k, s_tail[:, None]], -1) / temperature, -1)
        logp, logq = logp.clamp_min(LOGP_FLOOR), logq.clamp_min(LOGP_FLOOR)
        return t2 * (_kl(logp, logq) if method == "forward_kl" else _kl(logq, logp))

    return _reduce_rows(row_loss, [student_logits, ids, tlp, present], labels, reduction, chunk_size)
