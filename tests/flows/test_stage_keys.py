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


def test_generate_key_follows_a_replay_files_content(tmp_path):
    replay = tmp_path / "general.txt"
    replay.write_text("Name a colour.\n")
    cfg = _cfg(tmp_path, TASK | {"synthesize": 0}, replay={"file": str(replay)})
    key = generate_key(cfg)
    replay.write_text("Name a fruit.\n")
    assert generate_key(cfg) != key


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


# --- every template the generate stage renders is in its key, and no other (issue 23) ----------------------
# Each case: a generate config and the template files it renders ("name": the shipped one, "user/name": a user
# copy). "shipped" templates are copies too (prompts.render.BUILTIN_DIR points at them), so the test edits files
# one at a time without touching the repo: an edit to a rendered file must give a new key, any other edit none.
COT_TASK = {"name": "sums", "instruction": "Add the numbers.", "style": "cot", "inputs": ["2 + 2"],
            "examples": [{"input": "1 + 1", "output": "2", "rationale": "One and one make two."}]}
TEMPLATE_CASES = {
    "styles": ({"styles": ["icl", "cot", "instruct"]}, {"icl", "cot", "instruct"}),
    "cot_shots": ({"styles": ["cot"], "cot_shots": 2}, {"cot_fewshot"}),
    "cot_shots_erased": ({"styles": ["cot"], "cot_shots": 2, "erase_demos": True}, {"cot_fewshot", "cot"}),
    "structured_cot": ({"styles": ["cot"], "structured_cot": True}, {"cot_json"}),
    "erase_demos": ({"styles": ["icl"], "erase_demos": True}, {"icl", "instruct"}),
    "chat_demos": ({"styles": ["icl"], "demo_format": "chat"}, {"instruct"}),
    "user_styles": ({"styles": ["icl", "cot", "instruct"], "cot_shots": 2,
                     "templates": {"icl": "user/icl", "cot": "user/cot_fewshot", "instruct": "user/instruct"}},
                    {"user/icl", "user/cot_fewshot", "user/instruct"}),
    "user_cot_erased": ({"styles": ["cot"], "cot_shots": 2, "erase_demos": True, "templates": {"cot": "user/cot"}},
                        {"user/cot"}),
    "judge": ({"styles": ["instruct"], "filters": {"judge": {}}}, {"instruct", "judge"}),
    "user_judge": ({"styles": ["instruct"], "filters": {"judge": {"template": "user/judge"}}}, {"instruct", "user/judge"}),
    "bootstrap": ({"styles": ["instruct"], "bootstrap": {}}, {"instruct", "self_instruct"}),
    "bootstrap_structured": ({"styles": ["instruct"], "bootstrap": {"structured": True}}, {"instruct", "self_instruct_json"}),
    "user_bootstrap": ({"styles": ["instruct"], "bootstrap": {"template": "user/self_instruct"}},
                       {"instruct", "user/self_instruct"}),
    "task_file": ({"tasks": [TASK | {"synthesize": 0}], "styles": ["icl", "cot"]}, {"icl"}),
    "task_file_synthesis": ({"tasks": [TASK], "styles": ["icl"], "demo_format": "chat", "erase_demos": True,
                             "synthesis": {"template": "user/synth_inputs"}}, {"instruct", "user/synth_inputs"}),
    "replay": ({"styles": ["icl"], "replay": {"n": 3}}, {"icl", "instruct"}),  # its instructions: instruct prompts
    "cot_task_erased": ({"tasks": [COT_TASK], "styles": ["icl", "cot"], "demo_format": "chat", "erase_demos": True,
                         "structured_cot": True}, {"cot_json", "cot"}),
}


@pytest.fixture
def template_files(tmp_path, monkeypatch, repo_root):
    """Copies of every shipped template (what load_template reads for a shipped name) and a user copy of each."""
    import flows.stage_keys
    import prompts.render
    from prompts import SHIPPED

    shipped, user = tmp_path / "shipped", tmp_path / "user"
    shipped.mkdir()
    user.mkdir()
    for name in SHIPPED:
        shutil.copy(repo_root / "prompts" / f"{name}.jinja", shipped / f"{name}.jinja")
        shutil.copy(repo_root / "prompts" / f"{name}.jinja", user / f"{name}.jinja")
    monkeypatch.setattr(prompts.render, "BUILTIN_DIR", shipped)
    monkeypatch.setattr(flows.stage_keys, "code_version", lambda: "test")  # another commit meanwhile changes nothing
    return {name: shipped / f"{name}.jinja" for name in SHIPPED} | {f"user/{name}": user / f"{name}.jinja" for name in SHIPPED}


