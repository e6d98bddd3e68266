"""Unstructured magnitude pruning of the decoder's linear layers, per layer.

In each layer the ``round(sparsity * numel)`` weights with the smallest absolute value are set to zero
(Han et al. 2015, "Learning both Weights and Connections for Efficient Neural Networks"; the one-shot,
no-retraining variant used as the baseline in Frantar & Alistarh 2023, "SparseGPT"). Pruning per layer
rather than globally keeps every layer at the same sparsity, so no layer is emptied by a scale mismatch.

The zeros are stored densely (safetensors has no sparse format), so pruning alone does not shrink files;
it shows up as fewer nonzero parameters and composes with quantization.

Run: ``python -c "from compress.prune import prune_model; ..."`` — normally via ``eakd compress``.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from compress import target_linears

log = logging.getLogger(__name__)


def magnitude_mask(weight: Tensor, sparsity: float) -> Tensor:
    """Keep-mask for ``weight`` (any shape): False at the ``round(sparsity * numel)`` smallest ``|w|``.

    Exactly that many entries are False even when magnitudes tie (ties are broken by position), so the
    realized sparsity is ``round(sparsity * numel) / numel``.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    n = weight.numel()
    k = int(round(sparsity * n))
    mask = torch.ones(n, dtype=torch.bool, device=weight.device)
    if k > 0:
        drop = torch.topk(weight.detach().abs().flatten().float(), k, largest=False, sorted=False).indices
        mask[drop] = False
    return mask.view_as(weight)


@torch.no_grad()
def prune_model(model: nn.Module, sparsity: float, skip: tuple[str, ...] = ("lm_head",)) -> dict:
    """Zero the smallest-magnitude weights of every decoder ``nn.Linear`` in place.

    Returns ``{"sparsity_target", "sparsity_realized", "layers", "zeros", "weights"}`` where the realized
    sparsity counts all zeros in the pruned layers (zeros that were already there included).
    """
    layers = zeros = total = 0
    for _name, linear in target_linears(model, skip=skip):
        mask = magnitude_mask(linear.weight, sparsity)
        linear.weight.mul_(mask.to(linear.weight.dtype))
        layers += 1
        zeros += int((linear.weight == 0).sum())
        total += linear.weight.numel()
    realized = zeros / total if total else 0.0
    log.info("magnitude: pruned %d linear layers to sparsity %.4f (target %.4f)", layers, realized, sparsity)
    return {"sparsity_target": sparsity, "sparsity_realized": realized, "layers": layers,
            "zeros": zeros, "weights": total}
