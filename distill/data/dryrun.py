"""``eakd generate CONFIG --dry-run``: what a generation run would send and cost, without a teacher call.

The seeds are the seed file's (``generate.seeds``) or the task file's inputs and held-out items
(``generate.tasks``); a task that asks for synthesized inputs is an error, since only the teacher can say
what they will be.

Renders every request exactly as the run would (same templates, demos, sampling, cache keys), looks
each key up in the response cache (read-only; a missing cache file is not created), and counts:

- prompt tokens with the teacher's own tokenizer and chat template where one is on disk
  (``teacher.tokenizer``, else the vllm model folder), otherwise ~4 characters per token (said so);
- completion tokens as the worst case ``n * max_tokens`` per uncached request, plus an expected
  figure from the cached answers' mean length when there are some;
- cost from ``teacher.price_*_per_mtok`` (prompt tokens + worst-case completions: an upper bound),
  compared with the run's caps (``max_tokens_total``, ``max_cost_usd``).

A few rendered prompts per style are shown; with ``generate.erase_demos`` each is followed, labelled, by
the prompt the student will train on (the plan's ``student_prompt``: the demos removed) where it differs.

Self-Instruct bootstrapping depends on what the teacher answers, so its rounds are given as upper
bounds (``max_rounds * prompts_per_round`` instruction prompts, ``target`` extra responses) with the
first round rendered and counted exactly.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from distill.config import ConfigError
from distill.data.dataset import GenerateConfig, load_generate_seeds
from distill.data.plan import Plan, build_requests
from distill.models import BUNDLED_ALIAS, bundled_teacher_dir, load_tokenizer
from distill.teacher.cache import ResponseCache, default_cache_path
from distill.teacher.context import check_context
from distill.teacher.query import TeacherConfig, TeacherRequest
from distill.teacher.schedule import chat_token_count
from prompts import Template, TemplateError

log = logging.getLogger(__name__)


@dataclass
class StyleEstimate:
    requests: int = 0
    cached: int = 0
    prompt_tokens: int = 0  # of the uncached requests (cached ones cost nothing)
    completion_tokens_max: int = 0
    examples: list[list[dict[str, str]]] = field(default_factory=list)
    # per example: the prompt the student trains on where it differs from the teacher's (erase_demos), else None
    student_examples: list[list[dict[str, str]] | None] = field(default_factory=list)


@dataclass
class DryRun:
    seeds: int
    requests: int
    cached: int
    token_counter: str  # "tokenizer:<path>" or "estimate: 4 characters per token"
    prompt_tokens: int
    completion_tokens_max: int
    completion_tokens_expected: int | None  # from cached answers' mean length, when any
    cost_usd_max: float | None
    styles: dict[str, StyleEstimate]
    bootstrap: dict | None = None
    judge: dict | None = None
    caps: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _token_counter(teacher_cfg: TeacherConfig):
    """(count(messages) -> int, description): the teacher's tokenizer when one is on disk, else chars/4."""
    candidates = []
    if teacher_cfg.tokenizer:
        candidates.append(Path(teacher_cfg.tokenizer).expanduser())
    elif teacher_cfg.model == BUNDLED_ALIAS:
        candidates.append(bundled_teacher_dir())  # only if already fetched: a dry run downloads nothing
    elif teacher_cfg.backend == "vllm":
        candidates.append(Path(teacher_cfg.model).expanduser())
    for path in candidates:
        if (path / "tokenizer_config.json").is_file() or (path / "tokenizer.json").is_file():
            tok = load_tokenizer(path)
            if tok.chat_template:
                return (lambda m: chat_token_count(tok, m),
                        f"tokenizer:{path}")
            return (lambda m: len(tok("\n".join(x["content"] for x in m))["input_ids"]), f"tokenizer (no chat template):{path}")
    return (lambda m: max(1, len(json.dumps(m, ensure_ascii=False)) // 4), "estimate: 4 characters per token")


def _bootstrap_bounds(cfg: GenerateConfig, tmpl: Template, seeds, count) -> dict:
    from distill.data.selfinstruct import _prompt_vars
    from prompts import render_messages

    b = cfg.bootstrap
    first = [render_messages(tmpl, _prompt_vars(seeds, [], b, 0, j)) for j in range(b.prompts_per_round)]
    per_prompt = sum(count(m) for m in first) / max(1, len(first))
    prompts_max = b.max_rounds * b.prompts_per_round
    s = cfg.sampling
    return {"instruction_prompts_max": prompts_max, "first_round_prompt_tokens": sum(count(m) for m in first),
            "instruction_prompt_tokens_max": round(per_prompt * prompts_max),
            "instruction_completion_tokens_max": prompts_max * b.max_tokens,
            "responses_max": b.target, "response_completion_tokens_max": b.target * s.n * s.max_tokens,
            "example": first[0] if first else None}


def _judge_bounds(cfg: GenerateConfig, tmpl: Template, live: list[tuple[Plan, TeacherRequest]], boot: dict | None,
                  count) -> dict:
    """Upper bounds of the judge's verdicts: one per generated row, each prompt at most the judge
    template + the row's prompt + a full-length response."""
    from prompts import render_messages

    j = cfg.filters.judge
    rows = sum(r.n for _, r in live) + (boot["responses_max"] * cfg.sampling.n if boot else 0)
    per_row = [count(render_messages(tmpl, {"instruction": r.messages[-1]["content"], "response": ""})) + r.max_tokens
               for _, r in live[:50]]
    mean = sum(per_row) / len(per_row) if per_row else cfg.sampling.max_tokens
    return {"verdicts_max": rows, "prompt_tokens_max": round(mean * rows), "completion_tokens_max": rows * j.max_tokens}


def dry_run(cfg: GenerateConfig, teacher_cfg: TeacherConfig, examples_per_style: int = 3) -> DryRun:
    """Render every request of ``cfg`` and estimate tokens and cost; the teacher is not called."""
    seeds = load_generate_seeds(cfg)  # a seed file's, or a task file's inputs and held-out items
    try:
        plans, templates = build_requests(seeds, cfg, teacher_cfg.model_id(), [])  # templates: every role's
    except TemplateError as exc:
        raise ConfigError(f"generate.templates: {exc}") from None
    live: list[tuple[Plan, TeacherRequest]] = [(p, p.request) for p in plans if isinstance(p, Plan)]
    count, counter = _token_counter(teacher_cfg)
    if not counter.startswith("estimate"):  # the run's own context check, with the tokenizer found on disk
        check_context([p for p, _ in live], cfg.seeds or cfg.tasks, teacher_cfg, count)

    cached: dict[str, dict] = {}
    cache_path = Path(teacher_cfg.cache_path) if teacher_cfg.cache_path else default_cache_path()
    if teacher_cfg.cache and cache_path.is_file():
        cache = ResponseCache(cache_path)
        try:
            cached = cache.get_many(list(dict.fromkeys(r.key() for _, r in live)))
        finally:
            cache.close()

    styles: dict[str, StyleEstimate] = {}
    seen: set[str] = set()
    for plan, req in live:
        est = styles.setdefault(plan.style, StyleEstimate())
        est.requests += 1
        if len(est.examples) < examples_per_style:
            est.examples.append(req.messages)
            est.student_examples.append(plan.student_prompt if plan.student_prompt != req.messages else None)
        key = req.key()
        if key in cached:
            est.cached += 1
            continue
        if key in seen:  # the same request twice is sent once
            continue
        seen.add(key)
        est.prompt_tokens += count(req.messages)
        est.completion_tokens_max += req.n * req.max_tokens
    prompt = sum(e.prompt_tokens for e in styles.values())
    completion_max = sum(e.completion_tokens_max for e in styles.values())
    expected = None
    if cached:
        mean = sum(d.get("completion_tokens", 0) for d in cached.values()) / len(cached)
        expected = round(mean * len(seen))

    try:
        boot = _bootstrap_bounds(cfg, templates["bootstrap"], seeds, count) if cfg.bootstrap is not None else None
    except TemplateError as exc:
        raise ConfigError(f"generate.bootstrap.template: {exc}") from None
    try:
        judge = _judge_bounds(cfg, templates["judge"], live, boot, count) if cfg.filters.judge is not None else None
    except TemplateError as exc:
        raise ConfigError(f"generate.filters.judge.template: {exc}") from None
    all_prompt = prompt + (boot["instruction_prompt_tokens_max"] if boot else 0) + (judge["prompt_tokens_max"] if judge else 0)
    all_completion = completion_max + (boot["instruction_completion_tokens_max"] + boot["response_completion_tokens_max"]
                                       if boot else 0) + (judge["completion_tokens_max"] if judge else 0)
    cost = None
    if teacher_cfg.price_prompt_per_mtok is not None or teacher_cfg.price_completion_per_mtok is not None:
        cost = round((all_prompt * (teacher_cfg.price_prompt_per_mtok or 0.0)
                      + all_completion * (teacher_cfg.price_completion_per_mtok or 0.0)) / 1e6, 6)
    warnings = []
    caps = {"max_tokens_total": teacher_cfg.max_tokens_total, "max_cost_usd": teacher_cfg.max_cost_usd}
    if teacher_cfg.max_tokens_total is not None and all_prompt + all_completion > teacher_cfg.max_tokens_total:
        warnings.append(f"the worst case ({all_prompt + all_completion} tokens) is above teacher.max_tokens_total="
                        f"{teacher_cfg.max_tokens_total}: the run may stop at the cap (resumable)")
    if teacher_cfg.max_cost_usd is not None and cost is not None and cost > teacher_cfg.max_cost_usd:
        warnings.append(f"the worst case (${cost:.4f}) is above teacher.max_cost_usd={teacher_cfg.max_cost_usd}: "
                        "the run may stop at the cap (resumable)")
    if counter.startswith("estimate"):
        warnings.append("prompt tokens are estimated (~4 characters per token): set teacher.tokenizer to a local "
                        "tokenizer folder for exact counts")
    return DryRun(seeds=len(seeds), requests=len(live), cached=sum(e.cached for e in styles.values()),
                  token_counter=counter, prompt_tokens=prompt, completion_tokens_max=completion_max,
                  completion_tokens_expected=expected, cost_usd_max=cost, styles=styles, bootstrap=boot, judge=judge, caps=caps,
                  warnings=warnings)


def format_dry_run(d: DryRun) -> str:
    """The human-readable summary ``eakd generate --dry-run`` prints."""
    lines = [f"dry run: {d.requests} requests from {d.seeds} seeds; {d.cached} already answered in the cache, "
             f"{d.requests - d.cached} to send",
             f"prompt tokens to send: {d.prompt_tokens} ({d.token_counter})",
             f"completion tokens: at most {d.completion_tokens_max}"
             + (f", ~{d.completion_tokens_expected} expected from cached answers' length"
                if d.completion_tokens_expected is not None else "")]
    if d.bootstrap:
        b = d.bootstrap
        lines.append(f"self-instruct bootstrap (depends on the teacher, upper bounds): up to {b['instruction_prompts_max']} "
                     f"instruction prompts (~{b['instruction_prompt_tokens_max']} prompt + {b['instruction_completion_tokens_max']} "
                     f"completion tokens), then up to {b['responses_max']} responses ({b['response_completion_tokens_max']} "
                     "completion tokens)")
    if d.judge:
        j = d.judge
        lines.append(f"LLM-as-judge (after generation, upper bounds): up to {j['verdicts_max']} verdicts "
                     f"(~{j['prompt_tokens_max']} prompt + {j['completion_tokens_max']} completion tokens)")
    lines.append("cost: " + (f"at most ${d.cost_usd_max:.4f}" if d.cost_usd_max is not None
                             else "no prices configured (teacher.price_prompt_per_mtok / price_completion_per_mtok)"))
    for style, e in d.styles.items():
        lines.append(f"\n== {style}: {e.requests} requests, {e.cached} cached, {e.prompt_tokens} prompt tokens to send, "
                     f"<= {e.completion_tokens_max} completion tokens")
        for i, messages in enumerate(e.examples, 1):
            student = e.student_examples[i - 1] if i <= len(e.student_examples) else None
            lines.append(f"-- example {i}" + (": teacher prompt (what is sent)" if student else ""))
            lines += [f"[{m['role']}] {m['content']}" for m in messages]
            if student:  # erase_demos: the student learns the teacher's answer to a different prompt
                lines.append(f"-- example {i}: student prompt (what the student trains on; generate.erase_demos "
                             "removed the demos)")
                lines += [f"[{m['role']}] {m['content']}" for m in student]
    for w in d.warnings:
        lines.append(f"\nwarning: {w}")
    return "\n".join(lines)
