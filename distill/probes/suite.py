"""Probe prompts and their grading: the same prompts and the same strict rules for every model.

What each ability's probe asks (every item held out: never a training row nor a demonstration):

- **ICL**: the item zero-shot (the ``instruct`` template: instruction + input, what an ``erase_demos``
  student is trained on) and k-shot (the same, after k demonstrations from the task's pool as past
  user/assistant chat turns: :func:`distill.data.dataset.chat_demo_messages`, the format small chat models
  follow). The answer is the first non-empty line.
- **CoT**: the item answered directly (the instruct template, asked for the final answer only; first line)
  and with the CoT prompt (the ``cot`` template: "think step by step ... The answer is <answer>."; the
  answer extracted by :data:`COT_EXTRACTION`), zero-shot and with k worked examples (:func:`cot_prompts`).
  CoT gain = CoT accuracy - direct accuracy, at the same number of shots.
- **IF**: a verifiable instruction (:mod:`distill.probes.ifeval`) through the instruct template; the response
  is checked strict and loose as IFEval defines them.

Grading (:func:`grade_answer`), written once: **strict** = the normalised answer equals the gold or one of
its aliases (:func:`distill.answers.answers_match_strict`: numbers compared as numbers — "1,200" = "1200.0" —, text
lower-cased and stripped of surrounding quotes and final punctuation); **lenient** = eakd's dataset rule
(:func:`distill.answers.answers_match`: a short gold label also counts when the answer line states it as a
whole word). The headline numbers are strict; lenient is reported beside them.

Run: through :func:`distill.probes.run.run_probes` (``eakd evaluate`` with ``evaluate.probes``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal

from distill.answers import ExtractionConfig, answers_match, answers_match_strict, extract_answer
from distill.probes.families import Item
from prompts import load_template, render_messages

Mode = Literal["zero_shot", "k_shot", "direct", "cot", "direct_k_shot", "cot_k_shot", "if"]
DIRECT_SUFFIX = "Reply with the final answer only, on one line, without explanation."
COT_EXTRACTION = ExtractionConfig(patterns=["the_answer_is", "answer_colon", "last_line"])


@dataclass(frozen=True)
class ProbePrompt:
    """One question put to a model: which ability, task and mode, the chat messages, and how to grade it."""

    id: str
    ability: Literal["icl", "cot", "if", "control"]
    task: str
    mode: Mode
    messages: list[dict[str, str]]
    gold: str | None
    aliases: tuple[str, ...] = ()
    first_line: bool = True                   # generation may stop at the end of the first line
    if_item: object | None = None             # distill.probes.ifeval.IFItem for ability "if"
    demo_ids: tuple[str, ...] = field(default=())


def _vars(instruction: str, input: str) -> dict:
    return {"instruction": instruction, "input": input, "demos": [], "task": ""}


def zero_shot_messages(item: Item) -> list[dict[str, str]]:
    """The item as the instruct template renders it: what an ``erase_demos`` student was trained to answer."""
    return render_messages(load_template("instruct"), _vars(item.instruction, item.input))


def k_shot_messages(item: Item, demos: list[Item]) -> list[dict[str, str]]:
    """The item after ``demos`` as past user/assistant turns (the generate stage's ``demo_format: chat``)."""
    from distill.data.plan import chat_demo_messages
    from distill.data.seeds import Seed

    seed = Seed(id=item.id, instruction=item.instruction, input=item.input, task=item.task)
    return chat_demo_messages(load_template("instruct"), seed, [{"input": d.input, "output": d.answer} for d in demos])


def pick_demos(item: Item, pool: list[Item], k: int, seed: int) -> list[Item]:
    """``k`` demonstrations for ``item`` from its task's ``pool`` (never the item itself), seeded per item id."""
    cands = [d for d in pool if d.input != item.input]
    return random.Random(f"{seed}:{item.id}").sample(cands, min(k, len(cands)))


def icl_prompts(items: list[Item], pool: list[Item], shots: int, seed: int,
                ability: Literal["icl", "control"] = "icl") -> list[ProbePrompt]:
    """Zero-shot and ``shots``-shot prompts for each item (controls: zero-shot only)."""
    out = []
    for it in items:
        common = dict(ability=ability, task=it.task, gold=it.answer, aliases=it.aliases)
        out.append(ProbePrompt(id=f"{it.id}:zero_shot", mode="zero_shot", messages=zero_shot_messages(it), **common))
        if ability == "icl" and shots > 0:
            demos = pick_demos(it, pool, shots, seed)
            out.append(ProbePrompt(id=f"{it.id}:k_shot", mode="k_shot", messages=k_shot_messages(it, demos),
                                   demo_ids=tuple(d.id for d in demos), **common))
    return out


def cot_prompts(items: list[Item], pool: list[Item], shots: int, seed: int) -> list[ProbePrompt]:
    """Four prompts per item. Zero-shot: ``direct`` (the instruct template, answer only) and ``cot`` (the ``cot``
    template: what a student trained on erased CoT prompts learned to answer). Few-shot, with the same ``shots``
    worked examples from ``pool`` as chat turns (Wei et al. 2022's standard vs chain-of-thought prompting):
    ``direct_k_shot`` (the demos answer with the answer alone) and ``cot_k_shot`` (the ``cot`` template's
    questions answered with the steps and "The answer is <answer>.": exactly what the generate stage sends for a
    cot task) — the teacher's reference."""
    out = []
    for it in items:
        common = dict(ability="cot", task=it.task, gold=it.answer, aliases=it.aliases)
        direct = render_messages(load_template("instruct"), _vars(f"{it.instruction} {DIRECT_SUFFIX}", it.input))
        cot = render_messages(load_template("cot"), _vars(it.instruction, it.input))
        out.append(ProbePrompt(id=f"{it.id}:direct", mode="direct", messages=direct, **common))
        out.append(ProbePrompt(id=f"{it.id}:cot", mode="cot", messages=cot, first_line=False, **common))
        demos = pick_demos(it, pool, shots, seed) if shots else []
        if demos:
            ids = tuple(d.id for d in demos)
            direct_k = _with_demos(it, f"{it.instruction} {DIRECT_SUFFIX}", [(d, d.answer) for d in demos])
            cot_k = _cot_with_demos(it, demos)
            out.append(ProbePrompt(id=f"{it.id}:direct_k_shot", mode="direct_k_shot", messages=direct_k, demo_ids=ids, **common))
            out.append(ProbePrompt(id=f"{it.id}:cot_k_shot", mode="cot_k_shot", messages=cot_k, first_line=False,
                                   demo_ids=ids, **common))
    return out


def _cot_with_demos(item: Item, demos: list[Item]) -> list[dict[str, str]]:
    """The generate stage's prompt for a cot task (:func:`distill.data.dataset.build_requests`): each worked example
    as a past chat turn (the question in the ``cot`` template, then its steps and "The answer is ...")."""
    from distill.data.plan import chat_demo_messages, cot_demo_turn
    from distill.data.seeds import Seed

    seed = Seed(id=item.id, instruction=item.instruction, input=item.input, task=item.task)
    turns = [cot_demo_turn({"input": d.input, "output": d.answer, "rationale": d.rationale}) for d in demos]
    return chat_demo_messages(load_template("cot"), seed, turns)


def _with_demos(item: Item, instruction: str, demos: list[tuple[Item, str]]) -> list[dict[str, str]]:
    from distill.data.plan import chat_demo_messages
    from distill.data.seeds import Seed

    seed = Seed(id=item.id, instruction=instruction, input=item.input, task=item.task)
    return chat_demo_messages(load_template("instruct"), seed, [{"input": d.input, "output": out} for d, out in demos])


def if_prompts(items: list) -> list[ProbePrompt]:
    """One prompt per verifiable-instruction item (:class:`distill.probes.ifeval.IFItem`)."""
    return [ProbePrompt(id=f"{it.id}:if", ability="if", task="if", mode="if", gold=None, first_line=False, if_item=it,
                        messages=render_messages(load_template("instruct"), _vars(it.prompt, "")))
            for it in items]


def answer_in(text: str, mode: Mode) -> str | None:
    """The answer a completion gives: the CoT extraction for ``cot``, else the first non-empty line."""
    text = text.strip()
    if mode in ("cot", "cot_k_shot"):
        return extract_answer(text, COT_EXTRACTION).answer
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return first or None


def grade_answer(answer: str | None, gold: str, aliases: tuple[str, ...] = ()) -> tuple[bool, bool]:
    """(strict, lenient) correctness of ``answer`` against ``gold`` (see the module docstring)."""
    golds = (gold, *aliases)
    strict = any(answers_match_strict(answer, g) is True for g in golds)
    lenient = strict or any(answers_match(answer, g) is True for g in golds)
    return strict, lenient
