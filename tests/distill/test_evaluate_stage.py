"""The evaluate stage (distill.evaluate.evaluate_student): answer grading as pure functions, then the
stage on a tiny random model — eval.json's fields, accuracy counts against known outputs, batched greedy
generation, atomic output, and one-line errors for bad input (CPU, ~20 s)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distill.answers import ExtractionConfig
from distill.config import ConfigError
from distill.data.seeds import Seed
from distill.evaluate import (
    EvaluateConfig,
    answer_of,
    evaluate_student,
    find_eval_text,
    generate_greedy,
    score_answers,
    select_task_rows,
)

EXTRACTION = ExtractionConfig()
FAST = {"window": 16, "max_windows": 2, "max_new_tokens": 8, "dtype": "float32", "device": "cpu"}  # seconds, not minutes


def _row(i: int, style: str, gold: str | None, teacher: str | None = None, prompt: str | None = None) -> dict:
    content = f"Some reasoning.\nThe answer is {teacher}." if style == "cot" else f"{teacher}"
    return {"id": f"s{i}:{style}:0", "style": style, "gold": gold, "answer": teacher,
            "messages": [{"role": "user", "content": prompt or f"Question {i} ({style})?"},
                         {"role": "assistant", "content": content}]}


# --- grading (pure) -------------------------------------------------------------------------------------

def test_score_answers_counts_per_style_and_agreement_with_the_teacher():
    rows = [_row(0, "cot", "12", "12"), _row(1, "cot", "7", "8"), _row(2, "icl", "Paris", "Paris"),
            _row(3, "icl", "Rome", "Rome"), _row(4, "instruct", "positive", "negative")]
    outputs = ["3 boxes of 4.\nThe answer is 12.",  # right, as the teacher
               "I think 1,000 - 993 = 7, so the answer is 7.",  # right (gold), the teacher was wrong
               "Paris\nParis is the capital.",  # right: the first line is the answer
               "\n",  # no answer at all
               "Negative."]  # wrong, and the teacher's answer (compared normalised)
    out = score_answers(outputs, rows, EXTRACTION)
    assert (out["rows"], out["correct"], out["accuracy"], out["no_answer"]) == (5, 3, 0.6, 1)
    assert out["per_style"]["cot"] == {"rows": 2, "correct": 2, "accuracy": 1.0, "no_answer": 0,
                                       "teacher_agreement": 0.5, "teacher_accuracy": 0.5}
    assert out["per_style"]["icl"]["accuracy"] == 0.5 and out["per_style"]["icl"]["teacher_agreement"] == 0.5
    assert out["per_style"]["instruct"] == {"rows": 1, "correct": 0, "accuracy": 0.0, "no_answer": 0,
                                            "teacher_agreement": 1.0, "teacher_accuracy": 0.0}
    assert out["teacher_agreement"] == 0.6 and out["teacher_accuracy"] == 0.6
    assert [r["answer"] for r in out["per_row"]] == ["12", "7", "Paris", None, "Negative."]
    with pytest.raises(ValueError, match="2 outputs for 1 rows"):
        score_answers(["a", "b"], rows[:1], EXTRACTION)


def test_answer_of_uses_the_datasets_patterns_and_structured_cot_format():
    text = "Work: 6 * 7.\n#### 42\nThe answer is 41."
    assert answer_of(text, "cot", EXTRACTION) == "42"  # gsm8k comes first in the default order
    assert answer_of(text, "cot", ExtractionConfig(patterns=["the_answer_is"])) == "41"
    assert answer_of("Rationale.\nThe answer is 12.", "cot", ExtractionConfig(patterns=["json"]), structured_cot=True) == "12"
    assert answer_of("  \n Paris.\nmore", "icl", EXTRACTION) == "Paris."
    assert answer_of("", "instruct", EXTRACTION) is None


@pytest.mark.parametrize("structured", [False, True])
def test_what_the_student_learned_parses_back_to_the_teachers_answer(structured):
    """The grading reads a student's answer exactly as the dataset builder read the teacher's: for every
    style, the training target (what a perfect student says) parses to the row's ``answer``."""
    from distill.data.dataset import GenerateConfig
    from distill.data.plan import Plan, build_requests
    from distill.data.rows import _rows_for
    from distill.teacher.query import Choice, TeacherResponse

    seeds = [Seed(id=f"a{i}", instruction=f"What is {i} plus {i}?", answer=str(2 * i), task="add") for i in range(4)]
    cfg = GenerateConfig(seeds="unused", styles=["icl", "cot", "instruct"], num_demos=2, structured_cot=structured,
                         extraction={"patterns": ["answer_colon", "last_number"]})
    plans, _ = build_requests(seeds, cfg, "m")
    texts = {"icl": "4\nbecause 2 + 2 = 4", "instruct": "Four (4).\nDone.",
             "cot": '{"rationale": "2 and 2 make 4.", "answer": "4"}' if structured else "2 and 2 make 4.\nAnswer: 4"}
    n = 0
    for plan in (p for p in plans if isinstance(p, Plan)):
        row = _rows_for(plan, TeacherResponse(key="k", choices=[Choice(text=texts[plan.style], finish_reason="stop")]),
                        cfg, "validation")[0]
        assert row["answer"] is not None
        assert answer_of(row["messages"][-1]["content"], row["style"], cfg.extraction, structured) == row["answer"]
        n += 1
    assert n == 12


