"""The evaluate stage (:func:`evaluate_student`): a student, and the base model it started from, measured side by side.

Three things are measured: perplexity on held-out text (the protocol is in :mod:`distill.eval.perplexity`);
validation loss and agreement with the teacher on the dataset's validation split
(:func:`distill.train.run.eval_rows`: top-1 agreement, KL on the cached top-k); and task accuracy: greedy answers
to validation prompts that have a gold answer, parsed exactly as the dataset builder parsed the teacher's
(:func:`answer_of`) and checked with :func:`distill.answers.answers_match` — per style, plus how often the student
gives the teacher's answer. With ``evaluate.probes`` / ``evaluate.lm_eval``, the EA probes and lm-eval tasks too.

:func:`evaluate_student` reads as its phases; the parts live in :mod:`distill.eval` — ``config``
(:class:`EvaluateConfig`), ``perplexity``, ``grading``, ``measure`` (every metric of one model) and ``report``
(the output folder) — and their public names are importable from here as before.

May import: :mod:`distill.eval`, the shared core (``distill.config``, ``distill.models``, ``distill.generation``);
function-local, ``datasets``, ``distill.provenance``, ``distill.probes`` and ``distill.lmeval``.

Run: ``eakd evaluate CONFIG --model DIR --dataset DIR --out DIR`` (or the pipeline's ``evaluate`` stage);
``python -c "from distill.evaluate import perplexity; ..."`` for perplexity alone.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from distill.config import ConfigError
from distill.eval.config import EvaluateConfig
from distill.eval.grading import (  # noqa: F401  (re-exported: callers import them from here)
    STRUCTURED_COT_EXTRACTION,
    answer_of,
    dataset_extraction,
    score_answers,
    select_task_rows,
)
from distill.eval.measure import EvalInputs, encode_validation, measure_model  # noqa: F401
from distill.eval.perplexity import (  # noqa: F401  (re-exported: callers import them from here)
    DTYPES,
    VALIDATION_TEXT,
    WIKITEXT_TEST,
    count_parameters,
    find_eval_text,
    load_eval_text,
    perplexity,
    teacher_agreement,
    window_ids,
    window_nll,
)
from distill.eval.report import check_out_dir, record_in_model_card, write_evaluation  # noqa: F401
from distill.generation import generate_greedy  # noqa: F401  (re-exported: callers import it from here)
from distill.models import load_tokenizer, resolve_model_path
from distill.train.card import CARD_BEGIN, CARD_END  # noqa: F401  (re-exported: callers import them from here)

log = logging.getLogger(__name__)


def evaluate_student(cfg: EvaluateConfig, model_dir: str | Path, dataset_dir: str | Path, out_dir: str | Path, *,
                     base_model: str | Path | None = None, eval_text: str | None = None,
                     eval_source: str | None = None, teacher_cfg: Any = None,
                     base_keep_layers: int | None = None) -> Path:
    """Measure ``model_dir`` (and ``base_model``, a folder or ``bundled``) on ``dataset_dir``'s validation split
    and the perplexity text; write ``out_dir/eval.json``, ``predictions.jsonl``, ``README.md`` and the config.

    ``eval_text`` is the perplexity text (``eval_source`` says where it came from); when None it is found by
    :func:`find_eval_text` from ``cfg.text_path`` and the dataset. The output appears whole or not at all.
    ``teacher_cfg`` (a :class:`distill.teacher.query.TeacherConfig`): with ``cfg.probes.teacher``, the teacher answers
    the probes too, as the reference for the gap closed. ``base_keep_layers`` (``train.keep_layers``): also measure
    the student's start — the base depth-pruned as training pruned it — so a loss the pruning caused is not read
    as negative transfer from training.
    """
    from distill.provenance import code_version

    t0 = time.perf_counter()
    out, ds_path = Path(out_dir), Path(dataset_dir)
    check_out_dir(out)  # every bad input fails before any model loads
    dd = _load_dataset(ds_path)
    model_path, base_path = _model_paths(model_dir, base_model)
    if eval_text is None:
        eval_text, eval_source = find_eval_text(cfg.text_path, ds_path)
    inputs = _eval_inputs(cfg, model_path, ds_path, dd["validation"], eval_text, eval_source)
    models = [("base", base_path, None), ("start", base_path if base_keep_layers else None, base_keep_layers),
              ("student", model_path, None)]
    results, teacher_probes = _measure_models(cfg, models, inputs, dd, teacher_cfg)
    lm_eval, lm_records = _lm_eval_block(results, dd)
    predictions, probe_rows = _pop_records(results, teacher_probes)
    if lm_eval is not None:  # where lm-eval and the task accuracy scored the same questions: side by side
        from distill.lmeval.run import agreement

        lm_eval["agreement"] = agreement(lm_records, predictions)
    ev = {"format": "eakd-eval/v1", "eakd_version": code_version(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
          "model": str(model_path), "base_model": None if base_path is None else str(base_path), "dataset": str(ds_path),
          "eval_text_source": eval_source or "passed in by the caller",
          "perplexity_protocol": {"window": cfg.window, "max_windows": cfg.max_windows,
                                  "protocol": "full" if cfg.max_windows is None else "quick"},
          "extraction": inputs.extraction.model_dump(mode="json") | {"structured_cot": inputs.structured_cot,
                                                                     "from": inputs.extraction_from},
          "rows": {"validation": inputs.split.num_rows, "task": len(inputs.task_rows)},
          "config": cfg.model_dump(mode="json"), "base": results.get("base"), "start": results.get("start"),
          "student": results["student"],
          "teacher": teacher_probes, "abilities": _abilities(cfg, teacher_probes, results), "lm_eval": lm_eval,
          "seconds": round(time.perf_counter() - t0, 2)}
    write_evaluation(out, cfg, ev, predictions, lm_records, probe_rows)
    log.info("evaluation saved to %s (%.1f s)", out, ev["seconds"])
    return out


def _load_dataset(ds_path: Path) -> Any:
    """The eakd dataset at ``ds_path`` (a ``DatasetDict``); it must have a validation split."""
    from datasets import load_from_disk

    if not (ds_path / "dataset_dict.json").is_file():
        raise ConfigError(f"{ds_path} is not an eakd dataset (no dataset_dict.json); run `eakd generate` first")
    dd = load_from_disk(str(ds_path))
    if "validation" not in dd:
        raise ConfigError(f"{ds_path} has no validation split (it has {', '.join(dd)}); the evaluation scores held-out "
                          "rows: generate with generate.validation_fraction > 0")
    return dd


def _model_paths(model_dir: str | Path, base_model: str | Path | None) -> tuple[Path, Path | None]:
    """(the evaluated model's folder, the base model's — None without one, or when it is the evaluated model)."""
    model_path = resolve_model_path(str(model_dir))
    base_path = resolve_model_path(str(base_model)) if base_model is not None else None
    if base_path is not None and base_path.resolve() == model_path.resolve():
        log.info("the base model is the evaluated model (%s); evaluating it once", model_path)
        base_path = None
    return model_path, base_path


def _eval_inputs(cfg: EvaluateConfig, model_path: Path, ds_path: Path, val: Any, eval_text: str,
                 eval_source: str | None) -> EvalInputs:
    """What every model is measured on: the perplexity text (or why there is none), the validation split, the task
    rows and how their answers are parsed, the device."""
    text, text_skip = _perplexity_text(cfg, model_path, eval_text, eval_source)
    extraction, structured, extraction_from = dataset_extraction(ds_path)
    cols = [c for c in ("id", "style", "gold", "answer", "messages") if c in val.column_names]
    task_rows = select_task_rows(val.select_columns(cols).to_list() if cols else [], cfg.max_examples)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("evaluate.device=cuda but no CUDA device is visible; use evaluate.device=cpu or auto")
    return EvalInputs(text=text, text_skip=text_skip, split=val, task_rows=task_rows, extraction=extraction,
                      structured_cot=structured, extraction_from=extraction_from, device=device)


def _perplexity_text(cfg: EvaluateConfig, model_path: Path, eval_text: str,
                     eval_source: str | None) -> tuple[str | None, str | None]:
    """(the perplexity text, None) — or (None, why) when it is shorter than one window. A configured text must be
    long enough (ConfigError); a fallback text may just be short (perplexity is skipped with a warning)."""
    tok = load_tokenizer(model_path)
    probe = eval_text[: 16 * cfg.window]  # a token spans far fewer than 16 characters: enough to tell, fast
    n_tokens = len(tok(probe, add_special_tokens=False, verbose=False)["input_ids"])
    if n_tokens < cfg.window and len(probe) < len(eval_text):
        n_tokens = len(tok(eval_text, add_special_tokens=False, verbose=False)["input_ids"])
    if n_tokens >= cfg.window:
        return eval_text, None
    text_skip = (f"the eval text ({eval_source}) has {n_tokens} tokens, fewer than one window of {cfg.window}; "
                 "set evaluate.text_path to a longer text or lower evaluate.window")
    if cfg.text_path:
        raise ConfigError(f"evaluate.text_path: {text_skip}")
    log.warning("perplexity skipped: %s", text_skip)
    return None, text_skip


def _measure_models(cfg: EvaluateConfig, models: list[tuple[str, Path | None, int | None]], inputs: EvalInputs,
                    dd: Any, teacher_cfg: Any) -> tuple[dict[str, dict], dict | None]:
    """({name: every metric of that model} for each ``(name, path, keep_layers)`` with a path, the teacher's probe
    results or None). lm-eval tasks are prepared first and the probes built next: a bad task name or probe
    setting fails before the teacher is asked and before any model loads."""
    with tempfile.TemporaryDirectory(prefix="eakd-lmeval-") as lm_work:
        lm_tasks = None
        if cfg.lm_eval is not None:  # before the teacher probes and any model load: a bad task name fails fast
            from distill.lmeval.run import prepare_tasks

            lm_tasks = prepare_tasks(cfg.lm_eval, Path(lm_work))
        probe_prompts, teacher_probes = _probe_setup(cfg, dd, teacher_cfg)
        results = {name: measure_model(p, cfg, inputs, probe_prompts, keep, lm_tasks)
                   for name, p, keep in models if p is not None}
    return results, teacher_probes


def _pop_records(results: dict[str, dict], teacher_probes: dict | None) -> tuple[list[dict], list[dict]]:
    """(``predictions.jsonl``'s rows, ``probes.jsonl``'s rows), each tagged with its model; pops the per-row records
    out of ``results`` and ``teacher_probes`` so ``eval.json`` keeps only the scores."""
    predictions = [{"model": name} | r for name, m in results.items() for r in m["accuracy"].pop("per_row", [])]
    probe_rows = [{"model": name} | r for name, m in [("teacher", teacher_probes or {})] + list(results.items())
                  for r in m.pop("probe_records", [])]
    return predictions, probe_rows


def _probe_setup(cfg: EvaluateConfig, dd: Any, teacher_cfg: Any) -> tuple[list | None, dict | None]:
    """The probe prompts (items whose input a training row used are skipped) and the teacher's probe results."""
    if cfg.probes is None:
        return None, None
    from distill.probes.run import build_prompts, dataset_inputs, probe_teacher

    seen = dataset_inputs(dd)
    try:
        prompts = build_prompts(cfg.probes, seen)
    except ValueError as exc:
        raise ConfigError(f"evaluate.probes: {exc}") from None
    log.info("probes: %d prompts (%d training inputs excluded)", len(prompts), len(seen))
    if not cfg.probes.teacher or teacher_cfg is None:
        return prompts, None
    t = time.perf_counter()
    scores, records = probe_teacher(prompts, cfg.probes, teacher_cfg)
    return prompts, {"model": teacher_cfg.model_id(), "probes": scores | {"seconds": round(time.perf_counter() - t, 2)},
                     "probe_records": records}


