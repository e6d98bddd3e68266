"""The generate stage: seeds -> prompts (ICL / CoT / IF) -> teacher -> parsed, filtered HF dataset.

Seeds come from a seed file (``generate.seeds``) or a task file (``generate.tasks``: an instruction and a
few labelled examples per task, :mod:`distill.data.tasks`; the teacher may first write new inputs,
:mod:`distill.data.synth`); a task file's inputs are always train seeds and its held-out items validation ones.

For each seed and each style, a shipped (or user) Jinja template renders the chat ``messages``:

- **ICL** gets ``num_demos`` demonstrations (:func:`distill.data.demos.select_demos`: random, stratified
  by task or BM25 nearest neighbours; seeded; never the seed itself; as many as fit
  ``demo_budget_tokens``) — the seed's own ``demos`` when it has them. ``erase_demos`` trains the
  student on the prompt without them (context distillation).
- **CoT** asks for reasoning and a marked final answer, zero-shot or with ``cot_shots`` worked
  examples (seeds with a ``rationale``, e.g. GSM8K's solutions). The output is split into
  ``rationale`` and ``answer`` (:class:`~distill.answers.ExtractionConfig`).
- **Self-consistency** (``self_consistency.enabled``, ``sampling.n >= 2``, temperature > 0): the samples of
  each prompt of ``self_consistency.styles`` (default cot) vote (:func:`~distill.answers.majority_vote`) on
  their answer — CoT's extracted one, ICL's (few-shot labels) and instruct's normalised first line; the
  vote share is recorded in every row and only samples reaching the voted — or, where the seed has one,
  the gold — answer are kept.
- **IF** sends the instruction alone. ``bootstrap`` first grows the instruction pool Self-Instruct
  style (:mod:`distill.data.selfinstruct`); the new instructions are answered like seed ones.

Then the configured filters run (:mod:`distill.data.filters`: length, format, blocklist, contamination
against eval sets). Rows that fail anything (teacher error, truncation, empty output, a minority or
wrong answer, a filter, a near-duplicate bootstrapped instruction) are kept in a ``removed`` split
with the reason, never dropped. Train/validation are split by seed id, so no seed is in both. The
saved folder holds the ``DatasetDict``, ``stats.json`` and a dataset card (``README.md``) with the
provenance: teacher, sampling, templates and their hashes, demo method, filter counts, token counts,
self-consistency and contamination figures, and a few samples.

Run: ``eakd generate flows/configs/demo.yaml`` (or the ``pipeline`` flow).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections import Counter
from pathlib import Path

from distill.answers import (
    ExtractionConfig,  # noqa: F401  (re-exported: callers import it from here)
    answer_key,
    answers_match,
    extract_answer,
    majority_vote,
)
from distill.config import ConfigError
from distill.credentials import get_secret
from distill.data.card import label_accuracy, render_card, row_provenance
from distill.data.config import (  # the config and its parts: callers import them from here too
    DATASET_FORMAT,
    ContaminationConfig,  # noqa: F401
    FiltersConfig,
    GenerateConfig,
    HubConfig,  # noqa: F401
    JudgeConfig,  # noqa: F401
    LengthBounds,  # noqa: F401
    SamplingConfig,  # noqa: F401
    SelfConsistencyConfig,  # noqa: F401
    Style,  # noqa: F401
)
from distill.data.demos import BM25Index
from distill.data.demos import select_demos as rank_demos
from distill.data.filters import (
    BlocklistFilter,
    FormatFilter,
    LengthFilter,
    NgramIndex,
    apply_filters,
    ngram_contamination,
)
from distill.data.replay import replay_seeds, verify_rows
from distill.data.seeds import Seed, load_seeds
from distill.data.selfinstruct import bootstrap_instructions
from distill.data.synth import synthesize_inputs
from distill.data.tasks import TaskFile, load_tasks, task_seeds
from distill.data.templates import resolve_templates
from distill.io import publish_dir
from distill.teacher.budget import Budget
from distill.teacher.context import check_context
from distill.teacher.query import TeacherConfig, TeacherRequest, TeacherResponse, TeacherStats, query_teacher
from distill.teacher.structured import cot_schema
from prompts import Template, TemplateError, load_template, render_messages

log = logging.getLogger(__name__)


def _unit_hash(*parts: object) -> float:
    """A stable number in [0, 1) from ``parts`` (Python's hash() is salted per process)."""
    h = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def validation_ids(seeds: list[Seed], fraction: float) -> set[str]:
    """The ids of the validation seeds: a seed's forced ``split`` (a task file's input: train, its held-out
    item: validation), else a stable hash of its id below ``fraction``; no seed is in both splits."""
    return {s.id for s in seeds if s.split == "validation" or s.split is None and _unit_hash("split", s.id) < fraction}


def _seed_tokens(seed: Seed) -> int:
    return len(f"{seed.input or seed.instruction}\n{seed.rationale}\n{seed.answer or ''}") // 4 + 8


def select_demos(seed: Seed, pool: list[Seed], k: int, rng_seed: int, method: str = "random", same_task: bool = True,
                 budget_tokens: int | None = None, rationale: bool = False,
                 index: BM25Index | None = None) -> list[tuple[str, dict[str, str]]]:
    """k demonstrations for ``seed``: its own ``demos`` if it has them, else other gold-labelled seeds.

    ``method`` / ``budget_tokens``: see :func:`distill.data.demos.select_demos` (seeded per seed id, so the
    choice does not depend on seed order; the seed itself, or a seed with the same text, is never a
    demo). ``same_task`` limits random/bm25 to the seed's task. ``rationale``: demos must carry one
    (few-shot CoT). Returns ``[(demo_id, {"input", "output", "rationale"}), …]``.
    """
    if seed.demos and not rationale:
        return [(f"{seed.id}/demo-{i}", d) for i, d in enumerate(seed.demos[:k])]
    cands = [s for s in pool if (s.rationale or not rationale)
             and (s.task == seed.task or not same_task or method == "stratified")]
    if index is not None and [s.id for s in cands] != index.ids:
        index = None
    sel = rank_demos(seed, cands, k, method=method, seed=rng_seed, budget_tokens=budget_tokens,
                     count_tokens=_seed_tokens, index=index)
    by_id = {s.id: s for s in cands}
    return [(i, d | {"rationale": by_id[i].rationale}) for i, d in zip(sel.ids, sel.demos)]


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
                   bootstrapped: list[Seed] = (), targets: set[str] | None = None) -> tuple[list[dict], dict[str, Template]]:
    """Render every (seed, style) prompt, plus the instruct prompt of each ``bootstrapped`` instruction
    (they have no gold answer, so no ICL/CoT; they are never demos). Returns plans (request +
    bookkeeping, ``origin``) and the templates used. ``targets``: only these seed ids get prompts (an
    incremental run); demos are still drawn from every seed. The templates, by role, are
    :func:`distill.data.templates.resolve_templates`' (the ones the stage key hashes): ICL through ``icl``, or through
    ``instruct`` with chat demos; the erased prompts through ``instruct`` (ICL) and ``cot_zero_shot`` (CoT)."""
    templates = resolve_templates(cfg)
    plans = []
    indexes: dict[tuple[str | None, bool], BM25Index] = {}  # one BM25 index per candidate pool, not per target

    def demos_for(seed: Seed, k: int, rationale: bool) -> list[tuple[str, dict[str, str]]]:
        index = None
        if cfg.demo_method == "bm25" and not (seed.demos and not rationale):
            key = (seed.task if cfg.demo_same_task else None, rationale)
            if key not in indexes:
                pool = [x for x in seeds if (x.rationale or not rationale) and (key[0] is None or x.task == key[0])]
                indexes[key] = BM25Index.from_seeds(pool)
            index = indexes[key]
        return select_demos(seed, seeds, k, cfg.demo_seed, cfg.demo_method, cfg.demo_same_task,
                            cfg.demo_budget_tokens, rationale=rationale, index=index)

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
            plans.append({"seed": seed, "style": style, "skip": "no_demos", "origin": origin})
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
        plans.append({"seed": seed, "style": style, "request": req, "demo_ids": [i for i, _ in demos],
                      "student_prompt": student_prompt, "origin": origin})
    return plans, templates


