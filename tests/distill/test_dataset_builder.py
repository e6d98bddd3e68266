"""The dataset builder's pure parts: voting, seed formats, few-shot CoT requests, bootstrap parsing, card."""

import json

import pytest

from distill.answers import majority_vote
from distill.config import ConfigError
from distill.data.card import render_card
from distill.data.dataset import GenerateConfig
from distill.data.plan import build_requests, select_demos
from distill.data.rows import _sc_stats, _vote
from distill.data.seeds import Seed, detect_format, load_seeds
from distill.data.selfinstruct import BootstrapConfig, _prompt_vars, parse_instructions
from distill.teacher.query import TeacherConfig
from prompts import load_template


@pytest.mark.parametrize("answers, winner, share", [
    (["12", "12.0", "$12", "7"], "12", 0.75),             # numeric normalisation merges spellings
    (["1,200", "1200", None, None], "1,200", 0.5),         # no-answer samples count against the share
    (["a", "b"], "a", 0.5),                                # a tie goes to the first seen
    (["b", "a", "a"], "a", 2 / 3),
    (["Paris.", "paris", "London"], "Paris.", 2 / 3),      # text answers compare normalised
    ([None, None], None, 0.0),
])
def test_majority_vote(answers, winner, share):
    v = majority_vote(answers)
    assert v.answer == winner and v.share == pytest.approx(share)
    assert sum(v.agrees) == v.votes and len(v.agrees) == len(answers)


def _row(answer, gold="12", reason=None):
    return {"answer": answer, "gold": gold, "removed_reason": reason, "style": "cot", "seed_id": "q",
            "quality": {"gold_match": None if gold is None else answer == gold, "vote_share": None, "voted_answer": None}}


def test_vote_keeps_voted_rationales_without_gold():
    rows = [_row("5", None), _row("5", None), _row("9", None), _row("5", None, reason="truncated")]
    _vote(rows, Seed("q", "x"), "voted")
    assert [r["removed_reason"] is None for r in rows] == [True, True, False, False]
    assert rows[2]["removed_reason"].startswith("sc_minority: answer '9', voted '5' (2/4)")
    assert rows[3]["removed_reason"] == "truncated"  # an earlier reason is not overwritten
    assert {r["quality"]["vote_share"] for r in rows} == {0.5}


def test_vote_prefers_gold_where_the_seed_has_one():
    rows = [_row("7"), _row("7"), _row("12")]  # the majority is wrong
    _vote(rows, Seed("q", "x", answer="12"), "gold")
    assert [r["removed_reason"] is None for r in rows] == [False, False, True]
    assert rows[0]["quality"]["voted_answer"] == "7"
    stats = _sc_stats(rows)
    assert stats["first_sample_accuracy"] == 0.0 and stats["voted_accuracy"] == 0.0
    assert stats["kept_correct_share"] == 1.0 and stats["questions_covered"] == 1
    assert stats["all_samples_accuracy"] == pytest.approx(1 / 3, abs=1e-4)


def test_gsm8k_and_self_instruct_formats(tmp_path):
    g = tmp_path / "gsm8k.jsonl"
    g.write_text(json.dumps({"question": "Tom has 2 bags of 3 apples. How many?",
                             "answer": "2 bags x 3 = <<2*3=6>>6 apples.\n#### 6"}) + "\n")
    (seed,) = load_seeds(g)
    assert (seed.id, seed.answer, seed.task) == ("gsm8k-1", "6", "gsm8k")
    assert seed.rationale == "2 bags x 3 = 6 apples." and "<<" not in seed.rationale
    si = tmp_path / "si.jsonl"
    si.write_text(json.dumps({"id": "my_task_1", "name": "antonyms", "instruction": "Give the antonym.",
                              "instances": [{"input": "hot", "output": "cold"}], "is_classification": False}) + "\n")
    (seed,) = load_seeds(si)
    assert (seed.instruction, seed.input, seed.answer, seed.task) == ("Give the antonym.", "hot", "cold", "antonyms")
    assert detect_format({"id": "a", "instruction": "x"}) == "eakd"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "answer": "no marker"}) + "\n")
    with pytest.raises(ConfigError, match=r"bad.jsonl:1: GSM8K row has no '#### <answer>'"):
        load_seeds(bad, fmt="gsm8k")


