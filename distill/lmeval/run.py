"""Run lm-evaluation-harness tasks on an already-loaded model, through lm-eval's own Python API.

Three phases, each usable alone:

* :func:`prepare_tasks` (before any model loads; fails fast): import lm-eval, copy the shipped task YAMLs
  (``distill/lmeval/tasks/``) into a work folder with their data paths resolved (GSM8K from ``$EAKD_DATA_DIR``
  or ../shared/data; the demo's held-out items from the package), check the user's ``include_path`` and build
  a ``lm_eval.tasks.TaskManager`` over those folders only (``include_defaults=False``: lm-eval's own task
  index points at the hub, and eakd evaluates local data only), then check every task name;
* :func:`run_tasks` wraps the model and tokenizer in ``lm_eval.models.huggingface.HFLM`` and calls
  ``lm_eval.simple_evaluate``; returns per task, per metric ``{"value", "stderr"}`` plus the scored samples;
* :func:`compare` lays the models side by side for eval.json's ``lm_eval`` block.

lm-eval is imported here only, and only when ``evaluate.lm_eval`` is set: the CLI and the other stages do
not pay for it. Run: ``eakd evaluate CONFIG --model DIR --dataset DIR --out DIR --lm-eval eakd_gsm8k``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.config import ConfigError, shared_data_dir
from distill.lmeval.config import SHIPPED_TASKS, LmEvalConfig

log = logging.getLogger(__name__)

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
GSM8K_FILE = "gsm8k/train.jsonl"  # under $EAKD_DATA_DIR or ../shared/data
INSTALL_HINT = "install it with `pip install lm_eval==0.4.13` (pinned in requirements/cpu.lock; `make setup` does it)"


@dataclass
class PreparedTasks:
    """What :func:`run_tasks` needs: the task manager over the local folders and the checked task names."""

    manager: Any  # lm_eval.tasks.TaskManager
    names: list[str]
    folders: list[str]


def import_lm_eval() -> Any:
    """The ``lm_eval`` module, or a ConfigError saying how to install it."""
    try:
        import lm_eval
        import lm_eval.tasks  # noqa: F401 - TaskManager
    except ImportError as exc:
        raise ConfigError(f"evaluate.lm_eval: lm-evaluation-harness is not installed ({exc}); {INSTALL_HINT}") from None
    return lm_eval


def gsm8k_path() -> Path:
    """Where the shipped eakd_gsm8k task reads GSM8K train (whether or not the file is there)."""
    data = shared_data_dir()
    if data is None:
        env = os.environ.get("EAKD_DATA_DIR")
        data = Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data"
    return data / GSM8K_FILE


def render_shipped_tasks(dest: Path) -> Path:
    """Copy the shipped task folder to ``dest`` with ``@EAKD_DATA_DIR@`` / ``@EAKD_TASKS_DIR@`` resolved."""
    dest.mkdir(parents=True, exist_ok=True)
    data_dir = str(gsm8k_path().parent.parent)
    for src in TASKS_DIR.iterdir():
        if src.suffix == ".yaml":
            text = src.read_text().replace("@EAKD_DATA_DIR@", data_dir).replace("@EAKD_TASKS_DIR@", str(TASKS_DIR))
            (dest / src.name).write_text(text)
        elif src.suffix == ".py":
            shutil.copy(src, dest / src.name)
    return dest


def prepare_tasks(cfg: LmEvalConfig, workdir: Path) -> PreparedTasks:
    """Check lm-eval, the include paths, the data of the shipped tasks asked for and every task name; build
    the TaskManager. ``workdir`` holds the rendered shipped tasks and must live until :func:`run_tasks` ends."""
    import_lm_eval()
    from lm_eval.tasks import TaskManager

    for p in cfg.include_path:
        if not Path(p).expanduser().exists():
            raise ConfigError(f"evaluate.lm_eval.include_path: {p} does not exist; point it at a folder (or YAML file) "
                              "of lm-eval task definitions")
    if "eakd_gsm8k" in cfg.tasks and not gsm8k_path().is_file():
        raise ConfigError(f"lm-eval task eakd_gsm8k reads GSM8K train from {gsm8k_path()}, which is missing; put "
                          f"GSM8K's train.jsonl there or set EAKD_DATA_DIR to a folder holding {GSM8K_FILE}")
    folders = [str(render_shipped_tasks(workdir / "eakd_tasks"))] + [str(Path(p).expanduser()) for p in cfg.include_path]
    manager = TaskManager(include_path=folders, include_defaults=False)
    unknown = [n for n in cfg.tasks if n not in manager.all_tasks]
    if unknown:
        own = sorted(set(manager.all_tasks) - set(SHIPPED_TASKS))
        raise ConfigError(f"evaluate.lm_eval.tasks: unknown lm-eval task {unknown[0]!r}; eakd runs local task "
                          f"definitions only: the shipped {', '.join(SHIPPED_TASKS)}"
                          + (f" or those in evaluate.lm_eval.include_path ({', '.join(own)})" if own else
                             "; add your own task YAMLs with evaluate.lm_eval.include_path"))
    return PreparedTasks(manager=manager, names=list(cfg.tasks), folders=folders)


def _metrics(task_result: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """lm-eval's ``{"exact_match,strict-match": v, "exact_match_stderr,strict-match": s, "alias": ...}`` ->
    ``{"exact_match,strict-match": {"value": v, "stderr": s}}`` (a stderr lm-eval could not compute: None)."""
    out = {}
    for key, value in task_result.items():
        metric, comma, filt = key.partition(",")  # a metric is "name,filter"; "sample_len", "alias" are not
        if not comma or metric.endswith("_stderr") or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        stderr = task_result.get(f"{metric}_stderr,{filt}")
        out[key] = {"value": round(float(value), 4),
                    "stderr": round(float(stderr), 4) if isinstance(stderr, (int, float)) else None}
    return out


def _sample_record(task: str, s: dict[str, Any]) -> dict[str, Any]:
    doc = s.get("doc") or {}
    resps = s.get("filtered_resps")
    return {"task": task, "doc_id": s.get("doc_id"), "id": doc.get("id"), "target": s.get("target"),
            "filter": s.get("filter"), "response": resps[0] if isinstance(resps, list) and resps else resps,
            "scores": {k: float(s[k]) for k in ("exact_match", "acc", "acc_norm") if k in s}}


def run_tasks(model: Any, tokenizer: Any, tasks: PreparedTasks, cfg: LmEvalConfig, compute_dtype: str) -> dict[str, Any]:
    """lm-eval on ``model`` (a loaded transformers causal LM, on its device) with ``tokenizer``.

    Returns ``{"tasks": {task: {"metrics": {metric,filter: {"value", "stderr"}}, "samples", "n_shot"}},
    "chat_template", "dtype", "seconds", "records": [one per scored sample and filter]}``."""
    import lm_eval
    import torch
    from lm_eval.models.huggingface import HFLM

    t0 = time.perf_counter()
    chat = cfg.chat_template and bool(getattr(tokenizer, "chat_template", None))
    if cfg.chat_template and not chat:
        log.warning("lm-eval: the tokenizer has no chat template; prompts are plain text")
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=cfg.batch_size,
              mixed_precision_dtype=torch.bfloat16 if compute_dtype == "bfloat16" else None)
    was_training = model.training
    model.eval()
    try:
        res = lm_eval.simple_evaluate(
            model=lm, tasks=tasks.names, task_manager=tasks.manager, num_fewshot=cfg.num_fewshot, limit=cfg.limit,
            batch_size=cfg.batch_size, apply_chat_template=chat, log_samples=True, bootstrap_iters=1000,
            gen_kwargs={"max_gen_toks": cfg.max_gen_toks} if cfg.max_gen_toks else None,
            random_seed=cfg.seed, numpy_random_seed=cfg.seed, torch_random_seed=cfg.seed, fewshot_random_seed=cfg.seed)
    finally:
        model.train(was_training)
    out: dict[str, Any] = {"tasks": {}, "chat_template": chat, "dtype": compute_dtype}
    for task in tasks.names:
        n = (res.get("n-samples") or {}).get(task, {})
        out["tasks"][task] = {"metrics": _metrics(res["results"].get(task, {})),
                              "samples": n.get("effective"), "of": n.get("original"),
                              "n_shot": (res.get("n-shot") or {}).get(task)}
    out["records"] = [_sample_record(t, s) for t, ss in (res.get("samples") or {}).items() for s in ss]
    out["seconds"] = round(time.perf_counter() - t0, 2)
    log.info("lm-eval: %s (%.1f s)", "; ".join(f"{t} {json.dumps({k: v['value'] for k, v in r['metrics'].items()})}"
                                                for t, r in out["tasks"].items()), out["seconds"])
    return out


def compare(per_model: dict[str, dict[str, Any]], train_ids: set[str] | None = None) -> dict[str, Any]:
    """eval.json's ``lm_eval`` block: per task, per metric, each model's value and stderr side by side
    (``{"student": v, "student_stderr": s, "base": ..., ...}``); ``trained_on`` counts scored documents whose
    id is a seed of the dataset's train split (should be 0: a held-out task)."""
    tasks: dict[str, Any] = {}
    for name, r in per_model.items():
        for task, tr in r["tasks"].items():
            t = tasks.setdefault(task, {"samples": tr["samples"], "of": tr["of"], "n_shot": tr["n_shot"], "metrics": {}})
            for metric, v in tr["metrics"].items():
                t["metrics"].setdefault(metric, {}).update({name: v["value"], f"{name}_stderr": v["stderr"]})
    if train_ids is not None:
        for task, t in tasks.items():
            ids = {rec["id"] for r in per_model.values() for rec in r["records"] if rec["task"] == task and rec["id"]}
            t["trained_on"] = len(ids & train_ids) if ids else None
    return {"tasks": tasks, "models": {n: {k: r[k] for k in ("chat_template", "dtype", "seconds")}
                                       for n, r in per_model.items()}}