def check_task_styles(tasks: TaskFile, cfg: GenerateConfig) -> TaskFile:
    """Every task's style must be generated (else its inputs would silently get no prompt), and a cot task's
    worked examples are chat turns (``demo_format: chat``). Returns ``tasks``."""
    for t in tasks.tasks:
        if t.style not in cfg.styles:
            raise ConfigError(f"{tasks.where(t.name)}: task {t.name!r} has style {t.style} but generate.styles is "
                              f"{cfg.styles}; add {t.style} to generate.styles")
        if t.style == "cot" and cfg.demo_format != "chat":
            raise ConfigError(f"{tasks.where(t.name)}: task {t.name!r} is a cot task: its worked examples are shown as "
                              "chat turns; set generate.demo_format: chat")
    return tasks


def load_generate_seeds(cfg: GenerateConfig) -> list[Seed]:
    """The seeds of ``cfg`` without asking the teacher: the seed file's, or the task file's inputs and
    held-out items with their demos (ConfigError when a task asks for synthesized inputs: only the
    teacher can say what they are)."""
    if cfg.tasks is not None:
        seeds = task_seeds(check_task_styles(load_tasks(cfg.tasks), cfg), None, cfg.num_demos, cfg.demo_seed)
    else:
        seeds = load_seeds(cfg.seeds, cfg.limit, cfg.seed_format)
    return seeds + (replay_seeds(cfg.replay) if cfg.replay is not None else [])


