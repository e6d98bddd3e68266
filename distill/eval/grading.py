"""Task accuracy's grading: answers parsed as the dataset builder parsed the teacher's, checked against the gold.

Owns how a completion's answer is read (:func:`answer_of`: CoT with the dataset's extraction patterns — a
structured-CoT dataset taught "The answer is X." — ICL and instruct: the first line), the per-style counts
(:func:`score_answers`, with :func:`distill.answers.answers_match` and agreement with the teacher's answer),
which validation rows are asked (:func:`select_task_rows`) and which patterns a dataset was built with
(:func:`dataset_extraction`). Pure functions, no model.

May import: :mod:`distill.answers` only. Re-exported by :mod:`distill.evaluate`, which it never imports.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from distill.answers import ExtractionConfig, answer_key, answers_match, extract_answer

# A structured-CoT dataset teaches the student "<rationale>\nThe answer is <answer>." (distill.data.dataset)
STRUCTURED_COT_EXTRACTION = ExtractionConfig(patterns=["the_answer_is"])


def answer_of(text: str, style: str, extraction: ExtractionConfig, structured_cot: bool = False) -> str | None:
    """The answer in a completion, parsed as :func:`distill.data.dataset._rows_for` parses the teacher's: CoT with
    the dataset's extraction patterns (a structured-CoT dataset taught "The answer is X."), ICL and
    instruct: the first line."""
    text = text.strip()
    if style == "cot":
        return extract_answer(text, STRUCTURED_COT_EXTRACTION if structured_cot else extraction).answer
    first = text.splitlines()[0].strip() if text else ""
    return first or None


def _accuracy_block(records: list[dict]) -> dict[str, Any]:
    n = len(records)
    correct = sum(r["correct"] for r in records)
    judged = [r["agrees_with_teacher"] for r in records if r["agrees_with_teacher"] is not None]
    teacher = [r["teacher_correct"] for r in records if r["teacher_correct"] is not None]

    def share(xs: list[bool]) -> float | None:
        return round(sum(xs) / len(xs), 4) if xs else None

    return {"rows": n, "correct": correct, "accuracy": share([r["correct"] for r in records]),
            "no_answer": sum(r["answer"] is None for r in records),
            "teacher_agreement": share(judged),  # same normalised answer as the teacher's, where it had one
            "teacher_accuracy": share(teacher)}  # the teacher's own answers on the same prompts


def score_answers(outputs: list[str], rows: list[dict], extraction: ExtractionConfig,
                  structured_cot: bool = False) -> dict[str, Any]:
    """Grade one generated ``output`` per dataset ``row`` (``style``, ``gold``, the teacher's ``answer``).

    Returns ``{"rows", "correct", "accuracy", "no_answer", "teacher_agreement", "teacher_accuracy",
    "per_style": {style: the same counts}, "per_row": [one record per row]}``.
    """
    if len(outputs) != len(rows):
        raise ValueError(f"{len(outputs)} outputs for {len(rows)} rows")
    records = []
    for text, row in zip(outputs, rows):
        style = row.get("style") or "instruct"
        pred, gold, teacher = answer_of(text, style, extraction, structured_cot), row.get("gold"), row.get("answer")
        records.append({"id": row.get("id"), "style": style, "gold": gold, "teacher_answer": teacher, "output": text,
                        "answer": pred, "correct": answers_match(pred, gold) is True,
                        "teacher_correct": answers_match(teacher, gold),
                        "agrees_with_teacher": None if answer_key(teacher) is None else answer_key(pred) == answer_key(teacher)})
    styles = dict.fromkeys(r["style"] for r in records)
    return _accuracy_block(records) | {
        "per_style": {s: _accuracy_block([r for r in records if r["style"] == s]) for s in styles}, "per_row": records}


def select_task_rows(rows: list[dict], max_examples: int) -> list[dict]:
    """Up to ``max_examples`` rows with a gold answer, one per distinct (style, prompt) — self-consistency keeps
    several answers to one prompt — taken round-robin across styles in dataset order, so a small cap covers
    every style."""
    by_style: dict[str, list[dict]] = {}
    seen: set[str] = set()
    for r in rows:
        msgs, style = r.get("messages") or [], r.get("style") or "instruct"
        if r.get("gold") is None or not str(r["gold"]).strip() or len(msgs) < 2 or msgs[-1]["role"] != "assistant":
            continue
        prompt = json.dumps([style, msgs[:-1]], sort_keys=True)
        if prompt not in seen:
            seen.add(prompt)
            by_style.setdefault(style, []).append(r)
    queues, picked = [list(q) for q in by_style.values()], []
    while len(picked) < max_examples and any(queues):
        for q in queues:
            if q and len(picked) < max_examples:
                picked.append(q.pop(0))
    return picked


def dataset_extraction(dataset_dir: Path) -> tuple[ExtractionConfig, bool, str]:
    """(extraction patterns, structured CoT?, where they came from): the generate config in the dataset's
    ``stats.json``, else the defaults."""
    stats = dataset_dir / "stats.json"
    config = json.loads(stats.read_text()).get("config", {}) if stats.is_file() else {}
    if "extraction" not in config:
        return ExtractionConfig(), False, "defaults (the dataset records no generate config)"
    return ExtractionConfig.model_validate(config["extraction"]), bool(config.get("structured_cot")), "the dataset's stats.json"
