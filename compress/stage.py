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

The stage in phases: :mod:`compress.plan` checks and resolves everything before any weights load,
:mod:`compress.calib_data` picks the calibration windows, :mod:`compress.methods` runs one step on the model
in memory (:mod:`compress.streamed`: block by block); this module sets up the run, writes each step's
artifact, measures it against its quality gates and keeps ``summary.json``.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from compress.artifact import load_compressed, save_compressed, write_folder_files
from compress.calib_data import calibration_windows
from compress.card import step_card
from compress.config import (
    RECOVERABLE,  # noqa: F401  (re-exported, as the next two: defined here before compress.config derived them)
    SPARSIFYING,  # noqa: F401
    TRAINED,  # noqa: F401
    CalibrationConfig,  # noqa: F401  (re-exported: the tests build it from compress.stage)
    CompressConfig,
    CompressStep,  # noqa: F401  (re-exported: the tests and bench build steps with it from compress.stage)
    EvalConfig,  # noqa: F401  (re-exported: the tests and bench build it from compress.stage)
    RankBudgetFields,
    Step,
    recover_steps,
)
from compress.eval import measure, probe_prompts
from compress.methods import apply_step, round_to_storage, scalar_stats
from compress.plan import Plan, plan_compress
from compress.streamed import measure_streamed, source_configs, stream_step
from compress.streamed_resume import BlockCheckpoints, resume_key
from distill.config import ConfigError
from distill.io import publish_dir, write_text_atomic
from distill.models import load_tokenizer

log = logging.getLogger(__name__)

# the name bench/compress_llmcompressor.py and tests/compress/test_calibration_data.py import (compress.calib_data)
_calibration = calibration_windows


class QualityGateFailed(ConfigError):
    """A step's perplexity rose past its ``max_ppl_increase`` or its task accuracy fell below its
    ``min_accuracy``: the chain stops, nothing broken is published."""


@dataclass
class _Run:
    """What every step of one :func:`compress_student` call reads: set up once, before the first step."""

    cfg: CompressConfig
    plan: Plan
    model_dir: Path
    out_dir: Path
    tokenizer: Any
    calib: Tensor | None  # the calibration windows [n_samples, seq_len] (None: no step needs them)
    probes: list | None  # EA probe prompts (None: not measured)
    baseline: dict[str, Any]  # the source model's measurements
    summary: dict[str, Any]  # summary.json, filled in step by step
    teacher: nn.Module | None  # the pre-compression model, for steps with recover_steps
    configs: Any  # streamed: the source's (config, generation config) every step folder is written with
    source_state: tuple[dict[str, Any], list[dict[str, Any]]]  # (manifest, recipe) of the source, untouched


@dataclass
class _Chain:
    """What a step starts from and hands on to the next."""

    model: nn.Module | None  # in memory, fp32 (None on the streamed path)
    manifest: dict[str, Any]
    recipe: list[dict[str, Any]]
    before: dict[str, Any]  # its measurements
    previous: Path  # its folder (the streamed path reads the weights from there)


@dataclass
class _StepResult:
    """What :func:`_write_step` measured and decided, for the summary."""

    stats: dict[str, Any]
    after: dict[str, Any]
    gate: str | None
    why: str
    method_seconds: float


