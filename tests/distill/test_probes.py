"""EA probes (distill/probes/): task families, prompt building, strict grading, per-ability scores, the
headline table and the evaluate stage's probe block on a tiny random model (CPU, seconds)."""

from __future__ import annotations

import json

import pytest

from distill.config import ConfigError
from distill.probes.config import ProbesConfig
from distill.probes.families import FAMILIES, Family, Item, make_items, split_items, task_file_entries
from distill.probes.run import build_prompts, training_inputs
from distill.probes.score import ability_markdown, ability_table, gap_closed, grade, score_model
from distill.probes.suite import answer_in, cot_prompts, grade_answer, icl_prompts

# --- families --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_draws_distinct_items_deterministically(name):
    fam = FAMILIES[name]
    a, b = make_items(fam, 12, seed=3), make_items(fam, 12, seed=3)
    assert a == b and len({i.input for i in a}) == 12
    assert all(i.answer and i.task == name and i.instruction == fam.instruction for i in a)
    if fam.ability == "cot":  # worked steps; as a demo they end in the gold answer, as the CoT prompt asks
        from distill.data.plan import cot_demo_turn

        assert all(i.rationale and "The answer is" not in i.rationale for i in a)
        turns = [cot_demo_turn({"input": i.input, "output": i.answer, "rationale": i.rationale}) for i in a]
        assert all(t["output"].endswith(f"\nThe answer is {i.answer}.") for t, i in zip(turns, a))
    assert make_items(fam, 12, seed=4) != a or fam.draw is None and len(fam.pairs) == 12


def test_exclude_skips_inputs_and_a_short_family_says_so():
    fam = FAMILIES["larger"]
    first = make_items(fam, 5, seed=0)
    again = make_items(fam, 5, seed=0, exclude=[first[0].input.upper()])  # case does not matter
    assert first[0].input not in {i.input for i in again}
    tiny = Family("two", "icl", "Pick.", pairs=(("a", "1"), ("b", "2")))
    with pytest.raises(ValueError, match="'two' has 1 distinct items left .* fewer than the 2"):
        make_items(tiny, 2, seed=0, exclude=["a"])


def test_split_and_task_file_entries_are_disjoint():
    pool, held = split_items(FAMILIES["successor"], 6, 4, seed=1)
    assert not {i.input for i in pool} & {i.input for i in held}
    (entry,) = task_file_entries(["successor"], 5, 7, 3, seed=0)
    ex = {e["input"] for e in entry["examples"]}
    held_in = {e["input"] for e in entry["held_out"]}
    assert (len(ex), len(entry["inputs"]), len(held_in)) == (5, 7, 3)
    assert not ex & set(entry["inputs"]) and not ex & held_in and not held_in & set(entry["inputs"])


# --- prompts and grading ---------------------------------------------------------------------------------

def test_zero_and_k_shot_prompts_are_what_the_generate_stage_renders():
    """The probe's zero-shot prompt is the erased prompt an erase_demos student trains on, and its k-shot prompt
    is the teacher's chat-demo request for the same item and demos."""
    from distill.data.dataset import GenerateConfig
    from distill.data.plan import build_requests
    from distill.data.seeds import Seed

    pool, held = split_items(FAMILIES["review_gb"], 6, 2, seed=0)
    prompts = icl_prompts(held, pool, shots=3, seed=0)
    assert [p.mode for p in prompts] == ["zero_shot", "k_shot"] * 2
    by_id = {d.id: d for d in pool}
    for zero, k, item in zip(prompts[::2], prompts[1::2], held):
        demos = [{"input": by_id[i].input, "output": by_id[i].answer} for i in k.demo_ids]
        seed = Seed(id=item.id, instruction=item.instruction, input=item.input, task=item.task, demos=demos)
        cfg = GenerateConfig(seeds="x.jsonl", styles=["icl"], num_demos=3, erase_demos=True, demo_format="chat")
        (plan,), _ = build_requests([seed], cfg, "m")
        assert zero.messages == plan.student_prompt and k.messages == plan.request.messages
        assert item.id not in k.demo_ids and len(k.demo_ids) == 3


