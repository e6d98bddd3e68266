"""Training in several processes: joining the process group a launcher set up, and summing every rank's gradients.

Owns what ``torch.distributed`` does for the step loop (:mod:`distill.train.loop`): each process of an
``accelerate launch`` / ``torchrun`` run (:mod:`distill.train.launch`) computes its share of an optimizer step's
micro-batches, :func:`all_reduce_grads` adds the shares up, so every rank steps the same weights.

May import: torch and the environment the launcher sets (``WORLD_SIZE``, ``LOCAL_RANK``); nothing of eakd.
"""

from __future__ import annotations

import os

import torch


def join_process_group(device: str) -> tuple[int, int, str]:
    """(rank, world size, this process's device). One process: (0, 1, device). Under a launcher that set
    ``WORLD_SIZE`` > 1 (``accelerate launch``, ``torchrun``): join the process group — NCCL with the
    GPU ``LOCAL_RANK`` on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    import torch.distributed as dist

    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def all_reduce_grads(params: list[torch.nn.Parameter], bucket: int = 1 << 24) -> None:
    """Sum every rank's gradients in place (flattened into buckets of ``bucket`` elements, few calls)."""
    import torch.distributed as dist

    grads = [p.grad for p in params if p.grad is not None]
    start = 0
    while start < len(grads):
        end, size = start, 0
        while end < len(grads) and (end == start or size + grads[end].numel() <= bucket):
            size += grads[end].numel()
            end += 1
        flat = torch.cat([g.reshape(-1) for g in grads[start:end]])
        dist.all_reduce(flat)
        offset = 0
        for g in grads[start:end]:
            g.copy_(flat[offset: offset + g.numel()].view_as(g))
            offset += g.numel()
        start = end
