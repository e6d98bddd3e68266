"""What one batch costs: collating encoded rows, the student's hidden states and logits at the labelled
(assistant) positions, the training loss (CE, offline top-k or cross-tokenizer KD, online full-vocabulary KD) and
one evaluation pass over held-out rows.

Owns the loss plumbing every training mode shares — :func:`assistant_loss` is what one micro-batch of the step loop
(:mod:`distill.train.loop`) costs, :func:`eval_rows` the validation figures ``metrics.json`` and
:mod:`distill.evaluate` report. Only the labelled positions go through the LM head, so prompt positions never build
``vocab``-wide logits. The divergences themselves live in :mod:`distill.train.losses` (online KD after Hinton et
al. 2015, GKD's divergences after Agarwal et al. 2024).

May import: torch, the train config and :mod:`distill.train.data`; :mod:`distill.train.losses` and
:mod:`distill.train.xtok_train` function-local. Never :mod:`distill.train.loop` (which calls it).
"""

from __future__ import annotations

import torch

from distill.train.config import KDConfig
from distill.train.data import IGNORE


def collate(rows: list[tuple], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        x, y = r[0], r[1]
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    batch = {"input_ids": ids, "labels": labels, "attention_mask": mask}
    if len(rows[0]) == 4:  # KD rows: top-k per labelled position, concatenated in row-major order
        batch["topk_ids"] = torch.tensor([t for r in rows for t in r[2]], dtype=torch.long)
        batch["topk_logprobs"] = torch.tensor([t for r in rows for t in r[3]], dtype=torch.float32)
    elif len(rows[0]) == 3:  # cross-tokenizer KD rows (distill.train.xtok_train)
        from distill.train.xtok_train import collate_xtok

        batch.update(collate_xtok([r[2] for r in rows]))
    return batch


def labelled_hidden(model, batch: dict[str, torch.Tensor], autocast_dtype: torch.dtype | None):
    """Final hidden states at the labelled positions: ``(hidden [N, H], targets [N], batch on the model's
    device, the base model)`` (a peft model's base, whose ``lm_head`` maps hidden -> logits)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    device = next(base.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    with _autocast(device, autocast_dtype):
        hidden = base.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE
    return hidden[:, :-1][keep], targets[keep], batch, base


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype else torch.autocast(device.type, enabled=False)


def labelled_logits(model, batch: dict[str, torch.Tensor], autocast_dtype: torch.dtype | None):
    """Logits at the labelled positions only: hidden [B, L, H] -> selected [N, H] -> logits [N, V].

    Returns ``(logits [N, V], targets [N], batch on the model's device)``; prompt positions never build
    vocab-wide logits.
    """
    hidden, targets, batch, base = labelled_hidden(model, batch, autocast_dtype)
    with _autocast(hidden.device, autocast_dtype):
        logits = base.lm_head(hidden)
    return logits, targets, batch


def online_kd_terms(student_head, hidden: torch.Tensor, teacher_head, teacher_hidden: torch.Tensor,
                    targets: torch.Tensor, kd: KDConfig, autocast_dtype: torch.dtype | None):
    """Online KD without vocab-wide tensors for every position: student ``hidden`` [N, H] (with grad), the
    teacher's ``teacher_hidden`` [N, H] (no grad), ``targets`` [N] -> ``(loss, ce, kd_term)`` as
    :func:`mixed_loss_terms` computes them from full logits.

    ``kd.chunk_size`` positions at a time build both models' ``[n, V]`` logits through their LM heads, and,
    under non-reentrant activation checkpointing, rebuild them in backward: the largest tensors are
    ``O(chunk x V)`` instead of the student's and the teacher's ``[N, V]`` fp32 logits plus the student's
    gradient of them (3 x 400 MB for 2,000 positions of a 49k vocabulary), for one more LM-head matmul.
    """
    from torch.utils.checkpoint import checkpoint

    from distill.train.losses import kd_loss

    n = targets.numel()
    step = kd.chunk_size or max(n, 1)

    def chunk(h: torch.Tensor, ht: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with _autocast(h.device, autocast_dtype):
            logits = student_head(h)
            with torch.no_grad():
                t_logits = teacher_head(ht)
        ce = torch.nn.functional.cross_entropy(logits.float(), t, reduction="sum")
        div = kd_loss(logits[None], t_logits[None].to(logits.dtype), t[None], method=kd.method,
                      temperature=kd.temperature, reduction="sum", **kd.method_kw())
        return torch.stack([ce, div])

    total = hidden[:0].float().sum().expand(2)  # 0.0, still attached to the graph when nothing is labelled
    for i in range(0, n, step):
        args = (hidden[i:i + step], teacher_hidden[i:i + step], targets[i:i + step])
        if torch.is_grad_enabled() and hidden.requires_grad:
            total = total + checkpoint(chunk, *args, use_reentrant=False, preserve_rng_state=False)
        else:
            total = total + chunk(*args)
    ce, kd_term = total[0] / max(n, 1), total[1] / max(n, 1)
    return (1 - kd.alpha_ce) * kd_term + kd.alpha_ce * ce, ce, kd_term


@torch.no_grad()
def teacher_logits(teacher, batch: dict[str, torch.Tensor], autocast_dtype: torch.dtype | None) -> torch.Tensor:
    """The online teacher's logits [N, V] at the batch's labelled positions (the student's positions)."""
    return labelled_logits(teacher, batch, autocast_dtype)[0]


def mixed_loss_terms(logits: torch.Tensor, targets: torch.Tensor, batch: dict[str, torch.Tensor],
                     kd: KDConfig | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(loss, ce, kd_term): mean CE on ``targets`` [N]; with ``kd`` and the teacher's full logits
    (``teacher_logits`` [N, V], online KD) or its top-k in the batch the loss is
    ``(1 - alpha_ce) * KD + alpha_ce * CE`` and ``kd_term`` is the KD term, else None."""
    ce = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="mean")
    if kd is not None and kd.enabled and "teacher_logits" in batch:
        from distill.train.losses import kd_loss

        kd_term = kd_loss(logits[None], batch["teacher_logits"][None].to(logits.dtype), targets[None], method=kd.method,
                          temperature=kd.temperature, chunk_size=kd.chunk_size, **kd.method_kw())
        return (1 - kd.alpha_ce) * kd_term + kd.alpha_ce * ce, ce, kd_term
    if kd is not None and kd.enabled and "topk_ids" in batch:
        from distill.train.losses import topk_kd_loss

        kd_term = topk_kd_loss(logits[None], batch["topk_ids"][None], batch["topk_logprobs"][None],
                               targets[None], method=kd.method, temperature=kd.temperature)
        return (1 - kd.alpha_ce) * kd_term + kd.alpha_ce * ce, ce, kd_term
    if kd is not None and kd.enabled and "xt_ids" in batch:
        from distill.train.xtok_train import xtok_kd_term

        kd_term = xtok_kd_term(logits, targets, batch, kd)
        return (1 - kd.alpha_ce) * kd_term + kd.alpha_ce * ce, ce, kd_term
    return ce, ce, None


def mixed_loss(logits: torch.Tensor, targets: torch.Tensor, batch: dict[str, torch.Tensor], kd: KDConfig | None) -> torch.Tensor:
    """The training loss of :func:`mixed_loss_terms` alone."""
    return mixed_loss_terms(logits, targets, batch, kd)[0]


def assistant_loss(model, batch: dict[str, torch.Tensor], autocast_dtype: torch.dtype | None,
                   kd: KDConfig | None = None, teacher=None) -> tuple[torch.Tensor, int, dict[str, float | None]]:
    """Mean training loss over labelled positions; (loss, n_tokens, {"ce", "kd"} as floats for the log).
    With an online ``teacher`` both models' logits are built chunk by chunk from their hidden states at the
    labelled positions (see :func:`online_kd_terms`); otherwise as in :func:`mixed_loss_terms`."""
    if teacher is not None and kd is not None and kd.enabled:
        with torch.no_grad():
            t_hidden, _, _, t_base = labelled_hidden(teacher, batch, autocast_dtype)
        hidden, targets, batch, base = labelled_hidden(model, batch, autocast_dtype)
        loss, ce, kd_term = online_kd_terms(base.lm_head, hidden, t_base.lm_head, t_hidden, targets, kd,
                                            autocast_dtype)
    else:
        logits, targets, batch = labelled_logits(model, batch, autocast_dtype)
        loss, ce, kd_term = mixed_loss_terms(logits, targets, batch, kd)
    return loss, int(targets.numel()), {"ce": ce.item(), "kd": None if kd_term is None else kd_term.item()}


@torch.no_grad()
def eval_rows(model, rows: list, pad_id: int, batch_size: int, autocast_dtype, kd: KDConfig | None = None,
              teacher=None) -> dict:
    """One pass over held-out rows: the training loss and the agreement with the teacher's tokens.

    ``{"loss", "agreement": {"top1_agreement" (student argmax == teacher token), "kl_topk" (mean
    KL(teacher || student) over the cached top-k + tail buckets; None without top-k), "kl_full" (mean
    full-vocabulary KL(teacher || student); None without an online ``teacher``), "tokens"}}``;
    both None when there are no rows.
    """
    if not rows:
        return {"loss": None, "agreement": None}
    from distill.train.losses import kd_loss, topk_kd_loss

    was_training = model.training
    model.eval()
    loss_sum, agree, total, kl_sum, kl_full = 0.0, 0, 0, 0.0, 0.0
    for i in range(0, len(rows), batch_size):
        batch = collate(rows[i : i + batch_size], pad_id)
        if teacher is not None:
            batch["teacher_logits"] = teacher_logits(teacher, batch, autocast_dtype)
        logits, targets, batch = labelled_logits(model, batch, autocast_dtype)
        n = int(targets.numel())
        loss_sum += float(mixed_loss(logits, targets, batch, kd)) * n
        agree += int((logits.argmax(-1) == targets).sum())
        total += n
        if "topk_ids" in batch:
            kl_sum += float(topk_kd_loss(logits[None].float(), batch["topk_ids"][None], batch["topk_logprobs"][None],
                                         targets[None], reduction="sum"))
        if "teacher_logits" in batch:
            kl_full += float(kd_loss(logits[None], batch["teacher_logits"][None].to(logits.dtype), targets[None],
                                     reduction="sum", chunk_size=256))
    model.train(was_training)
    has_topk = len(rows[0]) == 4
    return {"loss": loss_sum / max(1, total),
            "agreement": {"top1_agreement": round(agree / max(1, total), 4),
                          "kl_topk": round(kl_sum / max(1, total), 4) if has_topk else None,
                          "kl_full": round(kl_full / max(1, total), 4) if teacher is not None else None, "tokens": total}}
