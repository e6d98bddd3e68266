import json

import pytest

from distill.config import ConfigError
from distill.data.seeds import load_seeds


def write(tmp_path, lines):
    p = tmp_path / "seeds.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_demo_seeds_load(repo_root):
    seeds = load_seeds(repo_root / "flows/configs/demo_seeds.jsonl")
    assert len(seeds) >= 30
    assert sum(s.answer is not None for s in seeds) >= 30
    assert any(s.task == "arithmetic" for s in seeds)


@pytest.mark.parametrize("lines, needle", [
    (['{"id": "a", "instruction": "x"}', '{"id": "b", "instruction": "y"'], "seeds.jsonl:2: not valid JSON"),
    (['{"instruction": "x"}'], "seeds.jsonl:1: seed has no 'id'"),
    (['{"id": "a"}'], "seeds.jsonl:1: seed 'a' needs a non-empty 'instruction' or 'question'"),
    (['{"id": "a", "instruction": "x"}', '{"id": "a", "question": "y"}'], "duplicate seed id 'a'"),
    (['{"id": "a", "instruction": "x", "demos": [{"input": 1}]}'], "'demos' must be a list"),
    (['[1, 2]'], "seeds.jsonl:1: a seed must be a JSON object"),
    ([''], "no seed rows found"),
])
def test_bad_seeds_name_file_and_line(tmp_path, lines, needle):
    with pytest.raises(ConfigError) as err:
        load_seeds(write(tmp_path, lines))
    assert needle in str(err.value)


def test_missing_seed_file(tmp_path):
    with pytest.raises(ConfigError, match="seed file not found"):
        load_seeds(tmp_path / "missing.jsonl")


def test_question_alias_and_limit(tmp_path):
    p = write(tmp_path, [json.dumps({"id": str(i), "question": f"q{i}", "answer": i}) for i in range(5)])
    seeds = load_seeds(p, limit=2)
    assert [s.instruction for s in seeds] == ["q0", "q1"]
    assert seeds[0].answer == "0"
