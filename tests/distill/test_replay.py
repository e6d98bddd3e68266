"""Replay (distill/data/replay.py): general instructions mixed into a task dataset's train split, as instruct-style
seeds whatever generate.styles says; generated deterministically or read from a user file with clear errors."""

from __future__ import annotations

import pytest
import yaml

from distill.config import ConfigError
from distill.data.dataset import GenerateConfig, build_requests, load_generate_seeds
from distill.data.replay import ReplayConfig, replay_seeds


def test_generated_replay_is_deterministic_distinct_and_instruct_train_seeds():
    a, b = replay_seeds(ReplayConfig(n=40)), replay_seeds(ReplayConfig(n=40))
    assert a == b and len({s.instruction for s in a}) == 40
    assert {(s.style, s.split, s.origin, s.answer) for s in a} == {("instruct", "train", "replay", None)}
    assert replay_seeds(ReplayConfig(n=40, seed=1)) != a


def test_replay_from_a_file_and_its_errors(tmp_path):
    txt = tmp_path / "r.txt"
    txt.write_text("Say hello.\n\nName a fruit.\n")
    assert [s.instruction for s in replay_seeds(ReplayConfig(n=5, file=str(txt)))] == ["Say hello.", "Name a fruit."]
    jl = tmp_path / "r.jsonl"
    jl.write_text('{"instruction": "Add.", "input": "2 + 2"}\n{"input": "x"}\n')
    with pytest.raises(ConfigError, match=r"r.jsonl:2: a replay row needs a non-empty 'instruction'"):
        replay_seeds(ReplayConfig(file=str(jl)))
    with pytest.raises(ConfigError, match="generate.replay.file: .* not found"):
        replay_seeds(ReplayConfig(file=str(tmp_path / "missing.txt")))


def test_replay_rows_are_asked_with_the_instruct_template_beside_icl_tasks(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump({"tasks": [{"name": "t", "instruction": "Classify.", "inputs": ["a", "b"],
                                               "examples": [{"input": "c", "output": "x"}, {"input": "d", "output": "y"}]}]}))
    cfg = GenerateConfig(tasks=str(path), styles=["icl"], num_demos=2, demo_format="chat", erase_demos=True,
                         replay=ReplayConfig(n=3), sampling_per_style={"instruct": {"max_tokens": 77}})
    seeds = load_generate_seeds(cfg)
    plans, templates = build_requests(seeds, cfg, "m")
    styles = [(p.seed.origin, p.style, p.request.max_tokens) for p in plans]
    assert styles == [("task:t", "icl", 256)] * 2 + [("replay", "instruct", 77)] * 3
    replay = plans[-1]
    assert replay.request.messages == replay.student_prompt and len(replay.request.messages) == 2
    assert "instruct" in templates


def test_verifiable_replay_keeps_only_answers_that_pass_their_checks():
    """Rejection sampling with a verifier: each verifiable replay row is checked (strict) against its own prompt's
    constraints; failing rows are removed with the kinds they failed, other rows are untouched."""
    from distill.data.replay import _if_items, verify_rows
    from distill.probes.ifeval import KINDS

    cfg = ReplayConfig(n=1, verifiable=30)
    seeds = replay_seeds(cfg)
    assert [s.origin for s in seeds].count("replay:if") == 30 and seeds == replay_seeds(cfg)
    items = _if_items(cfg)
    lower = next(sid for sid, it in items.items() if [c.kind for c in it.constraints] == ["lowercase"])

    def row(sid: str, text: str) -> dict:
        return {"seed_id": sid, "removed_reason": None, "messages": [{"role": "user", "content": "q"},
                                                                   {"role": "assistant", "content": text}]}

    rows = [row(lower, "all in lower case here."), row(lower, "Not Lower."), row(seeds[0].id, "anything")]
    assert verify_rows(rows, cfg) == {"checked": 2, "kept": 1}
    assert rows[0]["removed_reason"] is None and rows[1]["removed_reason"] == "if_unverified: fails lowercase"
    assert rows[2]["removed_reason"] is None and "lowercase" in KINDS


def test_replay_of_verifiable_instructions_only_and_an_empty_replay_is_refused():
    """n: 0 with verifiable > 0 replays only the instructions with checks; both 0 would replay nothing and is an error
    that says which keys to set."""
    from pydantic import ValidationError

    seeds = replay_seeds(ReplayConfig(n=0, verifiable=5))
    assert [s.origin for s in seeds] == ["replay:if"] * 5
    with pytest.raises(ValidationError, match="n and verifiable are both 0"):
        ReplayConfig(n=0)
