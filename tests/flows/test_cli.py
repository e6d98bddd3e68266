"""The CLI's contract for bad input: one `error:` line naming the field or path, exit code 2."""

import os
import subprocess
import sys

import pytest


def eakd(*args, cwd):
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, needle", [
    (["run", "flows/configs/demo.yaml", "train.learning_rate=1"], "train.learning_rate: unknown key"),
    (["run", "flows/configs/demo.yaml", "train.epochs=many"], "train.epochs: Input should be a valid integer"),
    (["run", "flows/configs/demo.yaml", "generate.tasks=no/such/tasks.yaml", "run.runs_dir=RUNS"],
     "task file not found: no/such/tasks.yaml"),
    (["run", "flows/configs/demo.yaml", "generate.tasks=null", "generate.seeds=no/such/seeds.jsonl", "run.runs_dir=RUNS"],
     "seed file not found: no/such/seeds.jsonl"),
    (["run", "no/such/config.yaml"], "config file not found: no/such/config.yaml"),
    (["train", "flows/configs/demo.yaml", "--dataset", "no/such/ds", "--out", "RUNS/x"], "not an eakd dataset"),
    (["run", "flows/configs/demo.yaml", "run.shards=4", "run.runs_dir=RUNS"], "run.shards=4 needs teacher.backend=openai"),
    (["run", "flows/configs/demo.yaml", "run.shards=4", "teacher.backend=openai", "teacher.base_url=http://127.0.0.1:9/v1",
      "teacher.cache=false", "run.runs_dir=RUNS"], "run.shards: the shards hand their answers"),
    (["generate", "flows/configs/demo.yaml", "--out", "RUNS/ds", "--incremental-from", "RUNS"], "is not a finished eakd dataset"),
])
def test_bad_input_is_one_line_and_exit_2(repo_root, tmp_path, args, needle):
    args = [a.replace("RUNS", str(tmp_path / "runs")) for a in args]
    proc = eakd(*args, cwd=repo_root)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and needle in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_serve_without_a_prefect_server_says_how_to_start_one(repo_root, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "serve", "flows/configs/demo.yaml"], cwd=repo_root,
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2
    assert "PREFECT_API_URL is not set" in proc.stderr and "prefect server start" in proc.stderr


def test_help_lists_every_command(repo_root):
    proc = eakd("--help", cwd=repo_root)
    assert proc.returncode == 0
    for cmd in ("models", "teacher", "generate", "train", "evaluate", "compress", "run", "report", "view", "serve", "deploy"):
        assert cmd in proc.stdout


@pytest.mark.parametrize("name", ["demo.yaml", "gsm8k_cot.yaml", "self_instruct.yaml"])
def test_shipped_configs_validate(repo_root, name):
    from distill.config import load_config
    from flows.config import PipelineConfig

    cfg = load_config(PipelineConfig, repo_root / "flows" / "configs" / name)
    assert cfg.generate.styles


def test_generate_dry_run_prints_the_plan_and_calls_no_teacher(repo_root, tmp_path):
    proc = eakd("generate", "flows/configs/demo.yaml", "--dry-run", "--json", "teacher.backend=openai",
                "teacher.base_url=http://127.0.0.1:9/v1", f"teacher.cache_path={tmp_path / 'c.sqlite'}", cwd=repo_root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json

    d = json.loads(proc.stdout)
    assert d["requests"] > 0 and set(d["styles"]) == {"icl", "cot"} and d["cached"] == 0  # the demo: a task file


def test_generate_without_out_or_dry_run_is_a_clear_error(repo_root):
    proc = eakd("generate", "flows/configs/demo.yaml", cwd=repo_root)
    assert proc.returncode == 2 and "error: --out is required" in proc.stderr


def test_train_help_names_sequence_and_logit_kd_offline_and_online():
    from typer.testing import CliRunner

    from flows.cli import app

    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.replace("│", " ").split())  # rich wraps and boxes the help: compare words
    for needle in ("LoRA or full", "sequence-level KD", "logit KD", "train.kd.enabled",
                   "Offline logit KD", "top-k logprobs", "generate.sampling.top_logprobs", "flows/configs/demo.yaml",
                   "Online logit KD", "train.kd.teacher", "local teacher model"):
        assert needle in text, needle
