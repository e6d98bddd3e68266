"""What the compress stage measures besides perplexity: task accuracy on held-out questions (graded as the
dataset builder grades), the min_accuracy quality gate, and decode latency (its fields, not its speed:
speed is a benchmark's job). Tiny random model with the bundled tokenizer, CPU, ~20 s."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compress.eval import latency, load_tasks, task_accuracy
from compress.stage import CompressConfig, CompressStep, EvalConfig, QualityGateFailed, compress_student
from distill.config import ConfigError
from distill.evaluate import answer_of, generate_greedy
from distill.models import load_causal_lm, load_tokenizer

TEXT = "The cat sat on the mat and looked at the dog across the quiet garden. " * 40
FAST = {"window": 32, "max_windows": 2, "dtype": "float32", "max_new_tokens": 8, "latency": False}


def _questions(model_dir: Path, n: int = 6) -> tuple[list[list[dict]], list[str]]:
    """n prompts and the tiny model's own greedy first-line answers to them (8 new tokens)."""
    prompts = [[{"role": "user", "content": f"What is {i} plus {i}?"}] for i in range(n)]
    texts, _ = generate_greedy(load_causal_lm(model_dir), load_tokenizer(model_dir), prompts, 8, batch_size=2)
    return prompts, [answer_of(t, "instruct", _extraction()) for t in texts]


def _extraction():
    from distill.answers import ExtractionConfig

    return ExtractionConfig(patterns=["last_line"])


def _dataset(path: Path, prompts: list[list[dict]], golds: list[str | None]) -> Path:
    from datasets import Dataset, DatasetDict

    rows = [{"id": f"q{i}:instruct:0", "style": "instruct", "gold": g, "answer": g,
             "messages": p + [{"role": "assistant", "content": f"{g}"}]} for i, (p, g) in enumerate(zip(prompts, golds))]
    DatasetDict({"train": Dataset.from_list(rows[:1]), "validation": Dataset.from_list(rows)}).save_to_disk(str(path))
    (path / "stats.json").write_text(json.dumps({"config": {"extraction": {"patterns": ["last_line"]}}}))
    return path


@pytest.fixture(scope="module")
def graded(untied_model, tmp_path_factory):
    """(model, dataset): golds are the model's own answers on rows 0, 2, 4 and wrong on 1, 3, 5."""
    prompts, answers = _questions(untied_model)
    assert all(answers), answers  # an answer on every row, or the accuracy checks check nothing
    golds = [a if i % 2 == 0 else "no such answer 12345" for i, a in enumerate(answers)]
    return untied_model, _dataset(tmp_path_factory.mktemp("tasks") / "ds", prompts, golds)


def test_task_accuracy_grades_greedy_answers_like_the_dataset_builder(graded):
    model_dir, ds = graded
    tasks = load_tasks(ds, max_examples=6)
    assert len(tasks.rows) == 6 and tasks.extraction.patterns == ["last_line"] and tasks.source == str(ds)
    acc = task_accuracy(load_causal_lm(model_dir), load_tokenizer(model_dir), tasks, max_new_tokens=8, batch_size=4)
    assert (acc["rows"], acc["correct"], acc["accuracy"]) == (6, 3, 0.5)
    assert acc["per_style"]["instruct"]["correct"] == 3 and "per_row" not in acc
    assert len(load_tasks(ds, max_examples=2).rows) == 2


def test_compress_records_accuracy_and_the_min_accuracy_gate_stops_the_chain(graded, tmp_path):
    model_dir, ds = graded
    cfg = CompressConfig(eval={**FAST, "tasks_dataset": str(ds), "max_examples": 6}, save_dtype="float32", steps=[
        CompressStep(method="rtn_int8", min_accuracy=0.0),  # a gate that holds
        CompressStep(method="magnitude", sparsity=0.95, min_accuracy=0.5),  # answers change: below 3/6
        CompressStep(method="svd", rank_ratio=0.5)])
    with pytest.raises(QualityGateFailed, match=r"held-out questions right .*below min_accuracy 50.0%"):
        compress_student(cfg, model_dir, tmp_path / "out", eval_text=TEXT)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["tasks"] == {"dataset": str(ds), "rows": 6}
    assert summary["baseline"]["accuracy"]["correct"] == 3
    first, second = summary["steps"]
    assert first["gate"] == "passed" and first["after"]["accuracy"]["rows"] == 6
    assert second["gate"] == "failed" and second["after"]["accuracy"]["accuracy"] < 0.5 and second["artifact"] is None
    assert (tmp_path / "out" / "01-rtn_int8").is_dir() and not (tmp_path / "out" / "02-magnitude").exists()
    card = (tmp_path / "out" / "01-rtn_int8" / "README.md").read_text()
    assert "| 3/6 |" in card and "Quality gate: passed" in card and "6 held-out questions" in card
    assert not (tmp_path / "out" / "03-svd").exists() and not summary["complete"]


