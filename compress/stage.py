"""The compress stage: apply pruning, low-rank factorization and int8 quantization to a student, in order.

:func:`compress_student` loads a safetensors model folder (plain Hugging Face or a previous eakd-compressed
artifact), measures it, then applies ``cfg.steps`` as a chain. After each step it writes a complete,
loadable artifact to ``out_dir/<NN>-<method>/`` (see :mod:`compress.artifact`) with ``recipe.json`` (the
step configs applied so far) and ``metrics.json``, and finally ``out_dir/summary.json`` with the
baseline and a before/after record per step. Every folder and JSON file is written to a temp name and
renamed into place, so a crash never leaves a half-written step that looks complete.

Methods and sources: ``magnitude`` (Han et al. 2015), ``svd`` (Denton et al. 2014), ``rtn_int8``
(the RTN baseline of Dettmers et al. 2022 / Frantar et al. 2023), ``qat`` (:mod:`compress.qat`), ``qaf`` (:mod:`compress.qaf`); see
:mod:`compress` for the rest.

Run: ``python -c "from compress.stage import CompressConfig, compress_student; ..."`` — or ``eakd``.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from compress.artifact import (
    grouped_entry,
    is_grouped_entry,
    load_compressed,
    new_manifest,
    quant_entry,
    read_manifest,
    save_compressed,
    write_folder_files,
)
from compress.awq import awq_model
from compress.calibrate import calibration_batches, conversation_text
from compress.card import step_card
from compress.config import (
    CALIBRATED,
    QUANT,
    STORAGE_DTYPES,
    STRUCTURED,
    CalibrationConfig,
    CompressConfig,
    CompressStep,
    EvalConfig,  # noqa: F401  (re-exported: the tests and bench build it from compress.stage)
    Method,
)
from compress.eval import load_tasks, measure, probe_prompts
from compress.factorize import factorize_model
from compress.gptq import gptq_model
from compress.lowrank_aware import factorize_model_aware
from compress.prune import magnitude_model, prune_model, wanda_model
from compress.qaf import qaf_model
from compress.qat import qat_model
from compress.quantize import quantize_model, quantize_model_rtn
from compress.recover import recover, zero_masks
from compress.sparsegpt import sparsegpt_model
from compress.streamed import measure_streamed, source_configs, stream_step, streaming_plan
from compress.structured import depth_prune, width_prune
from compress.tensorized import tensorize_model
from distill.config import ConfigError, shared_data_dir
from distill.evaluate import load_eval_text
from distill.io import publish_dir, write_text_atomic
from distill.models import check_model_dir, load_tokenizer

log = logging.getLogger(__name__)


def _source_dtype(model_dir: Path, manifest: dict[str, Any] | None) -> str:
    """The dtype the source folder stores its floats in (``float32`` when it does not say)."""
    found = manifest.get("dtype") if manifest else None
    if not found:
        config = json.loads((model_dir / "config.json").read_text())
        found = config.get("dtype") or config.get("torch_dtype")
    if found not in STORAGE_DTYPES:
        log.info("source %s does not name a float storage dtype (%r); saving float32", model_dir, found)
        return "float32"
    return found


def _scalar_stats(stats: dict[str, Any]) -> dict[str, Any]:
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


RECOVERABLE = {"depth", "width", "svd", "asvd", "svdllm", "cp", "tucker", "magnitude", "wanda", "sparsegpt"}
SPARSIFYING = {"magnitude", "wanda", "sparsegpt"}  # recovery keeps their zeros (compress.recover.zero_masks)
TRAINED = {"qat", "qaf"}  # train with the pre-compression model as teacher inside the method (recover_steps = its steps)


def _apply(model: nn.Module, step: CompressStep, manifest: dict[str, Any], codes: dict[str, tuple],
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
    return _scalar_stats(stats)


def _check_order(steps: list[CompressStep], manifest: dict[str, Any], chain: bool) -> None:
    """Refuse chains whose later steps would invalidate what earlier steps recorded (before any work)."""
    if any(is_grouped_entry(e) for e in manifest["quantized"].values()) and steps:
        raise ConfigError("the source model is already int4/grouped-quantized (rtn/gptq/awq); compress the "
                          "unquantized model instead — quantization must be the last step")
    if not chain:
        return
    for i, step in enumerate(steps):
        later = [s.method for s in steps[i + 1:]]
        if step.method in QUANT and later:
            raise ConfigError(f"compress.steps[{i}] ({step.method}) must be the last step: {later} after it would "
                              "change weights that are stored as quantization codes")
        if step.method in STRUCTURED:
            earlier = [s.method for s in steps[:i] if s.method not in STRUCTURED | {"magnitude", "wanda", "sparsegpt"}]
            if earlier or manifest["factorized"] or manifest.get("tensorized") or manifest["quantized"]:
                raise ConfigError(f"compress.steps[{i}] ({step.method}) changes the architecture; put it before "
                                  f"factorization/quantization steps (found {earlier or 'a compressed source'})")


@torch.no_grad()
def _round_to_storage(model: nn.Module, dtype: str, manifest: dict[str, Any]) -> None:
    """Round float weights to the storage dtype in place, so what is measured is what is saved."""
    if dtype == "float32":
        return
    target = getattr(torch, dtype)
    int8_weights = {f"{name}.weight" for name in manifest["quantized"]}  # codes: their grid is exact already
    for name, p in model.named_parameters():
        if name not in int8_weights and p.is_floating_point():
            p.copy_(p.to(target).to(p.dtype))


def _write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def _remove_stale_temps(out_dir: Path) -> None:
    """Delete folders a killed run left behind (``.<step>.tmp-<pid>-*``, ``.<step>.old-<pid>``) whose
    process is gone."""
    for p in [*out_dir.glob(".*.tmp-*"), *out_dir.glob(".*.old-*")]:
        marker = ".tmp-" if ".tmp-" in p.name else ".old-"
        try:
            pid = int(p.name.split(marker, 1)[1].split("-", 1)[0])
        except ValueError:
            continue
        try:
            os.kill(pid, 0)
            continue  # a live process owns it
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        log.info("removing %s, left by a killed run", p)
        shutil.rmtree(p, ignore_errors=True)


def _publish(tmp: Path, final: Path) -> None:
    """Rename the finished ``tmp`` folder to ``final``, replacing an older ``final`` from a previous run."""
    publish_dir(tmp, final)


def _fmt(n: int | None, unit: str = "") -> str:
    if n is None:
        return "?"
    return f"{n / 1e6:.2f}M{unit}" if n >= 1e5 else f"{n}{unit}"


def model_card(name: str, source: Path, recipe: list[dict[str, Any]], baseline: dict[str, Any], after: dict[str, Any],
               summary: dict[str, Any], gate: str | None) -> str:
    """The README.md beside a compressed artifact (:func:`compress.card.step_card`: Hub front matter, lineage,
    recipe, measured quality and size)."""
    return step_card(name, source, recipe, baseline, after, summary, gate)


class QualityGateFailed(ConfigError):
    """A step's perplexity rose past its ``max_ppl_increase`` or its task accuracy fell below its
    ``min_accuracy``: the chain stops, nothing broken is published."""


def _calibration(cfg: CalibrationConfig, tokenizer: Any, text: str | None, source: str | None,
                 dataset: str | Path | None = None) -> tuple[Tensor, str]:
    """The calibration batch [n_samples, seq_len] and where its windows came from (``cfg.data``)."""
    if cfg.data == "text":
        return _text_calibration(cfg, cfg.n_samples, tokenizer, text, source)
    folder = cfg.dataset or dataset
    if folder is None:
        raise ConfigError(f"compress.calibration.data: {cfg.data} needs an eakd dataset; set "
                          "compress.calibration.dataset to its folder (the pipeline passes its generated one)")
    try:
        convo = conversation_text(tokenizer, folder)
        part = calibration_batches(tokenizer, convo, cfg.n_samples if cfg.data == "dataset" else cfg.n_samples // 2,
                                   cfg.seq_len, cfg.seed) if cfg.data == "dataset" or cfg.n_samples > 1 else None
    except ValueError as exc:
        raise ConfigError(f"compress.calibration (data: {cfg.data}, dataset {folder}): {exc}") from None
    if cfg.data == "dataset":
        return part, f"dataset conversations ({folder})"
    rest, text_from = _text_calibration(cfg, cfg.n_samples - (0 if part is None else len(part)), tokenizer, text, source)
    batch = rest if part is None else torch.cat([part, rest])
    return batch, f"mix: dataset conversations ({folder}) + {text_from}"


def _text_calibration(cfg: CalibrationConfig, n_samples: int, tokenizer: Any, text: str | None,
                      source: str | None) -> tuple[Tensor, str]:
    """``n_samples`` windows of the calibration text (text_path, else the caller's, else WikiText-2 valid)."""
    if cfg.text_path is not None:
        text, source = load_eval_text(cfg.text_path), cfg.text_path
    elif text is None:
        data = shared_data_dir()
        path = data / "wikitext-2" / "wiki.valid.tokens" if data else None
        if path is None or not path.is_file():
            raise ConfigError("compress.calibration.text_path: a data-aware step needs calibration text and "
                              "../shared/data/wikitext-2/wiki.valid.tokens is absent; set it to a text file")
        text, source = load_eval_text(path), "wikitext-2/wiki.valid.tokens"
    try:
        batch = calibration_batches(tokenizer, text, n_samples, cfg.seq_len, cfg.seed)
    except ValueError as exc:
        raise ConfigError(f"compress.calibration: {exc}") from None
    return batch, source or "passed in by the caller"


def _gate(step: CompressStep, baseline: dict[str, Any], after: dict[str, Any]) -> tuple[str | None, str]:
    """(None | "passed" | "failed", why it failed) for a step's quality gates, measured against the baseline."""
    why = []
    rise = after["perplexity"] / baseline["perplexity"] - 1.0
    if step.max_ppl_increase is not None and rise > step.max_ppl_increase:
        why.append(f"raised perplexity {baseline['perplexity']:.3f} -> {after['perplexity']:.3f} (+{100 * rise:.1f}%), "
                   f"more than max_ppl_increase {100 * step.max_ppl_increase:.1f}%")
    if step.min_accuracy is not None:
        acc = after["accuracy"]
        if acc["accuracy"] < step.min_accuracy:
            was = baseline["accuracy"]
            why.append(f"answered {acc['correct']}/{acc['rows']} held-out questions right ({100 * acc['accuracy']:.1f}%; "
                       f"the source model {was['correct']}/{was['rows']}), below min_accuracy {100 * step.min_accuracy:.1f}%")
    if step.max_ppl_increase is None and step.min_accuracy is None:
        return None, ""
    return ("failed" if why else "passed"), " and ".join(why)


def compress_student(cfg: CompressConfig, model_dir: Path, out_dir: Path, eval_text: str | None = None,
                     eval_source: str | None = None, calib_text: str | None = None,
                     calib_source: str | None = None, tasks_dataset: str | Path | None = None) -> Path:
    """Measure ``model_dir``, apply ``cfg.steps`` in order, save each step under ``out_dir``; returns ``out_dir``.

    ``eval_text`` is the perplexity text; when None it is read from ``cfg.eval.text_path``. ``eval_source``
    says where the text came from (recorded in ``summary.json``; defaults to ``cfg.eval.text_path``).
    ``tasks_dataset``: the eakd dataset whose held-out questions give task accuracy when
    ``cfg.eval.tasks_dataset`` is not set (the pipeline passes its generated dataset).
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    check_model_dir(model_dir)
    if eval_text is None:
        if cfg.eval.text_path is None:
            raise ConfigError("compress needs an eval text: set compress.eval.text_path or pass eval_text")
        eval_text = load_eval_text(cfg.eval.text_path)
    elif cfg.eval.text_path is not None:
        log.info("using the eval text passed in; compress.eval.text_path (%s) is ignored", cfg.eval.text_path)

    source_manifest = read_manifest(model_dir)
    manifest = copy.deepcopy(source_manifest) if source_manifest else new_manifest()
    storage = _source_dtype(model_dir, source_manifest) if cfg.save_dtype == "auto" else cfg.save_dtype
    manifest["dtype"] = storage
    recipe_path = model_dir / "recipe.json"
    recipe: list[dict[str, Any]] = json.loads(recipe_path.read_text()) if recipe_path.is_file() else []

    _check_order(cfg.steps, manifest, cfg.chain)
    tasks = None
    if cfg.eval.max_examples and cfg.eval.tasks_dataset:
        tasks = load_tasks(cfg.eval.tasks_dataset, cfg.eval.max_examples)
    elif cfg.eval.max_examples and tasks_dataset is not None:
        try:  # the caller's dataset: without held-out gold answers there is just no task accuracy
            tasks = load_tasks(tasks_dataset, cfg.eval.max_examples)
        except ConfigError as exc:
            log.warning("no task accuracy in compress: %s", exc)
    for i, step in enumerate(cfg.steps):
        if step.min_accuracy is not None and tasks is None:
            raise ConfigError(f"compress.steps[{i}].min_accuracy needs task accuracy: set compress.eval.tasks_dataset "
                              "to an eakd dataset with gold answers (the pipeline uses its generated one) and "
                              "compress.eval.max_examples > 0")
        step.nm_tuple()  # validates N:M before any work
        if step.allocation == "owl" and (step.method not in ("wanda", "sparsegpt") or step.nm is not None):
            raise ConfigError(f"compress.steps[{i}].allocation: owl sets a sparsity per block for unstructured "
                              f"wanda/sparsegpt, not {step.method}{' with nm ' + step.nm if step.nm else ''}")
        if step.rank_allocation != "auto" and (step.method not in ("svd", "asvd", "svdllm") or step.rank_ratio is not None):
            raise ConfigError(f"compress.steps[{i}].rank_allocation splits a param_reduction budget over the layers of "
                              f"svd/asvd/svdllm, not {step.method}{' with rank_ratio' if step.rank_ratio is not None else ''}"
                              "; remove it (or rank_ratio)")
        if step.method in TRAINED and not step.recover_steps:
            raise ConfigError(f"compress.steps[{i}] ({step.method}): set recover_steps to the number of "
                              "quantization-aware training steps (e.g. 50)")
        if step.recover_steps and step.method not in RECOVERABLE | TRAINED:
            raise ConfigError(f"compress.steps[{i}].recover_steps: recovery follows {', '.join(sorted(RECOVERABLE))} "
                              f"steps, not {step.method} (it would move pruned/quantized weights off their grid)")
    stream, stream_why = streaming_plan(cfg, model_dir, source_manifest)  # one block at a time (compress.streamed)
    log.info("compress: %s path (%s)", "streamed" if stream else "whole-model", stream_why)
    if stream and any(s.min_accuracy is not None for s in cfg.steps):
        raise ConfigError("compress.steps[].min_accuracy needs task accuracy, which generates with the whole model; "
                          "the streamed path has none: remove the gate or set compress.streaming: false")
    if stream and (tasks is not None or cfg.eval.probes is not None or cfg.eval.latency):
        log.info("streamed: task accuracy, EA probes and latency need the whole model in memory; not measured")
        tasks = None
    # compression math in fp32; storage dtype on save
    model = None if stream else load_compressed(model_dir, dtype="float32")
    tokenizer = load_tokenizer(model_dir)
    calib, calib_from = None, None
    if any(step.method in CALIBRATED or step.recover_steps or step.rank_allocation == "fisher" for step in cfg.steps):
        calib, calib_from = _calibration(cfg.calibration, tokenizer, calib_text, calib_source,
                                         cfg.eval.tasks_dataset or tasks_dataset)
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(out_dir)
    probes = None if stream else probe_prompts(cfg.eval.probes, cfg.eval.tasks_dataset or tasks_dataset)
    baseline = (measure_streamed(model_dir, tokenizer, eval_text, cfg.eval) if stream
                else measure(model, tokenizer, eval_text, model_dir, cfg.eval, tasks, probes))
    log.info("baseline %s: ppl %.3f, params %s, bytes %s", model_dir, baseline["perplexity"],
             _fmt(baseline["params_total"]), _fmt(baseline["bytes_on_disk"], "B"))
    summary: dict[str, Any] = {
        "source": str(model_dir),
        "eval_text_source": eval_source or cfg.eval.text_path or "passed in by the caller",
        "baseline": baseline,
        "steps": [],
        "eval": {**cfg.eval.model_dump(mode="json"), "protocol": "full" if cfg.eval.max_windows is None else "quick",
                 "windows": baseline["windows"], "tokens": baseline["tokens"], "dtype": baseline["dtype"]},
        "calibration": {**cfg.calibration.model_dump(mode="json"), "source": calib_from} if calib is not None else None,
        "tasks": None if tasks is None else {"dataset": tasks.source, "rows": len(tasks.rows)},
        "save_dtype": storage,
        "chain": cfg.chain,
        "streamed": stream,  # block by block (compress.streamed) or the whole model in memory, and why
        "streaming_why": stream_why,
        "complete": False,
    }
    before = baseline
    source_state = (copy.deepcopy(manifest), list(recipe))
    # the pre-compression model teaches recovery steps (kept only when one asks for it)
    teacher = copy.deepcopy(model).requires_grad_(False) if any(s.recover_steps for s in cfg.steps) else None
    configs, previous = source_configs(model_dir) if stream else None, model_dir
    for index, step in enumerate(cfg.steps, start=1):
        dirname = f"{index:02d}-{step.method}"
        name = step.name or dirname
        start = time.perf_counter()
        if not cfg.chain and index > 1:  # side by side: every step from the source model
            model = None if stream else load_compressed(model_dir, dtype="float32")
            manifest, recipe = copy.deepcopy(source_state[0]), list(source_state[1])
            before, previous = baseline, model_dir
        codes: dict[str, tuple] = {}
        final = out_dir / dirname
        tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".{dirname}.tmp-{os.getpid()}-"))
        try:
            t_method = time.perf_counter()
            try:  # streamed: reads the previous step's artifact, writes tmp/model.safetensors block by block
                streamed = stream_step(previous, tmp, step, manifest, calib, storage) if stream else None
                stats = _scalar_stats(streamed.stats) if stream else _apply(model, step, manifest, codes, calib, teacher)
            except ValueError as exc:  # the methods validate their arguments against the model before any change
                raise ConfigError(f"compress.steps[{index - 1}] ({step.method}): {exc}") from None
            method_seconds = time.perf_counter() - t_method  # the method alone (with recovery; streamed: with writing)
            if not stream:
                _round_to_storage(model, storage, manifest)
            manifest["steps"].append({"name": name, "method": step.method, "params": step.params(), "stats": stats})
            recipe.append(step.model_dump(mode="json"))
            if stream:
                write_folder_files(tmp, *configs, tokenizer, manifest, streamed.tied, storage)
            else:
                save_compressed(model, tmp, tokenizer, manifest, dtype=storage, codes=codes)
            _write_json(tmp / "recipe.json", recipe)
            after = (measure_streamed(tmp, tokenizer, eval_text, cfg.eval) if stream
                     else measure(model, tokenizer, eval_text, tmp, cfg.eval, tasks, probes))
            gate, why = _gate(step, baseline, after)
            _write_json(tmp / "metrics.json", {"name": name, "method": step.method, "before": before,
                                               "after": after, "stats": stats, "gate": gate})
            (tmp / "README.md").write_text(model_card(name, model_dir, recipe, baseline, after, summary, gate))
            if gate != "failed":
                _publish(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        seconds = time.perf_counter() - start
        summary["steps"].append({"name": name, "method": step.method, "params": step.params(), "stats": stats,
                                 "before": before, "after": after, "artifact": str(final) if gate != "failed" else None,
                                 "seconds": seconds, "method_seconds": round(method_seconds, 2), "gate": gate})
        if gate == "failed":
            message = (f"quality gate: step {index} ({name}) {why}; its artifact was not saved and the chain stopped. "
                       "Loosen the gate, or use a gentler setting or a data-aware method for this step")
            summary["stopped"] = message
            _write_json(out_dir / "summary.json", summary)
            raise QualityGateFailed(message)
        _write_json(out_dir / "summary.json", summary)
        log.info("step %d/%d %s: ppl %.3f -> %.3f, params %s -> %s (nonzero %s), bytes %s -> %s, %.1fs",
                 index, len(cfg.steps), step.method, before["perplexity"], after["perplexity"],
                 _fmt(before["params_total"]), _fmt(after["params_total"]), _fmt(after["params_nonzero"]),
                 _fmt(before["bytes_on_disk"], "B"), _fmt(after["bytes_on_disk"], "B"), seconds)
        before, previous = after, final
    summary["complete"] = True
    _write_json(out_dir / "summary.json", summary)
    if not cfg.steps:
        log.info("compress: no steps configured; wrote the baseline only (%s)", out_dir / "summary.json")
    return out_dir

