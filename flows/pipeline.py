"""The Prefect flows: one per stage (``generate_dataset``, ``train_student``, ``evaluate_student``,
``compress_student``) and ``eakd-pipeline``, which runs them as subflows into one run directory and
writes the report.

Each stage is a plain function from ``distill``/``compress`` (``stage(config, inputs, out) -> path``);
:mod:`flows.stage_tasks` makes them Prefect tasks that take configs and paths and return paths — never
models or clients. Generation retries (it talks to the network); a configuration error is never retried.
What a stage reads besides its config (texts, the previous dataset) is resolved in :mod:`flows.stage_inputs`.
Stage tasks are cached by Prefect on the content hash of their inputs (:mod:`flows.stage_keys`):
rerunning an unchanged config skips every finished stage, and the new run directory links to the
outputs it reused; ``refresh=True`` (``eakd run --refresh``) runs them all. Each stage flow publishes
a markdown artifact; the pipeline publishes the report and a link to the run directory.
With no Prefect server configured, Prefect starts a temporary local API for the run (~10 s); with
``PREFECT_API_URL`` set, runs, artifacts and deployments live on that server (see ``eakd serve``).

Run directory ``runs/<run-id>/``: ``config.yaml`` (resolved), ``dataset/``, ``student/``, ``eval/``,
``compressed/<step>/``, ``timings.json``, ``report.json``, ``report.md``, ``report.html``.

This module holds the flows and may import every ``flows`` module it orchestrates (:mod:`flows.stage_tasks`,
:mod:`flows.stage_inputs`, :mod:`flows.stage_keys`, :mod:`flows.report`); none of them imports it.

Run: ``eakd run flows/configs/demo.yaml [key.sub=value ...]`` or
``python -m flows.pipeline flows/configs/demo.yaml [key.sub=value ...]``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path

import flows  # noqa: F401  (sets Prefect's environment before Prefect is imported)

# isort: split
from prefect import flow

from distill.config import ConfigError, dump_config, load_config
from flows.config import PipelineConfig, preflight
from flows.stage_inputs import calibration_digest, previous_dataset, resolve_calib_text, resolve_eval_text
from flows.stage_tasks import compress_task, evaluate_task, generate_task, shard_task, train_task

log = logging.getLogger(__name__)


def new_run_dir(cfg: PipelineConfig) -> Path:
    root = Path(cfg.run.runs_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = root / f"{cfg.run.name}-{stamp}"
    i = 1
    while run_dir.exists():
        i += 1
        run_dir = root / f"{cfg.run.name}-{stamp}-{i}"
    run_dir.mkdir(parents=True)
    return run_dir


def answer_in_shards(cfg: PipelineConfig, cfg_json: str, previous: Path | None, run_dir: Path, refresh: bool) -> dict:
    """Plan the generate stage's teacher requests and answer them in ``run.shards`` concurrent Prefect
    tasks; returns their summed stats. Shard i takes every n-th request from i: the slices then hold the
    same mix of styles and lengths and finish together (contiguous slices left one shard of long CoT
    answers running alone at the end: +34% wall time in bench/prefect_overhead.py)."""
    from distill.data.dataset import plan_requests
    from flows.stage_keys import digest_bytes

    reqs = plan_requests(cfg.generate, cfg.teacher, previous)
    folder = run_dir / "shards"
    folder.mkdir(parents=True, exist_ok=True)
    requests_file = folder / "requests.jsonl"
    requests_file.write_text("".join(json.dumps(asdict(r), ensure_ascii=False) + "\n" for r in reqs))
    n = min(cfg.run.shards, max(1, len(reqs)))
    teacher = cfg.teacher.model_dump_json()
    keys = [digest_bytes(teacher + "".join(r.key() for r in reqs[i::n])) for i in range(n)]
    futures = [shard_task.with_options(refresh_cache=refresh or None, task_run_name=f"teacher-shard-{i:03d}").submit(
        cfg_json, str(requests_file), i, n, str(folder / f"shard-{i:03d}.json"), key=keys[i]) for i in range(n)]
    totals = {"shards": n, "requests": len(reqs), "sent": 0, "cache_hits": 0, "failed": 0, "prompt_tokens": 0,
              "completion_tokens": 0}
    for i, f in enumerate(futures):
        path = Path(f.result())
        if not path.is_file():  # a cached shard whose file was deleted: answer it again (from the response cache)
            path = Path(shard_task.with_options(refresh_cache=True)(cfg_json, str(requests_file), i, n,
                                                                    str(folder / f"shard-{i:03d}.json"), key=keys[i]))
        d = json.loads(path.read_text())
        totals["failed"] += d["failed"]
        for k in ("sent", "cache_hits", "prompt_tokens", "completion_tokens"):
            totals[k] += d["teacher"][k]
    (folder / "summary.json").write_text(json.dumps(totals, indent=2))
    log.info("teacher shards: %s", totals)
    return totals




# what a finished output of each stage holds (a cached path without it was deleted or moved: redo it)
MARKERS = {"generate": "stats.json", "train": "metrics.json", "evaluate": "eval.json", "compress": "summary.json"}


def _run_cached(stage: str, task_fn, refresh: bool, out_dir: Path, *args, key: str) -> tuple[str, bool]:
    """Run a stage task through Prefect's cache; link ``out_dir`` to a cached output. (path, was_cached)."""
    state = task_fn.with_options(refresh_cache=refresh or None)(*args, str(out_dir), key=key, return_state=True)
    path = state.result()
    cached = state.name == "Cached"
    if cached and not (Path(path) / MARKERS[stage]).is_file():
        log.warning("%s: the cached output %s is gone; running the stage again", stage, path)
        path = task_fn.with_options(refresh_cache=True)(*args, str(out_dir), key=key)
        cached = False
    if cached and Path(path) != out_dir.resolve():
        out_dir.symlink_to(path, target_is_directory=True)  # this run's folder shows what it used
        log.info("%s: unchanged inputs (key %s…), reusing %s", stage, key[:12], path)
    return path, cached


