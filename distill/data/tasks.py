"""Task files: a task instruction and a handful of labelled examples -> seeds for a zero-shot student.

The user story: "I have a task instruction and 8-16 labelled examples and want a small model that does
the task zero-shot". A task file (YAML, or JSONL with one task per line) lists such tasks::

    tasks:
      - name: sentiment                       # [A-Za-z0-9_.-]+, unique; becomes the seeds' `task`
        instruction: Say how the customer feels.
        examples:                             # the labelled demo pool (>= 1): only ever shown as demos
          - {input: "Arrived broken, again.", output: unhappy}
        inputs: ["Works fine, I guess."]      # unlabelled inputs the teacher labels (train split)
        held_out:                             # labelled items for evaluation only (validation split)
          - {input: "Best purchase this year!", output: happy}
        synthesize: 8                         # new inputs the teacher writes first (distill.data.synth)

(the top level may also be the bare list). :func:`task_seeds` expands the tasks into eakd
:class:`~distill.data.seeds.Seed` s: every unlabelled input (given or synthesized) is a train seed with no
answer and its own ``demos``, ``num_demos`` examples drawn with ``random.Random(f"{demo_seed}:{seed_id}")``
(deterministic, independent of order); every held-out item is a validation seed with its gold answer
and demos drawn the same way. The demo pool is never a training input and never a held-out item: the
loader refuses a file where they overlap. With ``generate.erase_demos: true`` the student learns the
zero-shot prompt (context distillation: Snell et al. 2022, "Learning by Distilling Context";
``demo_format: chat`` is what small chat models follow best). Seed ids are ``<task>/input-<sha>`` and
``<task>/held_out-<sha>`` (the first 10 hex digits of the text's sha256: editing one input never renames
another) and ``<task>/synth-<round>-<prompt>`` for synthesized inputs.

Problems are errors naming the file, the line, the task and the field, and how to fix it.

Run: set ``generate.tasks: flows/configs/task_examples.yaml`` and ``eakd generate CONFIG`` (docs/tasks.md).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BeforeValidator, Field, ValidationError, model_validator

from distill.config import ConfigError, StageConfig
from distill.data.seeds import Seed

_NAME = r"^[A-Za-z0-9_.-]+$"


def _text(v: Any) -> Any:
    """Texts are stripped. YAML reads ``output: 42`` as a number: keep it as its text. A YAML boolean
    (``yes``, ``no``, ``on``) is almost always an unquoted label: refuse it rather than train on ``"True"``."""
    if isinstance(v, bool):
        raise ValueError("is a YAML boolean (yes/no/true/false/on/off); quote it, e.g. 'yes'")  # noqa: TRY004 (pydantic reports ValueError)
    v = str(v) if isinstance(v, (int, float)) else v
    if isinstance(v, str) and not v.strip():
        raise ValueError("is empty; give the text or remove the entry")
    return v.strip() if isinstance(v, str) else v


Text = Annotated[str, BeforeValidator(_text)]


class TaskExample(StageConfig):
    input: Text = Field(..., description="the example's input")
    output: Text = Field(..., description="its correct output (the label; a cot task: the final answer)")
    rationale: Text | None = Field(None, description="a cot task: the worked reasoning before the answer (the demo shows "
                                                     "it, then 'The answer is <output>.')")


class TaskSpec(StageConfig):
    name: str = Field(..., pattern=_NAME, description="unique task name; the seeds' `task` and id prefix")
    instruction: Text = Field(..., description="what to do with each input (the prompt's instruction)")
    examples: list[TaskExample] = Field(..., min_length=1, description="labelled demo pool: shown as demos, never trained on or held out")
    inputs: list[Text] = Field(default_factory=list, description="unlabelled inputs for the teacher to label (train split)")
    held_out: list[TaskExample] = Field(default_factory=list, description="labelled items for evaluation only (validation split)")
    synthesize: int = Field(0, ge=0, le=100_000, description="new inputs the teacher writes before labelling (generate.synthesis)")
    style: Literal["icl", "cot"] = Field("icl", description="icl: the teacher answers like the examples' outputs; cot: it "
                                                            "reasons step by step like their rationales (needs 'cot' in "
                                                            "generate.styles), and the student learns to reason zero-shot")

    @model_validator(mode="after")
    def _rationales(self) -> TaskSpec:
        missing = [i for i, e in enumerate(self.examples) if not e.rationale]
        if self.style == "cot" and missing:
            raise ValueError(f"examples[{missing[0]}]: a cot task's examples each need a rationale (the worked steps "
                             "before the answer); add them, or set style: icl")
        return self


@dataclass(frozen=True)
class TaskFile:
    path: str
    tasks: list[TaskSpec]
    lines: dict[str, int]  # task name -> line of the task in the file (0 when unknown)

    def where(self, name: str) -> str:
        line = self.lines.get(name, 0)
        return f"{self.path}:{line}" if line else self.path


def normalise(text: str) -> str:
    """Case, runs of whitespace and enclosing quotes/end punctuation do not make two inputs different."""
    return " ".join(text.casefold().split()).strip(" .!?\"'`")


def text_id(task: str, kind: str, text: str) -> str:
    return f"{task}/{kind}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:10]}"


def _node_lines(node: yaml.Node | None) -> tuple[int, dict[str, Any]]:
    """(line of ``node``, {key: (line, {...})} for a mapping / {index: ...} for a sequence), 1-based."""
    if node is None:
        return 0, {}
    line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        return line, {k.value: _node_lines(v) for k, v in node.value if isinstance(k, yaml.ScalarNode)}
    if isinstance(node, yaml.SequenceNode):
        return line, {i: _node_lines(v) for i, v in enumerate(node.value)}
    return line, {}


def _line_of(tree: tuple[int, dict], loc: tuple) -> int:
    """The deepest line known along ``loc`` (a pydantic error location) inside one task's node tree."""
    line, kids = tree
    for part in loc:
        if part not in kids:
            break
        line, kids = kids[part]
    return line