def test_pipeline_dataset_without_gold_answers_means_no_accuracy_but_a_named_one_is_an_error(graded, tmp_path):
    model_dir, ds = graded
    prompts, _ = _questions(model_dir, 2)
    no_gold = _dataset(tmp_path / "nogold", prompts, [None, None])
    cfg = CompressConfig(eval=FAST, save_dtype="float32", steps=[CompressStep(method="rtn_int8")])
    out = compress_student(cfg, model_dir, tmp_path / "a", eval_text=TEXT, tasks_dataset=no_gold)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tasks"] is None and summary["baseline"]["accuracy"] is None
    named = cfg.model_copy(update={"eval": EvalConfig(**FAST, tasks_dataset=str(no_gold))})
    with pytest.raises(ConfigError, match="no validation row .* has a gold answer"):
        compress_student(named, model_dir, tmp_path / "b", eval_text=TEXT)
    gated = CompressConfig(eval=FAST, steps=[CompressStep(method="rtn_int8", min_accuracy=0.5)])
    with pytest.raises(ConfigError, match=r"steps\[0\]\.min_accuracy needs task accuracy"):
        compress_student(gated, model_dir, tmp_path / "c", eval_text=TEXT)
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()  # refused before any work
    with pytest.raises(ConfigError, match="not an eakd dataset"):
        load_tasks(tmp_path, 4)


def test_latency_reports_one_stream_and_batched_decoding(tiny_model):
    model, tok = load_causal_lm(tiny_model), load_tokenizer(tiny_model)
    lat = latency(model, tok, TEXT, prompt_tokens=16, new_tokens=4, batch=3, repeats=1)
    assert (lat["prompt_tokens"], lat["new_tokens"], lat["batch"], lat["repeats"]) == (16, 4, 3, 1)
    assert lat["prefill_ms"] > 0 and lat["single_ms_per_token"] > 0 and lat["batched_tokens_per_s"] > 0
    assert lat["dtype"] == "float32" and lat["device"] == "cpu" and lat["threads"] >= 1
    assert not model.training
    with pytest.raises(ValueError, match="fewer than prompt_tokens"):
        latency(model, tok, "two words", prompt_tokens=64)
    with pytest.raises(ValueError, match="new_tokens >= 2"):
        latency(model, tok, TEXT, new_tokens=1)


def test_compress_measures_latency_of_every_model_by_default(tiny_model, tmp_path):
    cfg = CompressConfig(eval={**FAST, "latency": True, "latency_prompt_tokens": 16, "latency_new_tokens": 4,
                               "latency_repeats": 1}, save_dtype="float32",
                         steps=[CompressStep(method="magnitude", sparsity=0.5)])
    summary = json.loads((compress_student(cfg, tiny_model, tmp_path / "o", eval_text=TEXT) / "summary.json").read_text())
    for m in (summary["baseline"], summary["steps"][0]["after"]):
        assert m["latency"]["new_tokens"] == 4 and m["latency"]["single_ms_per_token"] > 0
    assert EvalConfig().latency  # on unless turned off


def test_compress_runs_the_ea_probes_on_every_model_and_reports_what_each_step_keeps(tiny_model, tmp_path):
    """compress.eval.probes: per-ability probe scores for the source and each step (no teacher), and the report's
    'abilities (kept)' cell as the share of the source's score."""
    from compress.eval import abilities, ability_scores
    from distill.probes.config import ProbesConfig

    probes = ProbesConfig(icl_tasks=["larger"], controls=["continent"], cot_tasks=[], if_items=2, per_task=2,
                          pool_per_task=2, shots=1, max_new_tokens=4, if_max_new_tokens=16, teacher=False)
    cfg = CompressConfig(steps=[CompressStep(method="rtn_int8")], eval=EvalConfig(**FAST, max_examples=0, probes=probes))
    summary = json.loads((compress_student(cfg, tiny_model, tmp_path / "o", eval_text=TEXT) / "summary.json").read_text())
    base, after = summary["baseline"]["probes"], summary["steps"][0]["after"]["probes"]
    for p in (base, after):
        assert p["icl"]["zero_shot"]["n"] == 2 and p["icl"]["k_shot"]["n"] == 2 and p["if"]["n"] == 2
        assert p["control"]["zero_shot"]["n"] == 2
    assert set(ability_scores(summary["baseline"])) == {"ICL", "IF", "ctl"}
    cell = abilities({"probes": {"icl": {"zero_shot": {"strict": 0.25}}}}, {"probes": {"icl": {"zero_shot": {"strict": 0.5}}}})
    assert cell == "ICL 25.0% (50%)" and abilities({}) == "—"
    with pytest.raises(ConfigError, match="compress.eval.probes: task family 'continent'"):
        too_many = probes.model_copy(update={"per_task": 999})
        compress_student(cfg.model_copy(update={"eval": EvalConfig(**FAST, max_examples=0, probes=too_many)}),
                         tiny_model, tmp_path / "bad", eval_text=TEXT)
