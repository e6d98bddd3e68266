"""Run the EA probes: build the held-out prompts, get answers from a model or the teacher, grade, score.

Two ways to answer, the same prompts and grading for both (:mod:`distill.probes.suite`):

- a local model folder (the student, its base): greedy answers from transformers
  (:func:`distill.generation.generate_greedy`), first-line prompts stop at their first line;
- the teacher through :func:`distill.teacher.query.query_teacher` (any backend: vLLM in-process or an
  OpenAI-compatible URL), greedy, first-line prompts with ``stop=["\\n"]``; answers come from the response
  cache on a rerun.

Held-out items are checked against the training data: :func:`build_prompts` skips any family item whose input
appears in a training row's prompt (``exclude``), so a probe never scores a memorised answer.

Run: ``eakd evaluate CONFIG --model DIR --dataset DIR --out DIR`` with an ``evaluate.probes`` block.
"""

from __future__ import annotations

import logging
from typing import Any

from distill.probes.config import ProbesConfig
from distill.probes.families import FAMILIES, Item, make_items
from distill.probes.suite import ProbePrompt, cot_prompts, icl_prompts, if_prompts

log = logging.getLogger(__name__)


def _user_tasks(path: str) -> list[tuple[list[Item], list[Item]]]:
    """(demo pool, held-out items) per task of a ``generate.tasks`` file that has held-out items."""
    from distill.data.tasks import load_tasks

    out = []
    for t in load_tasks(path).tasks:
        if not t.held_out:
            continue
        mk = lambda xs, kind: [Item(id=f"{t.name}-{kind}-{i:03d}", task=t.name, instruction=t.instruction,  # noqa: E731
                                    input=x.input, answer=x.output) for i, x in enumerate(xs)]
        out.append((mk(t.examples, "demo"), mk(t.held_out, "held")))
    return out


def build_prompts(cfg: ProbesConfig, exclude: set[str] = frozenset()) -> list[ProbePrompt]:
    """Every probe prompt of ``cfg``; family items whose input is in ``exclude`` (lower-cased) are never used."""
    prompts: list[ProbePrompt] = []
    for name in cfg.icl_tasks:
        fam = FAMILIES[name]
        items = make_items(fam, cfg.pool_per_task + cfg.per_task, cfg.seed, exclude, prefix="probe-")
        prompts += icl_prompts(items[cfg.pool_per_task:], items[: cfg.pool_per_task], cfg.shots, cfg.seed)
    if cfg.task_file:
        for pool, held in _user_tasks(cfg.task_file):
            prompts += icl_prompts(held, pool, cfg.shots, cfg.seed)
    for name in cfg.controls:
        prompts += icl_prompts(make_items(FAMILIES[name], cfg.per_task, cfg.seed, exclude, prefix="probe-"), [], 0,
                               cfg.seed, ability="control")
    for name in cfg.cot_tasks:
        items = make_items(FAMILIES[name], cfg.pool_per_task + cfg.per_task, cfg.seed, exclude, prefix="probe-")
        prompts += cot_prompts(items[cfg.pool_per_task:], items[: cfg.pool_per_task], cfg.shots, cfg.seed)
    if cfg.if_items or cfg.if_file:
        from distill.probes.ifsuite import load_if_items, make_if_items

        items = make_if_items(cfg.if_items, cfg.seed) if cfg.if_items else []
        prompts += if_prompts(items + (load_if_items(cfg.if_file) if cfg.if_file else []))
    return prompts


def token_budget(p: ProbePrompt, cfg: ProbesConfig) -> int:
    """New tokens for ``p``: CoT answers (0- or k-shot) need room for their steps, IF responses for their text."""
    return (cfg.cot_max_new_tokens if p.mode in ("cot", "cot_k_shot") else cfg.if_max_new_tokens if p.mode == "if"
            else cfg.max_new_tokens)


def answer_with_teacher(prompts: list[ProbePrompt], cfg: ProbesConfig, teacher_cfg: Any) -> list[str]:
    """The teacher's greedy answers (error responses read as empty answers, so they grade as wrong)."""
    from distill.teacher.query import TeacherRequest, query_teacher

    reqs = [TeacherRequest(messages=p.messages, model=teacher_cfg.model_id(), style=p.ability,
                           template=f"probe:{p.mode}", template_sha="", temperature=0.0, max_tokens=token_budget(p, cfg),
                           seed=0, stop=["\n"] if p.first_line else []) for p in prompts]
    responses = query_teacher(reqs, teacher_cfg)
    return [r.choices[0].text if r.error is None and r.choices else "" for r in responses]


def answer_with_model(model: Any, tokenizer: Any, prompts: list[ProbePrompt], cfg: ProbesConfig, batch_size: int = 8,
                      autocast_dtype: Any = None) -> list[str]:
    """A loaded model's greedy answers, grouped by token budget (one generation pass per budget)."""
    from distill.generation import generate_greedy

    texts = [""] * len(prompts)
    for budget in sorted({token_budget(p, cfg) for p in prompts}):
        idx = [i for i, p in enumerate(prompts) if token_budget(p, cfg) == budget]
        out, _ = generate_greedy(model, tokenizer, [prompts[i].messages for i in idx], budget, batch_size,
                                 autocast_dtype, [prompts[i].first_line for i in idx])
        for i, t in zip(idx, out):
            texts[i] = t
    return texts


def dataset_inputs(dd: Any) -> set[str]:
    """:func:`training_inputs` of a ``DatasetDict``'s train split: what the student trained on (``messages``) and
    the teacher's prompts with their demos (``prompt_messages``)."""
    train = dd["train"] if "train" in dd else None
    seen: set[str] = set()
    for col in ("messages", "prompt_messages"):
        if train is not None and col in train.column_names:
            seen |= training_inputs([{"messages": m} for m in train[col]])
    return seen


def training_inputs(rows: list[dict]) -> set[str]:
    """Lower-cased user-turn texts of the training rows, plus each line of them: a probe item equal to any of
    these (an input the student saw, or a demo it was shown) is skipped."""
    seen: set[str] = set()
    for r in rows:
        for m in r.get("messages") or []:
            if m.get("role") == "user":
                text = m["content"].strip().lower()
                seen.add(text)
                seen.update(ln.strip() for ln in text.splitlines() if ln.strip())
    return seen


def probe_model(model: Any, tokenizer: Any, prompts: list[ProbePrompt], cfg: ProbesConfig, batch_size: int = 8,
                autocast_dtype: Any = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(per-ability scores, graded records) of a loaded model on ``prompts``."""
    from distill.probes.score import grade, score_model

    records = grade(prompts, answer_with_model(model, tokenizer, prompts, cfg, batch_size, autocast_dtype))
    return score_model(records), records


def probe_teacher(prompts: list[ProbePrompt], cfg: ProbesConfig, teacher_cfg: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(per-ability scores, graded records) of the teacher on ``prompts``."""
    from distill.probes.score import grade, score_model

    records = grade(prompts, answer_with_teacher(prompts, cfg, teacher_cfg))
    return score_model(records), records