def test_cot_prompts_have_four_modes_and_demos_show_rationales():
    pool, held = split_items(FAMILIES["sum3"], 5, 1, seed=0)
    prompts = cot_prompts(held, pool, shots=2, seed=0)
    assert [p.mode for p in prompts] == ["direct", "cot", "direct_k_shot", "cot_k_shot"]
    cot_k = prompts[3].messages
    assert [m["role"] for m in cot_k] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert "step by step" in cot_k[0]["content"] and "The answer is" in cot_k[2]["content"]
    assert prompts[2].messages[2]["content"].strip().isdigit()  # direct demos answer with the answer alone
    assert not prompts[1].first_line and prompts[0].first_line


def test_cot_k_shot_prompt_is_what_the_generate_stage_sends_for_a_cot_task(tmp_path):
    """A cot task of a task file (worked examples, style cot): the teacher's request is the probe's cot_k_shot prompt
    for the same item and demos, and the erased student prompt is the probe's zero-shot cot prompt."""
    import yaml

    from distill.data.dataset import GenerateConfig, load_generate_seeds
    from distill.data.plan import build_requests

    (entry,) = task_file_entries(["sum3"], 4, 1, 0, seed=0)
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump({"tasks": [entry]}))
    cfg = GenerateConfig(tasks=str(path), styles=["cot"], num_demos=2, demo_format="chat", erase_demos=True)
    (seed,) = load_generate_seeds(cfg)
    (plan,), _ = build_requests([seed], cfg, "m")
    pool = [Item(id=f"d{i}", task="sum3", instruction=seed.instruction, input=d["input"], answer=d["output"],
                 rationale=d["rationale"]) for i, d in enumerate(seed.demos)]
    item = Item(id="q", task="sum3", instruction=seed.instruction, input=seed.input, answer="0")
    by_mode = {p.mode: p for p in cot_prompts([item], pool, shots=2, seed=0)}
    demo_order = {d.input: d for d in pool}
    ordered = [demo_order[d["input"]] for d in seed.demos]  # the seed's own demo order
    from distill.probes.suite import _cot_with_demos

    assert plan.request.messages == _cot_with_demos(item, ordered)
    assert plan.student_prompt == by_mode["cot"].messages
    assert set(by_mode) == {"direct", "cot", "direct_k_shot", "cot_k_shot"}
    bad = cfg.model_copy(update={"styles": ["icl"]})
    with pytest.raises(ConfigError, match="style cot but generate.styles"):
        load_generate_seeds(bad)


@pytest.mark.parametrize("answer,gold,aliases,strict,lenient", [
    ("animal", "animal", (), True, True),
    ("Animal.", "animal", (), True, True),
    ("It is an animal", "animal", (), False, True),       # lenient: the gold as a whole word
    ("1,200", "1200", (), True, True),                    # numbers compare as numbers
    ("1200 apples", "1200", (), True, True),
    ("12", "1200", (), False, False),
    ("vehicle", "car", ("vehicle",), True, True),          # accepted aliases
    (None, "x", (), False, False),
])
def test_grade_answer_strict_and_lenient(answer, gold, aliases, strict, lenient):
    assert grade_answer(answer, gold, aliases) == (strict, lenient)


def test_answer_in_reads_the_first_line_or_the_cot_answer():
    assert answer_in("\n good \nbecause", "zero_shot") == "good"
    assert answer_in("3 + 4 = 7. Then 7 + 2 = 9.\nThe answer is 9.", "cot") == "9"
    assert answer_in("", "k_shot") is None


# --- scores and the headline table -----------------------------------------------------------------------

def _records(ability: str, task: str, mode: str, outcomes: list[bool]) -> list[dict]:
    return [{"ability": ability, "task": task, "mode": mode, "strict": o, "lenient": o} for o in outcomes]


