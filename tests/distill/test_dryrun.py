"""`eakd generate --dry-run`: every request rendered and priced, cache hits counted, no teacher called."""

import json

import pytest

from distill.data.dataset import GenerateConfig
from distill.data.dryrun import dry_run, format_dry_run
from distill.data.plan import Plan, build_requests
from distill.data.seeds import load_seeds
from distill.teacher.cache import ResponseCache
from distill.teacher.query import TeacherConfig


@pytest.fixture
def seeds_file(tmp_path):
    rows = [{"id": f"s{i}", "task": "add", "instruction": "Add the numbers.", "input": f"{i} + {i + 1}",
             "answer": str(2 * i + 1)} for i in range(6)]
    path = tmp_path / "seeds.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def gen_cfg(seeds_file, **kw):
    return GenerateConfig(seeds=str(seeds_file), styles=["icl", "instruct"], num_demos=2,
                          sampling={"max_tokens": 50, "n": 2, "temperature": 0.7}, **kw)


def test_dry_run_counts_requests_cache_hits_tokens_and_cost(seeds_file, tmp_path):
    # an unreachable endpoint: a dry run must never call it
    teacher = TeacherConfig(backend="openai", model="m", base_url="http://127.0.0.1:9/v1",
                            cache_path=str(tmp_path / "cache.sqlite"), price_prompt_per_mtok=2.0,
                            price_completion_per_mtok=8.0, max_cost_usd=0.0001)
    cfg = gen_cfg(seeds_file)
    first = dry_run(cfg, teacher)
    assert not (tmp_path / "cache.sqlite").exists()  # looked up, not created
    assert first.requests == 12 and first.cached == 0 and first.seeds == 6
    assert {s: e.requests for s, e in first.styles.items()} == {"icl": 6, "instruct": 6}
    assert all(len(e.examples) == 3 for e in first.styles.values())
    assert "Add the numbers." in first.styles["icl"].examples[0][-1]["content"]
    assert first.completion_tokens_max == 12 * 2 * 50
    assert first.token_counter.startswith("estimate")
    assert first.cost_usd_max == pytest.approx((first.prompt_tokens * 2.0 + first.completion_tokens_max * 8.0) / 1e6)
    assert any("max_cost_usd" in w for w in first.warnings)  # the worst case is above the cap

    # two answers already in the cache: they are counted as hits, not as tokens to pay
    plans, _ = build_requests(load_seeds(str(seeds_file)), cfg, teacher.model_id(), [])
    reqs = [p.request for p in plans if isinstance(p, Plan)][:2]
    cache = ResponseCache(tmp_path / "cache.sqlite")
    for r in reqs:
        cache.put(r.key(), {"key": r.key(), "choices": [], "prompt_tokens": 10, "completion_tokens": 30})
    cache.close()
    second = dry_run(cfg, teacher)
    assert second.cached == 2 and second.completion_tokens_max == 10 * 2 * 50
    assert second.prompt_tokens < first.prompt_tokens
    assert second.completion_tokens_expected == 30 * 10  # mean cached length x requests left
    text = format_dry_run(second)
    assert "12 requests from 6 seeds; 2 already answered" in text and "== icl" in text and "[user]" in text


def test_dry_run_counts_prompt_tokens_with_the_teacher_tokenizer(seeds_file, tmp_path, tiny_model):
    from transformers import AutoTokenizer

    teacher = TeacherConfig(backend="openai", model="m", base_url="http://127.0.0.1:9/v1", tokenizer=str(tiny_model),
                            cache_path=str(tmp_path / "cache.sqlite"))
    cfg = gen_cfg(seeds_file)
    d = dry_run(cfg, teacher)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    plans, _ = build_requests(load_seeds(str(seeds_file)), cfg, teacher.model_id(), [])
    # counted independently: render each chat to text, then tokenize the text
    exact = sum(len(tok(tok.apply_chat_template(p.request.messages, tokenize=False, add_generation_prompt=True),
                        add_special_tokens=False)["input_ids"]) for p in plans if isinstance(p, Plan))
    assert exact > 12 * 20  # a real count, not the number of keys of an encoding
    assert d.token_counter == f"tokenizer:{tiny_model}" and d.prompt_tokens == exact
    assert not any("estimated" in w for w in d.warnings)


def test_dry_run_gives_bootstrap_upper_bounds(tmp_path):
    rows = [{"id": f"t{i}", "name": f"task_{i}", "instruction": f"Write a short poem about topic number {i}.",
             "instances": [{"input": "", "output": "A poem."}], "is_classification": False} for i in range(10)]
    path = tmp_path / "si.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = GenerateConfig(seeds=str(path), styles=["instruct"], sampling={"max_tokens": 64},
                         bootstrap={"target": 40, "prompts_per_round": 4, "max_rounds": 3, "max_tokens": 100})
    d = dry_run(cfg, TeacherConfig(backend="openai", model="m", base_url="http://127.0.0.1:9/v1",
                                   cache_path=str(tmp_path / "c.sqlite")))
    b = d.bootstrap
    assert b["instruction_prompts_max"] == 12 and b["instruction_completion_tokens_max"] == 1200
    assert b["responses_max"] == 40 and b["response_completion_tokens_max"] == 40 * 64
    assert "Write a short poem" in b["example"][-1]["content"]