def _result_stored(key: str) -> bool:
    """Whether Prefect holds a persisted result for this cache key (local result storage)."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH

    return (Path(PREFECT_LOCAL_STORAGE_PATH.value()) / key).is_file()


def _publish(key: str, markdown: str, description: str) -> None:
    """A Prefect markdown artifact (visible in the UI under the flow run); never fails the run."""
    from prefect.artifacts import create_markdown_artifact

    try:
        create_markdown_artifact(key=key, markdown=markdown, description=description)
    except Exception as exc:  # noqa: BLE001 - an artifact is a view, not an output
        log.warning("could not publish the %s artifact: %s", key, exc)


# Prefect's log_prints patches `print` into the run logger, which also catches third-party prints that were meant
# to be captured: dill (which `datasets` fingerprints with) reads `dis.dis` output from a redirected stdout, so
# each dataset write logged pages of bytecode and dill saw no globals. The stages log through `logging`.
LOG_PRINTS = False


@flow(name="generate_dataset", log_prints=LOG_PRINTS)
def generate_flow(cfg_json: str, run_dir: str, refresh: bool = False) -> dict:
    """Teacher data for the config's seeds -> ``run_dir/dataset`` (or the cached dataset it links to)."""
    from flows.stage_keys import digest_path, generate_key

    cfg = PipelineConfig.model_validate_json(cfg_json)
    previous = previous_dataset(cfg, Path(run_dir)) if cfg.run.incremental else None
    if previous is not None:
        log.info("incremental: appending to %s", previous)
    key = generate_key(cfg, None if previous is None else digest_path(previous / "stats.json"))
    shards = None
    if cfg.run.shards > 1 and (refresh or not _result_stored(key)):  # a cached stage needs no answers
        shards = answer_in_shards(cfg, cfg_json, previous, Path(run_dir), refresh)
    path, cached = _run_cached("generate", generate_task, refresh, Path(run_dir) / "dataset", cfg_json,
                               None if previous is None else str(previous), key=key)
    stats = json.loads((Path(path) / "stats.json").read_text())
    t = stats.get("teacher", {})
    _publish("generate-summary", "\n".join([
        f"# generate {'(cached)' if cached else ''}", f"dataset: `{path}`", "",
        f"- seeds {stats.get('seeds')}, teacher requests {stats.get('requests')} ({t.get('cache_hits', 0)} from the response cache)",
        f"- rows: {json.dumps(stats.get('rows'))}", f"- kept per style: {json.dumps(stats.get('kept_per_style'))}",
        f"- removed by reason: {json.dumps(stats.get('removed_by_reason'))}",
        f"- tokens paid: {t.get('prompt_tokens', 0)} prompt + {t.get('completion_tokens', 0)} completion",
        *([f"- answered in {shards['shards']} shards: {shards['sent']} sent, {shards['cache_hits']} cached, "
           f"{shards['failed']} failed, {shards['prompt_tokens']} + {shards['completion_tokens']} tokens paid"] if shards else [])]),
        "rows, filters and teacher tokens of the generate stage")
    return {"path": path, "cached": cached, "key": key}