def agreement(lm_records: list[dict[str, Any]], predictions: list[dict[str, Any]]) -> dict[str, Any]:
    """lm-eval's grading beside eakd's task accuracy where both scored the same question for the same model.

    ``lm_records``: the scored samples (``{"model", "task", "filter", "id", "scores"}``); ``predictions``:
    ``predictions.jsonl``'s rows (``{"model", "id": "<seed id>:<style>:<n>", "answer", "gold", "correct"}``). A
    question is matched by its seed id (the demo's held-out items carry it in both). eakd's task accuracy is
    lenient (:func:`distill.answers.answers_match`: a label stated as a whole word counts), the shipped lm-eval
    tasks are strict exact match, so each eakd answer is also graded by the strict rule
    (:func:`distill.answers.answers_match_strict`) and the comparison is made with both. Returns
    ``{task[ (filter)]: {model: {"questions", "lm_eval", "eakd", "eakd_strict", "same", "same_strict", "differ":
    [seed ids lm-eval and eakd's strict grade disagree on]}}}``, accuracies as fractions; empty when no question
    is shared."""
    from distill.answers import answers_match_strict

    eakd = {(p["model"], str(p["id"]).rsplit(":", 2)[0]): (bool(p.get("correct")),
                                                            answers_match_strict(p.get("answer"), p.get("gold")) is True)
            for p in predictions if p.get("id")}
    tally: dict[str, dict[str, dict[str, Any]]] = {}
    for r in lm_records:
        score = next((r["scores"][k] for k in ("exact_match", "acc") if k in r.get("scores", {})), None)
        key = (r.get("model"), r.get("id"))
        if score is None or key not in eakd:
            continue
        name = r["task"] + ("" if r.get("filter") in (None, "none") else f" ({r['filter']})")
        t = tally.setdefault(name, {}).setdefault(r["model"], {"questions": 0, "lm_eval": 0, "eakd": 0,
                                                                "eakd_strict": 0, "same": 0, "differ": []})
        (lenient, strict), theirs = eakd[key], score >= 1.0
        t["questions"] += 1
        t["lm_eval"] += theirs
        t["eakd"] += lenient
        t["eakd_strict"] += strict
        t["same"] += lenient == theirs
        if strict != theirs:
            t["differ"].append(r["id"])
    return {task: {model: {"questions": t["questions"],
                           **{k: round(t[k] / t["questions"], 4) for k in ("lm_eval", "eakd", "eakd_strict")},
                           "same": t["same"], "same_strict": t["questions"] - len(t["differ"]),
                           "differ": sorted(t["differ"])} for model, t in models.items()}
            for task, models in tally.items()}


