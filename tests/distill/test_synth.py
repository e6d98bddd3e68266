"""Input synthesis (distill/data/synth.py): parsing one input per answer, screening candidates, the requests.

The teacher is never called here: the screening is a pure function the answers are passed into.
"""

import pytest
from pydantic import ValidationError

from distill.data.synth import (
    Candidate,
    SynthesisConfig,
    SynthesisResult,
    off_shape,
    parse_input,
    screen_candidates,
    synthesis_request,
)
from distill.data.tasks import TaskSpec
from prompts import TemplateError, load_template

TASK = TaskSpec(
    name="minutes", instruction="How many minutes is this in total?",
    examples=[{"input": x, "output": "0"} for x in ["2 hours", "1 hour and 15 minutes", "half an hour", "3 hours 5 minutes",
                                                      "90 seconds", "a quarter of an hour"]],
    inputs=["6 hours", "1 hour 50 minutes"],
    held_out=[{"input": "5 hours", "output": "300"}, {"input": "an hour and a half", "output": "90"}],
    synthesize=3,
)


@pytest.mark.parametrize("answer, expected", [
    ("4 hours and 10 minutes", "4 hours and 10 minutes"),
    ("\n\n  Input: 7 hours 30 minutes\nOutput: 450", "7 hours 30 minutes"),
    ('New input: "two and a half hours"', "two and a half hours"),
    ("**Input:** 45 seconds", "45 seconds"),
    ("1. 12 hours\n2. 3 days", "12 hours"),
    ("- “a day and a half”", "a day and a half"),
    ("input 2: 9 minutes", "9 minutes"),
    ("Inputs are things like this", "Inputs are things like this"),  # no label: the line as it is
])
def test_parse_input_takes_the_first_line_without_labels_or_quotes(answer, expected):
    assert parse_input(answer) == (expected, None)


@pytest.mark.parametrize("answer, truncated, reason", [
    ("", False, "unparseable: empty answer"),
    ("  \n \n", False, "unparseable: empty answer"),
    ('Input: ""', False, "unparseable: no words"),
    ("8 hours and 2", True, "truncated: cut off"),
    ("Output: 3 hours, 50 minutes", False, "unparseable: the first line is labelled as an answer (Output:)"),
    ("**Answer:** 12", False, "unparseable: the first line is labelled as an answer (Answer:)"),
])
def test_parse_input_refuses_with_a_reason(answer, truncated, reason):
    text, why = parse_input(answer, truncated)
    assert text is None and why.startswith(reason)


def test_a_complete_first_line_of_a_truncated_answer_is_kept():
    assert parse_input("4 hours\nOutput: 240 because four times sixty is", truncated=True) == ("4 hours", None)


def _cands(*answers, rnd=0):
    return [Candidate(id=f"minutes/synth-{rnd}-{j}", origin=f"minutes:{rnd}", raw=a) for j, a in enumerate(answers)]


def test_screen_keeps_new_inputs_and_says_why_it_drops_the_rest():
    cands = _cands("Input: 11 hours and 20 minutes", "5 hours", "Is it 5 hours or more?", "2 hours",
                   "How many minutes is this in total?", "11 hours and 20 minutes", "", "four days", "20 seconds",
                   "an hour and a half plus ten minutes")
    cands.insert(3, Candidate(id="minutes/synth-0-99", origin="minutes:0", raw="", error="connection: refused"))
    out = screen_candidates(cands, TASK, known=["four days"], need=3)
    assert [(x.id, x.text, x.origin) for x in out.kept] == [("minutes/synth-0-0", "11 hours and 20 minutes", "minutes:0"),
                                                            ("minutes/synth-0-2", "Is it 5 hours or more?", "minutes:0"),
                                                            ("minutes/synth-0-8", "20 seconds", "minutes:0")]
    reasons = {r["id"]: r["removed_reason"] for r in out.removed}
    assert reasons["minutes/synth-0-1"] == "held_out: equals the held-out input '5 hours'"
    # "5 hours" (2 words) inside synth-0-2 is no hit: only held-out inputs of >= 3 words count when contained
    assert reasons["minutes/synth-0-99"] == "teacher_error: connection: refused"
    assert reasons["minutes/synth-0-3"].startswith("duplicate: ROUGE-L 1.00 with example input '2 hours'")
    assert reasons["minutes/synth-0-4"].startswith("duplicate: ROUGE-L 1.00 with the instruction")
    assert reasons["minutes/synth-0-5"].startswith("duplicate: ROUGE-L 1.00 with a candidate of this round")
    assert reasons["minutes/synth-0-6"] == "unparseable: empty answer"
    assert reasons["minutes/synth-0-7"].startswith("duplicate: ROUGE-L 1.00 with input synthesized earlier")
    assert reasons["minutes/synth-0-9"] == "held_out: contains the held-out input 'an hour and a half'"
    # every candidate is accounted for once, in the order asked
    ids = [c.id for c in cands]
    assert sorted([x.id for x in out.kept] + [r["id"] for r in out.removed], key=ids.index) == ids
    assert [r["id"] for r in out.removed] == sorted((r["id"] for r in out.removed), key=ids.index)


