"""Calibration statistics for the activation-aware low-rank methods of :mod:`compress.lowrank_aware`.

Owns what those methods measure on calibration text for each decoder linear of the *original* model:
its inputs' Gram ``Σ x x^T`` and mean ``|x|`` (one forward, :func:`compress.calibrate.collect_input_stats`;
layers that read the same tensor share one), and, for the Fisher rank allocation, the empirical-Fisher
diagonal of its output (one forward + backward, :func:`collect_output_fisher`). The result,
:class:`LayerCalibration`, can be reused across methods (see :mod:`compress.lowrank_aware` for why one
pass over the original model rather than block by block).

Run: ``calibration = calibrate_layers(model, batches, fisher=True)``, then
``factorize_model_aware(model, None, "svdllm", 0.2, calibration=calibration)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from compress.calibrate import InputStats, collect_input_stats
from compress.linears import target_linears

# In Llama-style blocks these read exactly the tensor their sibling reads (the same normed hidden state),
# so one Gram serves all of them: 3/7 fewer [in, in] accumulations and less memory.
_SHARED_INPUT = {"k_proj": "q_proj", "v_proj": "q_proj", "up_proj": "gate_proj"}



@dataclass
class LayerCalibration:
    """What the aware methods measure on calibration text for each decoder linear; reusable across methods."""

    stats: dict[str, InputStats]  # inputs' Gram and mean |x|; one shared object for q/k/v and for gate/up
    fisher: dict[str, Tensor] | None = None  # [out] mean squared loss gradient per output channel
    seconds: float = 0.0  # wall time of the calibration passes


def collect_output_fisher(model: nn.Module, batches: Tensor, names: list[str],
                          batch_size: int = 2) -> dict[str, Tensor]:
    """Empirical-Fisher diagonal of each named linear's output: ``{name: f [out]}`` (float64), ``f_j`` = mean
    over predicted tokens of ``(∂ℓ/∂y_j)²`` with ``ℓ`` the summed next-token cross-entropy on ``batches`` [n, T].

    One forward + backward per micro-batch (about 3x a forward). Only activations get gradients: the
    weights' ``requires_grad`` is switched off for the pass and restored afterwards.
    """
    sums: dict[str, Tensor] = {}

    def hook(name: str) -> Callable:
        def on_output(_module: nn.Module, _args: tuple, out: Tensor) -> None:
            def on_grad(grad: Tensor) -> None:
                g2 = grad.detach().reshape(-1, grad.shape[-1]).to(torch.float64).square().sum(0)
                sums[name] = sums[name] + g2 if name in sums else g2
            out.register_hook(on_grad)
        return on_output

    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    device = params[0].device
    predicted = 0
    try:
        for p in params:
            p.requires_grad_(False)
        with torch.enable_grad():
            for chunk in batches.split(batch_size):
                chunk = chunk.to(device)
                embeds = model.get_input_embeddings()(chunk).detach().requires_grad_(True)
                logits = model(inputs_embeds=embeds, use_cache=False).logits
                loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(),
                                                         chunk[:, 1:].flatten(), reduction="sum")
                loss.backward()
                predicted += chunk[:, 1:].numel()
    finally:
        for h in handles:
            h.remove()
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
    missing = [n for n in names if n not in sums]
    if missing:
        raise ValueError(f"no loss gradient reached {missing[:3]}; is the model's forward using them?")
    return {n: sums[n] / max(predicted, 1) for n in names}


def calibrate_layers(model: nn.Module, batches: Tensor, fisher: bool = False, batch_size: int = 8,
                     skip: tuple[str, ...] = ("lm_head",)) -> LayerCalibration:
    """Statistics of every decoder linear of the *original* model on ``batches`` [n, T] token ids.

    Input statistics from one forward (:func:`compress.calibrate.collect_input_stats`; layers in
    :data:`_SHARED_INPUT` share their sibling's); with ``fisher=True`` also the output Fisher diagonal
    (:func:`collect_output_fisher`). Pass the result to :func:`compress.lowrank_aware.factorize_model_aware` as ``calibration`` to
    compare methods on one calibration.
    """
    if batches.dim() != 2 or batches.numel() == 0:
        raise ValueError(f"calibration batches must be [n, T] token ids, got {tuple(batches.shape)}")
    start = time.perf_counter()
    names = [n for n, _ in target_linears(model, skip=skip, include_low_rank=False)]
    source: dict[str, str] = {}
    for name in names:
        prefix, _, leaf = name.rpartition(".")
        sibling = f"{prefix}.{_SHARED_INPUT[leaf]}" if leaf in _SHARED_INPUT else None
        source[name] = sibling if sibling in names else name
    hooked = {n: model.get_submodule(n) for n in sorted(set(source.values()), key=names.index)}
    stats = collect_input_stats(model, batches, hooked, batch_size=batch_size)
    missing = [n for n in hooked if n not in stats]
    if missing:
        raise ValueError(f"calibration never reached {missing[:3]}; is the model's forward using them?")
    result = LayerCalibration({n: stats[source[n]] for n in names})
    if fisher:
        result.fisher = collect_output_fisher(model, batches, names, batch_size=max(1, batch_size // 4))
    result.seconds = time.perf_counter() - start
    return result