def _read(path: Path) -> tuple[list[Any], list[tuple[int, dict]]]:
    """The raw task objects and, per task, its line tree (JSONL: the line of the row for every field)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        rows, trees = [], []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{lineno}: not valid JSON ({exc.msg}, column {exc.colno}); one task object per line") from None
            trees.append((lineno, {}))
        return rows, trees
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    _, tree = _node_lines(root)
    if isinstance(data, dict) and set(data) == {"tasks"}:
        data, tree = data["tasks"], tree.get("tasks", (0, {}))[1]
    if not isinstance(data, list):
        raise ConfigError(f"{path}: the top level must be a list of tasks or a mapping `tasks: [...]` "
                          f"(got {type(data).__name__}); see flows/configs/task_examples.yaml")
    return data, [tree.get(i, (0, {})) for i in range(len(data))]


def _check_overlaps(t: TaskSpec, where: str) -> None:
    """Demo pool, inputs and held-out items are disjoint (after :func:`normalise`), with no repeats."""
    seen: dict[str, str] = {}
    groups = [("examples", [e.input for e in t.examples]), ("held_out", [e.input for e in t.held_out]),
              ("inputs", list(t.inputs))]
    fixes = {("examples", "held_out"): "a demo would give the evaluation its answer; remove it from one of the two",
             ("examples", "inputs"): "the demo pool is never a training input; remove it from inputs",
             ("held_out", "inputs"): "a held-out item must not be trained on; remove it from inputs"}
    for field, texts in groups:
        for i, text in enumerate(texts):
            key = normalise(text)
            if key in seen:
                first = seen[key]
                other = first.split("[")[0]
                why = (f"repeats {first}; list each input once" if other == field
                       else f"is also {first}: {fixes[(other, field)]}")
                raise ConfigError(f"{where}: task {t.name!r}: {field}[{i}] {text[:80]!r} {why}")
            seen[key] = f"{field}[{i}]"


def load_tasks(path: str | Path) -> TaskFile:
    """Read and validate a task file (YAML or ``.jsonl``); raises ConfigError naming file:line, task and field."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"task file not found: {p} (set generate.tasks to a YAML or JSONL task file, e.g. "
                          "flows/configs/task_examples.yaml)")
    rows, trees = _read(p)
    if not rows:
        raise ConfigError(f"{p}: no tasks found; add at least one task with a name, an instruction and examples")
    tasks: list[TaskSpec] = []
    lines: dict[str, int] = {}
    for i, (row, tree) in enumerate(zip(rows, trees)):
        where = f"{p}:{tree[0]}" if tree[0] else f"{p}[{i}]"
        if not isinstance(row, dict):
            raise ConfigError(f"{where}: a task must be a mapping with name, instruction, examples; got {type(row).__name__}")
        label = f"task {row['name']!r}" if isinstance(row.get("name"), str) else f"task {i + 1}"
        try:
            task = TaskSpec.model_validate(row)
        except ValidationError as err:
            e = err.errors()[0]
            loc = ".".join(str(x) if isinstance(x, str) else f"[{x}]" for x in e["loc"]).replace(".[", "[")
            line = _line_of(tree, e["loc"]) if p.suffix != ".jsonl" else tree[0]
            at = f"{p}:{line}" if line else where
            msg = ("unknown field; a task has name, instruction, examples, inputs, held_out, synthesize"
                   if e["type"] == "extra_forbidden" else
                   "is required" + (" (a list of {input, output})" if e["loc"][-1] == "examples" else "")
                   if e["type"] == "missing" else e["msg"].removeprefix("Value error, "))
            if e["loc"] == ("examples",) and e["type"] == "too_short":
                msg = "is empty: give at least one labelled {input, output} example (8-16 work well)"
            more = f" (and {len(err.errors()) - 1} more problems)" if len(err.errors()) > 1 else ""
            raise ConfigError(f"{at}: {label}: {loc}: {msg}{more}") from None
        if task.name in lines:
            first = lines[task.name]
            raise ConfigError(f"{where}: duplicate task name {task.name!r} (first at line {first}); task names must be unique")
        if not task.inputs and not task.synthesize:
            raise ConfigError(f"{where}: task {task.name!r} has nothing to label: add `inputs` (unlabelled inputs) "
                              "or set `synthesize: N` to have the teacher write N of them")
        _check_overlaps(task, where)
        lines[task.name] = tree[0]
        tasks.append(task)
    return TaskFile(path=str(p), tasks=tasks, lines=lines)


