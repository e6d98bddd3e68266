"""Content-addressed cache keys for the pipeline's stages: what Prefect's task cache is keyed on.

A stage's key is the sha256 of everything that decides its output, by content, never by Python object
identity or file timestamps (curator's lesson: hash what is rendered, not the code that renders it):

- ``generate``: the generate and teacher config sections, the seed file's bytes (every file of a seed
  dataset folder) or the task file's, a ``generate.replay`` file's, the source (sha256) of every template the stage renders, by role
  (:func:`distill.data.templates.resolve_templates`: each style's as it really renders, the instruct one behind
  erased or chat demos, the zero-shot CoT one of erased worked examples, the judge, Self-Instruct and
  input-synthesis ones), the contamination eval files' bytes, and eakd's code version;
- ``train``: the train section, the generate key it consumes (or the dataset folder's files), and the
  student's weights (their bytes);
- ``evaluate``: the evaluate section, the train key (or the evaluated model's bytes), the generate key
  of the dataset whose validation split it scores (or the dataset folder's files) and the perplexity text
  actually used (the base model's bytes are in the train key); with probes, the teacher section, the probe
  task/IF files' bytes and the instruct/cot templates;
- ``compress``: the compress section, the train key (or the source model's bytes) and the evaluation
  and calibration texts actually used.

Changing a seed, a template, a config value or the code gives a new key and the stage runs again;
renaming or moving a file does not. Run: used by :mod:`flows.pipeline`; ``eakd run --refresh`` ignores
the cache.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from distill.provenance import code_version

_CHUNK = 1 << 20


def digest_bytes(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def digest_path(path: str | Path) -> str:
    """sha256 of a file's bytes, or of a folder's files (relative names and bytes, in sorted order)."""
    p = Path(path)
    h = hashlib.sha256()
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else []
    if not files:
        return digest_bytes(f"missing:{path}")
    for f in files:
        h.update(str(f.relative_to(p) if f != p else f.name).encode() + b"\0")
        with f.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
    return h.hexdigest()


def _key(payload: dict) -> str:
    return digest_bytes(json.dumps(payload, sort_keys=True, default=str))


def generate_key(cfg, previous: str | None = None) -> str:
    """The generate stage's key for a :class:`~flows.config.PipelineConfig`; ``previous``: the digest of
    the dataset an incremental run appends to."""
    from distill.data.templates import resolve_templates

    g = cfg.generate
    # every template the stage renders, as it renders it (distill.data.templates: one rule for the key and the run)
    templates = {role: t.sha256 for role, t in resolve_templates(g).items()}
    evals = [digest_path(p) for p in g.filters.contamination.eval_paths] if g.filters.contamination else []
    return _key({"stage": "generate", "code": code_version(),
                 "generate": g.model_dump(mode="json", exclude={"seeds", "tasks"}),
                 "teacher": cfg.teacher.model_dump(mode="json"),
                 "seeds": digest_path(g.seeds) if g.seeds is not None else None,
                 "tasks": digest_path(g.tasks) if g.tasks is not None else None,
                 "replay_file": digest_path(g.replay.file) if g.replay is not None and g.replay.file else None,
                 "templates": templates, "eval_files": evals, "previous": previous})


def model_digest(model: str) -> str:
    from distill.models import resolve_model_path

    return digest_path(resolve_model_path(model))


def train_key(cfg, upstream: str) -> str:
    """``upstream``: the generate key of the dataset this run trains on."""
    return _key({"stage": "train", "code": code_version(), "train": cfg.train.model_dump(mode="json", exclude={"student"}),
                 "dataset": upstream, "student": model_digest(cfg.train.student)})


def evaluate_key(cfg, upstream: str, dataset: str, eval_text: str) -> str:
    """With ``evaluate.probes``: also the teacher config (it answers them), the user task/IF files' bytes and the
    templates the probes render; with ``evaluate.lm_eval``: the user's task YAMLs and the GSM8K file, by content. ``upstream``: the train key, or the evaluated model's digest when this run does not
    train; ``dataset``:
    the generate key (or the folder's digest) of the dataset whose validation split is scored."""
    from prompts import load_template

    pr = cfg.evaluate.probes
    probes = None if pr is None else {  # the teacher answers the probes; user task/IF files by content
        "teacher": cfg.teacher.model_dump(mode="json") if pr.teacher else None,
        "task_file": digest_path(pr.task_file) if pr.task_file else None,
        "if_file": digest_path(pr.if_file) if pr.if_file else None,
        "templates": {t: load_template(t).sha256 for t in ("instruct", "cot")}}
    return _key({"stage": "evaluate", "code": code_version(), "evaluate": cfg.evaluate.model_dump(mode="json"),
                 "model": upstream, "dataset": dataset, "eval_text": digest_bytes(eval_text), "probes": probes,
                 "lm_eval": _lm_eval_inputs(cfg.evaluate.lm_eval)})


def _lm_eval_inputs(lm) -> dict | None:
    """What lm-eval reads besides the config: the user's task YAMLs and the GSM8K file, by content."""
    if lm is None:
        return None
    from distill.lmeval.run import gsm8k_path

    return {"include_path": [digest_path(Path(p).expanduser()) for p in lm.include_path],
            "gsm8k": digest_path(gsm8k_path()) if "eakd_gsm8k" in lm.tasks else None}


def compress_key(cfg, upstream: str, eval_text: str, calib: str, tasks: str = "none") -> str:
    """``upstream``: the train key, or the source model's digest when this run does not train;
    ``calib``: the digest of the calibration text the stage will use; ``tasks``: the generate key (or the
    folder's digest) of the dataset whose held-out questions give task accuracy, "none" without."""
    # streaming/memory_budget_gb pick how the artifact is computed, not what it is (byte-identical: compress.streamed)
    compress = cfg.compress.model_dump(mode="json", exclude={"streaming", "memory_budget_gb"})
    return _key({"stage": "compress", "code": code_version(), "compress": compress,
                 "model": upstream, "eval_text": digest_bytes(eval_text), "calib": calib, "tasks": tasks})