@flow(name="train_student", log_prints=LOG_PRINTS)
def train_flow(cfg_json: str, dataset_dir: str, upstream_key: str, run_dir: str, refresh: bool = False) -> dict:
    """The student distilled on ``dataset_dir`` -> ``run_dir/student`` (or the cached student)."""
    from flows.stage_keys import train_key

    cfg = PipelineConfig.model_validate_json(cfg_json)
    key = train_key(cfg, upstream_key)
    path, cached = _run_cached("train", train_task, refresh, Path(run_dir) / "student", cfg_json, dataset_dir, key=key)
    m = json.loads((Path(path) / "metrics.json").read_text())
    _publish("train-summary", "\n".join([
        f"# train {'(cached)' if cached else ''}", f"student: `{path}`", "",
        f"- mode {m.get('mode')}, {m.get('steps')} steps, {m.get('tokens')} tokens, {m.get('tokens_per_s')} tok/s",
        f"- train loss {m.get('loss_first')} -> {m.get('loss_last')}; validation loss {m.get('val_loss_before')} -> {m.get('val_loss_after')}"]),
        "loss and throughput of the train stage")
    return {"path": path, "cached": cached, "key": key}


@flow(name="evaluate_student", log_prints=LOG_PRINTS)
def evaluate_flow(cfg_json: str, model_dir: str, upstream_key: str | None, base_model: str | None, dataset_dir: str,
                  dataset_key: str | None, run_dir: str, refresh: bool = False) -> dict:
    """Perplexity, validation loss, teacher agreement and task accuracy of ``model_dir`` (and of ``base_model``)
    on ``dataset_dir``'s validation split -> ``run_dir/eval`` (or the cached evaluation)."""
    from distill.evaluate import find_eval_text
    from flows.report import evaluation_rows
    from flows.stage_keys import digest_path, evaluate_key, model_digest

    cfg = PipelineConfig.model_validate_json(cfg_json)
    text, source = find_eval_text(cfg.evaluate.text_path, dataset_dir)
    log.info("perplexity text: %s", source)
    key = evaluate_key(cfg, upstream_key or model_digest(model_dir), dataset_key or digest_path(dataset_dir), text)
    path, cached = _run_cached("evaluate", evaluate_task, refresh, Path(run_dir) / "eval", cfg_json, model_dir,
                               base_model, dataset_dir, key=key)
    ev = json.loads((Path(path) / "eval.json").read_text())
    head = ["metric", *(["base"] if ev.get("base") else []), "student"]
    _publish("evaluate-summary", "\n".join([
        f"# evaluate {'(cached)' if cached else ''}", f"evaluation: `{path}` (perplexity on {ev['eval_text_source']})", "",
        "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
        *("| " + " | ".join(row) + " |" for row in evaluation_rows(ev))]),
        "perplexity, validation loss, teacher agreement and task accuracy, base -> student")
    return {"path": path, "cached": cached, "key": key}