def _template_case(tmp_path, files, case) -> PipelineConfig:
    generate, _ = TEMPLATE_CASES[case]
    generate = json.loads(json.dumps(generate))  # a copy to fill in
    for section, field in (("templates", None), ("filters", "judge"), ("bootstrap", None), ("synthesis", None)):
        d = generate.get(section, {}) if field is None else generate.get(section, {}).get(field) or {}
        for k, v in d.items():
            if isinstance(v, str) and v.startswith("user/"):
                d[k] = str(files[v])
    if "tasks" in generate:
        path = tmp_path / "tasks.yaml"
        path.write_text(json.dumps({"tasks": generate["tasks"]}))
        generate["tasks"] = str(path)
    else:
        seeds = tmp_path / "seeds.jsonl"
        seeds.write_text("".join(json.dumps({"id": f"s{i}", "task": "add", "instruction": "Add.", "input": f"{i} + 1",
                                             "answer": str(i + 1), "rationale": f"{i} plus one."}) + "\n" for i in range(4)))
        generate["seeds"] = str(seeds)
    return PipelineConfig.model_validate({"run": {"stages": ["generate"]}, "generate": generate})


@pytest.mark.parametrize("case", list(TEMPLATE_CASES))
def test_editing_a_rendered_template_changes_the_generate_key_and_no_other_does(tmp_path, template_files, case):
    cfg = _template_case(tmp_path, template_files, case)
    rendered = TEMPLATE_CASES[case][1]
    key = generate_key(cfg)
    changed = set()
    for name, path in template_files.items():
        source = path.read_text()
        path.write_text(source + "{# edited #}\n")  # a new sha256, the same prompts
        if generate_key(cfg) != key:
            changed.add(name)
        path.write_text(source)
    assert changed == rendered
    assert generate_key(cfg) == key


@pytest.mark.parametrize("case", [c for c, (g, _) in TEMPLATE_CASES.items() if "bootstrap" not in g])
def test_the_cases_list_every_prompt_template_build_requests_renders(tmp_path, template_files, monkeypatch, case):
    """The cases' expectations, checked against what renders: every template build_requests hands to the
    renderer for the config's seeds (the judge, bootstrap and synthesis ones are rendered later, by their own
    modules, from the config field the case sets)."""
    import distill.data.plan
    from distill.data.dataset import load_generate_seeds
    from distill.data.plan import build_requests
    from distill.data.tasks import load_tasks, task_seeds

    cfg = _template_case(tmp_path, template_files, case).generate
    if cfg.tasks is not None:
        seeds = task_seeds(load_tasks(cfg.tasks), {}, cfg.num_demos, cfg.demo_seed)  # no inputs synthesized
    else:
        seeds = load_generate_seeds(cfg)
    seen: set[str] = set()
    render = distill.data.plan.render_messages
    monkeypatch.setattr(distill.data.plan, "render_messages", lambda t, v: seen.add(t.name) or render(t, v))
    build_requests(seeds, cfg, "m")
    names = {str(p) if name.startswith("user/") else name: name for name, p in template_files.items()}
    later = {"judge", "user/judge", "synth_inputs", "user/synth_inputs"}
    assert {names[n] for n in seen} == TEMPLATE_CASES[case][1] - later


BROKEN = "{% block user %}{{ no_such_variable }}{% endblock %}"  # loads, fails to render


@pytest.mark.parametrize("case, field", [
    ("user_styles", "generate.templates.icl"), ("user_cot_erased", "generate.templates.cot"),
    ("user_judge", "generate.filters.judge.template"), ("user_bootstrap", "generate.bootstrap.template"),
    ("task_file_synthesis", "generate.synthesis.template"),
])
def test_preflight_renders_every_template_the_stage_will_render(tmp_path, template_files, case, field):
    cfg = _template_case(tmp_path, template_files, case)
    preflight(cfg)
    name = {"generate.templates.icl": "user/icl", "generate.templates.cot": "user/cot",
            "generate.filters.judge.template": "user/judge", "generate.bootstrap.template": "user/self_instruct",
            "generate.synthesis.template": "user/synth_inputs"}[field]
    template_files[name].write_text(BROKEN)
    with pytest.raises(ConfigError, match=f"^{field}: .*{template_files[name].name}:1: undefined variable: "
                                          "'no_such_variable' is undefined"):
        preflight(cfg)


def test_preflight_ignores_a_template_the_stage_does_not_render(tmp_path, template_files):
    """Chat demos render through instruct: a broken icl template is never used, so it stops nothing."""
    template_files["user/icl"].write_text(BROKEN)
    cfg = _template_case(tmp_path, template_files, "chat_demos")
    cfg.generate.templates = {"icl": str(template_files["user/icl"])}
    preflight(cfg)


def test_a_pipeline_config_survives_the_json_round_trip_to_its_flows(tmp_path):
    """The pipeline hands its flows ``cfg.model_dump_json()``; a seed-file config's dumped default `synthesis`
    must not read as a task-file-only setting."""
    cfg = _template_case(tmp_path, {}, "styles")
    assert PipelineConfig.model_validate_json(cfg.model_dump_json()) == cfg