def test_screen_near_copy_of_a_held_out_input_is_a_held_out_drop_and_extras_are_surplus():
    out = screen_candidates(_cands("an hour and a half.", "exactly an hour and a half", "13 hours", "14 hours 1 minute",
                                   "3 weeks"), TASK, [], need=2)
    reasons = [r["removed_reason"] for r in out.removed]
    assert reasons[0].startswith("held_out: equals")
    assert reasons[1].startswith("held_out: contains")
    assert [x.text for x in out.kept] == ["13 hours", "14 hours 1 minute"]
    assert reasons[2] == "surplus: the task already has the 3 inputs asked for"
    out = screen_candidates(_cands("5 hours 1"), TASK, [], need=2, threshold=0.5)
    assert out.removed[0]["removed_reason"].startswith("held_out: ROUGE-L 0.80 with held-out input '5 hours'")


def test_requests_are_reproducible_and_show_example_inputs_only():
    cfg = SynthesisConfig(shots=3, seed=5, format="list")
    tmpl = load_template("synth_inputs")
    a, b = synthesis_request(TASK, cfg, tmpl, "m", 1, 2), synthesis_request(TASK, cfg, tmpl, "m", 1, 2)
    assert a.key() == b.key() and a.temperature == 1.0 and a.max_tokens == 64 and a.style == "synth_inputs"
    others = {synthesis_request(TASK, cfg, tmpl, "m", r, j).key() for r in range(3) for j in range(4)}
    assert len(others) == 12  # every prompt of every round is its own request (and sampling seed)
    user = a.messages[-1]["content"]
    shown = [e.input for e in TASK.examples if f"Input: {e.input}\n" in user + "\n"]
    assert len(shown) == 3 and TASK.instruction in user
    assert not any(x in user for x in TASK.inputs + [h.input for h in TASK.held_out])
    assert a.seed != synthesis_request(TASK, cfg, tmpl, "m", 1, 3).seed


def test_chat_format_shows_the_same_example_inputs_as_earlier_assistant_answers():
    tmpl = load_template("synth_inputs")
    listed = synthesis_request(TASK, SynthesisConfig(shots=3, seed=5, format="list"), tmpl, "m", 1, 2)
    chat = synthesis_request(TASK, SynthesisConfig(shots=3, seed=5), tmpl, "m", 1, 2)
    roles = [m["role"] for m in chat.messages]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user", "assistant", "user"]
    said = [m["content"] for m in chat.messages if m["role"] == "assistant"]
    assert [x for x in said if f"Input: {x}\n" in listed.messages[-1]["content"] + "\n"] == said  # the same 3 shots
    asks = {m["content"] for m in chat.messages[3::2]}
    assert len(asks) == 1 and TASK.instruction not in asks.pop() and TASK.instruction in chat.messages[1]["content"]
    assert "Example inputs" not in chat.messages[1]["content"] and chat.key() != listed.key()


