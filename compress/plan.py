"""What :func:`compress.stage.compress_student` resolves and checks before it loads any weights.

Owns the up-front phase of the compress stage: the eval text, the source folder's manifest, recipe and storage
dtype, the task set for accuracy, the streaming decision (:func:`compress.streamed.streaming_plan`), and every
check of ``cfg.steps`` that can fail before expensive work (order in a chain, per-step settings, quality gates
that need task accuracy). Its result is a :class:`Plan`; nothing here loads a model or writes a file.

May import: :mod:`compress.artifact`, :mod:`compress.config`, :mod:`compress.eval`, :mod:`compress.streamed`,
:mod:`distill.config`, :mod:`distill.evaluate`, :mod:`distill.models`. Not :mod:`compress.stage`, which imports it.

Run: through :func:`compress.stage.compress_student`.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress.artifact import is_grouped_entry, new_manifest, read_manifest
from compress.config import QUANT, STORAGE_DTYPES, STRUCTURED, CompressConfig, OwlFields, PruneFields, Step, SvdStep
from compress.eval import TaskSet, load_tasks
from compress.streamed import streaming_plan
from distill.config import ConfigError
from distill.evaluate import load_eval_text
from distill.models import check_model_dir

# the stage's own log lines: they keep the logger name they have always been printed under
log = logging.getLogger("compress.stage")


@dataclass
class Plan:
    """What a compress run starts from, resolved before any weights are loaded."""

    eval_text: str  # the perplexity text
    eval_source: str  # where it came from (summary.json's eval_text_source)
    source_manifest: dict[str, Any] | None  # the source folder's manifest; None for a plain Hugging Face folder
    manifest: dict[str, Any]  # the first step's manifest: the source's (copied) or a new one, with dtype = storage
    storage: str  # the float dtype every artifact is saved in
    recipe: list[dict[str, Any]]  # the step configs that made the source (its recipe.json), else []
    tasks: TaskSet | None  # held-out questions for task accuracy (None: not measured)
    stream: bool  # block by block (compress.streamed) or the whole model in memory
    stream_why: str  # why, for the log and summary.json
    dataset: str | Path | None  # the eakd dataset calibration (data: dataset/mix) and probes fall back to


def plan_compress(cfg: CompressConfig, model_dir: Path, eval_text: str | None, eval_source: str | None,
                  tasks_dataset: str | Path | None) -> Plan:
    """Check ``cfg`` against ``model_dir`` and resolve everything the steps need; raises ConfigError first."""
    check_model_dir(model_dir)
    eval_text = _eval_text(cfg, eval_text)
    source_manifest = read_manifest(model_dir)
    manifest = copy.deepcopy(source_manifest) if source_manifest else new_manifest()
    storage = _source_dtype(model_dir, source_manifest) if cfg.save_dtype == "auto" else cfg.save_dtype
    manifest["dtype"] = storage
    recipe_path = model_dir / "recipe.json"
    recipe: list[dict[str, Any]] = json.loads(recipe_path.read_text()) if recipe_path.is_file() else []

    _check_order(cfg.steps, manifest, cfg.chain)
    tasks = _load_tasks(cfg, tasks_dataset)
    _check_steps(cfg.steps, tasks)
    stream, stream_why = streaming_plan(cfg, model_dir, source_manifest)  # one block at a time (compress.streamed)
    log.info("compress: %s path (%s)", "streamed" if stream else "whole-model", stream_why)
    if stream and any(s.min_accuracy is not None for s in cfg.steps):
        raise ConfigError("compress.steps[].min_accuracy needs task accuracy, which generates with the whole model; "
                          "the streamed path has none: remove the gate or set compress.streaming: false")
    if stream and (tasks is not None or cfg.eval.probes is not None or cfg.eval.latency):
        log.info("streamed: task accuracy, EA probes and latency need the whole model in memory; not measured")
        tasks = None
    return Plan(eval_text, eval_source or cfg.eval.text_path or "passed in by the caller", source_manifest, manifest,
                storage, recipe, tasks, stream, stream_why, cfg.eval.tasks_dataset or tasks_dataset)


def _eval_text(cfg: CompressConfig, eval_text: str | None) -> str:
    """The caller's eval text, else ``cfg.eval.text_path``'s."""
    if eval_text is None:
        if cfg.eval.text_path is None:
            raise ConfigError("compress needs an eval text: set compress.eval.text_path or pass eval_text")
        eval_text = load_eval_text(cfg.eval.text_path)
    elif cfg.eval.text_path is not None:
        log.info("using the eval text passed in; compress.eval.text_path (%s) is ignored", cfg.eval.text_path)
    return eval_text


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


def _load_tasks(cfg: CompressConfig, tasks_dataset: str | Path | None) -> TaskSet | None:
    """The held-out questions of ``cfg.eval.tasks_dataset``, else of the caller's dataset (when it has them)."""
    tasks = None
    if cfg.eval.max_examples and cfg.eval.tasks_dataset:
        tasks = load_tasks(cfg.eval.tasks_dataset, cfg.eval.max_examples)
    elif cfg.eval.max_examples and tasks_dataset is not None:
        try:  # the caller's dataset: without held-out gold answers there is just no task accuracy
            tasks = load_tasks(tasks_dataset, cfg.eval.max_examples)
        except ConfigError as exc:
            log.warning("no task accuracy in compress: %s", exc)
    return tasks


def _check_steps(steps: list[Step], tasks: TaskSet | None) -> None:
    """Refuse a step whose settings do not fit together, or whose gate needs task accuracy that is not measured.

    A field of another method never gets here: each method's config class refuses it (compress.config)."""
    for i, step in enumerate(steps):
        if step.min_accuracy is not None and tasks is None:
            raise ConfigError(f"compress.steps[{i}].min_accuracy needs task accuracy: set compress.eval.tasks_dataset "
                              "to an eakd dataset with gold answers (the pipeline uses its generated one) and "
                              "compress.eval.max_examples > 0")
        if isinstance(step, PruneFields):
            step.nm_tuple()  # validates N:M before any work
        if isinstance(step, OwlFields) and step.allocation == "owl" and step.nm is not None:
            raise ConfigError(f"compress.steps[{i}].allocation: owl sets a sparsity per block for unstructured "
                              f"wanda/sparsegpt, not {step.method} with nm {step.nm}")
        if isinstance(step, SvdStep) and step.rank_allocation != "auto" and step.rank_ratio is not None:
            raise ConfigError(f"compress.steps[{i}].rank_allocation splits a param_reduction budget over the layers of "
                              f"svd/asvd/svdllm, not {step.method} with rank_ratio; remove it (or rank_ratio)")
        if step.trained and not step.recover_steps:
            raise ConfigError(f"compress.steps[{i}] ({step.method}): set recover_steps to the number of "
                              "quantization-aware training steps (e.g. 50)")


def _check_order(steps: list[Step], manifest: dict[str, Any], chain: bool) -> None:
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
