"""A failed scheduled run leaves the previous dataset and student untouched.

Three nightly runs of one incremental config (generate + train, real vLLM server, tiny student): the
first succeeds; the second's teacher is unreachable (generation fails); the third's training fails on
its input after a new dataset version was generated. Each failure exits non-zero with one error line,
records the failed stage in its own run directory, and leaves every byte of the first run as it was;
the next incremental run still appends to the newest *finished* dataset.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from distill.teacher.serve import free_port
from flows.config import PipelineConfig
from flows.pipeline import previous_dataset

pytestmark = pytest.mark.integration


def _digest(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def _run(repo_root: Path, config: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", "run", str(config), *overrides], cwd=repo_root,
                          capture_output=True, text=True, timeout=900)


def test_failed_runs_leave_the_previous_dataset_and_student_untouched(repo_root, tmp_path, vllm_server, tiny_model):
    all_seeds = [json.loads(ln) for ln in (repo_root / "flows/configs/demo_seeds.jsonl").read_text().splitlines() if ln.strip()]
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps(s) + "\n" for s in all_seeds[:12]))
    runs = tmp_path / "runs"
    cfg = {"run": {"name": "nightly", "runs_dir": str(runs), "stages": ["generate", "train"], "incremental": True},
           "teacher": {"backend": "openai", "model": "bundled", "base_url": vllm_server, "max_concurrency": 8,
                       "cache": False, "max_retries": 0},
           "generate": {"seeds": str(seeds), "sampling": {"max_tokens": 24}, "drop_truncated": False},
           "train": {"student": str(tiny_model), "max_steps": 2, "batch_size": 2, "log_every": 1}}
    config = tmp_path / "nightly.yaml"
    config.write_text(yaml.safe_dump(cfg))

    ok = _run(repo_root, config)
    assert ok.returncode == 0, ok.stderr[-4000:]
    (first,) = runs.iterdir()
    assert (first / "student" / "metrics.json").is_file()
    before = _digest(first)

    with seeds.open("a") as fh:  # the seed source grows; tonight the teacher is down
        fh.writelines(json.dumps(s) + "\n" for s in all_seeds[12:16])
    dead = f"http://127.0.0.1:{free_port()}/v1"
    down = _run(repo_root, config, f"teacher.base_url={dead}")
    assert down.returncode != 0
    assert "error: teacher.base_url: could not reach the teacher" in down.stderr, down.stderr[-3000:]
    failed_gen = next(d for d in runs.iterdir() if d != first)
    assert json.loads((failed_gen / "timings.json").read_text())["generate"]["status"] == "failed"
    assert not (failed_gen / "dataset" / "stats.json").exists(), "a failed generation published a dataset"
    assert _digest(first) == before

    # the teacher is back, but training fails on its input (logit KD needs top-k logprobs this dataset lacks)
    bad_train = _run(repo_root, config, "train.kd.enabled=true")
    assert bad_train.returncode == 2, bad_train.stderr[-3000:]
    assert "teacher token ids" in bad_train.stderr
    third = next(d for d in runs.iterdir() if d not in (first, failed_gen))
    timings = json.loads((third / "timings.json").read_text())
    assert timings["generate"]["status"] == "completed" and timings["train"]["status"] == "failed"
    assert not (third / "student").exists(), "a failed training published a student"
    assert _digest(first) == before, "a failed run changed the previous run's dataset or student"

    # the newest finished dataset (the third run's version 2) is what the next incremental run appends to
    stats = json.loads((third / "dataset" / "stats.json").read_text())
    assert stats["versions"][-1]["version"] == 2
    nxt = PipelineConfig.model_validate(cfg)
    assert previous_dataset(nxt, runs / "next") == (third / "dataset").resolve()
