"""The generate stage's rows: a teacher response parsed into dataset rows, self-consistency voting, row figures.

Owns the row schema (:class:`Row` with its :class:`Quality` and :class:`RowTeacher` parts: typed dicts, since rows
become the HF dataset's rows; :func:`_blank_row` is a row that never got an answer; :func:`_rows_for` makes one row per
sample: the student's messages, the parsed rationale/answer, quality fields, the teacher's token ids and
log-probs), the self-consistency vote over a prompt's samples (:func:`_vote`, :func:`distill.answers.majority_vote`)
and the figures ``stats.json`` reports about rows (:func:`_token_counts`, :func:`_sc_stats`). Every row that
fails something keeps a ``removed_reason``; nothing is dropped here.

May import: :mod:`distill.answers`, the data config, seeds and plans, and the teacher's response type; it sends
nothing and never imports :mod:`distill.data.dataset` (which calls it).
"""

from __future__ import annotations

import json
from typing import TypedDict

from distill.answers import answer_key, answers_match, extract_answer, majority_vote
from distill.data.config import GenerateConfig
from distill.data.plan import Plan
from distill.data.seeds import Seed
from distill.teacher.query import TeacherResponse


class RowTeacher(TypedDict):
    """A row's ``teacher``: who answered and with what prompt; all "" in a row that never got an answer."""

    model: str  # the model that answered (the response's name for it, else the request's)
    engine: str  # the engine that served it, as the backend reports it
    params: str  # the request's sampling parameters, as JSON (temperature, top_p, max_tokens, n, seed, ...)
    template: str  # the prompt template's name, ``+chat_demos`` when the demos were chat turns
    template_sha: str  # the template's sha256


class Quality(TypedDict):
    """A row's ``quality``: how its answer was read and checked."""

    gold_match: bool | None  # the answer matches the seed's gold one; None without gold or answer
    finish_reason: str | None  # the teacher's (stop, length, ...); None when it never answered
    extraction: str  # how the answer was found: json, first_line, an extract_answer method, or none
    choice: int  # the sample's index among the response's n
    vote_share: float | None  # self-consistency: the voted answer's share of the prompt's samples; else None
    voted_answer: str | None  # self-consistency: the answer the samples voted for; else None
    completion_tokens: int | None  # the answer's length in teacher tokens, where the backend returned its ids
    judge_score: int | None  # the LLM judge's 1-5 score (generate.filters.judge); else None
    judge_reason: str | None  # the judge's reason, or why it gave no verdict; else None


class Row(TypedDict):
    """One dataset row: one sample of one prompt (DESIGN.md's dataset row), or a removed row that has none."""

    seed_id: str
    task: str | None
    style: str  # the prompt's style (icl, cot, instruct), or synth for a screened-out synthesized input
    prompt_messages: list[dict[str, str]]  # what the teacher was sent
    gold: str | None  # the seed's gold answer
    demo_ids: list[str]  # the demos in ``prompt_messages``
    origin: str  # the seed's origin (:attr:`distill.data.plan.Plan.origin`)
    split: str  # train, validation or removed
    teacher: RowTeacher
    id: str  # ``<seed_id>:<style>:<choice>``
    messages: list[dict[str, str]]  # what the student learns: its prompt, then the teacher's answer
    raw_output: str  # the sample's text as the teacher wrote it
    rationale: str  # CoT: the reasoning before the answer; else ""
    answer: str | None  # the extracted final answer (CoT) or the first line
    quality: Quality
    teacher_logprobs: str | None  # the sample's top log-probs per token, as JSON, where the backend returned them
    teacher_token_ids: list[int] | None  # the sample's token ids, where the backend returned them
    removed_reason: str | None  # why the row is in the removed split; None for a kept row


def _blank_row(seed_id: str, style: str, reason: str, origin: str, split: str = "removed",
               instruction: str = "", task: str | None = None) -> Row:
    """A removed row that never got (or never needed) a teacher answer, in the dataset's schema."""
    return {"seed_id": seed_id, "task": task, "style": style, "prompt_messages": [{"role": "user", "content": instruction}] if instruction else [],
            "gold": None, "demo_ids": [], "origin": origin, "split": split,
            "teacher": {"model": "", "engine": "", "params": "", "template": "", "template_sha": ""},
            "id": f"{seed_id}:{style}:0", "messages": [], "raw_output": "", "rationale": "", "answer": None,
            "quality": {"gold_match": None, "finish_reason": None, "extraction": "none", "choice": 0,
                        "vote_share": None, "voted_answer": None, "completion_tokens": None,
                        "judge_score": None, "judge_reason": None},
            "teacher_logprobs": None, "teacher_token_ids": None, "removed_reason": reason}


def _rows_for(plan: Plan, resp: TeacherResponse, cfg: GenerateConfig, split: str) -> list[Row]:
    """The rows of one plan (:func:`distill.data.plan.build_requests`) and its teacher response, one per sample.

    CoT samples are split into rationale and answer (the JSON object under ``structured_cot``, else
    :func:`~distill.answers.extract_answer`), other styles answer with their first line. A teacher error, an
    empty, truncated (``drop_truncated``) or schema-invalid sample, or one off the gold answer
    (``require_gold_match``) gets its ``removed_reason``; then, for a self-consistency style, the samples vote.
    """
    seed, style, req = plan.seed, plan.style, plan.request
    teacher: RowTeacher = {"model": resp.model or req.model, "engine": resp.engine,
               "params": json.dumps({k: getattr(req, k) for k in ("temperature", "top_p", "max_tokens", "n", "seed", "top_logprobs",
                                                                     "stop", "repetition_penalty")}),
               "template": req.template, "template_sha": req.template_sha}
    base = {"seed_id": seed.id, "task": seed.task, "style": style, "prompt_messages": req.messages, "gold": seed.answer,
            "demo_ids": plan.demo_ids, "origin": plan.origin, "teacher": teacher, "split": split}
    if resp.error is not None:
        row = _blank_row(seed.id, style, f"teacher_error: {resp.error[:200]}", base["origin"], split)
        return [row | base | {"removed_reason": row["removed_reason"]}]
    rows: list[Row] = []
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
            "messages": plan.student_prompt + [{"role": "assistant", "content": target}],
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


def _vote(rows: list[Row], seed: Seed, keep: str) -> None:
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

def _token_counts(kept: list[Row]) -> dict:
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


def _sc_figures(by_q: dict[tuple[str, str], list[Row]]) -> dict:
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


def _sc_stats(rows: list[Row]) -> dict:
    """Self-consistency figures over every voting prompt (a seed in one style: ICL labels and CoT answers of the
    same seed are two votes), overall and ``per_style``."""
    by_q: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        if r["quality"]["vote_share"] is not None:
            by_q.setdefault((r["seed_id"], r["style"]), []).append(r)
    styles = sorted({style for _, style in by_q})
    return _sc_figures(by_q) | {"styles": styles, "per_style": {
        st: _sc_figures({q: rs for q, rs in by_q.items() if q[1] == st}) for st in styles}}
