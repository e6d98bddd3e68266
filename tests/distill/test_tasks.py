"""Task files (distill/data/tasks.py): loading, the errors a user gets, and the expansion into seeds."""

import json
import random
import textwrap

import pytest

from distill.config import ConfigError
from distill.data.dataset import (
    GenerateConfig,
    _unit_hash,
    load_generate_seeds,
    validation_ids,
)
from distill.data.plan import build_requests
from distill.data.seeds import Seed
from distill.data.tasks import TaskInput, draw_demos, load_tasks, normalise, task_seeds

EXAMPLES = [{"input": f"example {i} of the pool", "output": f"label{i % 3}"} for i in range(10)]


def _task(**over) -> dict:
    return {"name": "t", "instruction": "Classify it.", "examples": EXAMPLES[:4],
            "inputs": ["first unlabelled input", "second unlabelled input"],
            "held_out": [{"input": "a held out item", "output": "label1"}]} | over


def _write(tmp_path, tasks, name="tasks.yaml"):
    p = tmp_path / name
    if name.endswith(".jsonl"):
        p.write_text("".join(json.dumps(t) + "\n" for t in tasks))
    else:
        p.write_text(json.dumps({"tasks": tasks}, indent=2))  # JSON is YAML
    return p


def test_shipped_example_loads_and_expands():
    tf = load_tasks("flows/configs/task_examples.yaml")
    assert [t.name for t in tf.tasks] == ["ticket_team", "iso_date", "minutes"]
    for t in tf.tasks:
        assert 10 <= len(t.examples) <= 16 and t.held_out and t.synthesize > 0
    assert tf.tasks[2].examples[0].output == "120"  # YAML numbers kept as their text
    seeds = task_seeds(tf, {}, 3, 0)
    assert {s.split for s in seeds} == {"train", "validation"}


def test_yaml_list_and_jsonl_forms_load_alike(tmp_path):
    a = tmp_path / "a.yaml"
    a.write_text(json.dumps([_task()]))
    b = _write(tmp_path, [_task()], "b.jsonl")
    assert load_tasks(a).tasks == load_tasks(b).tasks


@pytest.mark.parametrize("task, match", [
    ({"instruction": "x", "examples": EXAMPLES[:1], "inputs": ["a"]}, r"task 1: name: is required"),
    (_task(examples=[]), r"task 't': examples: is empty: give at least one labelled"),
    (_task(examples=None) | {}, r"task 't': examples: "),
    (_task(examples=[{"input": "only input"}]), r"examples\[0\]\.output: is required"),
    (_task(held_out=[{"input": "h", "output": True}]), r"held_out\[0\]\.output: is a YAML boolean .*quote it"),
    (_task(heldout=[]), r"heldout: unknown field; a task has name, instruction, examples, inputs, held_out, synthesize"),
    (_task(name="has space"), r"name: String should match pattern"),
    (_task(inputs=["a held out item"]), r"inputs\[0\] 'a held out item' is also held_out\[0\]: a held-out item must not be trained on"),
    (_task(inputs=["Example 0 of the pool."]), r"inputs\[0\] .* is also examples\[0\]: the demo pool is never a training input"),
    (_task(held_out=[{"input": "example 1 of the pool", "output": "x"}]), r"held_out\[0\] .* is also examples\[1\]: a demo would give"),
    (_task(inputs=["same", "Same "]), r"inputs\[1\] 'Same' repeats inputs\[0\]; list each input once"),
    (_task(inputs=[], synthesize=0), r"task 't' has nothing to label: add `inputs`"),
    (_task(inputs=[""]), r"inputs\[0\]: is empty; give the text or remove the entry"),
    (_task(synthesize=-1), r"synthesize: Input should be greater than or equal to 0"),
])
def test_bad_task_is_one_clear_error(tmp_path, task, match):
    if task.get("examples", 1) is None:
        task.pop("examples")
    p = _write(tmp_path, [task])
    with pytest.raises(ConfigError, match=match) as err:
        load_tasks(p)
    assert str(err.value).startswith(str(p))