def compress_student(cfg: CompressConfig, model_dir: Path, out_dir: Path, eval_text: str | None = None,
                     eval_source: str | None = None, calib_text: str | None = None,
                     calib_source: str | None = None, tasks_dataset: str | Path | None = None) -> Path:
    """Measure ``model_dir``, apply ``cfg.steps`` in order, save each step under ``out_dir``; returns ``out_dir``.

    ``eval_text`` is the perplexity text; when None it is read from ``cfg.eval.text_path``. ``eval_source``
    says where the text came from (recorded in ``summary.json``; defaults to ``cfg.eval.text_path``).
    ``tasks_dataset``: the eakd dataset whose held-out questions give task accuracy when
    ``cfg.eval.tasks_dataset`` is not set (the pipeline passes its generated dataset).

    Phases: :func:`compress.plan.plan_compress` (every check, before any weights load), :func:`_setup` (load,
    calibrate, measure the baseline), :func:`_compress_step` per step (method, artifact, measurement, gate,
    summary), then ``summary.json`` marked complete.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    plan = plan_compress(cfg, model_dir, eval_text, eval_source, tasks_dataset)
    run, chain = _setup(cfg, plan, model_dir, out_dir, calib_text, calib_source)
    for index, step in enumerate(cfg.steps, start=1):
        _compress_step(run, index, step, chain)
    run.summary["complete"] = True
    _write_json(out_dir / "summary.json", run.summary)
    if not cfg.steps:
        log.info("compress: no steps configured; wrote the baseline only (%s)", out_dir / "summary.json")
    return out_dir


def _setup(cfg: CompressConfig, plan: Plan, model_dir: Path, out_dir: Path, calib_text: str | None,
           calib_source: str | None) -> tuple[_Run, _Chain]:
    """Load the source model (fp32: the compression math runs in fp32, the storage dtype is applied on save),
    draw the calibration windows, clear a killed run's leftovers, measure the baseline and start the summary;
    returns the run and what its first step starts from."""
    stream = plan.stream
    tokenizer = load_tokenizer(model_dir)
    _check_eval_text(tokenizer, plan, cfg.eval)
    model = None if stream else load_compressed(model_dir, dtype="float32")
    calib, calib_from = None, None
    if any(step.calibrated or recover_steps(step) or (isinstance(step, RankBudgetFields) and step.rank_allocation == "fisher")
           for step in cfg.steps):
        calib, calib_from = calibration_windows(cfg.calibration, tokenizer, calib_text, calib_source, plan.dataset)
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(out_dir)
    probes = None if stream else probe_prompts(cfg.eval.probes, plan.dataset)
    baseline = (measure_streamed(model_dir, tokenizer, plan.eval_text, cfg.eval) if stream
                else measure(model, tokenizer, plan.eval_text, model_dir, cfg.eval, plan.tasks, probes))
    log.info("baseline %s: ppl %.3f, params %s, bytes %s", model_dir, baseline["perplexity"],
             _fmt(baseline["params_total"]), _fmt(baseline["bytes_on_disk"], "B"))
    summary = _new_summary(cfg, plan, model_dir, baseline, calib, calib_from)
    source_state = (copy.deepcopy(plan.manifest), list(plan.recipe))
    # the pre-compression model teaches recovery steps (kept only when one asks for it)
    teacher = copy.deepcopy(model).requires_grad_(False) if any(recover_steps(s) for s in cfg.steps) else None
    configs = source_configs(model_dir) if stream else None
    return (_Run(cfg, plan, model_dir, out_dir, tokenizer, calib, probes, baseline, summary, teacher, configs,
                 source_state), _Chain(model, plan.manifest, plan.recipe, baseline, model_dir))


def _check_eval_text(tokenizer: Any, plan: Plan, ev: EvalConfig) -> None:
    """Fail before loading anything when the perplexity text cannot fill one window: where the text came from
    and the two fixes, in one line (the generic error would come from deep inside the baseline measurement)."""
    n = len(tokenizer(plan.eval_text, add_special_tokens=False, verbose=False)["input_ids"])
    if n < ev.window:
        raise ConfigError(f"compress.eval: the perplexity text ({plan.eval_source}) has {n} tokens, fewer than one "
                          f"window of {ev.window}; set compress.eval.text_path to a longer text (WikiText-2 test, "
                          "../shared/data/wikitext-2/wiki.test.tokens, is used when it is there) or lower "
                          "compress.eval.window")


def _new_summary(cfg: CompressConfig, plan: Plan, model_dir: Path, baseline: dict[str, Any], calib: Tensor | None,
                 calib_from: str | None) -> dict[str, Any]:
    """``summary.json`` before the first step: the source, how it was measured and calibrated, no steps yet."""
    return {
        "source": str(model_dir),
        "eval_text_source": plan.eval_source,
        "baseline": baseline,
        "steps": [],
        "eval": {**cfg.eval.model_dump(mode="json"), "protocol": "full" if cfg.eval.max_windows is None else "quick",
                 "windows": baseline["windows"], "tokens": baseline["tokens"], "dtype": baseline["dtype"]},
        "calibration": {**cfg.calibration.model_dump(mode="json"), "source": calib_from} if calib is not None else None,
        "tasks": None if plan.tasks is None else {"dataset": plan.tasks.source, "rows": len(plan.tasks.rows)},
        "save_dtype": plan.storage,
        "chain": cfg.chain,
        "streamed": plan.stream,  # block by block (compress.streamed) or the whole model in memory, and why
        "streaming_why": plan.stream_why,
        "complete": False,
    }


def _compress_step(run: _Run, index: int, step: Step, chain: _Chain) -> None:
    """Step ``index`` (from 1): apply it to ``chain`` (side by side: reset to the source first), publish its
    artifact unless its gate failed, record it in ``summary.json``; ``chain`` becomes what the next step starts
    from (updated in place, so a replaced model is freed as soon as its successor is loaded).

    Raises :class:`QualityGateFailed` (after writing the summary) when the step fails its gate."""
    cfg = run.cfg
    dirname = f"{index:02d}-{step.method}"
    name = step.name or dirname
    start = time.perf_counter()
    if not cfg.chain and index > 1:  # side by side: every step from the source model
        chain.model = None if run.plan.stream else load_compressed(run.model_dir, dtype="float32")
        chain.manifest, chain.recipe = copy.deepcopy(run.source_state[0]), list(run.source_state[1])
        chain.before, chain.previous = run.baseline, run.model_dir
    final = run.out_dir / dirname
    result = _write_step(run, index, step, name, chain, final)
    seconds = time.perf_counter() - start
    before, after, gate = chain.before, result.after, result.gate
    run.summary["steps"].append({"name": name, "method": step.method, "params": step.params(), "stats": result.stats,
                                 "before": before, "after": after, "artifact": str(final) if gate != "failed" else None,
                                 "seconds": seconds, "method_seconds": round(result.method_seconds, 2), "gate": gate})
    if gate == "failed":
        message = (f"quality gate: step {index} ({name}) {result.why}; its artifact was not saved and the chain "
                   "stopped. Loosen the gate, or use a gentler setting or a data-aware method for this step")
        run.summary["stopped"] = message
        _write_json(run.out_dir / "summary.json", run.summary)
        raise QualityGateFailed(message)
    _write_json(run.out_dir / "summary.json", run.summary)
    log.info("step %d/%d %s: ppl %.3f -> %.3f, params %s -> %s (nonzero %s), bytes %s -> %s, %.1fs",
             index, len(cfg.steps), step.method, before["perplexity"], after["perplexity"],
             _fmt(before["params_total"]), _fmt(after["params_total"]), _fmt(after["params_nonzero"]),
             _fmt(before["bytes_on_disk"], "B"), _fmt(after["bytes_on_disk"], "B"), seconds)
    chain.before, chain.previous = after, final


def _write_step(run: _Run, index: int, step: Step, name: str, chain: _Chain, final: Path) -> _StepResult:
    """Run the step's method on ``chain`` (in place), write the artifact with its ``recipe.json``,
    ``metrics.json`` and README into a temp folder beside ``final``, measure it and check its gate; the
    folder is renamed to ``final`` unless the gate failed, and a temp folder never outlives the call."""
    stream, storage = run.plan.stream, run.plan.storage
    codes: dict[str, tuple] = {}
    tmp = Path(tempfile.mkdtemp(dir=run.out_dir, prefix=f".{final.name}.tmp-{os.getpid()}-"))
    try:
        t_method = time.perf_counter()
        try:  # streamed: reads the previous step's artifact, writes tmp/model.safetensors block by block
            streamed = stream_step(chain.previous, tmp, step, chain.manifest, run.calib, storage,
                                   work=_block_work(run, step, chain, final)) if stream else None
            stats = (scalar_stats(streamed.stats) if stream
                     else apply_step(chain.model, step, chain.manifest, codes, run.calib, run.teacher))
        except ValueError as exc:  # the methods validate their arguments against the model before any change
            raise ConfigError(f"compress.steps[{index - 1}] ({step.method}): {exc}") from None
        method_seconds = time.perf_counter() - t_method  # the method alone (with recovery; streamed: with writing)
        if not stream:
            round_to_storage(chain.model, storage, chain.manifest)
        chain.manifest["steps"].append({"name": name, "method": step.method, "params": step.params(), "stats": stats})
        chain.recipe.append(step.model_dump(mode="json"))
        if stream:
            write_folder_files(tmp, *run.configs, run.tokenizer, chain.manifest, streamed.tied, storage)
        else:
            save_compressed(chain.model, tmp, run.tokenizer, chain.manifest, dtype=storage, codes=codes)
        _write_json(tmp / "recipe.json", chain.recipe)
        after = (measure_streamed(tmp, run.tokenizer, run.plan.eval_text, run.cfg.eval) if stream
                 else measure(chain.model, run.tokenizer, run.plan.eval_text, tmp, run.cfg.eval, run.plan.tasks,
                              run.probes))
        gate, why = _gate(step, run.baseline, after)
        _write_json(tmp / "metrics.json", {"name": name, "method": step.method, "before": chain.before,
                                           "after": after, "stats": stats, "gate": gate})
        (tmp / "README.md").write_text(model_card(name, run.model_dir, chain.recipe, run.baseline, after, run.summary,
                                                  gate))
        if gate != "failed":
            _publish(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return _StepResult(stats, after, gate, why, method_seconds)


def _block_work(run: _Run, step: Step, chain: _Chain, final: Path) -> BlockCheckpoints:
    """Where a streamed step keeps its parts and checkpoints (``.<step>.blocks`` beside its folder), so a killed run's
    rerun takes up its last checkpointed block (:mod:`compress.streamed_resume`)."""
    key = resume_key(step.model_dump(mode="json"), run.plan.storage, run.calib, Path(chain.previous))
    return BlockCheckpoints(run.out_dir / f".{final.name}.blocks", key)


def _gate(step: Step, baseline: dict[str, Any], after: dict[str, Any]) -> tuple[str | None, str]:
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


def model_card(name: str, source: Path, recipe: list[dict[str, Any]], baseline: dict[str, Any], after: dict[str, Any],
               summary: dict[str, Any], gate: str | None) -> str:
    """The README.md beside a compressed artifact (:func:`compress.card.step_card`: Hub front matter, lineage,
    recipe, measured quality and size)."""
    return step_card(name, source, recipe, baseline, after, summary, gate)


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