def test_score_model_and_gap_closed():
    recs = (_records("icl", "a", "zero_shot", [False] * 4) + _records("icl", "a", "k_shot", [True, True, False, False])
            + _records("cot", "c", "direct", [False, False]) + _records("cot", "c", "cot", [True, False])
            + _records("cot", "c", "direct_k_shot", [False, False]) + _records("cot", "c", "cot_k_shot", [True, True]))
    s = score_model(recs)
    assert s["icl"]["zero_shot"]["strict"] == 0.0 and s["icl"]["k_shot"]["strict"] == 0.5
    assert s["icl"]["k_shot"]["per_task"]["a"] == {"strict": 0.5, "lenient": 0.5, "n": 4}
    assert s["cot"]["gain"] == 0.5 and s["cot"]["gain_k_shot"] == 1.0
    assert gap_closed(0.4, 0.0, 0.5) == 0.8 and gap_closed(0.4, 0.5, 0.5) is None and gap_closed(None, 0, 1) is None


def test_ability_table_flags_negative_transfer_on_controls():
    teacher = {"icl": {"k_shot": {"strict": 0.6}}}
    base = {"icl": {"zero_shot": {"strict": 0.1}},
            "control": {"zero_shot": {"lenient": 0.9, "per_task": {"capital": {"lenient": 0.9, "strict": 0.0, "n": 8}}}}}
    student = {"icl": {"zero_shot": {"strict": 0.5}},
               "control": {"zero_shot": {"lenient": 0.5, "per_task": {"capital": {"lenient": 0.5, "strict": 0.0, "n": 8}}}}}
    rows = {r["ability"]: r for r in ability_table(teacher, base, student)}
    assert rows["ICL"]["gap_closed"] == 0.8 and not rows["ICL"]["negative_transfer"]
    assert rows["control"]["negative_transfer"] and rows["control:capital"]["negative_transfer"]
    md = "\n".join(ability_markdown(list(rows.values())))
    assert "| ICL |" in md and "80.0 %" in md and "negative transfer" in md


def test_grade_rejects_a_length_mismatch():
    with pytest.raises(ValueError, match="1 answers for 0 probe prompts"):
        grade([], ["x"])


# --- config and prompt building --------------------------------------------------------------------------

def test_probes_config_names_unknown_or_wrong_kind_families():
    with pytest.raises(ValueError, match="unknown task family 'nope'"):
        ProbesConfig(icl_tasks=["nope"])
    with pytest.raises(ValueError, match="'sum3' is a cot family; icl_tasks takes icl families"):
        ProbesConfig(icl_tasks=["sum3"])


def test_every_prompt_that_is_not_graded_on_its_first_line_gets_a_long_budget():
    """A CoT answer cut at the short first-line budget would lose its 'The answer is ...' line."""
    from distill.probes.run import token_budget

    cfg = ProbesConfig(icl_tasks=["larger"], controls=["continent"], cot_tasks=["sum3"], if_items=2, per_task=2,
                       pool_per_task=2, shots=1, max_new_tokens=7, cot_max_new_tokens=99, if_max_new_tokens=55)
    budgets = {(p.mode, p.first_line, token_budget(p, cfg)) for p in build_prompts(cfg)}
    assert {b for m, first, b in budgets if first} == {7}
    assert {(m, b) for m, first, b in budgets if not first} == {("cot", 99), ("cot_k_shot", 99), ("if", 55)}


def test_build_prompts_skips_training_inputs():
    cfg = ProbesConfig(icl_tasks=["larger"], controls=[], cot_tasks=[], if_items=0, per_task=4, pool_per_task=4)
    first = build_prompts(cfg)
    used = {p.messages[-1]["content"].splitlines()[-1] for p in first if p.mode == "zero_shot"}
    rows = [{"messages": [{"role": "user", "content": f"Which number is larger?\n\n{u}"}]} for u in used]
    again = build_prompts(cfg, training_inputs(rows))
    assert not used & {p.messages[-1]["content"].splitlines()[-1] for p in again if p.mode == "zero_shot"}


