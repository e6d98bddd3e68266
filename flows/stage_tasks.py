"""The stage tasks: each wraps one stage function of ``distill``/``compress`` as a Prefect task that takes
the config (as JSON) and paths and returns a path — never models or clients. Generation and the teacher
shards retry (they talk to the network) unless the failure is one a retry repeats
(:func:`flows.errors.retryable`); every task is cached on the content hash the flow computes
(:mod:`flows.stage_keys`), passed as ``key``.

May import Prefect, :mod:`flows.config`, :mod:`flows.errors`, :mod:`flows.stage_inputs` and the stage
functions (inside the tasks, so importing this stays light); never :mod:`flows.pipeline`, whose flows call
these tasks. Run: through the flows of :mod:`flows.pipeline` (``eakd run``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import flows  # noqa: F401  (sets Prefect's environment before Prefect is imported)

# isort: split
from prefect import task

from distill.config import ConfigError
from flows.config import PipelineConfig
from flows.errors import retryable
from flows.stage_inputs import resolve_calib_text, resolve_eval_text


def _not_config_error(task, task_run, state) -> bool:
    """Prefect's retry condition: retry unless the failure is one a retry repeats (:func:`flows.errors.retryable`)."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - the table in flows.errors decides
        return retryable(exc)
    return True


def _stage_key(context, parameters: dict) -> str:
    """Prefect's cache key for a stage task: the content hash computed by flows.stage_keys."""
    return parameters["key"]


# The stage tasks: configs and paths in, a path out. Their results (the output path, as JSON) persist
# under $PREFECT_HOME/storage keyed by the stage's content hash, so an unchanged stage is skipped
# (state "Cached") and returns the folder the earlier run wrote.
_CACHED = dict(cache_key_fn=_stage_key, persist_result=True, result_serializer="json")


@task(name="generate", retries=2, retry_delay_seconds=5, retry_condition_fn=_not_config_error, **_CACHED)
def generate_task(cfg_json: str, previous: str | None, out_dir: str, key: str) -> str:
    from distill.data.dataset import generate_dataset

    cfg = PipelineConfig.model_validate_json(cfg_json)
    return str(Path(generate_dataset(cfg.generate, cfg.teacher, out_dir, incremental_from=previous)).resolve())


@task(name="teacher-shard", retries=2, retry_delay_seconds=5, retry_condition_fn=_not_config_error, **_CACHED)
def shard_task(cfg_json: str, requests_file: str, shard: int, shards: int, out_path: str, key: str) -> str:
    """Answer requests ``shard, shard + shards, ...`` of the planned list into the response cache; write this shard's
    teacher stats to ``out_path``. Requests that failed make the task fail while Prefect retries remain
    (a retry resends only those: the rest are cached); on the last attempt they are left to the generate
    stage, which records them."""
    from prefect.context import TaskRunContext

    from distill.teacher.query import TeacherRequest, TeacherStats, query_teacher

    cfg = PipelineConfig.model_validate_json(cfg_json)
    with open(requests_file) as fh:
        reqs = [TeacherRequest(**json.loads(line)) for i, line in enumerate(fh) if i % shards == shard]
    stats = TeacherStats()
    gate = None
    if cfg.run.teacher_rate_limit:  # every request (and retry) takes a slot of the shared, decaying limit
        from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError
        from prefect.concurrency.asyncio import rate_limit

        async def gate() -> None:
            name = cfg.run.teacher_rate_limit
            try:
                await rate_limit(name, occupy=1, strict=True)
            except ConcurrencySlotAcquisitionError as exc:
                raise ConfigError(f"run.teacher_rate_limit: {exc}; create it with a slot decay, e.g. "
                                  f"prefect gcl create {name} --limit 4 --slot-decay-per-second 2") from None

    def ask():
        return query_teacher(reqs, cfg.teacher, stats, gate=gate)

    if cfg.run.teacher_limit:  # one slot of the shared limit while this shard talks to the teacher
        from prefect.concurrency.sync import concurrency

        with concurrency(cfg.run.teacher_limit, occupy=1):
            responses = ask()
    else:
        responses = ask()
    failed = sum(r.error is not None for r in responses)
    out = Path(out_path)
    # what earlier attempts of this shard sent and paid (a retry only resends what they left unanswered)
    partial = out.with_name(out.name + ".attempts")
    paid = json.loads(partial.read_text()) if partial.is_file() else {}
    this_attempt = stats.to_dict()
    counted = {k: this_attempt[k] + paid.get(k, 0) for k in ("sent", "prompt_tokens", "completion_tokens")}
    ctx = TaskRunContext.get()
    if failed and ctx is not None and ctx.task_run.run_count <= (ctx.task.retries or 0):
        partial.write_text(json.dumps(counted))
        raise RuntimeError(f"teacher shard {shard}/{shards}: {failed} of {len(reqs)} requests failed; retrying them")
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps({"shard": shard, "shards": shards, "requests": len(reqs), "failed": failed,
                               "attempts": ctx.task_run.run_count if ctx is not None else 1, "pid": os.getpid(),
                               "teacher": this_attempt | counted}, indent=2))
    tmp.replace(out)
    partial.unlink(missing_ok=True)
    return str(out)


@task(name="train", **_CACHED)
def train_task(cfg_json: str, dataset_dir: str, out_dir: str, key: str) -> str:
    from distill.train.run import train_student

    cfg = PipelineConfig.model_validate_json(cfg_json)
    return str(Path(train_student(cfg.train, dataset_dir, out_dir)).resolve())


@task(name="evaluate", **_CACHED)
def evaluate_task(cfg_json: str, model_dir: str, base_model: str | None, dataset_dir: str, out_dir: str, key: str) -> str:
    from distill.evaluate import evaluate_student

    cfg = PipelineConfig.model_validate_json(cfg_json)
    # the perplexity text is found again inside (as for the key): passing it would store it with every task run
    keep = cfg.train.keep_layers if base_model is not None else None  # the student's start: its base, pruned
    return str(Path(evaluate_student(cfg.evaluate, model_dir, dataset_dir, out_dir, base_model=base_model,
                                     teacher_cfg=cfg.teacher, base_keep_layers=keep)).resolve())


@task(name="compress", **_CACHED)
def compress_task(cfg_json: str, model_dir: str, dataset_dir: str | None, out_dir: str, key: str) -> str:
    from compress.stage import compress_student

    cfg = PipelineConfig.model_validate_json(cfg_json)
    text, source = resolve_eval_text(cfg, Path(dataset_dir) if dataset_dir else None)
    calib, calib_source = resolve_calib_text(cfg, Path(dataset_dir) if dataset_dir else None)
    return str(Path(compress_student(cfg.compress, Path(model_dir), Path(out_dir), eval_text=text, eval_source=source,
                                     calib_text=calib, calib_source=calib_source, tasks_dataset=dataset_dir)).resolve())
