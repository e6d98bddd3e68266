"""A task file end to end against the real bundled teacher (vLLM's server on 127.0.0.1): the teacher writes
new inputs for the task, labels them and the given ones with demos the student never sees, and the held-out
items land in validation with their gold answers."""

import json

import pytest

from distill.data.dataset import GenerateConfig, generate_dataset
from distill.teacher.query import TeacherConfig

pytestmark = pytest.mark.integration

TASK = {
    "name": "ticket_team",
    "instruction": "Which team should handle this support ticket? Answer with the team's name only.",
    "examples": [
        {"input": "I was charged twice for my subscription this month.", "output": "billing"},
        {"input": "My package says delivered but it is not at my door.", "output": "shipping"},
        {"input": "The app crashes every time I open the settings page.", "output": "technical"},
        {"input": "I forgot my password and the reset email never arrives.", "output": "account"},
        {"input": "Why is there a late fee on my invoice?", "output": "billing"},
        {"input": "The website shows error 500 when I click checkout.", "output": "technical"},
    ],
    "inputs": ["The tracking number you sent me does not work.", "Someone else logged into my account."],
    "held_out": [{"input": "I was billed for a plan I never signed up for.", "output": "billing"},
                 {"input": "The app logs me out every few minutes.", "output": "technical"}],
    "synthesize": 4,
}


def test_task_file_with_synthesis_gives_a_zero_shot_dataset(vllm_server, tmp_path):
    from datasets import load_from_disk

    tasks = tmp_path / "tasks.yaml"
    tasks.write_text(json.dumps({"tasks": [TASK]}))
    gen = GenerateConfig(tasks=str(tasks), styles=["icl"], num_demos=3, erase_demos=True, demo_format="chat",
                         sampling={"max_tokens": 8}, drop_truncated=False,  # every labelled input stays a row
                         synthesis={"max_tokens": 48, "rounds": 3})
    teacher = TeacherConfig(backend="openai", model="bundled", base_url=vllm_server, max_concurrency=8,
                            cache_path=str(tmp_path / "cache.sqlite"))
    out = generate_dataset(gen, teacher, tmp_path / "ds")
    stats = json.loads((out / "stats.json").read_text())
    dd = load_from_disk(str(out))

    # synthesis: every candidate accounted for, provenance on each row, counts in stats.json
    s = stats["synthesis"]["tasks"]["ticket_team"]
    synth_rows = [r for r in dd["train"] if r["origin"].startswith("synth:")]
    removed = [r for r in dd["removed"] if r["style"] == "synth"]
    assert s["asked"] == 4 and s["kept"] == len(synth_rows) and s["kept"] + s["short_by"] == 4
    assert s["prompts"] == s["kept"] + len(removed) == s["kept"] + sum(s["removed_by"].values())
    assert stats["synthesis"]["complete"] == (s["short_by"] == 0) and stats["synthesis"]["template"]["name"] == "synth_inputs"
    assert all(r["origin"].startswith("synth:ticket_team:") and r["seed_id"].startswith("ticket_team/synth-")
               and r["removed_reason"] for r in removed)
    assert all(r["origin"] == f"synth:ticket_team:{r['seed_id'].split('-')[1]}" for r in synth_rows)
    examples = {e["input"] for e in TASK["examples"]}
    held = {h["input"] for h in TASK["held_out"]}
    synth_inputs = [r["messages"][-2]["content"].split("\n\n")[-1] for r in synth_rows]
    assert not (set(synth_inputs) & (examples | held | set(TASK["inputs"])))

    # train: the given and synthesized inputs, labelled by the teacher with demos, learned zero-shot
    train = list(dd["train"])
    given = [r for r in train if r["origin"] == "task:ticket_team"]
    assert len(given) == 2 and len(train) == 2 + s["kept"]
    for r in train:
        assert r["gold"] is None and r["style"] == "icl" and len(r["demo_ids"]) == 3
        teacher_turns = [m for m in r["prompt_messages"] if m["role"] == "assistant"]
        assert len(teacher_turns) == 3  # the teacher saw 3 demos as chat turns
        student = r["messages"][:-1]
        assert [m["role"] for m in student] == ["system", "user"]  # the student sees none
        assert not any(x in student[-1]["content"] for x in examples)
        assert r["messages"][-1]["role"] == "assistant"

    # validation: exactly the held-out items, with their gold answers, zero-shot too
    val = list(dd["validation"])
    assert sorted((r["gold"], r["origin"]) for r in val) == [("billing", "held_out:ticket_team"),
                                                               ("technical", "held_out:ticket_team")]
    assert all(r["messages"][-2]["content"].endswith(tuple(held)) for r in val)
    assert stats["seeds_validation"] == 2 and stats["seeds_train"] == 2 + s["kept"]

    # a rerun pays the teacher nothing (synthesis included) and rebuilds the same rows
    out2 = generate_dataset(gen, teacher, tmp_path / "ds2")
    stats2 = json.loads((out2 / "stats.json").read_text())
    assert stats2["teacher"]["sent"] == 0 and stats2["synthesis"]["teacher"]["sent"] == 0
    assert [r["messages"] for r in load_from_disk(str(out2))["train"]] == [r["messages"] for r in train]
