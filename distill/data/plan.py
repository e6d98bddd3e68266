"""Planning the generate stage's teacher requests: each (seed, style) rendered into chat ``messages``.

Owns demo choice for one seed (:func:`select_demos`, over :mod:`distill.data.demos`' rankers), the variables every
prompt template sees, demos as chat turns (:func:`chat_demo_messages`, :func:`cot_demo_turn`; the probes render
their prompts with these too) and :func:`build_requests`, which turns seeds into plans: a :class:`Plan` (a
:class:`~distill.teacher.query.TeacherRequest` plus the bookkeeping rows need: demo ids, the student's prompt,
origin), or a :class:`Skipped` with its reason. Pure: renders templates, sends nothing.

May import: the data config, seeds, demos and templates of :mod:`distill.data`, the teacher's request types
(:mod:`distill.teacher.query`, :mod:`distill.teacher.structured`) and ``prompts``; never
:mod:`distill.data.dataset` (which calls it).
"""

from __future__ import annotations

from dataclasses import dataclass

from distill.data.config import GenerateConfig
from distill.data.demos import BM25Index, DemoPool
from distill.data.demos import select_demos as rank_demos
from distill.data.seeds import Seed
from distill.data.templates import resolve_templates
from distill.teacher.query import TeacherRequest
from distill.teacher.structured import cot_schema
from prompts import Template, render_messages


@dataclass(frozen=True, slots=True)
class Plan:
    """One (seed, style) prompt to send: the teacher's request and what its rows record."""

    seed: Seed  # the seed asked about (a bootstrapped instruction's is its own Seed)
    style: str  # icl, cot or instruct: the prompt's style, and its rows'
    request: TeacherRequest  # the rendered chat request, demos included; its key() is the cache key
    demo_ids: list[str]  # ids of the demos shown in ``request``, in order; [] without demos
    student_prompt: list[dict[str, str]]  # the messages the student trains on: ``request``'s, or with the demos erased
    origin: str  # where the seed came from (``seed``, ``task:<name>``, ``replay``, ``bootstrap:<id>``, ...); rows copy it


@dataclass(frozen=True, slots=True)
class Skipped:
    """A (seed, style) that gets no prompt; ``stats.json`` counts these under ``skipped`` by ``reason``."""

    seed: Seed
    style: str
    reason: str  # why there is no prompt: ``no_demos`` (ICL, or few-shot CoT, found no demonstration)
    origin: str  # as :attr:`Plan.origin`


Planned = Plan | Skipped  # what build_requests returns per (seed, style), in order


def _seed_tokens(seed: Seed) -> int:
    """A seed's rough size as a demo (chars / 4, plus its turn markup): what ``demo_budget_tokens`` counts."""
    return len(f"{seed.input or seed.instruction}\n{seed.rationale}\n{seed.answer or ''}") // 4 + 8


def select_demos(seed: Seed, pool: list[Seed], k: int, rng_seed: int, method: str = "random", same_task: bool = True,
                 budget_tokens: int | None = None, rationale: bool = False, index: BM25Index | None = None,
                 prepared: DemoPool | None = None) -> list[tuple[str, dict[str, str]]]:
    """k demonstrations for ``seed``: its own ``demos`` if it has them, else other gold-labelled seeds.

    ``method`` / ``budget_tokens``: see :func:`distill.data.demos.select_demos` (seeded per seed id, so the
    choice does not depend on seed order; the seed itself, or a seed with the same text, is never a
    demo). ``same_task`` limits random/bm25 to the seed's task. ``rationale``: demos must carry one
    (few-shot CoT). ``prepared``: the candidate pool (:class:`~distill.data.demos.DemoPool`) readied once for many seeds; ``pool``,
    ``same_task`` and ``index`` are then not read. Returns ``[(demo_id, {"input", "output", "rationale"}), …]``.
    """
    if seed.demos and not rationale:
        return [(f"{seed.id}/demo-{i}", d) for i, d in enumerate(seed.demos[:k])]
    if prepared is None:
        cands = candidates(pool, seed.task if same_task and method != "stratified" else None, rationale)
        if index is not None and [s.id for s in cands] != index.ids:
            index = None
        prepared = DemoPool.of(cands, bm25=method == "bm25", index=index)
    sel = rank_demos(seed, prepared, k, method=method, seed=rng_seed, budget_tokens=budget_tokens,
                     count_tokens=_seed_tokens)
    return [(i, d | {"rationale": prepared.by_id[i].rationale}) for i, d in zip(sel.ids, sel.demos)]


def candidates(pool: list[Seed], task: str | None, rationale: bool) -> list[Seed]:
    """The seeds of ``pool`` that may be demos: of ``task`` (None: any), with a rationale when ``rationale``."""
    return [s for s in pool if (s.rationale or not rationale) and (task is None or s.task == task)]


def _template_vars(seed: Seed, demos: list[dict[str, str]]) -> dict:
    """What every template sees: instruction, input, demos ([{input, output, rationale}]), task."""
    return {"instruction": seed.instruction, "input": seed.input, "demos": demos, "task": seed.task}