@flow(name="compress_student", log_prints=LOG_PRINTS)
def compress_flow(cfg_json: str, model_dir: str, upstream_key: str | None, dataset_dir: str | None, run_dir: str,
                  refresh: bool = False, dataset_key: str | None = None) -> dict:
    """The configured compression chain on ``model_dir`` -> ``run_dir/compressed`` (or the cached one)."""
    from flows.stage_keys import compress_key, digest_path, model_digest

    cfg = PipelineConfig.model_validate_json(cfg_json)
    # the texts are read here for the key and again inside the task (milliseconds, next to minutes of
    # compression): passing megabytes of text as task parameters would store them with every task run
    text, source = resolve_eval_text(cfg, Path(dataset_dir) if dataset_dir else None)
    log.info("perplexity text: %s", source)
    calib, _ = resolve_calib_text(cfg, Path(dataset_dir) if dataset_dir else None)
    calib_digest = calibration_digest(cfg, calib, dataset_dir, dataset_key)
    ev = cfg.compress.eval
    tasks = ("none" if not ev.max_examples else digest_path(ev.tasks_dataset) if ev.tasks_dataset
             else dataset_key or digest_path(dataset_dir) if dataset_dir else "none")
    key = compress_key(cfg, upstream_key or model_digest(model_dir), text, calib_digest, tasks)
    path, cached = _run_cached("compress", compress_task, refresh, Path(run_dir) / "compressed", cfg_json, model_dir,
                               dataset_dir, key=key)
    c = json.loads((Path(path) / "summary.json").read_text())
    from compress.eval import decode_latency, task_acc

    rows = [f"| {st['name']} | {st['before'].get('perplexity', 0):.3f} -> {st['after'].get('perplexity', 0):.3f} | "
            f"{st['after'].get('bytes_on_disk', 0) / 1e6:.1f} MB | {task_acc(st['after'])} | {decode_latency(st['after'])} | "
            f"{st.get('gate') or '-'} |" for st in c.get("steps", [])]
    _publish("compress-summary", "\n".join([
        f"# compress {'(cached)' if cached else ''}", f"artifacts: `{path}` (perplexity on {source})", "",
        f"baseline: perplexity {c['baseline'].get('perplexity', 0):.3f}, {c['baseline'].get('bytes_on_disk', 0) / 1e6:.1f} MB", "",
        "| step | perplexity | size | task accuracy | latency | gate |", "|---|---|---|---|---|---|", *rows]),
        "every compression step, measured")
    return {"path": path, "cached": cached, "key": key}


def _task_runner(cfg: PipelineConfig):
    """The generate flow's task runner: None (Prefect's threads) or a Dask one for the shard tasks."""
    if cfg.run.task_runner != "dask":
        return None
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise ConfigError("run.task_runner=dask needs prefect-dask: pip install prefect-dask") from None
    if cfg.run.dask_address:
        return DaskTaskRunner(address=cfg.run.dask_address)
    # a local cluster for this run: one single-threaded worker process per slot, loopback only, no dashboard
    return DaskTaskRunner(cluster_kwargs={"n_workers": cfg.run.dask_workers, "threads_per_worker": 1,
                                          "processes": True, "host": "127.0.0.1", "dashboard_address": None})