def plan_requests(cfg: GenerateConfig, teacher_cfg: TeacherConfig,
                  incremental_from: str | Path | None = None) -> list[TeacherRequest]:
    """The teacher requests :func:`generate_dataset` will send for ``cfg``, in its order, without sending
    them: a flow can answer them in shards first (into the response cache), and the generate stage then
    finds every answer cached. Self-Instruct bootstrapping decides its requests round by round, so it
    cannot be planned ahead (ConfigError)."""
    if cfg.bootstrap is not None:
        raise ConfigError("generate.bootstrap: bootstrapping plans its requests round by round and cannot be "
                          "sharded; set run.shards=1")
    seeds = load_generate_seeds(cfg)
    targets = None
    if incremental_from is not None:
        from distill.data.versions import known_seed_ids

        targets = {s.id for s in seeds} - known_seed_ids(incremental_from)
    try:
        plans, _ = build_requests(seeds, cfg, teacher_cfg.model_id(), (), targets)
    except TemplateError as exc:
        raise ConfigError(f"generate.templates: {exc}") from None
    return [p["request"] for p in plans if "request" in p]


def _blank_row(seed_id: str, style: str, reason: str, origin: str, split: str = "removed",
               instruction: str = "", task: str | None = None) -> dict:
    """A removed row that never got (or never needed) a teacher answer, in the dataset's schema."""
    return {"seed_id": seed_id, "task": task, "style": style, "prompt_messages": [{"role": "user", "content": instruction}] if instruction else [],
            "gold": None, "demo_ids": [], "origin": origin, "split": split,
            "teacher": {"model": "", "engine": "", "params": "", "template": "", "template_sha": ""},
            "id": f"{seed_id}:{style}:0", "messages": [], "raw_output": "", "rationale": "", "answer": None,
            "quality": {"gold_match": None, "finish_reason": None, "extraction": "none", "choice": 0,
                        "vote_share": None, "voted_answer": None, "completion_tokens": None,
                        "judge_score": None, "judge_reason": None},
            "teacher_logprobs": None, "teacher_token_ids": None, "removed_reason": reason}


