"""The lm-evaluation-harness hook (distill/lmeval/): its config, the shipped task YAMLs loading through lm-eval's
TaskManager over local data only, one-line errors (unknown task, missing data or include path, lm-eval not
installed), and the evaluate stage writing lm-eval's scores for a tiny model and its base into eval.json
(CPU, ~30 s). HF_HUB_OFFLINE=1 holds: nothing here reads the hub."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from distill.config import ConfigError
from distill.lmeval import DEMO_HELD_OUT, demo_held_out_rows
from distill.lmeval.config import SHIPPED_TASKS, LmEvalConfig, parse_task_list

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed: pip install lm_eval==0.4.13 "
                                      "(requirements/cpu.lock)")

from distill.lmeval.run import gsm8k_path, markdown_table, prepare_tasks  # noqa: E402

# --- config ----------------------------------------------------------------------------------------------

def test_config_validates_tasks_limits_and_paths():
    cfg = LmEvalConfig(tasks=["eakd_demo_icl", " eakd_gsm8k "], include_path="my_tasks")
    assert cfg.tasks == ["eakd_demo_icl", "eakd_gsm8k"] and cfg.include_path == ["my_tasks"] and cfg.limit == 32
    for bad, field in [({"tasks": []}, "tasks"), ({"tasks": ["a", "a"]}, "named twice"), ({"tasks": [" "]}, "at least one"),
                       ({"tasks": ["a"], "limit": 0}, "limit"), ({"tasks": ["a"], "batch_size": 0}, "batch_size"),
                       ({"tasks": ["a"], "num_fewshot": -1}, "num_fewshot"), ({"tasks": ["a"], "task": "x"}, "extra")]:
        with pytest.raises(ValidationError, match=field):
            LmEvalConfig(**bad)
    assert parse_task_list("eakd_gsm8k, eakd_demo_icl,,") == ["eakd_gsm8k", "eakd_demo_icl"]


def test_the_config_imports_neither_torch_nor_lm_eval():
    code = ("import sys; from distill.lmeval.config import LmEvalConfig; import distill.lmeval; "
            "LmEvalConfig(tasks=['eakd_gsm8k']); print(sorted(m for m in ('torch', 'lm_eval') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"


def test_evaluate_config_takes_an_lm_eval_block():
    from distill.evaluate import EvaluateConfig

    assert EvaluateConfig().lm_eval is None
    assert EvaluateConfig(lm_eval={"tasks": ["eakd_demo_icl"], "limit": 4}).lm_eval.limit == 4
    with pytest.raises(ValidationError, match="tasks"):
        EvaluateConfig(lm_eval={"limit": 4})


# --- shipped tasks ---------------------------------------------------------------------------------------

def test_shipped_demo_items_are_the_demo_task_files_held_out_items():
    shipped = [json.loads(line) for line in DEMO_HELD_OUT.read_text().splitlines()]
    assert shipped == demo_held_out_rows()  # regenerate: distill.lmeval.demo_held_out_rows() -> demo_held_out.jsonl
    assert len(shipped) == 28 and {r["style"] for r in shipped} == {"icl", "cot"}


def _docs(prepared, name: str) -> list[dict]:
    task = prepared.manager.load([name])["tasks"][name]
    return list(task.test_docs())


def test_shipped_tasks_load_through_the_task_manager(tmp_path):
    names = ["eakd_demo_icl", "eakd_demo_cot"] + (["eakd_gsm8k"] if gsm8k_path().is_file() else [])
    prepared = prepare_tasks(LmEvalConfig(tasks=names), tmp_path)
    assert set(SHIPPED_TASKS) <= set(prepared.manager.all_tasks)
    icl, cot = _docs(prepared, "eakd_demo_icl"), _docs(prepared, "eakd_demo_cot")
    assert len(icl) == 24 and len(cot) == 4 and icl[0]["user"].startswith("Rate the review.")
    if "eakd_gsm8k" in names:  # the file's last rows first: generation takes GSM8K seeds from the head
        docs = _docs(prepared, "eakd_gsm8k")
        assert len(docs) == 7473 and docs[0]["id"] == "gsm8k-7473" and "####" in docs[0]["answer"]


def test_bad_task_names_missing_data_and_paths_are_config_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="unknown lm-eval task 'hellaswag'; eakd runs local task definitions only"):
        prepare_tasks(LmEvalConfig(tasks=["hellaswag"]), tmp_path / "w1")
    with pytest.raises(ConfigError, match="include_path: .*nowhere does not exist"):
        prepare_tasks(LmEvalConfig(tasks=["eakd_demo_icl"], include_path=[str(tmp_path / "nowhere")]), tmp_path / "w2")
    monkeypatch.setenv("EAKD_DATA_DIR", str(tmp_path))  # exists, but holds no gsm8k/train.jsonl
    with pytest.raises(ConfigError, match=f"eakd_gsm8k reads GSM8K train from {tmp_path}/gsm8k/train.jsonl, which is missing"):
        prepare_tasks(LmEvalConfig(tasks=["eakd_gsm8k"]), tmp_path / "w3")
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if not installed
    with pytest.raises(ConfigError, match="lm-evaluation-harness is not installed.*pip install lm_eval"):
        prepare_tasks(LmEvalConfig(tasks=["eakd_demo_icl"]), tmp_path / "w4")


def test_a_users_own_task_yaml_runs_from_include_path(tmp_path):
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"q": f"{i}+{i}", "a": str(2 * i)}) + "\n" for i in range(3)))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "my_qa.yaml").write_text(
        f"task: my_qa\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    train: {data}\ntest_split: train\n"
        "output_type: generate_until\ndoc_to_text: '{{q}}='\ndoc_to_target: '{{a}}'\n"
        "metric_list:\n  - metric: exact_match\n")
    prepared = prepare_tasks(LmEvalConfig(tasks=["my_qa"], include_path=str(tmp_path / "tasks")), tmp_path / "w")
    assert [d["a"] for d in _docs(prepared, "my_qa")] == ["0", "2", "4"]


# --- the evaluate stage ----------------------------------------------------------------------------------

def test_evaluate_writes_lm_eval_scores_for_student_and_base(tiny_model, untied_model, sft_dataset, tmp_path):
    from distill.evaluate import EvaluateConfig, evaluate_student

    cfg = EvaluateConfig(window=16, max_windows=1, max_examples=0, dtype="float32", device="cpu",
                         lm_eval={"tasks": ["eakd_demo_icl", "eakd_demo_cot"], "limit": 4, "max_gen_toks": 8})
    out = evaluate_student(cfg, untied_model, sft_dataset, tmp_path / "eval", base_model=tiny_model,
                           eval_text="word " * 64, eval_source="test")
    ev = json.loads((out / "eval.json").read_text())
    block = ev["lm_eval"]
    assert set(block["models"]) == {"base", "student"} and "lm_eval" not in ev["student"]
    icl = block["tasks"]["eakd_demo_icl"]
    assert icl["samples"] == 4 and icl["of"] == 24 and icl["n_shot"] == 0
    assert icl["trained_on"] == 0  # the dataset's train split holds none of the demo's held-out ids
    em = icl["metrics"]["exact_match,none"]
    assert set(em) == {"student", "student_stderr", "base", "base_stderr"} and 0 <= em["student"] <= 1
    assert "exact_match,the-answer-is" in block["tasks"]["eakd_demo_cot"]["metrics"]
    samples = [json.loads(line) for line in (out / "lm_eval_samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * (4 + 4) and {s["model"] for s in samples} == {"base", "student"}
    assert samples[0]["id"].startswith("review_gb/held_out-") and samples[0]["target"] == "good"
    readme = (out / "README.md").read_text()
    assert "| eakd_demo_icl | exact_match,none | 4 of 24 |" in readme
    assert markdown_table(block)[0] == "| task | metric | docs | base | student |"
    from flows.report import render_markdown  # the run report shows the same table

    report = render_markdown({"run_dir": "r", "eakd_version": "v", "stages": {}, "evaluate": ev})
    assert "lm-evaluation-harness (value ± stderr):" in report and "| eakd_demo_cot | exact_match,the-answer-is |" in report


def test_cli_lm_eval_option_bad_task_is_one_line_and_exit_2(tiny_model, sft_dataset, tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    config = Path(__file__).resolve().parents[2] / "flows" / "configs" / "demo.yaml"
    result = CliRunner().invoke(app, ["evaluate", str(config), "evaluate.probes=null", "--model", str(tiny_model),
                                      "--dataset", str(sft_dataset), "--out", str(tmp_path / "eval"),
                                      "--lm-eval", "eakd_demo_icl,nope"])
    assert result.exit_code == 2, result.output
    assert "error: evaluate.lm_eval.tasks: unknown lm-eval task 'nope'" in result.output
    assert not (tmp_path / "eval").exists()


def test_agreement_pairs_lm_eval_and_eakd_grading_of_the_same_questions():
    """Matched by seed id, per model and task (and filter); questions only one side scored are left out; eakd's
    lenient grade (a whole-word label counts) and its strict grade are both compared with lm-eval's."""
    from distill.lmeval.run import agreement, agreement_lines

    def lm(model, task, qid, score, flt="none"):
        return {"model": model, "task": task, "filter": flt, "id": qid, "scores": {"exact_match": score}}

    def ours(model, qid, answer, gold, correct):
        return {"model": model, "id": qid, "answer": answer, "gold": gold, "correct": correct}

    records = [lm("student", "eakd_demo_icl", "a/held_out-1", 1.0), lm("student", "eakd_demo_icl", "a/held_out-2", 0.0),
               lm("student", "eakd_demo_icl", "a/held_out-3", 0.0), lm("base", "eakd_demo_icl", "a/held_out-1", 0.0),
               lm("student", "eakd_demo_cot", "s/held_out-9", 1.0, "the-answer-is"),
               lm("student", "eakd_demo_icl", "a/held_out-7", 1.0)]  # eakd never scored it: left out
    predictions = [ours("student", "a/held_out-1:icl:0", "good", "good", True),
                   ours("student", "a/held_out-2:icl:0", "It was a bad one.", "bad", True),  # lenient only
                   ours("student", "a/held_out-3:icl:0", "bad", "bad", True),  # lm-eval disagrees outright
                   ours("base", "a/held_out-1:icl:0", "great", "good", False),
                   ours("student", "s/held_out-9:cot:0", "12", "12", True)]
    got = agreement(records, predictions)
    assert got["eakd_demo_icl"]["student"] == {"questions": 3, "lm_eval": 0.3333, "eakd": 1.0, "eakd_strict": 0.6667,
                                               "same": 1, "same_strict": 2, "differ": ["a/held_out-3"]}
    assert got["eakd_demo_icl"]["base"]["same_strict"] == 1 and got["eakd_demo_icl"]["base"]["differ"] == []
    assert got["eakd_demo_cot (the-answer-is)"]["student"]["same_strict"] == 1
    lines = agreement_lines({"agreement": got})
    assert "| eakd_demo_icl | student | 3 | 33.3% | 100.0% | 66.7% | 2 of 3 (differ: a/held_out-3) |" in lines
    assert agreement(records, []) == {} and agreement_lines({"agreement": {}}) == []
