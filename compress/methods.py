"""One compression step on a whole model in memory: which method module runs each step's ``method``.

Owns the dispatch table from a step's ``method`` to one small function (:data:`_RUNNERS`) over its method
module (:mod:`compress.prune`, :mod:`compress.sparsegpt`, :mod:`compress.factorize`, :mod:`compress.lowrank_aware`,
:mod:`compress.tensorized`, :mod:`compress.structured`, :mod:`compress.quantize`, :mod:`compress.gptq`,
:mod:`compress.awq`, :mod:`compress.qat`, :mod:`compress.qaf`), how each records itself in the artifact's manifest,
and the recovery distillation that may follow (:mod:`compress.recover`; which methods accept it is their config
class's field group, see :mod:`compress.config`). The streamed path (:mod:`compress.streamed`) runs the same
methods one block at a time instead.

May import: the method modules above, :mod:`compress.artifact`, :mod:`compress.config`, :mod:`distill.config`.
Not :mod:`compress.stage` or :mod:`compress.plan`, which import it.

Run: through :func:`compress.stage.compress_student`.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from compress.artifact import grouped_entry, is_grouped_entry, quant_entry
from compress.awq import awq_model
from compress.config import (
    AsvdStep,
    CpStep,
    DepthStep,
    MagnitudeStep,
    PruneFields,
    QafStep,
    QuantFields,
    RecoveryFields,
    RtnInt8Step,
    SparseGptStep,
    Step,
    SvdllmStep,
    SvdStep,
    TuckerStep,
    WandaStep,
    WidthStep,
)
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


def apply_step(model: nn.Module, step: Step, manifest: dict[str, Any], codes: dict[str, tuple],
               calib: Tensor | None, teacher: nn.Module | None = None) -> dict[str, Any]:
    """Run one step in place, record it in ``manifest`` (and quantization codes in ``codes``); returns stats.

    With ``step.recover_steps`` the step ends with recovery distillation from ``teacher`` (the model as it
    was before this chain) on the calibration windows.
    """
    stats = _run_method(model, step, manifest, codes, calib, teacher)
    if isinstance(step, RecoveryFields) and step.recover_steps:
        dropped = set(stats.get("dropped") or [])  # depth pruning: each kept block learns from where it came from
        layer_map = [i for i in range(teacher.config.num_hidden_layers) if i not in dropped]
        stats["recovery"] = recover(model, teacher, calib, step.recover_steps, step.recover_lr,
                                    hint_weight=step.recover_hint_weight,
                                    attention_weight=step.recover_attention_weight, layer_map=layer_map,
                                    adversarial_weight=step.recover_adversarial_weight,
                                    masks=zero_masks(model) if isinstance(step, PruneFields) else None)
    return stats


# --- one function per method: (model, step, manifest, codes, calib, teacher) -> stats -----------------------

def _magnitude(model, step: MagnitudeStep, manifest, codes, calib, teacher) -> dict[str, Any]:
    if step.nm is None:
        return prune_model(model, step.sparsity)
    return magnitude_model(model, step.sparsity, step.nm_tuple())


def _wanda(model, step: WandaStep, manifest, codes, calib, teacher) -> dict[str, Any]:
    return wanda_model(model, calib, step.sparsity, step.nm_tuple(), allocation=step.allocation,
                       owl_m=step.owl_m, owl_lambda=step.owl_lambda)


def _sparsegpt(model, step: SparseGptStep, manifest, codes, calib, teacher) -> dict[str, Any]:
    return sparsegpt_model(model, calib, step.sparsity, step.nm_tuple(), damp=step.damp, allocation=step.allocation,
                           owl_m=step.owl_m, owl_lambda=step.owl_lambda)


def _svd(model, step: SvdStep, manifest, codes, calib, teacher) -> dict[str, Any]:
    """One rank ratio for every layer; without ``rank_ratio``, a budget split over the layers (as asvd/svdllm)."""
    if step.rank_ratio is None:
        return _lowrank_aware(model, step, manifest, codes, calib, teacher)
    result = factorize_model(model, step.rank_ratio)
    manifest["factorized"].update(result["factorized"])
    for name in result["factorized"]:
        manifest["quantized"].pop(name, None)  # its int8 weight no longer exists
    return {"rank_ratio": step.rank_ratio, "layers_factorized": len(result["factorized"]),
            "layers_left_dense": len(result["skipped"]), "weights_before": result["params_before"],
            "weights_after": result["params_after"]}


def _lowrank_aware(model, step: SvdStep | AsvdStep | SvdllmStep, manifest, codes, calib, teacher) -> dict[str, Any]:
    result = factorize_model_aware(model, calib, step.method, step.param_reduction, allocation=step.rank_allocation)
    manifest["factorized"].update(result["factorized"])
    return {"param_reduction": step.param_reduction, "rank_allocation": result["allocation"],
            "layers_factorized": len(result["factorized"]),
            "layers_left_dense": len(result["skipped"]), "weights_before": result["params_before"],
            "weights_after": result["params_after"]}


def _tensorize(model, step: CpStep | TuckerStep, manifest, codes, calib, teacher) -> dict[str, Any]:
    result = tensorize_model(model, step.method, step.param_reduction)
    manifest.setdefault("tensorized", {}).update(result["tensorized"])
    return {"param_reduction": step.param_reduction, "layers_tensorized": len(result["tensorized"]),
            "weights_before": result["params_before"], "weights_after": result["params_after"]}


def _depth(model, step: DepthStep, manifest, codes, calib, teacher) -> dict[str, Any]:
    return depth_prune(model, calib, step.fraction)


def _width(model, step: WidthStep, manifest, codes, calib, teacher) -> dict[str, Any]:
    return width_prune(model, calib, step.mlp_fraction, step.kv_head_fraction)


def _rtn_int8(model, step: RtnInt8Step, manifest, codes, calib, teacher) -> dict[str, Any]:
    for name in quantize_model(model):
        manifest["quantized"][name] = quant_entry()
    return {"layers_quantized": len(manifest["quantized"])}


# grouped quantizers: (model, step, calib, teacher) -> (codes per layer, training stats or None)
_QUANTIZERS: dict[str, Callable[..., tuple[dict[str, tuple], dict[str, Any] | None]]] = {
    "rtn": lambda model, s, calib, teacher: (quantize_model_rtn(model, s.bits, s.group_size, s.symmetric), None),
    "gptq": lambda model, s, calib, teacher: (gptq_model(model, calib, s.bits, s.group_size, s.symmetric, s.damp,
                                                         s.act_order), None),
    "awq": lambda model, s, calib, teacher: (awq_model(model, calib, s.bits, s.group_size, s.symmetric), None),
    "qat": lambda model, s, calib, teacher: qat_model(model, teacher, calib, s.bits, s.group_size, s.symmetric,
                                                      s.recover_steps, s.recover_lr),
    "qaf": lambda model, s, calib, teacher: qaf_model(model, teacher, calib, s.bits, s.group_size, s.symmetric,
                                                      s.lora_rank, s.loftq_iters, s.recover_steps, s.recover_lr),
}


def _quantize(model, step: QuantFields, manifest, codes, calib, teacher) -> dict[str, Any]:
    """rtn/gptq/awq/qat/qaf: the codes go to ``codes``, one grouped manifest entry per layer."""
    m, qaf = step.method, isinstance(step, QafStep)
    result, training = _QUANTIZERS[m](model, step, calib, teacher)
    for name, entry in result.items():
        codes[name] = entry[:5] if qaf else entry[:3]  # qaf: the adapters travel with the codes
        manifest["quantized"][name] = grouped_entry(step.bits, step.group_size, step.symmetric, m, step.entropy_coding,
                                                    step.lora_rank if qaf else None)
    stats = {"layers_quantized": len(result), "bits": step.bits, "group_size": step.group_size}
    if training is not None:
        stats[m] = training
    return stats


# each method's function: the one place a new method is registered (its config class is in compress.config)
_RUNNERS: dict[str, Callable[..., dict[str, Any]]] = {
    "rtn_int8": _rtn_int8, **dict.fromkeys(_QUANTIZERS, _quantize),
    "magnitude": _magnitude, "wanda": _wanda, "sparsegpt": _sparsegpt, "depth": _depth, "width": _width,
    "svd": _svd, "asvd": _lowrank_aware, "svdllm": _lowrank_aware, "cp": _tensorize, "tucker": _tensorize,
}


def _run_method(model: nn.Module, step: Step, manifest: dict[str, Any], codes: dict[str, tuple],
                calib: Tensor | None, teacher: nn.Module | None = None) -> dict[str, Any]:
    """Dispatch ``step`` to its method's function and record what it changed in ``manifest``/``codes``."""
    run = _RUNNERS.get(step.method)
    if run is None:  # unreachable while compress.config's classes and this table agree (tests/compress/test_step_schema.py)
        raise ConfigError(f"compress step method {step.method!r} is not one of {', '.join(_RUNNERS)}")
    stats = run(model, step, manifest, codes, calib, teacher)
    legacy = [n for n, e in manifest["quantized"].items() if not is_grouped_entry(e)]
    if step.method != "rtn_int8" and legacy:
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
