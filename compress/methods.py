"""One compression step on a whole model in memory: which method module runs each ``CompressStep.method``.

Owns the dispatch from a step's ``method`` to its function (:mod:`compress.prune`, :mod:`compress.sparsegpt`,
:mod:`compress.factorize`, :mod:`compress.lowrank_aware`, :mod:`compress.tensorized`, :mod:`compress.structured`,
:mod:`compress.quantize`, :mod:`compress.gptq`, :mod:`compress.awq`, :mod:`compress.qat`, :mod:`compress.qaf`),
how each records itself in the artifact's manifest, the recovery distillation that may follow
(:mod:`compress.recover`), and which methods accept recovery (:data:`RECOVERABLE`, :data:`TRAINED`). The
streamed path (:mod:`compress.streamed`) runs the same methods one block at a time instead.

May import: the method modules above, :mod:`compress.artifact`, :mod:`compress.config`, :mod:`distill.config`.
Not :mod:`compress.stage` or :mod:`compress.plan`, which import it.

Run: through :func:`compress.stage.compress_student`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from compress.artifact import grouped_entry, is_grouped_entry, quant_entry
from compress.awq import awq_model
from compress.config import QUANT, CompressStep, Method
from compress.factorize import factorize_model
from compress.gptq import gptq_model
from compress.lowrank_aware import factorize_model_aware
from compress.prune import magnitude_model, prune_model, wanda_model
from compress.qaf import qaf_model
from compress.qat import qat_model
from compress.quantize import quantize_model, quantize_model_rtn
from compress.recover import recover, zero_masks
from compress.sparsegpt import sparsegpt_model
from compress.structured import depth_prune, width_prune
from compress.tensorized import tensorize_model
from distill.config import ConfigError

RECOVERABLE = {"depth", "width", "svd", "asvd", "svdllm", "cp", "tucker", "magnitude", "wanda", "sparsegpt"}
SPARSIFYING = {"magnitude", "wanda", "sparsegpt"}  # recovery keeps their zeros (compress.recover.zero_masks)
TRAINED = {"qat", "qaf"}  # train with the pre-compression model as teacher inside the method (recover_steps = its steps)


def scalar_stats(stats: dict[str, Any]) -> dict[str, Any]:
    """Keep what fits in a summary (numbers, short lists, small dicts), drop per-layer tensors."""
    out = {}
    for k, v in stats.items():
        if isinstance(v, (int, float, str, bool)) or v is None:
            out[k] = v
        elif isinstance(v, (list, tuple)) and len(v) <= 64 and all(isinstance(x, (int, float)) for x in v):
            out[k] = list(v)
        elif isinstance(v, dict) and len(v) <= 16 and all(isinstance(x, (int, float, list, str)) for x in v.values()):
            out[k] = v
    return out


def apply_step(model: nn.Module, step: CompressStep, manifest: dict[str, Any], codes: dict[str, tuple],
               calib: Tensor | None, teacher: nn.Module | None = None) -> dict[str, Any]:
    """Run one step in place, record it in ``manifest`` (and quantization codes in ``codes``); returns stats.

    With ``step.recover_steps`` the step ends with recovery distillation from ``teacher`` (the model as it
    was before this chain) on the calibration windows.
    """
    stats = _run_method(model, step, manifest, codes, calib, teacher)
    if step.recover_steps and step.method not in TRAINED:
        dropped = set(stats.get("dropped") or [])  # depth pruning: each kept block learns from where it came from
        layer_map = [i for i in range(teacher.config.num_hidden_layers) if i not in dropped]
        stats["recovery"] = recover(model, teacher, calib, step.recover_steps, step.recover_lr,
                                    hint_weight=step.recover_hint_weight,
                                    attention_weight=step.recover_attention_weight, layer_map=layer_map,
                                    adversarial_weight=step.recover_adversarial_weight,
                                    masks=zero_masks(model) if step.method in SPARSIFYING else None)
    return stats


def _run_method(model: nn.Module, step: CompressStep, manifest: dict[str, Any], codes: dict[str, tuple],
                calib: Tensor | None, teacher: nn.Module | None = None) -> dict[str, Any]:
    """Dispatch ``step`` to its method's function and record what it changed in ``manifest``/``codes``."""
    m = step.method
    if m == "magnitude" and step.nm is None:
        stats = prune_model(model, step.sparsity)
    elif m == "magnitude":
        stats = magnitude_model(model, step.sparsity, step.nm_tuple())
    elif m == "wanda":
        stats = wanda_model(model, calib, step.sparsity, step.nm_tuple(), allocation=step.allocation,
                            owl_m=step.owl_m, owl_lambda=step.owl_lambda)
    elif m == "sparsegpt":
        stats = sparsegpt_model(model, calib, step.sparsity, step.nm_tuple(), damp=step.damp, allocation=step.allocation,
                                owl_m=step.owl_m, owl_lambda=step.owl_lambda)
    elif m == "svd" and step.rank_ratio is not None:
        result = factorize_model(model, step.rank_ratio)
        manifest["factorized"].update(result["factorized"])
        for name in result["factorized"]:
            manifest["quantized"].pop(name, None)  # its int8 weight no longer exists
        stats = {"rank_ratio": step.rank_ratio, "layers_factorized": len(result["factorized"]),
                 "layers_left_dense": len(result["skipped"]), "weights_before": result["params_before"],
                 "weights_after": result["params_after"]}
    elif m in ("svd", "asvd", "svdllm"):
        result = factorize_model_aware(model, calib, m, step.param_reduction, allocation=step.rank_allocation)
        manifest["factorized"].update(result["factorized"])
        stats = {"param_reduction": step.param_reduction, "rank_allocation": result["allocation"],
                 "layers_factorized": len(result["factorized"]),
                 "layers_left_dense": len(result["skipped"]), "weights_before": result["params_before"],
                 "weights_after": result["params_after"]}
    elif m in ("cp", "tucker"):
        result = tensorize_model(model, m, step.param_reduction)
        manifest.setdefault("tensorized", {}).update(result["tensorized"])
        stats = {"param_reduction": step.param_reduction, "layers_tensorized": len(result["tensorized"]),
                 "weights_before": result["params_before"], "weights_after": result["params_after"]}
    elif m == "depth":
        stats = depth_prune(model, calib, step.fraction)
    elif m == "width":
        stats = width_prune(model, calib, step.mlp_fraction, step.kv_head_fraction)
    elif m == "rtn_int8":
        for name in quantize_model(model):
            manifest["quantized"][name] = quant_entry()
        stats = {"layers_quantized": len(manifest["quantized"])}
    elif m in QUANT:
        training = None
        if m == "qat":
            result, training = qat_model(model, teacher, calib, step.bits, step.group_size, step.symmetric,
                                         step.recover_steps, step.recover_lr)
        elif m == "qaf":
            result, training = qaf_model(model, teacher, calib, step.bits, step.group_size, step.symmetric,
                                         step.lora_rank, step.loftq_iters, step.recover_steps, step.recover_lr)
        elif m == "rtn":
            result = quantize_model_rtn(model, step.bits, step.group_size, step.symmetric)
        elif m == "gptq":
            result = gptq_model(model, calib, step.bits, step.group_size, step.symmetric, step.damp, step.act_order)
        else:
            result = awq_model(model, calib, step.bits, step.group_size, step.symmetric)
        for name, entry in result.items():
            codes[name] = entry[:5] if m == "qaf" else entry[:3]  # qaf: the adapters travel with the codes
            manifest["quantized"][name] = grouped_entry(step.bits, step.group_size, step.symmetric, m, step.entropy_coding,
                                                        step.lora_rank if m == "qaf" else None)
        stats = {"layers_quantized": len(result), "bits": step.bits, "group_size": step.group_size}
        if training is not None:
            stats[m] = training
    else:  # unreachable while Method and this chain agree
        raise ConfigError(f"compress step method {m!r} is not one of {', '.join(Method.__args__)}")
    legacy = [n for n, e in manifest["quantized"].items() if not is_grouped_entry(e)]
    if m != "rtn_int8" and legacy:
        # Layers quantized by an earlier rtn_int8 step must stay on their int8 grid, or the artifact would
        # not hold what was measured.
        quantize_model(model, names=legacy)
    return scalar_stats(stats)


@torch.no_grad()
def round_to_storage(model: nn.Module, dtype: str, manifest: dict[str, Any]) -> None:
    """Round float weights to the storage dtype in place, so what is measured is what is saved."""
    if dtype == "float32":
        return
    target = getattr(torch, dtype)
    int8_weights = {f"{name}.weight" for name in manifest["quantized"]}  # codes: their grid is exact already
    for name, p in model.named_parameters():
        if name not in int8_weights and p.is_floating_point():
            p.copy_(p.to(target).to(p.dtype))