def test_chat_format_needs_a_next_block(tmp_path):
    t = tmp_path / "mine.jinja"
    t.write_text("{% block user %}Task: {{ instruction }}{% endblock %}")
    with pytest.raises(TemplateError, match=r"needs a \{% block next %\}.*format: list"):
        synthesis_request(TASK, SynthesisConfig(), load_template(str(t)), "m", 0, 0)
    assert synthesis_request(TASK, SynthesisConfig(format="list"), load_template(str(t)), "m", 0, 0).messages


@pytest.mark.parametrize("fmt", ["chat", "list"])
def test_teacher_text_is_a_template_variable_never_template_code(fmt):
    t = TASK.model_copy(update={"instruction": "{{ 7 * 7 }} {% for x in y %}"})
    msgs = synthesis_request(t, SynthesisConfig(format=fmt), load_template("synth_inputs"), "m", 0, 0).messages
    assert "{{ 7 * 7 }} {% for x in y %}" in msgs[1]["content"]


@pytest.mark.parametrize("answer, expected", [
    ("Here's a new input:\n\n 3 hours and 2 minutes", "3 hours and 2 minutes"),
    ("**Input:**\n45 seconds", "45 seconds"),
    ("Example: 2 days", "2 days"),
    ("Example 3: two weeks", "two weeks"),
])
def test_parse_input_skips_a_line_that_only_introduces_the_input(answer, expected):
    assert parse_input(answer) == (expected, None)


def test_parse_input_refuses_an_introduction_with_nothing_after_it():
    text, why = parse_input("A different input could be:")
    assert text is None and why.startswith("unparseable: the first line 'A different input could be:' introduces")


@pytest.mark.parametrize("text, reason", [
    ("3 hours", None),
    ("an hour and twenty minutes", None),
    ("7", "off_shape: 100% of its words hold a digit, the examples' 0%-50%"),
    ("The new input for this task is 3 hours", "off_shape: says 'input'"),
    ("Write the answer in minutes please", "off_shape: says 'answer'"),
    ("one two three four five six seven eight nine ten eleven", "off_shape: 11 words"),
    ("1 2 3 4 5 6 7 8 9 10 11", "off_shape: 11 words, the examples have 2-5 (kept: 1-10)"),
])
def test_off_shape_reads_the_examples_form(text, reason):
    why = off_shape(text, [e.input for e in TASK.examples], TASK.instruction)
    assert (why is None) if reason is None else why.startswith(reason), why


def test_off_shape_keeps_the_requests_words_when_the_task_uses_them():
    assert off_shape("my answer is yes", ["the answer is no", "an answer: maybe"], "Flip it.") is None
    assert off_shape("my answer is yes", ["yes it is", "no it is not"], "Flip the answer.") is None


def test_screen_drops_an_input_off_the_examples_shape_unless_asked_not_to():
    cands = _cands("The new input is 4 hours", "4 hours")
    out = screen_candidates(cands, TASK, [], need=2)
    assert [x.text for x in out.kept] == ["4 hours"]
    assert out.removed[0]["removed_reason"].startswith("off_shape: says 'input'")
    assert len(screen_candidates(cands, TASK, [], need=2, shape=False).kept) == 2


def test_config_refuses_greedy_sampling_and_unknown_keys():
    with pytest.raises(ValidationError, match="temperature"):
        SynthesisConfig(temperature=0.0)
    with pytest.raises(ValidationError, match="extra"):
        SynthesisConfig(round=3)


def test_stats_say_when_a_task_is_left_short():
    res = SynthesisResult(inputs={}, removed=[], template=load_template("synth_inputs"), rounds=4, per_task={
        "a": {"asked": 4, "prompts": 20, "candidates": 20, "kept": 4, "short_by": 0, "removed_by": {"duplicate": 16}},
        "b": {"asked": 4, "prompts": 30, "candidates": 29, "kept": 1, "short_by": 3,
              "removed_by": {"duplicate": 20, "teacher_error": 1, "surplus": 0}}})
    st = res.stats(SynthesisConfig())
    assert st["complete"] is False and st["short_by"] == {"b": 3}
    assert st["removed_by"] == {"duplicate": 36, "teacher_error": 1}
    assert st["template"]["name"] == "synth_inputs" and st["config"]["rounds"] == 4
