"""LLM-as-judge: the teacher scores each surviving row from 1 to 5, as structured JSON.

``generate.filters.judge`` renders ``prompts/judge.jinja`` (or the user's template) with the row's
last user turn as ``instruction`` and the student's target as ``response``, and asks the teacher for
``{"reason": str, "score": 1-5}`` under :data:`distill.teacher.structured.JUDGE_SCHEMA` (structured decoding
in-process, ``response_format`` over HTTP, prompted fallback), so no score is scraped out of prose.
Verdicts go through the same cache and budget as every other request: rerunning costs nothing.
Scores and reasons are stored on every judged row (``quality.judge_score`` / ``judge_reason``); a
verdict that fails its schema or a failed request is recorded as such and never removes a row.
"""

from __future__ import annotations

import json
from collections import Counter

from distill.teacher.budget import Budget
from distill.teacher.query import TeacherConfig, TeacherRequest, TeacherStats, query_teacher
from distill.teacher.structured import JUDGE_SCHEMA
from prompts import load_template, render_messages


def _last_user(messages: list[dict]) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def judge_rows(rows: list[dict], cfg, teacher_cfg: TeacherConfig, budget: Budget | None = None) -> dict:
    """Score ``rows`` (dataset rows with ``messages``) in place; with ``cfg.action == "filter"`` rows
    below ``cfg.min_score`` get ``removed_reason = "judge_low: ..."``. Returns the judge's stats.

    ``cfg`` is a :class:`distill.data.dataset.JudgeConfig`.
    """
    tmpl = load_template(cfg.template)
    reqs = []
    for r in rows:
        prompt = _last_user(r["messages"][:-1])
        response = r["messages"][-1]["content"]
        reqs.append(TeacherRequest(
            messages=render_messages(tmpl, {"instruction": prompt, "response": response}), model=teacher_cfg.model_id(),
            style="judge", template=tmpl.name, template_sha=tmpl.sha256, temperature=0.0, max_tokens=cfg.max_tokens,
            seed=0, json_schema=JUDGE_SCHEMA))
    tstats = TeacherStats()
    responses = query_teacher(reqs, teacher_cfg, tstats, budget) if reqs else []
    scores: Counter[int] = Counter()
    invalid = failed = filtered = 0
    for r, resp in zip(rows, responses):
        q = r["quality"]
        if resp.error is not None or not resp.choices:
            failed += 1
            q["judge_reason"] = f"no verdict: {(resp.error or 'empty answer')[:200]}"
            continue
        choice = resp.choices[0]
        if choice.schema_error is not None:
            invalid += 1
            q["judge_reason"] = f"invalid verdict: {choice.schema_error}"
            continue
        verdict = json.loads(choice.text)
        q["judge_score"], q["judge_reason"] = verdict["score"], verdict["reason"].strip()[:500]
        scores[verdict["score"]] += 1
        if cfg.action == "filter" and verdict["score"] < cfg.min_score:
            filtered += 1
            r["removed_reason"] = f"judge_low: score {verdict['score']} < {cfg.min_score}: {q['judge_reason'][:200]}"
    judged = sum(scores.values())
    return {"rows": len(rows), "judged": judged, "invalid": invalid, "failed": failed, "filtered": filtered,
            "mean_score": round(sum(k * v for k, v in scores.items()) / judged, 3) if judged else None,
            "score_counts": {str(k): scores[k] for k in range(1, 6)}, "min_score": cfg.min_score,
            "action": cfg.action, "template": {"name": tmpl.name, "sha256": tmpl.sha256}, "teacher": tstats.to_dict()}