def _abilities(cfg: EvaluateConfig, teacher: dict | None, results: dict[str, dict]) -> list[dict] | None:
    """``eval.json``'s ``abilities``: the probe scores of teacher, base, start and student side by side (None without probes)."""
    if cfg.probes is None:
        return None
    from distill.probes.score import ability_table

    get = lambda m: (m or {}).get("probes")  # noqa: E731
    return ability_table(get(teacher), get(results.get("base")), get(results.get("student")), cfg.probes.tolerance,
                         start=get(results.get("start")))


def _lm_eval_block(results: dict[str, dict], dd: Any) -> tuple[dict | None, list[dict]]:
    """eval.json's ``lm_eval`` (each task's metrics, model beside model; None when not run) and the scored samples
    (for ``lm_eval_samples.jsonl``); pops the per-model lm-eval results out of ``results``."""
    per_model = {name: m.pop("lm_eval") for name, m in results.items() if "lm_eval" in m}
    if not per_model:
        return None, []
    from distill.lmeval.run import compare

    train = dd.get("train")
    train_ids = ({str(i).rsplit(":", 2)[0] for i in train["id"]}  # a row id is <seed id>:<style>:<n>
                 if train is not None and "id" in train.column_names else None)
    block = compare(per_model, train_ids)
    return block, [{"model": name} | rec for name, r in per_model.items() for rec in r.pop("records")]