def test_shared_data_formats_load(repo_root):
    from distill.config import shared_data_dir

    data = shared_data_dir()
    if data is None or not (data / "gsm8k/train.jsonl").exists():
        pytest.skip("../shared/data (GSM8K, self-instruct seeds) is absent: set EAKD_DATA_DIR to run this")
    gsm = load_seeds(data / "gsm8k/train.jsonl", limit=50)
    assert len(gsm) == 50 and all(s.answer and s.rationale for s in gsm)
    si = load_seeds(data / "self-instruct/seed_tasks.jsonl")
    assert len(si) == 175 and len({s.task for s in si}) >= 170  # one name repeats in the released file


def gsm_pool(n=8):
    return [Seed(f"g{i}", f"Question {i}: what is {i} + {i}?", answer=str(2 * i), task="gsm8k",
                 rationale=f"{i} + {i} = {2 * i}.") for i in range(n)]


def test_few_shot_cot_demos_carry_rationales_and_never_the_target():
    pool = gsm_pool() + [Seed("nr", "No rationale here?", answer="1", task="gsm8k")]
    for target in pool:
        demos = select_demos(target, pool, 3, 0, rationale=True)
        ids = [i for i, _ in demos]
        assert target.id not in ids and "nr" not in ids and len(ids) == 3
        assert all(d["rationale"] for _, d in demos)
    a = select_demos(pool[0], pool, 3, 0, method="bm25", rationale=True)
    assert a == select_demos(pool[0], list(reversed(pool)), 3, 0, method="bm25", rationale=True)


def test_demo_budget_limits_the_demos():
    pool = gsm_pool()
    full = select_demos(pool[0], pool, 4, 0, rationale=True)
    tight = select_demos(pool[0], pool, 4, 0, rationale=True, budget_tokens=40)
    assert len(full) == 4 and 1 <= len(tight) < 4
    assert [i for i, _ in tight] == [i for i, _ in full][: len(tight)] or set(i for i, _ in tight) <= {i for i, _ in full}


def test_build_requests_few_shot_cot_with_prompt_erasure():
    cfg = GenerateConfig(seeds="unused", styles=["cot"], cot_shots=2, erase_demos=True)
    plans, templates = build_requests(gsm_pool(), cfg, "m")
    assert templates["cot"].name == "cot_fewshot"
    p = plans[0]
    assert len(p.demo_ids) == 2 and "Reasoning:" in p.request.messages[-1]["content"]
    assert "Reasoning:" not in p.student_prompt[-1]["content"]  # the student learns to do it zero-shot
    assert p.request.template_sha == load_template("cot_fewshot").sha256


