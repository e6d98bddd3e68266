"""The dataset card and stats describe what the rows record (templates, demo source and format, erased demos,
label accuracy per style and task), on datasets built without a teacher: every answer is put in the response
cache first, and the configured endpoint is a closed port that is never called."""

import json

import pytest
from datasets import Dataset, DatasetDict, load_from_disk

from distill.data.card import label_accuracy, row_provenance
from distill.data.dataset import GenerateConfig, generate_dataset
from distill.data.plan import Plan, build_requests
from distill.data.seeds import load_seeds
from distill.teacher.cache import ResponseCache
from distill.teacher.query import TeacherConfig
from prompts import load_template

CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Italy": "Rome"}


def write_seeds(path, n_add=4, countries=tuple(CAPITALS)):
    rows = [{"id": f"add-{i}", "task": "add", "instruction": "Add the numbers.", "input": f"{i} + {i + 1}",
             "answer": str(2 * i + 1)} for i in range(n_add)]
    for c in countries:  # capital seeds carry their own demos (the other countries)
        rows.append({"id": f"cap-{c}", "task": "capital", "instruction": "Name the capital.", "input": c,
                     "answer": CAPITALS[c], "demos": [{"input": o, "output": CAPITALS[o]} for o in CAPITALS if o != c]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def answer(seed) -> str:
    """The fake teacher: right about sums except add-3; names capitals inside a sentence (lenient only)."""
    if seed.task == "add":
        return f"The sum is {100 if seed.id == 'add-3' else seed.answer}."
    return f"The capital is {seed.answer}."


def cache_answers(cfg: GenerateConfig, teacher: TeacherConfig) -> None:
    plans, _ = build_requests(load_seeds(cfg.seeds), cfg, teacher.model_id())
    cache = ResponseCache(teacher.cache_path)
    cache.put_many([(p.request.key(), {"key": p.request.key(), "prompt_tokens": 20, "completion_tokens": 6,
                                          "choices": [{"text": answer(p.seed), "finish_reason": "stop"}]})
                    for p in plans if isinstance(p, Plan)])
    cache.close()


@pytest.fixture
def teacher(tmp_path):
    return TeacherConfig(backend="openai", model="m", base_url="http://127.0.0.1:9/v1",  # nothing listens
                         cache_path=str(tmp_path / "cache.sqlite"), max_retries=0)


def build(cfg, teacher, out):
    cache_answers(cfg, teacher)
    path = generate_dataset(cfg, teacher, out)
    stats = json.loads((path / "stats.json").read_text())
    assert stats["teacher"]["sent"] == 0  # every answer came from the cache
    return path, stats, (path / "README.md").read_text()


def test_card_names_the_user_template_own_demos_chat_format_and_erasure(tmp_path, teacher):
    user = tmp_path / "plain.jinja"  # no system block: the model's default system prompt stays
    user.write_text("{% block user %}{{ instruction }}\n\n{{ input }}{% endblock %}")
    cfg = GenerateConfig(seeds=str(write_seeds(tmp_path / "seeds.jsonl")), styles=["icl", "instruct"], num_demos=2,
                         demo_format="chat", erase_demos=True, templates={"instruct": str(user)}, validation_fraction=0.0)
    path, stats, card = build(cfg, teacher, tmp_path / "ds")
    sha = load_template(str(user)).sha256

    # (a) the rows' templates: ICL went through the user's instruct template as chat turns; the shipped icl never ran
    rows = load_from_disk(str(path))["train"].to_list()
    assert {r["teacher"]["template"] for r in rows if r["style"] == "icl"} == {f"{user}+chat_demos"}
    assert stats["provenance"]["templates"] == {"icl": [{"name": f"{user}+chat_demos", "sha256": sha, "prompts": 7}],
                                                "instruct": [{"name": str(user), "sha256": sha, "prompts": 7}]}
    assert f"| icl | `{user}+chat_demos` | `{sha}` | 7 |" in card and f"| instruct | `{user}` | `{sha}` | 7 |" in card
    assert "| icl | `icl` |" not in card and load_template("icl").sha256 not in card
    # (b) the capital seeds used their own demos, the sums drew theirs by the configured method
    assert stats["provenance"]["demos"] == {"icl": {"own": 3, "selected": 4, "none": 0}}
    assert "- ICL demonstrations: 3 prompts used the seeds' own `demos`; 4 prompts used demos selected from other " \
           "seeds by `method: random`, same_task: true, seed 0" in card
    # (c) the demo format, and the erased prompts with the template that rendered them
    assert stats["provenance"]["demo_format"] == {"text": 0, "chat": 7}
    assert "ICL demo format `chat` (7 prompts)" in card and "demo format `text`" not in card
    assert stats["provenance"]["erased"] == {"icl": 7}
    assert f"ICL 7 prompts, re-rendered by the instruct template `{user}`" in card
    icl = next(r for r in rows if r["style"] == "icl")
    assert [m["role"] for m in icl["messages"]] == ["user", "assistant"]  # no system prompt: the model's default


def test_label_accuracy_strict_and_lenient_per_style_and_task(tmp_path, teacher):
    cfg = GenerateConfig(seeds=str(write_seeds(tmp_path / "seeds.jsonl")), styles=["icl", "instruct"], num_demos=2,
                         validation_fraction=0.0)
    path, stats, card = build(cfg, teacher, tmp_path / "ds")
    acc = stats["label_accuracy"]
    # sums: 3 of 4 right under both rules; capitals: right only when a whole-word label counts
    assert acc["per_task"] == {"add": {"strict": 0.75, "lenient": 0.75, "n": 8},
                               "capital": {"strict": 0.0, "lenient": 1.0, "n": 6}}
    assert acc["per_style"] == {s: {"strict": 0.4286, "lenient": 0.8571, "n": 7} for s in ("icl", "instruct")}
    assert stats["gold_match_rate"] == {"icl": 0.8571, "instruct": 0.8571}  # unchanged: the lenient rule
    assert "## Label accuracy" in card and "two rules: strict: the normalised answer equals the normalised gold" in card
    assert "| add | 0.75 | 0.75 | 8 |" in card and "| capital | 0.0 | 1.0 | 6 |" in card
    assert "| icl | 0.4286 | 0.8571 | 7 |" in card
    # the task rides along in the rows; shipped templates and text demos are named as such
    dd = load_from_disk(str(path))
    assert set(dd["train"]["task"]) == {"add", "capital"}
    assert f"| icl | `icl` | `{load_template('icl').sha256}` | 7 |" in card
    assert "ICL demo format `text` (7 prompts)" in card and "demos erased for the student (`erase_demos`): none" in card


def test_a_dataset_without_the_task_column_still_loads_and_counts_per_task(tmp_path, teacher):
    """A dataset made before rows carried `task` is appended to (incremental run): its rows get their task
    from the seeds for the figures, and the merged dataset saves and loads."""
    seeds = write_seeds(tmp_path / "seeds.jsonl", n_add=3, countries=("France",))
    cfg = GenerateConfig(seeds=str(seeds), styles=["instruct"], validation_fraction=0.0)
    v1, _, _ = build(cfg, teacher, tmp_path / "v1")
    old = tmp_path / "old"  # the same dataset as an older eakd wrote it (one table filtered per split), no task column
    dd = load_from_disk(str(v1))
    full = Dataset.from_list([{k: v for k, v in r.items() if k != "task"} | {"split": name}
                              for name in dd for r in dd[name].to_list()])
    DatasetDict({name: full.filter(lambda v, name=name: v == name, input_columns="split").remove_columns("split")
                 for name in dd}).save_to_disk(str(old))
    (old / "stats.json").write_text((v1 / "stats.json").read_text())
    write_seeds(seeds, n_add=4, countries=("France", "Japan"))  # two new seeds
    cache_answers(cfg, teacher)
    new = generate_dataset(cfg, teacher, tmp_path / "v2", incremental_from=old)
    stats = json.loads((new / "stats.json").read_text())
    rows = load_from_disk(str(new))["train"].to_list()
    assert len(rows) == 6 and {r["task"] for r in rows if r["seed_id"] in ("add-3", "cap-Japan")} == {"add", "capital"}
    assert {r["task"] for r in rows if r["seed_id"] == "add-0"} == {None}  # carried over unchanged
    assert stats["label_accuracy"]["per_task"] == {"add": {"strict": 0.75, "lenient": 0.75, "n": 4},
                                                   "capital": {"strict": 0.0, "lenient": 1.0, "n": 2}}


def test_label_accuracy_and_provenance_on_hand_made_rows():
    def row(seed_id, style, answer, gold, task=None, demo_ids=(), template="icl", erased=False):
        prompt = [{"role": "user", "content": "q"}]
        return {"seed_id": seed_id, "style": style, "answer": answer, "gold": gold, "demo_ids": list(demo_ids),
                "teacher": {"template": template, "template_sha": "s"}, "prompt_messages": prompt,
                "messages": ([{"role": "user", "content": "erased"}] if erased else prompt) + [{"role": "assistant", "content": "a"}],
                "quality": {"gold_match": None if not gold else answer == gold}, **({"task": task} if task else {})}

    rows = [row("a", "icl", "5", "5", "t1", ["a/demo-0"], erased=True), row("b", "icl", "five", "5", None, ["x"]),
            row("c", "instruct", "x", None, template="instruct"),  # no gold: not counted
            row("c", "instruct", "x", "", template="instruct")]  # a second sample of the same prompt
    acc = label_accuracy(rows, {"b": "t2"})
    assert acc["per_task"] == {"t1": {"strict": 1.0, "lenient": 1.0, "n": 1}, "t2": {"strict": 0.0, "lenient": 0.0, "n": 1}}
    assert acc["per_style"] == {"icl": {"strict": 0.5, "lenient": 0.5, "n": 2}}
    prov = row_provenance(rows)
    assert prov["demos"] == {"icl": {"own": 1, "selected": 1, "none": 0}}
    assert prov["templates"]["instruct"] == [{"name": "instruct", "sha256": "s", "prompts": 1}]  # prompts, not samples
    assert prov["erased"] == {"icl": 1} and prov["demo_format"] == {"text": 2, "chat": 0}


def test_card_of_a_task_file_dataset_names_the_file_and_its_split(tmp_path, teacher):
    """Seeds from a task file: the card names the file, and says the held-out items are the validation split
    and the inputs the train split (no seed file, no split by seed id)."""
    from distill.data.dataset import load_generate_seeds

    tasks = tmp_path / "tasks.yaml"
    tasks.write_text(json.dumps({"tasks": [{
        "name": "capital", "instruction": "Name the capital.",
        "examples": [{"input": "France", "output": "Paris"}, {"input": "Japan", "output": "Tokyo"}],
        "inputs": ["Italy", "Spain", "Peru"], "held_out": [{"input": "Chile", "output": "Santiago"}]}]}))
    cfg = GenerateConfig(tasks=str(tasks), styles=["icl"], num_demos=2, demo_format="chat", erase_demos=True)
    plans, _ = build_requests(load_generate_seeds(cfg), cfg, teacher.model_id())
    cache = ResponseCache(teacher.cache_path)
    cache.put_many([(p.request.key(), {"key": p.request.key(), "prompt_tokens": 20, "completion_tokens": 2,
                                          "choices": [{"text": "Santiago", "finish_reason": "stop"}]}) for p in plans])
    cache.close()
    path = generate_dataset(cfg, teacher, tmp_path / "ds")
    stats = json.loads((path / "stats.json").read_text())
    card = (path / "README.md").read_text()
    assert stats["teacher"]["sent"] == 0 and stats["seeds_train"] == 3 and stats["seeds_validation"] == 1
    assert "`None`" not in card and "split by seed id" not in card
    assert (f"- seeds: 4 from the task file `{tasks}`: the 3 inputs the teacher labelled are the train split, the 1 "
            "held-out item (labelled, for evaluation only) the validation split") in card


def test_seed_line_counts_synthesized_inputs(tmp_path):
    from distill.data.card import _seed_line

    (tmp_path / "t.yaml").write_text("")
    cfg = GenerateConfig(tasks=str(tmp_path / "t.yaml"))
    stats = {"seeds": 7, "seeds_train": 6, "seeds_validation": 1,
             "synthesis": {"tasks": {"a": {"kept": 2}, "b": {"kept": 1, "short_by": 1}}}}
    assert _seed_line(cfg, stats) == (f"- seeds: 7 from the task file `{tmp_path / 't.yaml'}`: the 6 inputs the teacher "
                                      "labelled (3 of them written by the teacher, `synthesize`) are the train split, the 1 "
                                      "held-out item (labelled, for evaluation only) the validation split")


def test_icl_labels_vote_and_the_card_reports_it(tmp_path, teacher):
    """Few-shot labels of a task file's inputs with self-consistency: 4 samples per input vote on the first line;
    the minority label goes to the removed split, the vote share rides in every row, and the card says so."""
    from distill.data.dataset import load_generate_seeds

    tasks = tmp_path / "tasks.yaml"
    tasks.write_text(json.dumps({"tasks": [{
        "name": "capital", "instruction": "Name the capital.",
        "examples": [{"input": "France", "output": "Paris"}, {"input": "Japan", "output": "Tokyo"}],
        "inputs": ["Italy", "Spain"], "held_out": [{"input": "Chile", "output": "Santiago"}]}]}))
    cfg = GenerateConfig(tasks=str(tasks), styles=["icl"], num_demos=2, demo_format="chat", erase_demos=True,
                         sampling={"n": 4, "temperature": 0.8}, self_consistency={"enabled": True, "styles": ["icl"]})
    label = {"Italy": "Rome", "Spain": "Madrid", "Chile": "Santiago"}
    plans, _ = build_requests(load_generate_seeds(cfg), cfg, teacher.model_id())
    cache = ResponseCache(teacher.cache_path)
    cache.put_many([(p.request.key(), {"key": p.request.key(), "prompt_tokens": 20, "completion_tokens": 2,
                                          "choices": [{"text": t, "finish_reason": "stop"} for t in
                                                      [label[p.seed.input], "Lima", f"{label[p.seed.input]}.\nIt is.",
                                                       label[p.seed.input].lower()]]}) for p in plans])
    cache.close()
    path = generate_dataset(cfg, teacher, tmp_path / "ds")
    stats = json.loads((path / "stats.json").read_text())
    dd = load_from_disk(str(path))
    assert len(dd["train"]) == 6 and len(dd["validation"]) == 3 and len(dd["removed"]) == 3
    # keep: gold: the held-out item (gold) drops the label off gold, the unlabelled inputs the one off the vote
    assert sorted((r["seed_id"].split("/")[1].split("-")[0], r["removed_reason"].split(":")[0]) for r in dd["removed"]) == [
        ("held_out", "gold_mismatch"), ("input", "sc_minority"), ("input", "sc_minority")]
    assert {r["answer"] for r in dd["removed"]} == {"Lima"}
    assert {r["quality"]["vote_share"] for s in dd for r in dd[s]} == {0.75}
    sc = stats["self_consistency"]
    assert sc["styles"] == ["icl"] and sc["questions"] == 3 and sc["questions_with_gold"] == 1 and sc["voted_accuracy"] == 1.0
    card = (path / "README.md").read_text()
    assert "## Self-consistency (icl)" in card
    assert "- 3 prompts: icl x 4 samples (the normalised first line votes); keep = `gold`" in card