def test_evaluate_stage_writes_probe_scores_and_the_ability_table(untied_model, sft_dataset, tmp_path):
    from distill.evaluate import EvaluateConfig, evaluate_student

    text = tmp_path / "t.txt"
    text.write_text("word " * 200)
    probes = ProbesConfig(icl_tasks=["larger"], controls=["continent"], cot_tasks=["sum3"], per_task=2, pool_per_task=3,
                          shots=2, if_items=2, max_new_tokens=4, cot_max_new_tokens=16, if_max_new_tokens=16, teacher=False)
    cfg = EvaluateConfig(text_path=str(text), window=16, max_windows=1, max_new_tokens=4, dtype="float32", device="cpu",
                         probes=probes)
    out = evaluate_student(cfg, untied_model, sft_dataset, tmp_path / "eval")
    ev = json.loads((out / "eval.json").read_text())
    p = ev["student"]["probes"]
    assert p["icl"]["zero_shot"]["n"] == 2 and p["icl"]["k_shot"]["n"] == 2 and p["cot"]["cot_k_shot"]["n"] == 2
    assert p["if"]["n"] == 2 and p["control"]["zero_shot"]["n"] == 2
    assert ev["teacher"] is None and [r["ability"] for r in ev["abilities"]][:1] == ["ICL"]
    lines = (out / "probes.jsonl").read_text().splitlines()
    assert len(lines) == 2 * 2 + 2 * 4 + 2 + 2 and all(json.loads(x)["model"] == "student" for x in lines)
    assert "Abilities" in (out / "README.md").read_text()
    bad = cfg.model_copy(update={"probes": probes.model_copy(update={"per_task": 500})})
    with pytest.raises(ConfigError, match="evaluate.probes: task family 'continent'"):
        evaluate_student(bad, untied_model, sft_dataset, tmp_path / "eval2")


def test_negative_transfer_is_judged_against_the_students_start_when_it_was_pruned():
    """A pruned student that lost a control to the pruning, not to training, is not flagged; one that fell below its
    pruned start is."""
    base = {"control": {"zero_shot": {"lenient": 0.8, "per_task": {"capital": {"lenient": 0.8, "strict": 0.0, "n": 8}}}}}
    start = {"control": {"zero_shot": {"lenient": 0.1, "per_task": {"capital": {"lenient": 0.1, "strict": 0.0, "n": 8}}}}}
    kept = {"control": {"zero_shot": {"lenient": 0.1, "per_task": {"capital": {"lenient": 0.1, "strict": 0.0, "n": 8}}}}}
    rows = {r["ability"]: r for r in ability_table(None, base, kept, start=start)}
    assert rows["control"]["start"] == 0.1 and not rows["control"]["negative_transfer"] and "control:capital" not in rows
    worse = {"control": {"zero_shot": {"lenient": 0.0, "per_task": {"capital": {"lenient": 0.0, "strict": 0.0, "n": 8}}}}}
    rows = {r["ability"]: r for r in ability_table(None, base, worse, start=start)}
    assert rows["control"]["negative_transfer"] and rows["control:capital"]["start"] == 0.1
    assert "student's start" in "\n".join(ability_markdown(list(rows.values())))


def test_evaluate_measures_the_pruned_start_beside_base_and_student(untied_model, sft_dataset, tmp_path):
    from distill.evaluate import EvaluateConfig, evaluate_student

    text = tmp_path / "t.txt"
    text.write_text("word " * 200)
    probes = ProbesConfig(icl_tasks=["larger"], controls=[], cot_tasks=[], per_task=2, pool_per_task=2, shots=1, if_items=0,
                          max_new_tokens=4, teacher=False)
    cfg = EvaluateConfig(text_path=str(text), window=16, max_windows=1, max_new_tokens=4, dtype="float32", device="cpu",
                         max_examples=0, probes=probes)
    base = tmp_path / "base"
    from distill.models import build_tiny_model

    build_tiny_model(base, untied_model, seed=3)
    ev = json.loads((evaluate_student(cfg, untied_model, sft_dataset, tmp_path / "e", base_model=base, base_keep_layers=1)
                     / "eval.json").read_text())
    assert ev["start"]["layers"] == 1 and ev["base"]["layers"] == 2 and ev["start"]["model"].endswith("pruned to 1 layers")
    assert ev["start"]["probes"]["icl"]["zero_shot"]["n"] == 2 and ev["abilities"][0]["start"] is not None
