"""Input synthesis: the teacher writes new inputs for a task from its instruction and example inputs.

Self-instruct-style input generation — Wang et al. 2023 ("Self-Instruct: Aligning Language Models with
Self-Generated Instructions") generate instances for a task from a few demonstrations, Honovich et al.
2023 ("Unnatural Instructions") ask a model for new examples given a handful in the prompt — used here
to grow a task file's unlabelled inputs (:mod:`distill.data.tasks`) before the teacher labels them:

1. Round ``r`` renders, for each task still short of its ``synthesize`` count,
   ``prompts_per_input`` x (inputs still missing) prompts with the shipped ``synth_inputs`` template
   (sandboxed Jinja; the task's texts are template *variables*, never template source). Prompt ``j``
   shows the instruction and ``shots`` example inputs drawn with ``random.Random(f"{seed}:{task}:{r}:{j}")``
   — by default (``format: chat``) as the assistant's earlier answers in a chat that asks "another one"
   after each: with the bundled 135M teacher that kept 144 of 144 inputs asked for in one round where
   listing the examples in one prompt kept 62, the rest being talk about the request
   (``bench/ea_transfer.py``, docs/tasks.md) — and is sampled at ``temperature`` > 0 with a sampling seed derived from the same string, so the
   prompts, the answers and the response cache are reproducible; one teacher call per round for all tasks.
2. :func:`parse_input` reads ONE input per answer: its first non-empty line (past a line that only
   introduces it, "Here is a new input:"), without an ``Input:`` label, list marker or enclosing quotes. A line cut off by the token limit is refused.
3. :func:`screen_candidates` (a pure function: tests pass the answers in) drops a candidate that is
   equal to a held-out input, or contains one of three or more words, after :func:`distill.data.tasks.normalise`
   (training on the evaluation items would inflate the evaluation), and one that does not look like the
   example inputs (:func:`off_shape`: its length, its share of numbers, the request's own wording: a small
   teacher often writes about the request instead of an input), then runs the Self-Instruct novelty
   filter (:func:`distill.data.novelty.rougel_novelty_filter`, ROUGE-L F1 > ``rougel_threshold``) against the
   instruction, the example inputs, the given inputs, the held-out inputs and every input kept so far.
   Candidates beyond the count asked for are ``surplus``.
4. Rounds repeat until every task has its inputs or ``rounds`` are spent; a task left short is logged
   and recorded (``short_by``) in the stats, never silently.

Every candidate that is not kept comes back with the reason, for the dataset's ``removed`` split; a kept
one carries its provenance (``origin = synth:<task>:<round>``, id ``<task>/synth-<round>-<prompt>``).

Run: give a task ``synthesize: N`` in a task file (``generate.tasks``) and ``eakd generate CONFIG``;
``generate.synthesis`` tunes the rounds (docs/tasks.md).
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field

from distill.config import StageConfig
from distill.data.novelty import rouge_tokenize, rougel_novelty_filter
from distill.data.tasks import TaskFile, TaskInput, TaskSpec, normalise
from distill.teacher.budget import Budget
from distill.teacher.query import TeacherConfig, TeacherRequest, TeacherStats, query_teacher
from prompts import Template, TemplateError, load_template, render_block, render_messages

log = logging.getLogger(__name__)

_LABEL = re.compile(r"^\s*(?:[-*•]\s*|\d{1,3}\s*[.):]\s*)?(?:\*\*)?\s*(?:(?:(?:new|example|test|sample)\s+)?input|example)\s*(?:\d+\s*)?[:：]\s*(?:\*\*)?\s*",
                    re.IGNORECASE)
_ANSWER = re.compile(r"^\s*(?:\*\*)?\s*(output|answer|label|response)\s*[:：]", re.IGNORECASE)
_MARKER = re.compile(r"^\s*(?:[-*•]\s+|\d{1,3}[.)]\s+)")
_QUOTES = ('""', "''", "``", "“”", "‘’", "«»")  # (opening, closing)
_PREFACE = re.compile(r"^.*[:：]\s*(?:\*\*)?\s*$")  # a line that only introduces the next one
_META = re.compile(r"(?:input|output|example|answer|task)s?")  # the synthesis request's own nouns
SHAPE_DIGIT_SLACK = 0.34  # off_shape: how far a candidate's share of digit words may stray from the examples'
CONTAINS_MIN_WORDS = 3  # a held-out input this long or longer may not appear inside a synthesized one


class SynthesisConfig(StageConfig):
    template: str = Field("synth_inputs", description="prompt template: shipped name or .jinja path; sees instruction, inputs (example inputs), task")
    format: Literal["chat", "list"] = Field("chat", description="chat: the example inputs are the assistant's earlier answers, "
                                            "each followed by the template's `next` block (what small chat models follow best, "
                                            "docs/tasks.md); list: the template lists them in one user turn")
    temperature: float = Field(1.0, gt=0.0, le=2.0, description="> 0: every prompt must be able to give a new input")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="nucleus sampling mass")
    max_tokens: int = Field(64, ge=4, le=4096, description="completion cap per answer; one input is one line")
    rounds: int = Field(4, ge=1, le=100, description="give up after this many rounds (a task left short is reported)")
    prompts_per_input: int = Field(2, ge=1, le=64, description="prompts per missing input in a round (some answers are repeats or junk)")
    shots: int = Field(4, ge=1, le=64, description="example inputs shown per prompt, drawn at random from the task's examples")
    rougel_threshold: float = Field(0.7, gt=0.0, lt=1.0, description="drop a candidate whose ROUGE-L F1 with a known input exceeds this (Self-Instruct: 0.7)")
    shape_filter: bool = Field(True, description="drop a candidate that does not look like the example inputs: length, "
                                                 "share of numbers, or the request's own words (distill.data.synth.off_shape)")
    seed: int = Field(0, description="seeds the shot sampler and the teacher's sampling")


@dataclass(frozen=True)
class Candidate:
    """One teacher answer to a synthesis prompt."""

    id: str                     # <task>/synth-<round>-<prompt>
    origin: str                 # synth:<task>:<round>
    raw: str                    # the answer's text ("" when the request failed)
    truncated: bool = False     # finish_reason == "length"
    error: str | None = None    # the request failed for good


@dataclass
class Screened:
    kept: list[TaskInput] = field(default_factory=list)
    removed: list[dict] = field(default_factory=list)  # {"id", "origin", "text", "removed_reason"}


def parse_input(text: str, truncated: bool = False) -> tuple[str | None, str | None]:
    """(the one input in a teacher answer, None) or (None, ``"unparseable: why"`` / ``"truncated: why"``).

    The input is the first non-empty line without an ``Input:`` / ``New input:`` / ``Example 2:`` label, a
    list marker or enclosing quotes; a first line that only introduces what follows (it ends with ``:``, e.g.
    "Here's a new input:") is skipped for the next non-empty line. A first line labelled ``Output:`` /
    ``Answer:`` is an answer, not an input. ``truncated``: the answer hit the token limit, so a last line
    may be cut off and is refused.
    """
    lines = text.splitlines()
    filled = [i for i, ln in enumerate(lines) if ln.strip()]
    if not filled:
        return None, "unparseable: empty answer"
    idx = filled[0]
    if _PREFACE.match(lines[idx]) and _ANSWER.match(lines[idx]) is None:
        if len(filled) == 1:
            return None, f"unparseable: the first line {lines[idx].strip()[:80]!r} introduces an input that never follows"
        idx = filled[1]
    line = lines[idx]
    if truncated and idx == len(lines) - 1:
        return None, "truncated: cut off at generate.synthesis.max_tokens before the line ended (raise generate.synthesis.max_tokens)"
    if (m := _ANSWER.match(line)) is not None:  # the template asks for an input, never its answer
        return None, f"unparseable: the first line is labelled as an answer ({m.group(1)}:), not an input"
    line = _LABEL.sub("", line, count=1)
    line = _MARKER.sub("", line, count=1).strip()
    for q in _QUOTES:
        if len(line) >= 2 and line[0] == q[0] and line[-1] == q[1]:
            line = line[1:-1].strip()
            break
    if not rouge_tokenize(line):
        return None, f"unparseable: no words in the first line {lines[idx].strip()[:80]!r}"
    return line, None


def _digit_share(text: str) -> float:
    words = text.split()
    return sum(any(ch.isdigit() for ch in w) for w in words) / max(len(words), 1)


def off_shape(text: str, examples: list[str], instruction: str = "") -> str | None:
    """Why ``text`` does not look like an input of a task whose example inputs are ``examples`` (None: it does).

    A small teacher asked for "one new input" often writes about the request instead ("Here is a new
    example input", "The input for this task is 52") or drops the input's form (one number where every
    example has two). Three checks, from the examples alone (no task-specific rule):

    - length: ``ceil(min/2) <= words <= max(2 * max, max + 2)`` over the examples' whitespace word counts;
    - numbers: the share of words holding a digit within 0.34 of the examples' range (a number where the
      examples have none, or words where they are all numbers);
    - the request's own wording: ``input``, ``output``, ``example``, ``answer``, ``task`` (any number) when
      neither an example nor the instruction uses that word.
    """
    n = [len(x.split()) for x in examples]
    words = len(text.split())
    lo, hi = -(-min(n) // 2), max(2 * max(n), max(n) + 2)
    if not lo <= words <= hi:
        return f"off_shape: {words} words, the examples have {min(n)}-{max(n)} (kept: {lo}-{hi})"
    shares = [_digit_share(x) for x in examples]
    d = _digit_share(text)
    if not min(shares) - SHAPE_DIGIT_SLACK <= d <= max(shares) + SHAPE_DIGIT_SLACK:
        return (f"off_shape: {d:.0%} of its words hold a digit, the examples' {min(shares):.0%}-{max(shares):.0%} "
                f"(kept: within {SHAPE_DIGIT_SLACK:.0%} of that)")
    used = {w for x in [*examples, instruction] for w in _words(x)}
    if meta := sorted(w for w in _words(text) if _META.fullmatch(w) and w not in used):
        return f"off_shape: says {meta[0]!r}, the synthesis request's wording, which no example or the instruction uses"
    return None


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def _held_out_hit(text: str, held: list[str]) -> str | None:
    norm = f" {normalise(text)} "
    for h in held:
        hn = normalise(h)
        if norm.strip() == hn:
            return f"held_out: equals the held-out input {h[:80]!r}"
        if len(hn.split()) >= CONTAINS_MIN_WORDS and f" {hn} " in norm:
            return f"held_out: contains the held-out input {h[:80]!r}"
    return None


def screen_candidates(cands: list[Candidate], task: TaskSpec, known: list[str], need: int,
                      threshold: float = 0.7, shape: bool = True) -> Screened:
    """Keep at most ``need`` of ``cands`` (in order) as new inputs of ``task``; the rest with their reason.

    ``known``: inputs synthesized for the task in earlier rounds (novelty is also checked against the
    instruction, the examples, the given inputs and the held-out inputs). Pure: no teacher, no I/O.
    Reasons: ``teacher_error``, ``unparseable``, ``truncated``, ``held_out`` (equal to / containing a held-out input, or
    a ROUGE-L near-copy of one), ``off_shape`` (:func:`off_shape`; ``shape=False`` skips it), ``duplicate`` (a
    ROUGE-L near-copy of a known text), ``surplus``.
    """
    out = Screened()
    held = [e.input for e in task.held_out]
    shown = [e.input for e in task.examples] + list(task.inputs)
    pool = ([(task.instruction, "the instruction")] + [(e.input, "example input") for e in task.examples]
            + [(x, "given input") for x in task.inputs] + [(x, "held-out input") for x in held]
            + [(x, "input synthesized earlier") for x in known])
    live: list[tuple[Candidate, str]] = []
    for c in cands:
        if c.error is not None:
            out.removed.append({"id": c.id, "origin": c.origin, "text": "", "removed_reason": f"teacher_error: {c.error[:200]}"})
            continue
        text, why = parse_input(c.raw, c.truncated)
        if text is None:
            out.removed.append({"id": c.id, "origin": c.origin, "text": c.raw[:300], "removed_reason": why})
            continue
        if (hit := _held_out_hit(text, held)) is not None or (shape and (hit := off_shape(text, shown, task.instruction))):
            out.removed.append({"id": c.id, "origin": c.origin, "text": text, "removed_reason": hit})
            continue
        live.append((c, text))
    kept, drops = rougel_novelty_filter([t for _, t in live], [p for p, _ in pool], threshold)
    for d in drops:
        c, text = live[d.index]
        kind = pool[d.match_index][1] if d.match_source == "pool" else "a candidate of this round"
        reason = "held_out" if kind == "held-out input" else "duplicate"
        out.removed.append({"id": c.id, "origin": c.origin, "text": text,
                            "removed_reason": f"{reason}: ROUGE-L {d.score:.2f} with {kind} {d.match[:80]!r}"})
    for n, i in enumerate(kept):
        c, text = live[i]
        if n < need:
            out.kept.append(TaskInput(c.id, text, c.origin))
        else:
            out.removed.append({"id": c.id, "origin": c.origin, "text": text,
                                "removed_reason": f"surplus: the task already has the {task.synthesize} inputs asked for"})
    order = {c.id: i for i, c in enumerate(cands)}
    out.removed.sort(key=lambda r: order[r["id"]])
    return out


def _shots(task: TaskSpec, cfg: SynthesisConfig, rnd: int, j: int) -> list[str]:
    pool = [e.input for e in task.examples]
    return random.Random(f"{cfg.seed}:{task.name}:{rnd}:{j}").sample(pool, min(cfg.shots, len(pool)))


def _sampling_seed(cfg: SynthesisConfig, task: str, rnd: int, j: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{cfg.seed}:{task}:{rnd}:{j}".encode()).digest()[:4], "big") >> 1


def synthesis_messages(task: TaskSpec, cfg: SynthesisConfig, tmpl: Template, shots: list[str]) -> list[dict[str, str]]:
    """The chat that asks for one new input: ``format: list`` renders the template with ``shots`` listed;
    ``format: chat`` renders it with no inputs, then each shot is the assistant's earlier answer and the
    template's ``next`` block the user's next ask (raises :class:`TemplateError` when there is none)."""
    variables = {"instruction": task.instruction, "task": task.name}
    if cfg.format == "list":
        return render_messages(tmpl, {**variables, "inputs": shots})
    messages = render_messages(tmpl, {**variables, "inputs": []})
    nxt = render_block(tmpl, "next", {**variables, "inputs": []})
    if not nxt:
        raise TemplateError(f"{tmpl.name}: generate.synthesis.format: chat needs a {{% block next %}} (the user's ask after "
                            "each example input, e.g. 'Another one.'); add it, or set generate.synthesis.format: list")
    for x in shots:
        messages += [{"role": "assistant", "content": x}, {"role": "user", "content": nxt}]
    return messages


def synthesis_request(task: TaskSpec, cfg: SynthesisConfig, tmpl: Template, model_id: str, rnd: int, j: int) -> TeacherRequest:
    """Prompt ``j`` of round ``rnd`` for ``task`` (the same request every run: cacheable)."""
    messages = synthesis_messages(task, cfg, tmpl, _shots(task, cfg, rnd, j))
    return TeacherRequest(messages=messages, model=model_id, style="synth_inputs", template=tmpl.name,
                          template_sha=tmpl.sha256, temperature=cfg.temperature, top_p=cfg.top_p,
                          max_tokens=cfg.max_tokens, n=1, seed=_sampling_seed(cfg, task.name, rnd, j))


@dataclass
class SynthesisResult:
    inputs: dict[str, list[TaskInput]]  # task name -> kept synthesized inputs, in order
    removed: list[dict]                 # {"id", "origin", "text", "removed_reason"}
    template: Template
    rounds: int = 0
    per_task: dict[str, dict] = field(default_factory=dict)
    teacher: dict = field(default_factory=dict)

    def stats(self, cfg: SynthesisConfig) -> dict:
        """What goes into the dataset's stats.json under ``synthesis``."""
        short = {t: s["short_by"] for t, s in self.per_task.items() if s["short_by"]}
        return {"rounds": self.rounds, "complete": not short, "short_by": short, "tasks": self.per_task,
                "removed_by": dict(sum((Counter(s["removed_by"]) for s in self.per_task.values()), Counter())),
                "template": {"name": self.template.name, "sha256": self.template.sha256},
                "config": cfg.model_dump(mode="json"), "teacher": self.teacher}