def test_select_task_rows_round_robin_dedup_and_gold_only():
    rows = ([_row(i, "cot", str(i)) for i in range(5)] + [_row(i, "icl", str(i)) for i in range(5)]
            + [_row(9, "instruct", None), _row(8, "instruct", " ")]  # no gold: never picked
            + [_row(0, "cot", "0")])  # a second answer to the same CoT prompt (self-consistency): once
    picked = select_task_rows(rows, 5)
    assert [(r["style"], r["gold"]) for r in picked] == [("cot", "0"), ("icl", "0"), ("cot", "1"), ("icl", "1"), ("cot", "2")]
    assert len(select_task_rows(rows, 100)) == 10
    assert select_task_rows(rows, 0) == []
    same_prompt = [_row(0, "icl", "1", prompt="Q?"), _row(0, "instruct", "1", prompt="Q?")]  # erase_demos: same text
    assert len(select_task_rows(same_prompt, 9)) == 2  # different styles are different tasks


def test_find_eval_text_order(tmp_path, monkeypatch, sft_dataset):
    data = tmp_path / "data"
    (data / "wikitext-2").mkdir(parents=True)
    monkeypatch.setenv("EAKD_DATA_DIR", str(data))
    mine = tmp_path / "mine.txt"
    mine.write_text("my held-out text")
    assert find_eval_text(str(mine), sft_dataset) == ("my held-out text", str(mine))
    text, source = find_eval_text(None, sft_dataset)  # no WikiText-2 in the data folder: the validation answers
    assert source == "dataset validation split (teacher outputs)" and "10 plus 10 is 20." in text
    (data / "wikitext-2" / "wiki.test.tokens").write_text(" = Wiki = \n")
    assert find_eval_text(None, sft_dataset) == (" = Wiki = \n", "wikitext-2/wiki.test.tokens")
    monkeypatch.setenv("EAKD_DATA_DIR", str(tmp_path / "nothing"))
    monkeypatch.setattr("distill.eval.perplexity.shared_data_dir", lambda: None)
    with pytest.raises(ConfigError, match="compress.eval.text_path: no evaluation text found"):
        find_eval_text(None, tmp_path, "compress.eval.text_path")


# --- the stage on a tiny model ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_outputs(untied_model):
    """The model's greedy answers (first lines) to the prompts of :func:`_dataset` (8 new tokens)."""
    from distill.models import load_causal_lm, load_tokenizer

    model, tok = load_causal_lm(untied_model), load_tokenizer(untied_model)
    prompts = [[{"role": "user", "content": f"What is {i} plus {i}?"}] for i in range(6)]
    texts, _ = generate_greedy(model, tok, prompts, 8, batch_size=1)
    return [answer_of(t, "instruct", EXTRACTION) for t in texts]


