"""The whole flow on a tiny config, through the real CLI: real vLLM server (openai backend), a real
Prefect flow on its local API, a tiny student trained with LoRA, all three compression families."""

import json
import subprocess
import sys

import pytest
import yaml

pytestmark = pytest.mark.integration


def test_pipeline_end_to_end(repo_root, tmp_path, vllm_server, tiny_model):
    text = tmp_path / "heldout.txt"
    text.write_text(" ".join(f"The {w} sat on the mat and looked at the {w}." for w in
                             ["cat", "dog", "bird", "fox", "owl", "cow", "pig", "hen"] * 12))
    cfg = {
        "run": {"name": "e2e", "runs_dir": str(tmp_path / "runs")},
        "teacher": {"backend": "openai", "model": "bundled", "base_url": vllm_server, "max_concurrency": 8,
                    "cache_path": str(tmp_path / "cache.sqlite")},
        "generate": {"seeds": str(repo_root / "flows/configs/demo_seeds.jsonl"), "limit": 9,
                     "sampling": {"max_tokens": 48}, "drop_truncated": False},
        "train": {"student": str(tiny_model), "max_steps": 4, "batch_size": 2, "lr": 1e-3, "log_every": 1},
        "compress": {"steps": [{"method": "svd", "rank_ratio": 0.5}, {"method": "magnitude", "sparsity": 0.5},
                               {"method": "rtn_int8"}],
                     "eval": {"text_path": str(text), "window": 32, "max_windows": 4, "dtype": "float32"}},
    }
    path = tmp_path / "e2e.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(path)], cwd=repo_root,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run_dir = next((tmp_path / "runs").iterdir())
    assert f"run directory: {run_dir}" in proc.stdout
    report = json.loads((run_dir / "report.json").read_text())
    assert {k: v["status"] for k, v in report["stages"].items()} == {
        "generate": "completed", "train": "completed", "compress": "completed"}
    gen = report["generate"]
    assert set(gen["kept_per_style"]) == {"icl", "cot", "instruct"}
    assert gen["teacher"]["sent"] == gen["requests"] > 0 and gen["teacher"]["completion_tokens"] > 0
    assert report["train"]["steps"] == 4 and len(report["train"]["loss_curve"]) == 4
    assert 0 <= report["train"]["teacher_agreement_after"]["top1_agreement"] <= 1
    steps = report["compress"]["steps"]
    assert [s["method"] for s in steps] == ["svd", "magnitude", "rtn_int8"]
    base = report["compress"]["baseline"]
    assert steps[0]["after"]["params_total"] < base["params_total"]
    assert steps[1]["after"]["params_nonzero"] < steps[1]["before"]["params_nonzero"]
    assert steps[2]["after"]["bytes_on_disk"] < steps[2]["before"]["bytes_on_disk"]
    for s in steps:
        assert s["before"]["perplexity"] > 0 and s["after"]["perplexity"] > 0
    md = (run_dir / "report.md").read_text()
    assert "## Generate" in md and "## Train" in md and "## Compress" in md
    assert (run_dir / "config.yaml").exists() and (run_dir / "dataset" / "README.md").exists()
    card = (run_dir / "dataset" / "README.md").read_text()
    assert "template" in card.lower() and "sha256" in card
    # the dataset row contract
    from datasets import load_from_disk

    row = load_from_disk(str(run_dir / "dataset"))["train"][0]
    for key in ("id", "style", "messages", "prompt_messages", "rationale", "answer", "gold", "quality", "teacher"):
        assert key in row
    assert row["messages"][-1]["role"] == "assistant" and row["teacher"]["template_sha"]