def synthesize_inputs(tasks: TaskFile, cfg: SynthesisConfig, teacher_cfg: TeacherConfig,
                      budget: Budget | None = None) -> SynthesisResult:
    """Run the rounds for every task with ``synthesize > 0`` (no teacher call when there is none).

    ``budget``: the run's spending cap, shared with the response step (:mod:`distill.teacher.budget`). Raises
    :class:`prompts.TemplateError` for a bad template."""
    tmpl = load_template(cfg.template)
    wanted = [t for t in tasks.tasks if t.synthesize]
    res = SynthesisResult(inputs={t.name: [] for t in wanted}, removed=[], template=tmpl)
    res.per_task = {t.name: {"asked": t.synthesize, "prompts": 0, "candidates": 0, "kept": 0, "short_by": 0,
                             "removed_by": {}} for t in wanted}
    stats = TeacherStats()
    for rnd in range(cfg.rounds):
        short = [t for t in wanted if len(res.inputs[t.name]) < t.synthesize]
        if not short:
            break
        res.rounds = rnd + 1
        plan = [(t, j) for t in short for j in range((t.synthesize - len(res.inputs[t.name])) * cfg.prompts_per_input)]
        responses = query_teacher([synthesis_request(t, cfg, tmpl, teacher_cfg.model_id(), rnd, j) for t, j in plan],
                                  teacher_cfg, stats, budget)
        by_task: dict[str, list[Candidate]] = {t.name: [] for t in short}
        for (t, j), resp in zip(plan, responses):
            ch = resp.choices[0] if resp.error is None and resp.choices else None
            by_task[t.name].append(Candidate(id=f"{t.name}/synth-{rnd}-{j}", origin=f"synth:{t.name}:{rnd}",
                                             raw=ch.text if ch else "", truncated=bool(ch and ch.finish_reason == "length"),
                                             error=None if ch else (resp.error or "no choices")))
        for t in short:
            known = [x.text for x in res.inputs[t.name]]
            sc = screen_candidates(by_task[t.name], t, known, t.synthesize - len(known), cfg.rougel_threshold, cfg.shape_filter)
            res.inputs[t.name] += sc.kept
            res.removed += sc.removed
            s = res.per_task[t.name]
            s["prompts"] += len(by_task[t.name])
            s["candidates"] += sum(c.error is None for c in by_task[t.name])
            for r in sc.removed:
                why = r["removed_reason"].split(":")[0]
                s["removed_by"][why] = s["removed_by"].get(why, 0) + 1
    for t in wanted:
        s = res.per_task[t.name]
        s["kept"] = len(res.inputs[t.name])
        s["short_by"] = t.synthesize - s["kept"]
        if s["short_by"]:
            log.warning("synthesis: task %r got %d of the %d inputs asked for after %d rounds (raise "
                        "generate.synthesis.rounds or prompts_per_input, or lower synthesize)", t.name, s["kept"],
                        t.synthesize, res.rounds)
    res.teacher = stats.to_dict()
    log.info("synthesis: %s", ", ".join(f"{n} {s['kept']}/{s['asked']}" for n, s in res.per_task.items()) or "nothing asked")
    return res