def test_dry_run_bounds_the_judge_verdicts(seeds_file, tmp_path):
    teacher = TeacherConfig(backend="openai", model="m", base_url="http://127.0.0.1:9/v1",
                            cache_path=str(tmp_path / "cache.sqlite"))
    plain = dry_run(gen_cfg(seeds_file), teacher)
    judged = dry_run(gen_cfg(seeds_file, filters={"judge": {"max_tokens": 40}}), teacher)
    assert plain.judge is None
    assert judged.judge["verdicts_max"] == 12 * 2  # one per generated row (n = 2)
    assert judged.judge["completion_tokens_max"] == 24 * 40
    assert judged.judge["prompt_tokens_max"] > 24 * 50  # each verdict's prompt holds a full-length response
    assert "LLM-as-judge (after generation, upper bounds): up to 24 verdicts" in format_dry_run(judged)


def test_dry_run_shows_the_student_prompt_when_demos_are_erased(seeds_file, tmp_path):
    teacher = TeacherConfig(backend="openai", model="m", base_url="http://127.0.0.1:9/v1",
                            cache_path=str(tmp_path / "cache.sqlite"))
    plain = dry_run(gen_cfg(seeds_file), teacher)
    assert plain.styles["icl"].student_examples == [None] * 3  # the student trains on the teacher's prompt
    assert "student prompt" not in format_dry_run(plain)

    erased = dry_run(gen_cfg(seeds_file, erase_demos=True), teacher)
    icl, instruct = erased.styles["icl"], erased.styles["instruct"]
    assert all(s is not None for s in icl.student_examples)
    assert instruct.student_examples == [None] * 3  # no demos to erase: nothing differs, nothing extra shown
    teacher_prompt, student_prompt = icl.examples[0][-1]["content"], icl.student_examples[0][-1]["content"]
    assert "Example 1:" in teacher_prompt and "Example 1:" not in student_prompt
    seed_input = "0 + 1"  # the first seed's question is in both
    assert seed_input in teacher_prompt and seed_input in student_prompt
    text = format_dry_run(erased)
    icl_part = text.split("== icl")[1].split("== instruct")[0]
    assert icl_part.count("-- example 1: teacher prompt (what is sent)") == 1
    head, tail = icl_part.split("-- example 1: student prompt (what the student trains on; generate.erase_demos removed the demos)")
    assert "Example 1:" in head and student_prompt in tail.split("-- example 2")[0]
    assert "student prompt" not in text.split("== instruct")[1]
    assert erased.to_dict()["styles"]["icl"]["student_examples"][0] == icl.student_examples[0]  # --json has it too


TICKETS = {"name": "ticket_team", "instruction": "Which team should handle this ticket? Answer with the team's name only.",
           "examples": [{"input": "I was charged twice this month.", "output": "billing"},
                        {"input": "My parcel never arrived.", "output": "shipping"},
                        {"input": "The app crashes on start.", "output": "technical"}],
           "inputs": ["My card was declined.", "The tracking number does not work."],
           "held_out": [{"input": "I was billed for a plan I never chose.", "output": "billing"}]}


def _task_config(tmp_path, **task):
    import yaml

    tasks = tmp_path / "tasks.yaml"
    tasks.write_text(yaml.safe_dump({"tasks": [TICKETS | task]}))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "teacher": {"backend": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1",  # nothing listens
                    "cache_path": str(tmp_path / "cache.sqlite")},
        "generate": {"tasks": str(tasks), "styles": ["icl"], "num_demos": 2, "demo_format": "chat", "erase_demos": True},
        "run": {"stages": ["generate"]}}))
    return config


def _invoke(*args):
    from typer.testing import CliRunner

    from flows.cli import app

    return CliRunner().invoke(app, ["generate", *map(str, args)], env={"COLUMNS": "200"})


def test_dry_run_of_a_task_file_prints_its_prompts(tmp_path):
    """A config with generate.tasks (no generate.seeds): the inputs and held-out items are the seeds."""
    config = _task_config(tmp_path)
    result = _invoke(config, "--dry-run")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "dry run: 3 requests from 3 seeds; 0 already answered in the cache, 3 to send" in out
    assert "== icl: 3 requests" in out
    # each input and the held-out item, after its demos (the task's examples) as chat turns
    for text in ("My card was declined.", "The tracking number does not work.", "I was billed for a plan I never chose."):
        assert f"name only.\n\n{text}\n-- example" in out
    assert "[assistant] billing" in out
    assert "student prompt (what the student trains on; generate.erase_demos removed the demos)" in out
    assert not (tmp_path / "cache.sqlite").exists()


def test_dry_run_of_a_task_that_synthesizes_inputs_is_a_clear_error(tmp_path):
    """Only the teacher can say what synthesized inputs are: the dry run says so, exit 2, no traceback."""
    config = _task_config(tmp_path, synthesize=4)
    result = _invoke(config, "--dry-run")
    assert result.exit_code == 2, result.output
    assert "task 'ticket_team': synthesize: 4 decides its inputs with the teacher" in result.output
    assert "set synthesize: 0" in result.output and "Traceback" not in result.output