def _pipeline_body(cfg: PipelineConfig, run_dir: Path, refresh: bool) -> str:
    timings: dict[str, dict] = {}
    stages = cfg.run.stages
    cfg_json = cfg.model_dump_json()
    dataset = student = None

    def timed(name: str, fn, *args, **kwargs) -> dict:
        t, status = time.perf_counter(), "failed"
        try:
            result = fn(*args, **kwargs)
            status = "cached" if result["cached"] else "completed"
            return result
        finally:
            timings[name] = {"status": status, "seconds": round(time.perf_counter() - t, 2)}
            (run_dir / "timings.json").write_text(json.dumps(timings, indent=2))

    if "generate" in stages:
        runner = _task_runner(cfg)
        gen = generate_flow if runner is None else generate_flow.with_options(task_runner=runner)
        dataset = timed("generate", gen, cfg_json, str(run_dir), refresh)
    if "train" in stages:
        if dataset is None:
            raise ConfigError("run.stages: 'train' needs 'generate' in the same run")
        student = timed("train", train_flow, cfg_json, dataset["path"], dataset["key"], str(run_dir), refresh)
    if "evaluate" in stages:
        if dataset is None:
            raise ConfigError("run.stages: 'evaluate' needs 'generate' in the same run (it scores the validation split)")
        if student is None:  # no training in this run: evaluate the configured student as it is
            from distill.models import resolve_model_path

            model, upstream, base = str(resolve_model_path(cfg.train.student)), None, None
        else:
            model, upstream = student["path"], student["key"]
            base = cfg.train.student if cfg.evaluate.baseline else None
        evaluation = timed("evaluate", evaluate_flow, cfg_json, model, upstream, base, dataset["path"], dataset["key"],
                           str(run_dir), refresh)
        if student is not None and (Path(evaluation["path"]) / "eval.json").is_file():
            # the student this run trained: its model card records the evaluation
            from distill.evaluate import record_in_model_card

            record_in_model_card(student["path"], evaluation["path"])
    if "compress" in stages:
        if student is None:
            from distill.models import resolve_model_path

            source, upstream = str(resolve_model_path(cfg.train.student)), None
        else:
            source, upstream = student["path"], student["key"]
        timed("compress", compress_flow, cfg_json, source, upstream, dataset["path"] if dataset else None,
              str(run_dir), refresh, dataset["key"] if dataset else None)
    from flows.report import write_report

    md = write_report(run_dir, timings)
    _publish("eakd-report", md.read_text(), f"run report of {run_dir}")
    try:
        from prefect.artifacts import create_link_artifact

        create_link_artifact(key="eakd-run-dir", link=(run_dir / "report.html").resolve().as_uri(),
                             link_text=str(run_dir), description="the run directory's report.html")
    except Exception as exc:  # noqa: BLE001
        log.warning("could not publish the run-directory link: %s", exc)
    return str(run_dir)


@flow(name="eakd-pipeline", log_prints=LOG_PRINTS)
def pipeline(config: str, overrides: list[str] | None = None, refresh: bool = False, run_dir: str | None = None) -> str:
    """generate -> train -> evaluate -> compress -> report for the YAML ``config`` (re-read on every run, so a
    scheduled deployment picks up a grown seed file); returns the run directory. Stages whose inputs
    are unchanged since an earlier run are skipped (``refresh=True`` runs them all)."""
    cfg = load_config(PipelineConfig, config, list(overrides or []))
    preflight(cfg)
    out = Path(run_dir) if run_dir else new_run_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    return _pipeline_body(cfg, out, refresh)


def run_pipeline(config: str | Path, overrides: list[str] | None = None, refresh: bool = False) -> Path:
    """Check inputs, then run the pipeline flow; returns the run directory."""
    cfg = load_config(PipelineConfig, config, list(overrides or []))
    preflight(cfg)  # bad input fails here, before Prefect starts
    run_dir = new_run_dir(cfg)
    return Path(pipeline(str(config), list(overrides or []), refresh, str(run_dir)))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m flows.pipeline CONFIG.yaml [key.sub=value ...]")
        return 0 if argv else 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from distill.credentials import install_redaction

    install_redaction()
    try:
        run_dir = run_pipeline(argv[0], argv[1:])
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())