@pytest.mark.parametrize("data, needle", [
    ({"self_consistency": {"enabled": True}}, "needs sampling.n >= 2"),
    ({"styles": ["icl"], "self_consistency": {"enabled": True}, "sampling": {"n": 4}}, "cot is not in generate.styles"),
    ({"styles": ["cot"], "bootstrap": {}}, "add instruct to generate.styles"),
    ({"filters": {"contamination": {"eval_paths": ["x"], "n": 8, "min_n": 10}}}, "min_n (10) must be <= n (8)"),
    ({"demo_method": "nearest"}, "demo_method"),
])
def test_generate_config_rejects_inconsistent_settings(data, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        GenerateConfig(seeds="s.jsonl", **data)


@pytest.mark.parametrize("text, truncated, expected", [
    ("9. Write a haiku about rain.\n10. List three uses of salt.", False, ["Write a haiku about rain.", "List three uses of salt."]),
    ("Task 9: Name a river.\nTask 10: Sort these words.", False, ["Name a river.", "Sort these words."]),
    ("9) Explain tides.\n10) Describe a cat", True, ["Explain tides."]),   # the cut-off last item goes
    ("Summarise the text.\n\nTranslate to French.", False, ["Summarise the text.", "Translate to French."]),
    ("", False, []),
])
def test_parse_instructions(text, truncated, expected):
    assert parse_instructions(text, truncated=truncated) == expected


def test_bootstrap_prompts_are_seeded_and_mix_human_and_machine_tasks():
    seeds = [Seed(f"s{i}", f"Human task number {i}.") for i in range(20)]
    machine = [Seed(f"si-{i}", f"Machine task number {i}.", task="self_instruct") for i in range(5)]
    cfg = BootstrapConfig()
    a = _prompt_vars(seeds, machine, cfg, 1, 3)
    assert a == _prompt_vars(seeds, machine, cfg, 1, 3) and a != _prompt_vars(seeds, machine, cfg, 1, 4)
    assert sum(t.startswith("Human") for t in a["tasks"]) == 6 and sum(t.startswith("Machine") for t in a["tasks"]) == 2
    assert len(_prompt_vars(seeds, [], cfg, 0, 0)["tasks"]) == 6  # round 0 has no machine tasks yet


def test_card_lists_provenance_filters_tokens_and_samples():
    cfg = GenerateConfig(seeds="data/seeds.jsonl", styles=["cot"], sampling={"n": 4, "temperature": 0.7},
                         self_consistency={"enabled": True}, filters={"blocklist": ["lorem"],
                                                                      "contamination": {"eval_paths": ["test.jsonl"]}})
    tmpl = load_template("cot")
    teacher = {"prompt_tokens": 100, "completion_tokens": 50, "cached_prompt_tokens": 0, "cached_completion_tokens": 0,
               "cache_hits": 0, "requests": 3}
    stats = {"eakd_version": "1.0", "created": "now", "seeds": 3, "seeds_train": 2, "seeds_validation": 1,
             "demos": {"method": "random"}, "rows": {"train": 5, "validation": 2, "removed": 5},
             "kept_per_style": {"cot": 7}, "removed_by_reason": {"gold_mismatch": 4, "filter_blocklist": 1},
             "filters": {"blocklist": 1}, "gold_match_rate": {"cot": 0.58}, "teacher": teacher,
             "tokens": {"cot": {"rows": 7, "completion_tokens": 321, "estimated_rows": 0}},
             "self_consistency": {"questions": 3, "questions_with_gold": 3, "mean_vote_share": 0.5, "first_sample_accuracy": 0.33,
                                  "all_samples_accuracy": 0.58, "voted_accuracy": 0.67, "kept_rows": 7,
                                  "kept_correct_share": 1.0, "questions_covered": 2},
             "contamination": {"n": 13, "rows_checked": 8, "contaminated": 1, "eval_items": 10, "eval_items_hit": 1,
                               "skipped_short_eval": 0, "action": "filter"},
             "bootstrap": None}
    sample = {"id": "q:cot:0", "style": "cot", "messages": [{"role": "assistant", "content": "2+2=4. The answer is 4."}]}
    card = render_card(cfg, TeacherConfig(), {"cot": tmpl}, stats, [sample])
    for needle in [tmpl.sha256, "`SmolLM2-135M-Instruct` via `vllm`", '"temperature": 0.7', "5 train, 2 validation; removed: 5",
                   '"gold_mismatch": 4', '"blocklist": 1', "7 rows, 321 response tokens", "accuracy of the first sample 0.33",
                   "of the voted answer 0.67", "correct share 1.0", "1 of 8 rows share a 13-gram", "test.jsonl",
                   "The answer is 4.", "## Self-consistency", "## Contamination", "data/seeds.jsonl"]:
        assert needle in card, needle
    assert "## Self-Instruct" not in card


def test_push_to_hub_without_a_token_fails_before_any_teacher_call(tmp_path, monkeypatch):
    from distill.data.dataset import generate_dataset

    monkeypatch.delenv("EAKD_TEST_HUB_TOKEN", raising=False)
    cfg = GenerateConfig(seeds=str(tmp_path / "missing.jsonl"),
                         push_to_hub={"repo_id": "me/data", "token_env": "EAKD_TEST_HUB_TOKEN"})
    with pytest.raises(ConfigError, match="EAKD_TEST_HUB_TOKEN .* not set"):
        generate_dataset(cfg, TeacherConfig(), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _cot_plan(cfg):
    plans, _ = build_requests(gsm_pool()[:1], cfg, "m")
    return plans[0]


def test_structured_cot_asks_for_json_and_trains_on_rationale_then_answer():
    from distill.data.rows import _rows_for
    from distill.teacher.query import Choice, TeacherResponse
    from distill.teacher.structured import cot_schema, validate_output

    cfg = GenerateConfig(seeds="unused", styles=["cot"], structured_cot=True)
    plan = _cot_plan(cfg)
    schema = cot_schema(cfg.sampling.max_tokens)
    assert plan.request.json_schema == schema and plan.request.template == "cot_json"
    assert schema["properties"]["rationale"]["maxLength"] == 2 * (256 - 48)  # room left for the answer
    plain = _cot_plan(GenerateConfig(seeds="unused", styles=["cot"])).request
    assert plain.json_schema is None and plain.key() != plan.request.key()  # the schema is part of the cache key
    good = '{"rationale": "3 boxes of 4 is 12.", "answer": "12"}'
    bad = '{"rationale": "3 boxes of 4 is 12.", "answer": 12'  # cut off: not JSON
    choices = [Choice(text=t, finish_reason="stop", schema_error=validate_output(t, schema)[1]) for t in (good, bad)]
    rows = _rows_for(plan, TeacherResponse(key="k", choices=choices), cfg, "train")
    assert rows[0]["rationale"] == "3 boxes of 4 is 12." and rows[0]["answer"] == "12"
    assert rows[0]["quality"]["extraction"] == "json" and rows[0]["removed_reason"] is None
    assert rows[0]["messages"][-1]["content"] == "3 boxes of 4 is 12.\nThe answer is 12."
    assert rows[0]["raw_output"] == good  # provenance keeps what the teacher said
    # a schema violation is caught, recorded with its reason and kept in the removed split
    assert rows[1]["removed_reason"].startswith("schema_invalid: not JSON")
    assert rows[1]["raw_output"] == bad


def test_judge_config_rejects_scores_off_the_scale():
    with pytest.raises(Exception, match="min_score"):
        GenerateConfig(seeds="unused", filters={"judge": {"min_score": 6}})


def test_a_broken_judge_template_fails_before_any_teacher_call(tmp_path):
    from distill.data.dataset import generate_dataset

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(json.dumps({"id": "a", "instruction": "Say hi."}) + "\n")
    judge = tmp_path / "judge.jinja"
    judge.write_text("{% block user %}{{ instruction }} {{ answer }}{% endblock %}")  # `answer` is not passed
    cfg = GenerateConfig(seeds=str(seeds), styles=["instruct"], filters={"judge": {"template": str(judge)}})
    teacher = TeacherConfig(backend="openai", model="m", base_url="http://127.0.0.1:9/v1",  # nothing listens
                            cache_path=str(tmp_path / "cache.sqlite"))
    with pytest.raises(ConfigError, match="generate.filters.judge.template: .*undefined variable"):
        generate_dataset(cfg, teacher, tmp_path / "ds")
    assert not (tmp_path / "cache.sqlite").exists() and not (tmp_path / "ds").exists()
