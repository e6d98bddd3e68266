"""Online and on-policy logit KD from a served teacher: rows scored by a vLLM server's ``prompt_logprobs``.

With ``train.kd.teacher: http://HOST:PORT/v1`` the teacher is never loaded beside the student: each micro-batch's
rows (dataset answers, or the student's own samples when ``kd.on_policy > 0``, GKD's lambda after Agarwal et al.
2024) are sent to the server (:class:`distill.teacher.scoring.ServedTeacher`), and its top-k at the labelled
positions turns them into the same ``(input_ids, labels, topk_ids, topk_logprobs)`` rows that offline KD reads from
the dataset (:func:`distill.train.data.tokenize_row_kd`), so the loss is the offline one,
:func:`distill.train.losses.topk_kd_loss` (top-k + tail bucket). Same tokenizer only: the server's is checked
against the student's first.

Run: ``python -c "from distill.train.served import topk_at_labels; help(topk_at_labels)"``.
"""

from __future__ import annotations

import logging

from distill.net import redact_url
from distill.teacher.scoring import Position, ServedTeacher
from distill.train.config import KDConfig
from distill.train.data import IGNORE

log = logging.getLogger(__name__)


def topk_at_labels(positions: list[Position], labels: list[int],
                   width: int) -> tuple[list[list[int]], list[list[float]]]:
    """The teacher's top-k at a row's labelled positions, in the order the loss reads them.

    ``positions`` [L]: per token ``t`` of the row the teacher's distribution of token ``t`` given tokens ``< t``
    (``prompt_logprobs[t]``; None at ``t = 0``); ``labels`` [L] (unshifted, :data:`IGNORE` off the answer).
    The loss predicts ``labels[t]`` from the hidden state at ``t - 1`` (``labels[:, 1:]``), which is what the
    teacher saw to give ``positions[t]``, so the targets are ``t = 1 .. L-1`` with ``labels[t] != IGNORE``.
    Returns ``(topk_ids [N, width], topk_logprobs [N, width])`` for those ``N`` positions, each padded with id -1
    and logprob -inf (absent, see ``topk_kd_loss``) and cut to ``width``.
    """
    if len(positions) != len(labels):
        raise ValueError(f"{len(positions)} scored positions for a row of {len(labels)} tokens")
    ids, lps = [], []
    for t in range(1, len(labels)):
        if labels[t] == IGNORE:
            continue
        if positions[t] is None:
            raise ValueError(f"the teacher gave no distribution at labelled position {t}")
        k_ids, k_lps = positions[t]
        pad = max(0, width - len(k_ids))
        ids.append(list(k_ids[:width]) + [-1] * pad)
        lps.append(list(k_lps[:width]) + [float("-inf")] * pad)
    return ids, lps


def served_rows(teacher: ServedTeacher, rows: list[tuple]) -> list[tuple]:
    """``(input_ids, labels)`` rows -> ``(input_ids, labels, topk_ids, topk_logprobs)`` scored by ``teacher``
    (one request for the rows not in its cache). Width ``k + 1``: vLLM adds the labelled token when it is not
    among the top-k."""
    if not rows:
        return rows
    scores = teacher.score([list(r[0]) for r in rows])
    return [(r[0], r[1], *topk_at_labels(s, list(r[1]), teacher.top_k + 1)) for r, s in zip(rows, scores)]


def load_served_teacher(kd: KDConfig, student_tok) -> ServedTeacher:
    """The served teacher at ``kd.teacher``, its tokenizer checked against the student's (fails fast, before any
    model is loaded)."""
    teacher = ServedTeacher(kd.teacher, kd.served_top_k, kd.served_api_key_env, kd.served_cache_path)
    teacher.check_tokenizer(student_tok)
    log.info("served KD teacher %s at %s: top-%d prompt logprobs, method %s", teacher.model,
             redact_url(kd.teacher), kd.served_top_k, kd.method)
    return teacher