def draw_demos(task: TaskSpec, seed_id: str, k: int, demo_seed: int) -> list[dict[str, str]]:
    """``k`` examples of ``task``'s demo pool for ``seed_id`` (all of them when the pool is smaller),
    in a random order seeded by ``f"{demo_seed}:{seed_id}"``: the same seed always gets the same demos."""
    pool = [{"input": e.input, "output": e.output} | ({"rationale": e.rationale} if e.rationale else {}) for e in task.examples]
    return random.Random(f"{demo_seed}:{seed_id}").sample(pool, min(k, len(pool)))


@dataclass(frozen=True)
class TaskInput:
    """One input to label: given in the file or synthesized (its id and origin say which)."""

    id: str
    text: str
    origin: str


def given_inputs(task: TaskSpec) -> list[TaskInput]:
    return [TaskInput(text_id(task.name, "input", x), x, f"task:{task.name}") for x in task.inputs]


def task_seeds(tasks: TaskFile, synthesized: dict[str, list[TaskInput]] | None, num_demos: int,
               demo_seed: int) -> list[Seed]:
    """Every task's inputs (given, then ``synthesized[name]``) as train seeds and its held-out items as
    validation seeds, each with its own demos from the task's examples. ``synthesized=None``: a task
    asking for synthesis is an error (its inputs are not known yet: they come from the teacher)."""
    seeds: list[Seed] = []
    for t in tasks.tasks:
        if synthesized is None and t.synthesize:
            raise ConfigError(f"{tasks.where(t.name)}: task {t.name!r}: synthesize: {t.synthesize} decides its inputs "
                              "with the teacher round by round, so its requests cannot be planned ahead (dry run, "
                              "run.shards > 1); set synthesize: 0 there, or run without sharding")
        for x in given_inputs(t) + list((synthesized or {}).get(t.name, [])):
            seeds.append(Seed(id=x.id, instruction=t.instruction, input=x.text.strip(), answer=None, task=t.name,
                              demos=draw_demos(t, x.id, num_demos, demo_seed), origin=x.origin, split="train",
                              style=t.style))
        for e in t.held_out:
            sid = text_id(t.name, "held_out", e.input)
            seeds.append(Seed(id=sid, instruction=t.instruction, input=e.input, answer=e.output,
                              task=t.name, demos=draw_demos(t, sid, num_demos, demo_seed), origin=f"held_out:{t.name}",
                              split="validation", style=t.style))
    return seeds
