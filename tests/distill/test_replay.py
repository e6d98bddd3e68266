"""Replay (distill/replay.py): general instructions mixed into a task dataset's train split, as instruct-style
seeds whatever generate.styles says; generated deterministically or read from a user file with clear errors."""

from __future__ import annotations

import pytest
import yaml

from distill.config import ConfigError
from distill.dataset import GenerateConfig, build_requests, load_generate_seeds
from distill.replay import ReplayConfig, replay_seeds


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
    styles = [(p["seed"].origin, p["style"], p["request"].max_tokens) for p in plans]
    assert styles == [("task:t", "icl", 256)] * 2 + [("replay", "instruct", 77)] * 3
    replay = plans[-1]
    assert replay["request"].messages == replay["student_prompt"] and len(replay["request"].messages) == 2
    assert "instruct" in templates
