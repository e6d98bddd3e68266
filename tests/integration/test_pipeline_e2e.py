"""The whole flow on a tiny config, through the real CLI: real vLLM server (openai backend), a real
Prefect flow on its local API, a tiny student trained with LoRA, all three compression families.
The run itself is the session fixture ``e2e_run`` (tests/conftest.py), shared with the browser tests
of its report and dataset viewer (tests/integration/test_report_browser.py)."""

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_pipeline_end_to_end(e2e_run):
    run_dir, proc = e2e_run
    assert f"run directory: {run_dir}" in proc.stdout
    report = json.loads((run_dir / "report.json").read_text())
    assert {k: v["status"] for k, v in report["stages"].items()} == {
        "generate": "completed", "train": "completed", "evaluate": "completed", "compress": "completed"}
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
        assert s["after"]["latency"]["batched_tokens_per_s"] > 0 and s["after"]["latency"]["new_tokens"] == 32
        assert (run_dir / "compressed" / Path(s["artifact"]).name / "README.md").is_file()  # the step's model card
    tasks = report["compress"]["tasks"]  # the run's own held-out questions (demo seeds carry gold answers)
    assert Path(tasks["dataset"]).name == "dataset"
    assert base["accuracy"]["rows"] == tasks["rows"] > 0 and all(s["after"]["accuracy"]["rows"] == tasks["rows"] for s in steps)
    assert "<!-- eakd:evaluation -->" in (run_dir / "student" / "README.md").read_text()  # the student's card
    timeline = gen["teacher"]["timeline"]  # paid tokens over time, for the HTML report's throughput plot
    assert len(timeline) >= 2 and timeline[-1][1] == gen["teacher"]["completion_tokens"]
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(timeline, timeline[1:]))
    assert (run_dir / "report.html").is_file() and (run_dir / "timings.json").is_file()
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
