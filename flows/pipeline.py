"""The end-to-end Prefect flow: generate -> train -> compress -> report, in one run directory.

Each stage is a plain function from ``distill``/``compress`` (``stage(config, inputs, out) -> path``);
here they become Prefect tasks that take configs and paths and return paths — never models or
clients. Generation retries (it talks to the network); a configuration error is never retried.
With no Prefect server configured, Prefect starts a temporary local API for the run (~10 s).

Run directory ``runs/<run-id>/``: ``config.yaml`` (resolved), ``dataset/``, ``student/``,
``compressed/<step>/``, ``timings.json``, ``report.json``, ``report.md``, ``report.html``.

Run: ``eakd run flows/configs/demo.yaml [key.sub=value ...]`` or
``python -m flows.pipeline flows/configs/demo.yaml [key.sub=value ...]``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import flows  # noqa: F401  (sets Prefect's environment before Prefect is imported)
from distill.config import ConfigError, dump_config, load_config, shared_data_dir
from flows.config import PipelineConfig

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


def resolve_eval_text(cfg: PipelineConfig, dataset_dir: Path | None) -> tuple[str, str]:
    """(text, source) for perplexity: the configured file, else WikiText-2 test, else held-out teacher outputs."""
    from distill.evaluate import load_eval_text

    if cfg.compress.eval.text_path:
        return load_eval_text(cfg.compress.eval.text_path), cfg.compress.eval.text_path
    data = shared_data_dir()
    if data and (data / "wikitext-2" / "wiki.test.tokens").is_file():
        path = data / "wikitext-2" / "wiki.test.tokens"
        return load_eval_text(path), "wikitext-2/wiki.test.tokens"
    if dataset_dir is not None:
        from datasets import load_from_disk

        dd = load_from_disk(str(dataset_dir))
        texts = [m[-1]["content"] for m in dd["validation"]["messages"]] if "messages" in dd["validation"].column_names else []
        if texts:
            return "\n\n".join(texts), "dataset validation split (teacher outputs)"
    raise ConfigError("compress.eval.text_path: no evaluation text found; set it to a text file")


def resolve_calib_text(cfg: PipelineConfig, dataset_dir: Path | None) -> tuple[str | None, str | None]:
    """(text, source) for calibration when neither the config nor ../shared/data provides one: the generated
    dataset's training answers. (None, None) lets the compress stage use its own default."""
    data = shared_data_dir()
    if cfg.compress.calibration.text_path or (data and (data / "wikitext-2" / "wiki.valid.tokens").is_file()):
        return None, None
    if dataset_dir is not None:
        from datasets import load_from_disk

        dd = load_from_disk(str(dataset_dir))
        texts = [m[-1]["content"] for m in dd["train"]["messages"]] if "messages" in dd["train"].column_names else []
        if texts:
            return "\n\n".join(texts), "dataset train split (teacher outputs)"
    return None, None


def _not_config_error(task, task_run, state) -> bool:
    from distill.batch import BatchPending
    from distill.budget import BudgetExceeded

    try:
        state.result()
    except (ConfigError, BudgetExceeded, BatchPending):  # a retry would fail the same way (or spend past the cap)
        return False
    except Exception:  # noqa: BLE001 - anything else is worth a retry
        return True
    return True


def _tasks():
    """Build the Prefect tasks lazily so importing this module stays cheap."""
    from prefect import task
    from prefect.cache_policies import NONE

    @task(name="generate", retries=2, retry_delay_seconds=5, retry_condition_fn=_not_config_error, cache_policy=NONE)
    def generate_task(cfg_json: str, out_dir: str) -> str:
        from distill.dataset import generate_dataset

        cfg = PipelineConfig.model_validate_json(cfg_json)
        return str(generate_dataset(cfg.generate, cfg.teacher, out_dir))

    @task(name="train", cache_policy=NONE)
    def train_task(cfg_json: str, dataset_dir: str, out_dir: str) -> str:
        from distill.train import train_student

        cfg = PipelineConfig.model_validate_json(cfg_json)
        return str(train_student(cfg.train, dataset_dir, out_dir))

    @task(name="compress", cache_policy=NONE)
    def compress_task(cfg_json: str, model_dir: str, dataset_dir: str | None, out_dir: str) -> str:
        from compress.stage import compress_student

        cfg = PipelineConfig.model_validate_json(cfg_json)
        text, source = resolve_eval_text(cfg, Path(dataset_dir) if dataset_dir else None)
        log.info("perplexity text: %s", source)
        calib, calib_source = resolve_calib_text(cfg, Path(dataset_dir) if dataset_dir else None)
        return str(compress_student(cfg.compress, Path(model_dir), Path(out_dir), eval_text=text, eval_source=source,
                                    calib_text=calib, calib_source=calib_source))

    @task(name="report", cache_policy=NONE)
    def report_task(run_dir: str, timings: dict) -> str:
        from flows.report import write_report

        return str(write_report(Path(run_dir), timings))

    return generate_task, train_task, compress_task, report_task


