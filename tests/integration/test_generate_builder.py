"""The dataset builder end to end against the real bundled teacher (vLLM's server on 127.0.0.1).

One generate run exercises GSM8K-format seeds, few-shot CoT with self-consistency, Self-Instruct
bootstrapping, a blocklist and the contamination check; a rerun must pay the teacher nothing.
"""

import json

import pytest

from distill.data.dataset import GenerateConfig, generate_dataset
from distill.teacher.query import TeacherConfig

pytestmark = pytest.mark.integration

QUESTIONS = [
    ("Tom has 3 boxes with 4 apples in each box. How many apples does he have?", "3 x 4 = 12 apples.", 12),
    ("A pencil costs 2 dollars. How much do 7 pencils cost?", "7 x 2 = 14 dollars.", 14),
    ("Sara had 20 stickers and gave 8 away. How many are left?", "20 - 8 = 12 stickers.", 12),
    ("A farmer has 5 cows and buys 6 more. How many cows now?", "5 + 6 = 11 cows.", 11),
    ("There are 9 birds and 4 fly away. How many birds remain?", "9 - 4 = 5 birds.", 5),
    ("Each bag holds 10 marbles. How many marbles are in 3 bags?", "3 x 10 = 30 marbles.", 30),
]


def test_generate_builds_cot_sc_and_bootstrapped_if_dataset(vllm_server, tmp_path):
    from datasets import load_from_disk

    seeds = tmp_path / "gsm8k.jsonl"
    seeds.write_text("".join(json.dumps({"question": q, "answer": f"{r}\n#### {a}"}) + "\n" for q, r, a in QUESTIONS))
    evalset = tmp_path / "eval.jsonl"  # the last question is "in the eval set": its rows must be caught
    evalset.write_text(json.dumps({"question": QUESTIONS[-1][0]}) + "\n")
    gen = GenerateConfig(
        seeds=str(seeds), styles=["cot", "instruct"], cot_shots=2, validation_fraction=0.3,
        sampling={"n": 3, "temperature": 0.8, "max_tokens": 96, "seed": 1},
        self_consistency={"enabled": True, "keep": "gold"}, drop_truncated=False,
        filters={"blocklist": ["zebra"], "contamination": {"eval_paths": [str(evalset)], "n": 8}},
        bootstrap={"target": 6, "prompts_per_round": 4, "max_rounds": 2, "new_per_prompt": 4, "max_tokens": 128,
                   "min_words": 3},
    )
    teacher = TeacherConfig(backend="openai", model="bundled", base_url=vllm_server, max_concurrency=8,
                            cache_path=str(tmp_path / "cache.sqlite"))
    out = generate_dataset(gen, teacher, tmp_path / "ds")
    stats = json.loads((out / "stats.json").read_text())
    dd = load_from_disk(str(out))
    rows = [r for split in ("train", "validation", "removed") for r in dd[split]]

    # self-consistency: every CoT sample carries the vote; kept ones reach the gold answer
    cot = [r for r in rows if r["style"] == "cot" and r["origin"] == "seed"]
    assert len(cot) == 3 * len(QUESTIONS) and all(r["quality"]["vote_share"] is not None for r in cot)
    assert all(r["quality"]["gold_match"] for r in cot if r["removed_reason"] is None)
    sc = stats["self_consistency"]
    assert sc["questions"] == len(QUESTIONS) and sc["kept_correct_share"] in (None, 1.0)
    assert all(len(r["demo_ids"]) == 2 and r["seed_id"] not in " ".join(r["demo_ids"]) for r in cot)
    assert all("Reasoning:" in r["prompt_messages"][-1]["content"] for r in cot)

    # contamination: the eval question's rows are removed with the reason, not dropped
    leaked = [r for r in rows if r["seed_id"] == "gsm8k-6" and r["removed_reason"] is not None
              and r["removed_reason"].startswith("contamination")]
    assert leaked and stats["contamination"]["contaminated"] >= 1

    # bootstrapping: every candidate is accounted for, kept ones were answered like seed instructions
    b = stats["bootstrap"]
    machine = [r for r in rows if r["origin"].startswith("bootstrap")]
    answered = [r for r in machine if r["style"] == "instruct" and r["messages"]]
    assert b["candidates"] >= 1 and len({r["seed_id"] for r in answered}) == b["kept"]
    assert len(answered) == 3 * b["kept"]  # sampling.n = 3 answers per instruction
    assert b["kept"] + sum(b["removed_by"].values()) == b["candidates"]
    a = b["novelty_agreement"]
    assert a["both"] + a["only_rougel"] + a["only_minhash"] >= 0 and 0.0 <= a["jaccard"] <= 1.0

    card = (out / "README.md").read_text()
    for needle in ["## Self-consistency", "## Contamination", "## Self-Instruct bootstrapping", "cot_fewshot",
                   stats["templates"]["cot"]["sha256"], str(seeds)]:
        assert needle in card, needle
    assert "sk-" not in card

    # a rerun with unchanged inputs pays the teacher nothing and rebuilds the same rows
    out2 = generate_dataset(gen, teacher, tmp_path / "ds2")
    stats2 = json.loads((out2 / "stats.json").read_text())
    assert stats2["teacher"]["sent"] == 0 and stats2["bootstrap"]["teacher"]["sent"] == 0
    rows2 = [r for split in ("train", "validation", "removed") for r in load_from_disk(str(out2))[split]]
    assert [(r["id"], r["messages"], r["removed_reason"]) for r in rows2] == \
        [(r["id"], r["messages"], r["removed_reason"]) for r in rows]