def _rows_for(plan: dict, resp: TeacherResponse, cfg: GenerateConfig, split: str) -> list[dict]:
    seed, style, req = plan["seed"], plan["style"], plan["request"]
    teacher = {"model": resp.model or req.model, "engine": resp.engine,
               "params": json.dumps({k: getattr(req, k) for k in ("temperature", "top_p", "max_tokens", "n", "seed", "top_logprobs",
                                                                     "stop", "repetition_penalty")}),
               "template": req.template, "template_sha": req.template_sha}
    base = {"seed_id": seed.id, "task": seed.task, "style": style, "prompt_messages": req.messages, "gold": seed.answer,
            "demo_ids": plan["demo_ids"], "origin": plan.get("origin", "seed"), "teacher": teacher, "split": split}
    if resp.error is not None:
        row = _blank_row(seed.id, style, f"teacher_error: {resp.error[:200]}", base["origin"], split)
        return [row | base | {"removed_reason": row["removed_reason"]}]
    rows = []
    for i, choice in enumerate(resp.choices):
        text = choice.text.strip()
        target = text  # what the student learns
        if style == "cot" and req.json_schema is not None and choice.schema_error is None:
            obj = json.loads(text)
            rationale, answer, method = obj["rationale"].strip(), obj["answer"].strip() or None, "json"
            target = f"{rationale}\nThe answer is {answer}." if rationale else f"The answer is {answer}."
        elif style == "cot":
            ex = extract_answer(text, cfg.extraction)
            rationale, answer, method = ex.rationale, ex.answer, ex.method
        else:
            first = text.splitlines()[0].strip() if text else ""
            rationale, answer, method = "", first or None, "first_line"
        gold_match = answers_match(answer, seed.answer)
        reason = None
        if not text:
            reason = "empty"
        elif choice.finish_reason == "length" and cfg.drop_truncated:
            reason = "truncated"
        elif choice.schema_error is not None:  # kept in the removed split with why, never dropped
            reason = f"schema_invalid: {choice.schema_error}"
        elif cfg.require_gold_match and gold_match is False:
            reason = "gold_mismatch"
        ntok = len(choice.token_ids) if choice.token_ids is not None else None
        rows.append(base | {
            "id": f"{seed.id}:{style}:{i}",
            "messages": plan["student_prompt"] + [{"role": "assistant", "content": target}],
            "raw_output": choice.text, "rationale": rationale, "answer": answer,
            "quality": {"gold_match": gold_match, "finish_reason": choice.finish_reason, "extraction": method, "choice": i,
                        "vote_share": None, "voted_answer": None, "completion_tokens": ntok,
                        "judge_score": None, "judge_reason": None},
            "teacher_logprobs": json.dumps(choice.logprobs) if choice.logprobs else None,
            "teacher_token_ids": choice.token_ids,
            "removed_reason": reason,
        })
    if cfg.self_consistency.enabled and style in cfg.self_consistency.styles and rows:
        _vote(rows, seed, cfg.self_consistency.keep)  # cot: the extracted answers vote; icl/instruct: the first lines
    return rows


def _vote(rows: list[dict], seed: Seed, keep: str) -> None:
    """Self-consistency over one prompt's samples, any style: record the vote, remove samples off the kept answer.

    Each sample's ``answer`` votes (CoT: the extracted final answer; ICL / instruct: the first line), compared
    normalised (:func:`~distill.answers.majority_vote`). Truncated and empty samples do not vote (their answer
    is unreliable) but count in the share's denominator. ``keep="gold"`` keeps the samples matching the gold
    answer where the seed has one (lenient rule), else those reaching the voted answer.
    """
    voters = [r["answer"] if r["removed_reason"] is None else None for r in rows]
    vote = majority_vote(voters)
    use_gold = keep == "gold" and seed.answer
    for r, agrees in zip(rows, vote.agrees):
        r["quality"]["vote_share"] = round(vote.share, 4)
        r["quality"]["voted_answer"] = vote.answer
        if r["removed_reason"] is not None:
            continue
        if use_gold:
            if r["quality"]["gold_match"] is False:
                r["removed_reason"] = f"gold_mismatch: answer {r['answer']!r}, gold {seed.answer!r} (voted {vote.answer!r})"
        elif not agrees:
            r["removed_reason"] = f"sc_minority: answer {r['answer']!r}, voted {vote.answer!r} ({vote.votes}/{vote.samples})"


def _read_eval_texts(paths: list[str]) -> list[str]:
    """Eval items for the contamination check: JSONL rows (question | instruction+input | text) or text lines."""
    texts: list[str] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if not p.is_file():
            raise ConfigError(f"generate.filters.contamination.eval_paths: {p} not found (give JSONL or text files)")
        for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            if p.suffix == ".jsonl":
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"{p}:{lineno}: not valid JSON ({exc.msg}); fix the line or pass a text file") from None
                parts = [row.get(k) for k in ("question", "instruction", "input", "text")] if isinstance(row, dict) else [row]
                texts.append(" ".join(str(x) for x in parts if x))
            else:
                texts.append(line)
    return texts