AGREEMENT_NOTE = ("The same questions graded by eakd (matched by id): its task accuracy is lenient (the label as a "
                  "whole word counts), lm-eval's tasks are strict exact match, so eakd's answers are graded strictly too.")


def agreement_rows(block: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the ``agreement`` part of eval.json's ``lm_eval`` block (no rows when nothing is shared)."""
    head = ["task", "model", "questions", "lm-eval", "eakd task accuracy", "eakd strict", "graded alike (strict)"]
    rows = [[task, model, str(a["questions"]), f"{a['lm_eval']:.1%}", f"{a['eakd']:.1%}", f"{a['eakd_strict']:.1%}",
             f"{a['same_strict']} of {a['questions']}" + (
                 f" (differ: {', '.join(a['differ'][:4])}{' …' if len(a['differ']) > 4 else ''})" if a["differ"] else "")]
            for task, models in (block.get("agreement") or {}).items() for model, a in models.items()]
    return head, rows


def score_rows(block: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the ``lm_eval`` block of eval.json: one row per task and metric, a column per model."""
    names = list(block["models"])
    rows = [[task, metric, f"{t['samples']} of {t['of']}",
             *["—" if vals.get(n) is None else
               f"{vals[n]:.3f}" + ("" if vals.get(f"{n}_stderr") is None else f" ± {vals[f'{n}_stderr']:.3f}")
               for n in names]]
            for task, t in block["tasks"].items() for metric, vals in t["metrics"].items()]
    return ["task", "metric", "docs", *names], rows


def _markdown(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def agreement_lines(block: dict[str, Any]) -> list[str]:
    """The ``agreement`` part of eval.json's ``lm_eval`` block as Markdown lines (none when nothing is shared)."""
    head, rows = agreement_rows(block)
    return ["", AGREEMENT_NOTE, "", *_markdown(head, rows)] if rows else []


def markdown_table(block: dict[str, Any]) -> list[str]:
    """The ``lm_eval`` block of eval.json as Markdown table lines: one row per task and metric, a column per model."""
    return _markdown(*score_rows(block))