def test_errors_name_the_line_of_the_task_and_field(tmp_path):
    p = tmp_path / "tasks.yaml"
    p.write_text(textwrap.dedent("""\
        tasks:
          - name: a
            instruction: Do a.
            examples: [{input: x, output: y}]
            inputs: [u]
          - name: b
            instruction: Do b.
            examples:
              - {input: x, output: y}
              - {input: z}
            inputs: [u]
        """))
    with pytest.raises(ConfigError, match=rf"^{p}:10: task 'b': examples\[1\]\.output: is required"):
        load_tasks(p)
    p.write_text(p.read_text().replace("- {input: z}", "- {input: z, output: w}").replace("name: b", "name: a"))
    with pytest.raises(ConfigError, match=rf"^{p}:6: duplicate task name 'a' \(first at line 2\)"):
        load_tasks(p)
    p.write_text("tasks: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_tasks(p)
    p.write_text("name: a\n")
    with pytest.raises(ConfigError, match="the top level must be a list of tasks"):
        load_tasks(p)
    with pytest.raises(ConfigError, match="task file not found"):
        load_tasks(tmp_path / "nope.yaml")


def test_expansion_inputs_train_held_out_validation_demos_from_the_pool(tmp_path):
    tf = load_tasks(_write(tmp_path, [_task(examples=EXAMPLES), _task(name="u", inputs=["other input"], held_out=[])]))
    synth = {"t": [TaskInput("t/synth-0-3", "a synthesized input", "synth:t:0")]}
    seeds = task_seeds(tf, synth, 3, demo_seed=7)
    by_origin = {}
    for s in seeds:
        by_origin.setdefault(s.origin, []).append(s)
    assert [s.input for s in by_origin["task:t"]] == ["first unlabelled input", "second unlabelled input"]
    assert [s.id for s in by_origin["synth:t:0"]] == ["t/synth-0-3"]
    assert [(s.input, s.answer) for s in by_origin["held_out:t"]] == [("a held out item", "label1")]
    assert by_origin["task:u"][0].task == "u"
    pool = {(e["input"], e["output"]) for e in EXAMPLES}
    for s in seeds:
        assert s.split == ("validation" if s.origin.startswith("held_out") else "train")
        assert s.answer is None or s.origin.startswith("held_out")
        assert s.instruction == "Classify it." and len(s.demos) == 3
        assert {(d["input"], d["output"]) for d in s.demos} <= pool  # demos only from the examples
        # the documented draw: random.Random(f"{demo_seed}:{seed_id}") over the task's examples
        ex = [{"input": e["input"], "output": e["output"]} for e in (EXAMPLES if s.task == "t" else EXAMPLES[:4])]
        assert s.demos == random.Random(f"7:{s.id}").sample(ex, 3)
    assert len({s.id for s in seeds}) == len(seeds)
    # ids follow the text, not the position: reordering inputs renames nothing, demos stay with their input
    tf2 = load_tasks(_write(tmp_path, [_task(examples=EXAMPLES, inputs=["second unlabelled input", "first unlabelled input"])], "b.yaml"))
    again = {s.id: s.demos for s in task_seeds(tf2, {}, 3, 7)}
    assert all(again[s.id] == s.demos for s in by_origin["task:t"])
    assert len({json.dumps(s.demos) for s in seeds}) > 1  # each seed draws its own


def test_draw_demos_takes_the_whole_pool_when_smaller(tmp_path):
    t = load_tasks(_write(tmp_path, [_task()])).tasks[0]
    assert sorted(d["input"] for d in draw_demos(t, "x", 16, 0)) == sorted(e["input"] for e in EXAMPLES[:4])


def test_synthesis_cannot_be_planned_ahead(tmp_path):
    p = _write(tmp_path, [_task(synthesize=4)])
    with pytest.raises(ConfigError, match=r"task 't': synthesize: 4 decides its inputs with the teacher round by round"):
        load_generate_seeds(GenerateConfig(tasks=str(p)))
    assert len(load_generate_seeds(GenerateConfig(tasks=str(_write(tmp_path, [_task()], "b.yaml"))))) == 3


def test_generate_config_takes_exactly_one_source():
    with pytest.raises(ValueError, match="set exactly one of generate.seeds .* and generate.tasks .*, got neither"):
        GenerateConfig()
    with pytest.raises(ValueError, match="got both"):
        GenerateConfig(seeds="s.jsonl", tasks="t.yaml")
    for knob in [{"validation_fraction": 0.3}, {"limit": 2}, {"seed_format": "gsm8k"}, {"demo_method": "bm25"}, {"cot_shots": 2}]:
        with pytest.raises(ValueError, match=f"generate.{next(iter(knob))} does not apply to generate.tasks"):
            GenerateConfig(tasks="t.yaml", **knob)
    with pytest.raises(ValueError, match="generate.synthesis writes inputs for a task file's tasks"):
        GenerateConfig(seeds="s.jsonl", synthesis={"rounds": 2})
    GenerateConfig(tasks="t.yaml", validation_fraction=0.2, synthesis={"rounds": 2})  # the default is harmless


def test_forced_splits_and_the_unchanged_hash_split():
    plain = [Seed(id=f"s{i}", instruction="q") for i in range(200)]
    # plain seeds: exactly the old rule, a hash of the id below the fraction
    assert validation_ids(plain, 0.2) == {s.id for s in plain if _unit_hash("split", s.id) < 0.2}
    forced = [Seed(id=f"s{i}", instruction="q", split="train") for i in range(100)] + \
             [Seed(id=f"h{i}", instruction="q", answer="a", split="validation") for i in range(5)]
    assert validation_ids(forced, 0.9) == {f"h{i}" for i in range(5)}
    assert validation_ids(forced, 0.0) == {f"h{i}" for i in range(5)}


def test_task_rows_carry_origin_and_erased_zero_shot_prompts(tmp_path):
    path = _write(tmp_path, [_task()])
    seeds = task_seeds(load_tasks(path), {"t": [TaskInput("t/synth-1-0", "made up input", "synth:t:1")]}, 2, 0)
    cfg = GenerateConfig(tasks=str(path), styles=["icl"], num_demos=2, erase_demos=True, demo_format="chat")
    plans, _ = build_requests(seeds, cfg, "m")
    assert [p.origin for p in plans] == ["task:t", "task:t", "synth:t:1", "held_out:t"]
    for p, s in zip(plans, seeds):
        teacher_msgs, student = p.request.messages, p.student_prompt
        assert [m["content"] for m in teacher_msgs if m["role"] == "assistant"] == [d["output"] for d in s.demos]
        assert p.demo_ids == [f"{s.id}/demo-0", f"{s.id}/demo-1"]
        assert [m["role"] for m in student] == ["system", "user"] and s.input in student[-1]["content"]
        assert not any(d["input"] in student[-1]["content"] for d in s.demos)


def test_normalise():
    assert normalise('  "Hello   World!" ') == normalise("hello world") == "hello world"
    assert normalise("-3 + 4") != normalise("3 + 4")