def _row_filters(cfg: FiltersConfig) -> list:
    out: list = []
    if cfg.length is not None:
        out.append(LengthFilter(**cfg.length.model_dump()))
    if cfg.format:
        out.append(FormatFilter())
    if cfg.blocklist:
        out.append(BlocklistFilter(tuple(cfg.blocklist)))
    return out


def _token_counts(kept: list[dict]) -> dict:
    """Teacher tokens in the kept rows, per style: exact ids where the backend returned them, else ~chars/4."""
    out: dict[str, dict[str, int]] = {}
    for r in kept:
        n = r["quality"]["completion_tokens"]
        exact = n is not None
        if n is None:
            n = len(r["messages"][-1]["content"]) // 4 if r["messages"] else 0
        d = out.setdefault(r["style"], {"rows": 0, "completion_tokens": 0, "estimated_rows": 0})
        d["rows"] += 1
        d["completion_tokens"] += n
        d["estimated_rows"] += not exact
    return out


def _sc_figures(by_q: dict[tuple[str, str], list[dict]]) -> dict:
    """Single-sample vs voted vs kept correctness over voting prompts (``by_q``: a prompt's samples)."""
    gold_q = {q: rs for q, rs in by_q.items() if rs[0]["gold"]}
    first = [rs[0]["quality"]["gold_match"] is True for rs in gold_q.values()]
    samples = [r["quality"]["gold_match"] is True for rs in gold_q.values() for r in rs]
    voted = [answers_match(rs[0]["quality"]["voted_answer"], rs[0]["gold"]) is True for rs in gold_q.values()]
    kept = [r for rs in gold_q.values() for r in rs if r["removed_reason"] is None]
    share = [rs[0]["quality"]["vote_share"] for rs in by_q.values()]
    # the vote alone as a filter (no gold): samples reaching the voted answer, and how many are right
    agree = [r for rs in gold_q.values() for r in rs if r["answer"] is not None
             and answer_key(r["answer"]) == answer_key(r["quality"]["voted_answer"])]
    return {
        "questions": len(by_q), "questions_with_gold": len(gold_q),
        "mean_vote_share": round(sum(share) / len(share), 4) if share else None,
        "first_sample_accuracy": round(sum(first) / len(first), 4) if first else None,
        "all_samples_accuracy": round(sum(samples) / len(samples), 4) if samples else None,
        "voted_accuracy": round(sum(voted) / len(voted), 4) if voted else None,
        "voted_rows": len(agree),
        "voted_rows_correct_share": round(sum(r["quality"]["gold_match"] is True for r in agree) / len(agree), 4) if agree else None,
        "kept_rows": len(kept),
        "kept_correct_share": round(sum(r["quality"]["gold_match"] is True for r in kept) / len(kept), 4) if kept else None,
        "questions_covered": sum(any(r["removed_reason"] is None for r in rs) for rs in gold_q.values()),
    }


def _sc_stats(rows: list[dict]) -> dict:
    """Self-consistency figures over every voting prompt (a seed in one style: ICL labels and CoT answers of the
    same seed are two votes), overall and ``per_style``."""
    by_q: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if r["quality"]["vote_share"] is not None:
            by_q.setdefault((r["seed_id"], r["style"]), []).append(r)
    styles = sorted({style for _, style in by_q})
    return _sc_figures(by_q) | {"styles": styles, "per_style": {
        st: _sc_figures({q: rs for q, rs in by_q.items() if q[1] == st}) for st in styles}}