@pytest.mark.parametrize("backend", ["openai", "vllm"])
def test_structured_cot_and_llm_judge_on_the_real_teacher(backend, vllm_server, tmp_path):
    """CoT answers as JSON {rationale, answer} and judge verdicts as JSON {reason, score}, over HTTP
    (response_format) and in-process (vLLM structured decoding); nothing parsed out of prose."""
    from datasets import load_from_disk

    seeds = tmp_path / "gsm8k.jsonl"
    seeds.write_text("".join(json.dumps({"question": q, "answer": f"{r}\n#### {a}"}) + "\n" for q, r, a in QUESTIONS[:3]))
    gen = GenerateConfig(seeds=str(seeds), styles=["cot"], structured_cot=True, validation_fraction=0.0,
                         sampling={"max_tokens": 160}, filters={"judge": {"min_score": 1, "max_tokens": 96}})
    teacher = TeacherConfig(backend=backend, model="bundled", base_url=vllm_server if backend == "openai" else None,
                            cache_path=str(tmp_path / "cache.sqlite"), max_model_len=1024)
    out = generate_dataset(gen, teacher, tmp_path / "ds")
    stats = json.loads((out / "stats.json").read_text())
    dd = load_from_disk(str(out))
    rows = list(dd["train"]) + list(dd["removed"])
    assert len(rows) == 3
    for r in rows:  # every answer is either parsed JSON or marked with why it is not
        if r["removed_reason"] is None:
            assert r["quality"]["extraction"] == "json" and r["answer"] is not None
            assert r["messages"][-1]["content"].endswith(f"The answer is {r['answer']}.")
            assert json.loads(r["raw_output"])["answer"].strip() == r["answer"]
        else:
            assert r["removed_reason"].startswith(("schema_invalid", "truncated")), r["removed_reason"]
    j = stats["judge"]
    assert j["rows"] == len(dd["train"]) and j["judged"] + j["invalid"] + j["failed"] == j["rows"]
    for r in dd["train"]:
        score = r["quality"]["judge_score"]
        assert (score is not None and 1 <= score <= 5 and r["quality"]["judge_reason"]) or \
            r["quality"]["judge_reason"].startswith(("invalid verdict", "no verdict"))
    assert "## LLM-as-judge" in (out / "README.md").read_text()
