"""The generate stage's cache key follows a task file's inputs (flows/stage_keys.py), and preflight accepts
task files (flows/config.py). No teacher, no Prefect run."""

from __future__ import annotations

import json
import shutil

import pytest

from distill.config import ConfigError
from flows.config import PipelineConfig, preflight
from flows.stage_keys import generate_key

TASK = {"name": "t", "instruction": "Classify it.", "examples": [{"input": "an example", "output": "a"}],
        "inputs": ["an input"], "held_out": [{"input": "held out", "output": "b"}], "synthesize": 2}


def _cfg(tmp_path, tasks=None, **generate) -> PipelineConfig:
    path = tmp_path / "tasks.yaml"
    if not path.exists() or tasks is not None:
        path.write_text(json.dumps({"tasks": [tasks or TASK]}))
    return PipelineConfig.model_validate({"run": {"stages": ["generate"]},
                                          "generate": {"tasks": str(path), **generate}})


def test_generate_key_changes_with_the_task_file_the_synthesis_config_and_its_template(tmp_path):
    tmpl = tmp_path / "synth.jinja"
    tmpl.write_text("{% block user %}{{ instruction }}: {{ inputs | join(', ') }}{% endblock %}")
    base = _cfg(tmp_path, synthesis={"template": str(tmpl)})
    key = generate_key(base)
    assert generate_key(_cfg(tmp_path, synthesis={"template": str(tmpl)})) == key  # stable

    changed = {
        "task file": generate_key(_cfg(tmp_path, TASK | {"inputs": ["another input"]}, synthesis={"template": str(tmpl)})),
        "synthesis config": generate_key(_cfg(tmp_path, TASK, synthesis={"template": str(tmpl), "rounds": 2})),
    }
    tmpl.write_text(tmpl.read_text().replace(": ", " - "))
    changed["synth template"] = generate_key(_cfg(tmp_path, TASK, synthesis={"template": str(tmpl)}))
    assert len({key, *changed.values()}) == 1 + len(changed), changed

    # the key is the content's, not the path's: the same task file elsewhere gives the same key
    other = tmp_path / "moved"
    other.mkdir()
    shutil.copy(tmp_path / "tasks.yaml", other / "tasks.yaml")
    moved = base.model_copy(update={"generate": base.generate.model_copy(update={"tasks": str(other / "tasks.yaml")})})
    tmpl.write_text("{% block user %}{{ instruction }}: {{ inputs | join(', ') }}{% endblock %}")
    assert generate_key(moved) == generate_key(_cfg(tmp_path, TASK, synthesis={"template": str(tmpl)}))


def test_generate_key_covers_the_instruct_template_behind_erased_or_chat_demos(tmp_path):
    instruct = tmp_path / "instruct.jinja"
    instruct.write_text("{% block user %}{{ instruction }}\n{{ input }}{% endblock %}")
    cfg = lambda: _cfg(tmp_path, TASK | {"synthesize": 0}, styles=["icl"], erase_demos=True, demo_format="chat",
                       templates={"instruct": str(instruct)})
    key = generate_key(cfg())
    instruct.write_text("{% block user %}{{ instruction }}\n\n{{ input }}{% endblock %}")
    assert generate_key(cfg()) != key


def test_seed_file_configs_keep_their_key_inputs(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"id": "a", "instruction": "What is 1 plus 1?", "answer": "2"}\n')
    cfg = PipelineConfig.model_validate({"generate": {"seeds": str(seeds)}})
    key = generate_key(cfg)
    seeds.write_text('{"id": "a", "instruction": "What is 2 plus 2?", "answer": "4"}\n')
    assert generate_key(cfg) != key


def test_preflight_accepts_a_task_file_and_checks_it(tmp_path):
    preflight(_cfg(tmp_path))
    with pytest.raises(ConfigError, match="task 't': examples: is empty"):
        preflight(_cfg(tmp_path, TASK | {"examples": []}))
    with pytest.raises(ConfigError, match="task file not found"):
        preflight(PipelineConfig.model_validate({"run": {"stages": ["generate"]}, "generate": {"tasks": str(tmp_path / "no.yaml")}}))
    with pytest.raises(ConfigError, match="generate.synthesis.template: template 'nope' not found"):
        preflight(_cfg(tmp_path, TASK, synthesis={"template": "nope"}))
    with pytest.raises(ConfigError, match="run.shards: input synthesis .* set run.shards=1"):
        preflight(PipelineConfig.model_validate({"run": {"stages": ["generate"], "shards": 2},
                                                 "teacher": {"backend": "openai", "base_url": "http://127.0.0.1:1/v1"},
                                                 "generate": {"tasks": str(tmp_path / "tasks.yaml")}}))


def test_the_documented_config_block_validates_with_the_shipped_example(repo_root, monkeypatch):
    import yaml

    doc = (repo_root / "docs" / "tasks.md").read_text()
    block = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(repo_root)
    cfg = PipelineConfig.model_validate(yaml.safe_load(block))
    assert cfg.generate.tasks == "flows/configs/task_examples.yaml" and cfg.generate.erase_demos
    preflight(cfg)