def _require_reachable(responses: list[TeacherResponse], teacher_cfg: TeacherConfig) -> None:
    """Stop (TeacherUnavailable, exit 1) when every request failed to reach the endpoint at all: a dataset of
    nothing but connection errors is no result. Partial failures stay marked rows in the removed split."""
    errors = [r.error for r in responses if r.error is not None]
    if not responses or len(errors) < len(responses) or not all(e.startswith(("connection", "timeout")) for e in errors):
        return
    from distill.teacher.openai_backend import _redact
    from distill.teacher.types import TeacherUnavailable

    urls = ", ".join(_redact(u) for u in teacher_cfg.urls()) or teacher_cfg.backend
    raise TeacherUnavailable(
        f"teacher.base_url: could not reach the teacher at {urls}: all {len(responses)} requests failed "
        f"({errors[0].split(':', 1)[0]} errors after {teacher_cfg.max_retries} retries); start the server (e.g. `eakd "
        "teacher serve`) or fix teacher.base_url, then rerun the same command. Nothing was written")


def generate_dataset(cfg: GenerateConfig, teacher_cfg: TeacherConfig, out_dir: str | Path,
                     incremental_from: str | Path | None = None) -> Path:
    """Run the generate stage and save the dataset at ``out_dir``; returns ``out_dir``.

    Refuses to overwrite a finished dataset (delete it or pick another folder); writes into a temp
    folder and renames, so a crash never leaves a half-written dataset behind. ``incremental_from``: a
    previous dataset; only seeds it lacks are sent, and its rows are kept (:mod:`distill.data.versions`).
    """
    from datasets import Dataset, DatasetDict

    from distill.provenance import code_version

    out = Path(out_dir)
    if (out / "stats.json").exists():
        raise ConfigError(f"{out} already holds a dataset; remove it or choose another output folder")
    if cfg.push_to_hub is not None and not get_secret(cfg.push_to_hub.token_env):
        raise ConfigError(f"generate.push_to_hub: the env var {cfg.push_to_hub.token_env} holding a Hub write token is "
                          "not set; set it, or remove push_to_hub to keep the dataset local")
    t0 = time.perf_counter()
    tasks = check_task_styles(load_tasks(cfg.tasks), cfg) if cfg.tasks is not None else None  # inputs become seeds below
    seeds = load_seeds(cfg.seeds, cfg.limit, cfg.seed_format) if tasks is None else []
    previous = targets = None
    if incremental_from is not None:
        from distill.data.versions import load_previous

        if cfg.bootstrap is not None:
            raise ConfigError("generate.bootstrap: an incremental run cannot bootstrap; remove one of the two")
        previous = load_previous(incremental_from)
    row_filters = _row_filters(cfg.filters)  # config errors surface before any teacher call
    if cfg.filters.judge is not None:  # the judge runs last: check its template before paying for anything
        try:
            render_messages(load_template(cfg.filters.judge.template), {"instruction": "", "response": ""})
        except TemplateError as exc:
            raise ConfigError(f"generate.filters.judge.template: {exc}") from None
    contamination, eval_items = None, 0
    if cfg.filters.contamination is not None:
        cc = cfg.filters.contamination
        eval_texts = _read_eval_texts(cc.eval_paths)
        eval_items = len(eval_texts)
        contamination = NgramIndex(eval_texts, n=cc.n, min_n=cc.min_n)
    budget = Budget.from_config(teacher_cfg)  # one cap for the whole run: bootstrap rounds and responses
    extra_rows: list[dict] = []
    synth_stats = None
    if tasks is not None:  # the teacher writes the inputs tasks ask for, then every input becomes a seed
        try:
            synth = synthesize_inputs(tasks, cfg.synthesis, teacher_cfg, budget)
        except TemplateError as exc:
            raise ConfigError(f"generate.synthesis.template: {exc}") from None
        seeds = task_seeds(tasks, synth.inputs, cfg.num_demos, cfg.demo_seed)
        extra_rows += [_blank_row(r["id"], "synth", r["removed_reason"], r["origin"], instruction=r["text"]) for r in synth.removed]
        synth_stats = synth.stats(cfg.synthesis) if synth.per_task else None
    if cfg.replay is not None:  # general instructions beside the tasks: keeps the student reading the instruction
        seeds += replay_seeds(cfg.replay)
    if previous is not None:
        targets = {s.id for s in seeds} - previous.seed_ids
        log.info("incremental: %d of %d seeds are new since %s", len(targets), len(seeds), previous.path)
    boot_stats = None
    bootstrapped: list[Seed] = []
    if cfg.bootstrap is not None:
        try:
            boot = bootstrap_instructions(seeds, cfg.bootstrap, teacher_cfg, cfg.filters.blocklist or None, budget)
        except TemplateError as exc:
            raise ConfigError(f"generate.bootstrap.template: {exc}") from None
        bootstrapped = boot.seeds
        for r in boot.removed:
            extra_rows.append(_blank_row(r.get("id") or r["origin"], "instruct", r["removed_reason"], r["origin"],
                                         instruction=r["instruction"]))
        boot_stats = {"rounds": boot.rounds, "candidates": boot.candidates, "kept": len(boot.seeds),
                      "batches": boot.batches, "batches_parsed": boot.batches_parsed,
                      "removed_by": boot.removed_by, "novelty_agreement": boot.agreement, "teacher": boot.teacher,
                      "template": {"name": boot.template.name, "sha256": boot.template.sha256},
                      "config": cfg.bootstrap.model_dump(mode="json")}
    try:
        plans, templates = build_requests(seeds, cfg, teacher_cfg.model_id(), bootstrapped, targets)
    except TemplateError as exc:
        raise ConfigError(f"generate.templates: {exc}") from None
    check_context(plans, cfg.seeds or cfg.tasks, teacher_cfg)  # a prompt the engine would refuse fails here, before the teacher
    live = [p for p in plans if "request" in p]
    tstats = TeacherStats()
    responses = query_teacher([p["request"] for p in live], teacher_cfg, tstats, budget)
    _require_reachable(responses, teacher_cfg)

    val_ids = validation_ids(seeds, cfg.validation_fraction)
    # a bootstrapped instruction goes with the split of nothing in particular: split it by its own id too
    val_ids |= validation_ids(bootstrapped, cfg.validation_fraction)
    rows: list[dict] = []
    for plan, resp in zip(live, responses):
        rows += _rows_for(plan, resp, cfg, "validation" if plan["seed"].id in val_ids else "train")
    replay_stats = verify_rows(rows, cfg.replay) if cfg.replay is not None else None  # verifiable replay: checked

    # configured filters, then the contamination check, on rows that survived generation
    filter_counts: dict[str, int] = {}
    if row_filters:
        fr = apply_filters([r for r in rows if r["removed_reason"] is None], row_filters)
        by_id = {r["id"]: r for r in fr.removed}
        for r in rows:
            if r["id"] in by_id:
                r["removed_reason"] = f"filter_{by_id[r['id']]['removed_by']}: {by_id[r['id']]['reason']}"
        filter_counts = fr.counts
    contamination_stats = None
    if contamination is not None:
        live_rows = [r for r in rows if r["removed_reason"] is None]
        rep = ngram_contamination(live_rows, contamination)
        contamination_stats = {"n": rep.n, "rows_checked": rep.rows, "contaminated": rep.contaminated,
                               "eval_items": eval_items,
                               "eval_items_hit": rep.eval_items_hit, "skipped_short_eval": rep.skipped_short_eval,
                               "action": cfg.filters.contamination.action}
        if cfg.filters.contamination.action == "filter":  # the report already scanned every row: reuse it
            for r, hit in zip(live_rows, rep.per_row):
                if hit.ngrams >= 1:
                    r["removed_reason"] = (f"contamination: {hit.ngrams} {rep.n}-gram(s) overlap eval items "
                                           f"{hit.eval_indices[:5]}, e.g. {hit.example!r}")
    judge_stats = None
    if cfg.filters.judge is not None:  # last: the teacher only judges rows every cheaper check kept
        from distill.data.judge import judge_rows

        try:
            judge_stats = judge_rows([r for r in rows if r["removed_reason"] is None], cfg.filters.judge, teacher_cfg, budget)
        except TemplateError as exc:
            raise ConfigError(f"generate.filters.judge.template: {exc}") from None
    rows += extra_rows
    versions = None
    if previous is not None:
        from distill.data.versions import merge_rows, next_version

        for r in rows:
            if r["removed_reason"] is not None:
                r["split"] = "removed"
        versions = next_version(previous, len(targets), len(rows), tstats.sent)
        rows = merge_rows(previous.rows, rows)
    kept = [r for r in rows if r["removed_reason"] is None]
    removed = [r for r in rows if r["removed_reason"] is not None]
    with_gold: dict[str, list[bool]] = {}
    for r in rows:
        if r["quality"]["gold_match"] is not None:
            with_gold.setdefault(r["style"], []).append(bool(r["quality"]["gold_match"]))
    stats = {
        "format": DATASET_FORMAT, "eakd_version": code_version(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seeds": len(seeds), "seeds_train": len(seeds) - len(val_ids & {s.id for s in seeds}),
        "seeds_validation": len(val_ids & {s.id for s in seeds}),
        "requests": len(live), "skipped": dict(Counter(p["skip"] for p in plans if "skip" in p)),
        "rows": {"generated": len(rows), "train": sum(r["split"] == "train" for r in kept),
                 "validation": sum(r["split"] == "validation" for r in kept), "removed": len(removed)},
        "kept_per_style": dict(Counter(r["style"] for r in kept)),
        "removed_by_reason": dict(Counter(r["removed_reason"].split(":")[0] for r in removed)),
        "filters": filter_counts,
        "gold_match_rate": {s: round(sum(v) / len(v), 4) for s, v in sorted(with_gold.items())},
        "label_accuracy": label_accuracy(rows, {s.id: s.task for s in seeds}),
        "provenance": row_provenance(rows),  # templates, demo source and format, erased prompts: as the rows record them
        "demos": {"method": cfg.demo_method, "num_demos": cfg.num_demos, "cot_shots": cfg.cot_shots,
                  "same_task": cfg.demo_same_task, "budget_tokens": cfg.demo_budget_tokens, "seed": cfg.demo_seed},
        "tokens": _token_counts(kept),
        "self_consistency": _sc_stats(rows) if cfg.self_consistency.enabled else None,
        "contamination": contamination_stats,
        "judge": judge_stats,
        "bootstrap": boot_stats, "replay": replay_stats,
        "synthesis": synth_stats,
        "teacher": tstats.to_dict(), "templates": {s: {"name": t.name, "sha256": t.sha256} for s, t in templates.items()},
        "config": cfg.model_dump(mode="json"), "teacher_config": teacher_cfg.model_dump(mode="json"),
        "seconds": round(time.perf_counter() - t0, 2),
        "version": versions[-1]["version"] if versions else 1, "versions": versions,
    }
    if not kept:
        log.warning("every generated row was removed (%s); the dataset's train split is empty", stats["removed_by_reason"])

    # One table, then a filter per split: every split (an empty one too) shares one schema, and an
    # empty split built on its own would have none and fail to load back.
    for r in removed:
        r["split"] = "removed"
    full = Dataset.from_list(rows) if rows else Dataset.from_dict({"id": [], "split": []})
    dd = DatasetDict({name: full.filter(lambda v, name=name: v == name, input_columns="split").remove_columns("split")
                      for name in ("train", "validation", "removed")})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    dd.save_to_disk(str(tmp))
    (tmp / "stats.json").write_text(json.dumps(stats, indent=2))
    samples = [next(r for r in kept if r["style"] == st) for st in dict.fromkeys(r["style"] for r in kept)]
    (tmp / "README.md").write_text(render_card(cfg, teacher_cfg, templates, stats, samples))
    publish_dir(tmp, out)  # the older dataset is removed only once this one is in place
    if cfg.push_to_hub is not None:  # after the local save: a failed upload loses nothing
        hub = cfg.push_to_hub
        token = get_secret(hub.token_env)
        try:
            dd.push_to_hub(hub.repo_id, token=token, private=hub.private)
        except Exception as exc:  # network, auth: the local dataset is complete either way
            why = str(exc).replace(token, "***")[:300]
            raise RuntimeError(f"generate.push_to_hub: upload to {hub.repo_id} failed ({type(exc).__name__}: {why}); "
                               f"the dataset is saved at {out}") from None
    log.info("dataset: %d train / %d validation / %d removed rows -> %s", stats["rows"]["train"],
             stats["rows"]["validation"], stats["rows"]["removed"], out)
    return out