def chat_demo_messages(template: Template, seed: Seed, demos: list[dict[str, str]]) -> list[dict[str, str]]:
    """ICL with demos as chat turns: ``template`` (the instruct one) renders each demo's input as a past user
    turn, its output follows as the assistant's turn, then the seed's own question; one system message (the
    template's) first. A 135M chat model scores 54 % with these and 11 % with the same demos as text in one
    user message (bench/distill_context.py's probe; zero-shot 30 %)."""
    turns: list[dict[str, str]] = []
    for d in demos:
        user = render_messages(template, {**_template_vars(seed, []), "input": d["input"]})
        turns += [user[-1], {"role": "assistant", "content": d["output"]}]
    query = render_messages(template, _template_vars(seed, []))
    return [m for m in query if m["role"] == "system"] + turns + [query[-1]]


def cot_demo_turn(demo: dict[str, str]) -> dict[str, str]:
    """A worked example as a chat demo: its input, and as the answer its rationale then "The answer is <output>."
    (the format the cot template asks for, and what :data:`distill.answers` extracts)."""
    return {"input": demo["input"], "output": f"{demo['rationale'].strip()}\nThe answer is {demo['output']}."}


def build_requests(seeds: list[Seed], cfg: GenerateConfig, model_id: str,
                   bootstrapped: list[Seed] = (), targets: set[str] | None = None) -> tuple[list[Planned], dict[str, Template]]:
    """Render every (seed, style) prompt, plus the instruct prompt of each ``bootstrapped`` instruction
    (they have no gold answer, so no ICL/CoT; they are never demos). Returns a :class:`Plan` or :class:`Skipped` per
    (seed, style), in order, and the templates used. ``targets``: only these seed ids get prompts (an
    incremental run); demos are still drawn from every seed. The templates, by role, are
    :func:`distill.data.templates.resolve_templates`' (the ones the stage key hashes): ICL through ``icl``, or through
    ``instruct`` with chat demos; the erased prompts through ``instruct`` (ICL) and ``cot_zero_shot`` (CoT)."""
    templates = resolve_templates(cfg)
    plans: list[Planned] = []
    pools: dict[tuple[str | None, bool], DemoPool] = {}  # one readied pool per (task, rationale), not per target

    def demos_for(seed: Seed, k: int, rationale: bool) -> list[tuple[str, dict[str, str]]]:
        prepared = None
        if not (seed.demos and not rationale):
            key = (seed.task if cfg.demo_same_task and cfg.demo_method != "stratified" else None, rationale)
            if key not in pools:
                pools[key] = DemoPool.of(candidates(seeds, *key), bm25=cfg.demo_method == "bm25")
            prepared = pools[key]
        return select_demos(seed, seeds, k, cfg.demo_seed, cfg.demo_method, cfg.demo_same_task,
                            cfg.demo_budget_tokens, rationale=rationale, prepared=prepared)

    # a seed with its own style (a task's, replay's instruct) is asked in that style only
    work = [(seed, style, seed.origin) for seed in seeds for style in (cfg.styles if seed.style is None else [seed.style])
            if targets is None or seed.id in targets]
    work += [(seed, "instruct", f"bootstrap:{seed.id}") for seed in bootstrapped]
    for seed, style, origin in work:
        demos = []
        s = cfg.sampling_per_style.get(style, cfg.sampling)
        own_cot = style == "cot" and seed.style == "cot" and bool(seed.demos)  # a cot task's worked examples
        if own_cot:
            demos = [(f"{seed.id}/demo-{i}", d) for i, d in enumerate(seed.demos)]
        elif style == "icl":
            demos = demos_for(seed, cfg.num_demos, False)
        elif style == "cot" and cfg.cot_shots:
            demos = demos_for(seed, cfg.cot_shots, True)
        if style == "icl" and not demos or style == "cot" and cfg.cot_shots and not demos:
            plans.append(Skipped(seed, style, "no_demos", origin))
            continue
        if style == "icl" and cfg.demo_format == "chat":
            tmpl = templates["instruct"]
            messages = chat_demo_messages(tmpl, seed, [d for _, d in demos])
        elif own_cot:  # worked examples as chat turns: the question in the cot template, then rationale + answer
            tmpl = templates["cot"]
            messages = chat_demo_messages(tmpl, seed, [cot_demo_turn(d) for _, d in demos])
        else:
            tmpl = templates[style]
            messages = render_messages(tmpl, _template_vars(seed, [d for _, d in demos]))
        req = TeacherRequest(
            messages=messages, model=model_id, style=style,
            template=tmpl.name + ("+chat_demos" if style == "icl" and cfg.demo_format == "chat" or own_cot else ""),
            template_sha=tmpl.sha256,
            temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, n=s.n, seed=s.seed,
            top_logprobs=s.top_logprobs, stop=list(s.stop), repetition_penalty=s.repetition_penalty,
            json_schema=cot_schema(s.max_tokens) if style == "cot" and cfg.structured_cot else None,
        )
        student_prompt = messages
        if style == "icl" and cfg.erase_demos:
            student_prompt = render_messages(templates["instruct"], _template_vars(seed, []))
        if style == "cot" and cfg.erase_demos and demos:
            student_prompt = render_messages(templates["cot_zero_shot"], _template_vars(seed, []))
        plans.append(Plan(seed, style, req, [i for i, _ in demos], student_prompt, origin))
    return plans, templates