def _dataset(path: Path, golds: list[str | None], teacher: list[str | None], kd_tok=None) -> Path:
    """An eakd-like dataset: 6 validation rows (instruct style) with the given golds and teacher answers;
    with ``kd_tok``, the teacher's token ids and a packed top-2 per token, as the vllm backend stores them."""
    from datasets import Dataset, DatasetDict

    from distill.logprobs import pack_topk

    rows = []
    for i, (gold, ans) in enumerate(zip(golds, teacher)):
        content = f"{ans or 'no idea'}\nsince {i} + {i} = {2 * i}."
        row = {"id": f"s{i}:instruct:0", "style": "instruct", "gold": gold, "answer": ans,
               "messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                            {"role": "assistant", "content": content}]}
        if kd_tok is not None:
            ids = kd_tok(content, add_special_tokens=False)["input_ids"] + [kd_tok.eos_token_id]
            row |= {"teacher_token_ids": ids,
                    "teacher_logprobs": json.dumps(pack_topk([[t, 5] for t in ids], [[-0.1, -2.5]] * len(ids)))}
        rows.append(row)
    DatasetDict({"train": Dataset.from_list(rows[:2]), "validation": Dataset.from_list(rows)}).save_to_disk(str(path))
    (path / "stats.json").write_text(json.dumps({"config": {"extraction": {"patterns": ["last_line"]}, "structured_cot": False}}))
    return path


def test_eval_json_fields_and_accuracy_against_known_outputs(untied_model, tiny_outputs, tmp_path):
    """Golds equal to the model's own greedy answers on rows 0, 2, 4 and wrong on 1, 3, 5: accuracy 3/6.
    The teacher's answers equal the model's on rows 0-1: agreement 2/6."""
    assert all(tiny_outputs), tiny_outputs  # an answer on every row, or this test checks nothing
    golds = [a if i % 2 == 0 else "no such answer 12345" for i, a in enumerate(tiny_outputs)]
    teacher = [a if i < 2 else "something else" for i, a in enumerate(tiny_outputs)]
    ds = _dataset(tmp_path / "ds", golds, teacher)
    text = tmp_path / "heldout.txt"
    text.write_text("The cat sat on the mat and looked at the dog. " * 20)
    cfg = EvaluateConfig(text_path=str(text), max_examples=6, batch_size=4, **FAST)
    out = evaluate_student(cfg, untied_model, ds, tmp_path / "eval")
    ev = json.loads((out / "eval.json").read_text())
    assert {"format", "eakd_version", "model", "base_model", "dataset", "eval_text_source", "perplexity_protocol",
            "extraction", "rows", "config", "base", "student", "seconds"} <= set(ev)
    assert ev["dataset"] == str(ds) and ev["eval_text_source"] == str(text) and ev["base"] is None
    assert ev["rows"] == {"validation": 6, "task": 6}
    assert ev["extraction"]["from"] == "the dataset's stats.json"
    s = ev["student"]
    assert s["perplexity"]["windows"] == 2 and s["perplexity"]["perplexity"] > 1
    assert s["validation"]["rows"] == 6 and s["validation"]["loss"] > 0 and 0 <= s["validation"]["top1_agreement"] <= 1
    assert s["validation"]["kl_topk"] is None and "top-k" in s["validation"]["kl_note"]
    acc = s["accuracy"]
    assert (acc["rows"], acc["correct"], acc["accuracy"]) == (6, 3, 0.5)
    assert acc["teacher_agreement"] == round(2 / 6, 4) and acc["per_style"]["instruct"]["correct"] == 3
    assert acc["max_new_tokens"] == 8 and "per_row" not in acc
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [p["correct"] for p in preds] == [True, False] * 3 and {p["model"] for p in preds} == {"student"}
    assert (out / "README.md").read_text().startswith("# eakd evaluation")
    assert (out / "evaluate_config.yaml").is_file() and not (tmp_path / "eval.tmp").exists()
    with pytest.raises(ConfigError, match="already holds an evaluation"):
        evaluate_student(cfg, untied_model, ds, out)
    # deterministic: a second evaluation gives the same numbers
    again = json.loads((evaluate_student(cfg, untied_model, ds, tmp_path / "eval2") / "eval.json").read_text())["student"]
    for part in ("perplexity", "validation", "accuracy"):
        assert {k: v for k, v in again[part].items() if "seconds" not in k and k != "tokens_per_s"} == \
            {k: v for k, v in s[part].items() if "seconds" not in k and k != "tokens_per_s"}


def test_base_model_kl_on_cached_topk_and_fallback_text(tiny_model, tmp_path, monkeypatch):
    """A base model is measured beside the student; cached top-k gives a KL; with no text configured (and no
    WikiText-2) a short validation text skips perplexity with the reason instead of failing."""
    from distill.models import build_tiny_model, load_tokenizer

    base = build_tiny_model(tmp_path / "base", tiny_model, seed=1)
    ds = _dataset(tmp_path / "ds", ["1"] * 6, ["1"] * 6, kd_tok=load_tokenizer(tiny_model))
    cfg = EvaluateConfig(**(FAST | {"window": 4096}), max_examples=2)
    monkeypatch.setattr("distill.eval.perplexity.shared_data_dir", lambda: None)  # no WikiText-2 beside the checkout
    out = evaluate_student(cfg, tiny_model, ds, tmp_path / "eval", base_model=base)
    ev = json.loads((out / "eval.json").read_text())
    assert ev["base_model"] == str(base) and ev["eval_text_source"] == "dataset validation split (teacher outputs)"
    for name in ("base", "student"):
        m = ev[name]
        assert m["perplexity"]["perplexity"] is None and "fewer than one window of 4096" in m["perplexity"]["reason"]
        assert m["validation"]["kl_topk"] is not None and m["validation"]["kl_topk"] >= 0 and m["validation"]["kl_note"] is None
        assert m["accuracy"]["rows"] == 2
    assert ev["base"]["validation"]["loss"] != ev["student"]["validation"]["loss"]  # two different models
    preds = [json.loads(line)["model"] for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert preds == ["base", "base", "student", "student"]


def test_no_gold_rows_give_null_accuracy_with_a_reason(tiny_model, sft_dataset, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("word " * 200)
    out = evaluate_student(EvaluateConfig(text_path=str(text), **FAST), tiny_model, sft_dataset, tmp_path / "eval",
                           base_model=tiny_model)  # the same model as base: evaluated once
    ev = json.loads((out / "eval.json").read_text())
    assert ev["base"] is None and ev["student"]["validation"]["rows"] == 2
    assert ev["student"]["accuracy"] == {"accuracy": None,
                                         "reason": "no validation row has a gold answer (column 'gold') and an assistant turn"}


def test_batched_left_padded_generation_equals_one_by_one(untied_model):
    from distill.models import load_causal_lm, load_tokenizer

    model, tok = load_causal_lm(untied_model), load_tokenizer(untied_model)
    prompts = [[{"role": "user", "content": "Hi " * n + "?"}] for n in (1, 9, 3, 20, 5)]
    one, truncated = generate_greedy(model, tok, prompts, 6, batch_size=1)
    batched, _ = generate_greedy(model, tok, prompts, 6, batch_size=5)
    assert batched == one and len(set(one)) > 1  # varied answers, the same with or without padding
    assert 0 <= truncated <= len(prompts)


def test_first_line_prompts_stop_at_the_end_of_their_first_line(untied_model):
    from distill.models import load_causal_lm, load_tokenizer

    model, tok = load_causal_lm(untied_model), load_tokenizer(untied_model)
    prompts = [[{"role": "user", "content": f"Question {i}?"}] for i in range(4)]
    full, _ = generate_greedy(model, tok, prompts, 48, batch_size=4)
    flags = [True, True, False, False]
    short, truncated = generate_greedy(model, tok, prompts, 48, batch_size=4, first_line=flags)
    cut = [i for i in range(4) if flags[i] and "\n" in full[i].lstrip()]
    assert cut, f"no flagged answer has a line break in 48 tokens: {full}"  # else this test checks nothing
    for i in range(4):
        if i in cut:  # stopped at the end of the first line: the answer is the same, nothing past it was generated
            assert full[i].startswith(short[i]) and len(short[i]) < len(full[i])
            assert answer_of(short[i], "icl", EXTRACTION) == answer_of(full[i], "icl", EXTRACTION)
            assert short[i].lstrip().count("\n") == 1
        else:
            assert short[i] == full[i]
    assert truncated == 4 - len(cut)  # a first line that ended is complete, not cut off


# --- bad input and atomic output ----------------------------------------------------------------------------

def test_bad_inputs_are_config_errors_before_any_model_loads(tiny_model, sft_dataset, tmp_path):
    cfg = EvaluateConfig(**FAST)
    with pytest.raises(ConfigError, match="is not an eakd dataset"):
        evaluate_student(cfg, tiny_model, tmp_path, tmp_path / "eval")
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list([{"id": "0"}])}).save_to_disk(str(tmp_path / "train_only"))
    with pytest.raises(ConfigError, match="has no validation split"):
        evaluate_student(cfg, tiny_model, tmp_path / "train_only", tmp_path / "eval")
    with pytest.raises(ConfigError, match="does not exist"):
        evaluate_student(cfg, tmp_path / "no_model", sft_dataset, tmp_path / "eval")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="exists and is not an eakd evaluation"):
        evaluate_student(cfg, tiny_model, sft_dataset, tmp_path / "busy")
    short = tmp_path / "short.txt"
    short.write_text("too short")
    with pytest.raises(ConfigError, match="evaluate.text_path: the eval text .* fewer than one window"):
        evaluate_student(EvaluateConfig(**(FAST | {"window": 512}), text_path=str(short)), tiny_model, sft_dataset,
                         tmp_path / "eval")
    with pytest.raises(ValueError, match="max_examples"):
        EvaluateConfig(max_examples=-1)
    with pytest.raises(ValueError, match="extra"):
        EvaluateConfig(max_example=3)
    assert not (tmp_path / "eval").exists()


def test_a_failure_while_writing_leaves_no_output_and_a_rerun_works(tiny_model, sft_dataset, tmp_path, monkeypatch):
    import distill.eval.report as ev_mod

    text = tmp_path / "t.txt"
    text.write_text("word " * 200)
    cfg = EvaluateConfig(text_path=str(text), **FAST)

    def crash(ev):
        raise OSError("disk gone")

    monkeypatch.setattr(ev_mod, "_readme", crash)
    with pytest.raises(OSError, match="disk gone"):
        evaluate_student(cfg, tiny_model, sft_dataset, tmp_path / "eval")
    assert not (tmp_path / "eval").exists()  # only the temp folder was written
    monkeypatch.undo()
    out = evaluate_student(cfg, tiny_model, sft_dataset, tmp_path / "eval")
    assert (out / "eval.json").is_file() and not (tmp_path / "eval.tmp").exists()
