"""Recovery distillation after structured pruning or factorization: the compressed model learns back
from the model it was cut from.

Minitron (Muralidharan et al. 2024, arXiv 2407.14679) prunes depth/width and then retrains the smaller
model with logit distillation from the unpruned one — far cheaper than training from scratch and better
than plain fine-tuning. Here: forward KL(teacher ‖ student) on every next-token position of the
calibration windows (:func:`distill.losses.kd_loss`, the same loss the distill stage uses), AdamW with a
cosine schedule, full fine-tuning of the compressed model in fp32. The teacher is the pre-compression
model already in memory, so nothing is generated or downloaded.

Run: set ``recover_steps`` on a ``depth``/``width``/``svd``/``asvd``/``svdllm`` step of ``eakd compress``.
"""

from __future__ import annotations

import logging
import math
import time

import torch
from torch import Tensor, nn
from tqdm import tqdm

from distill.losses import kd_loss

log = logging.getLogger(__name__)


def recover(student: nn.Module, teacher: nn.Module, batches: Tensor, steps: int, lr: float = 1e-4,
            batch_size: int = 4, seed: int = 0, chunk_size: int | None = 128) -> dict:
    """Distil ``teacher`` into ``student`` (in place) for ``steps`` AdamW steps on ``batches`` [n, T] ids.

    Micro-batches of ``batch_size`` windows are drawn in a seeded order (cycling over ``batches``).
    Returns ``{"steps", "lr", "loss_first", "loss_last", "seconds", "tokens"}`` (losses averaged over the
    first/last fifth of the steps).
    """
    if steps < 1:
        raise ValueError(f"recover_steps must be >= 1, got {steps}")
    if lr <= 0:
        raise ValueError(f"recover_lr must be > 0, got {lr}")
    device = next(student.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    teacher.eval()
    student.train()
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    order = torch.randperm(batches.shape[0], generator=gen)
    losses: list[float] = []
    start = time.perf_counter()
    try:
        for step in tqdm(range(steps), desc="recover", unit="step", leave=False):
            idx = order[(torch.arange(batch_size) + step * batch_size) % batches.shape[0]]
            ids = batches[idx].to(device)
            with torch.no_grad():
                t_logits = teacher(input_ids=ids, use_cache=False).logits[:, :-1]
            s_logits = student(input_ids=ids, use_cache=False).logits[:, :-1]
            loss = kd_loss(s_logits, t_logits, ids[:, 1:], method="forward_kl", chunk_size=chunk_size)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if step % 10 == 0 or step == steps - 1:
                log.info("recover step %d | kd %.4f | lr %.2e", step, losses[-1], sched.get_last_lr()[0])
    finally:
        student.eval()
    fifth = max(1, steps // 5)
    return {"steps": steps, "lr": lr, "loss_first": sum(losses[:fifth]) / fifth,
            "loss_last": sum(losses[-fifth:]) / fifth, "seconds": time.perf_counter() - start,
            "tokens": steps * batch_size * batches.shape[1]}