def preflight(cfg: PipelineConfig) -> None:
    """Cheap checks of every input before any expensive work (or a Prefect run) starts."""
    from distill.models import BUNDLED_ALIAS, check_model_dir
    from distill.seeds import load_seeds
    from prompts import TemplateError, load_template

    stages = cfg.run.stages
    if "generate" in stages:
        load_seeds(cfg.generate.seeds)
        for style in cfg.generate.styles:
            try:
                load_template(cfg.generate.templates.get(style, style))
            except TemplateError as exc:
                raise ConfigError(f"generate.templates.{style}: {exc}") from None
        if cfg.teacher.backend == "vllm" and cfg.teacher.model != BUNDLED_ALIAS:
            check_model_dir(Path(cfg.teacher.model))
        if cfg.teacher.backend == "openai" and not cfg.teacher.base_url:
            raise ConfigError("teacher.base_url is required for the openai backend (e.g. http://127.0.0.1:8000/v1)")
    if ("train" in stages or "compress" in stages) and cfg.train.student != BUNDLED_ALIAS:
        check_model_dir(Path(cfg.train.student))
    if "compress" in stages and cfg.compress.eval.text_path and not Path(cfg.compress.eval.text_path).is_file():
        raise ConfigError(f"compress.eval.text_path: file not found: {cfg.compress.eval.text_path}")


def run_pipeline(cfg: PipelineConfig, run_dir: Path | None = None) -> Path:
    """Check inputs, then run the configured stages as a Prefect flow; returns the run directory."""
    preflight(cfg)
    from prefect import flow

    generate_task, train_task, compress_task, report_task = _tasks()
    run_dir = run_dir or new_run_dir(cfg)
    dump_config(cfg, run_dir / "config.yaml")

    @flow(name="eakd-pipeline", log_prints=True)
    def pipeline_flow(cfg_json: str, run_dir: str) -> str:
        timings: dict[str, dict] = {}
        stages = cfg.run.stages
        dataset_dir = model_dir = None

        def timed(name: str, fn, *args):
            t = time.perf_counter()
            try:
                result = fn(*args)
            except BaseException:
                timings[name] = {"status": "failed", "seconds": round(time.perf_counter() - t, 2)}
                (Path(run_dir) / "timings.json").write_text(json.dumps(timings, indent=2))
                raise
            timings[name] = {"status": "completed", "seconds": round(time.perf_counter() - t, 2)}
            (Path(run_dir) / "timings.json").write_text(json.dumps(timings, indent=2))
            return result

        if "generate" in stages:
            dataset_dir = timed("generate", generate_task, cfg_json, str(Path(run_dir) / "dataset"))
        if "train" in stages:
            if dataset_dir is None:
                raise ConfigError("run.stages: 'train' needs 'generate' in the same run")
            model_dir = timed("train", train_task, cfg_json, dataset_dir, str(Path(run_dir) / "student"))
        if "compress" in stages:
            source = model_dir or cfg.train.student
            if model_dir is None:
                from distill.models import resolve_model_path

                source = str(resolve_model_path(cfg.train.student))
            timed("compress", compress_task, cfg_json, source, dataset_dir, str(Path(run_dir) / "compressed"))
        return report_task(run_dir, timings)

    pipeline_flow(cfg.model_dump_json(), str(run_dir))
    return run_dir


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m flows.pipeline CONFIG.yaml [key.sub=value ...]")
        return 0 if argv else 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from distill.credentials import install_redaction

    install_redaction()
    try:
        cfg = load_config(PipelineConfig, argv[0], argv[1:])
        run_dir = run_pipeline(cfg)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
