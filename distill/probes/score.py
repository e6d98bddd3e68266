"""Turn graded probe answers into per-ability scores and the headline transfer table.

Pure functions over lists of records (no model, no torch), so every number in a report can be recomputed
from ``probes.jsonl``:

- :func:`score_model` — one model's answers -> ``{"icl": {zero_shot, k_shot, per_task}, "cot": {direct, cot,
  gain, per_task}, "if": {prompt_strict, prompt_loose, ...}, "control": {zero_shot, per_task}}``;
- :func:`gap_closed` — (student - base) / (reference - base), None when the reference does not beat the base;
- :func:`ability_table` — teacher / base / student scores into one row per ability, with the gap closed and
  negative transfer flagged (a control task, or an ability, where the student falls below its base by more
  than ``tolerance``).
"""

from __future__ import annotations

from typing import Any

from distill.probes.suite import ProbePrompt, answer_in, grade_answer


def _share(xs: list[bool]) -> float | None:
    return round(sum(xs) / len(xs), 4) if xs else None


def grade(prompts: list[ProbePrompt], texts: list[str]) -> list[dict[str, Any]]:
    """One record per prompt: ids, the model's text, its answer, strict and lenient correctness (IF: the checks)."""
    if len(prompts) != len(texts):
        raise ValueError(f"{len(texts)} answers for {len(prompts)} probe prompts")
    records = []
    for p, text in zip(prompts, texts):
        rec: dict[str, Any] = {"id": p.id, "ability": p.ability, "task": p.task, "mode": p.mode, "output": text}
        if p.ability == "if":
            from distill.probes.ifeval import score_if

            one = score_if([p.if_item], [text])
            rec |= {"strict": one["prompt_strict"] == 1.0, "lenient": one["prompt_loose"] == 1.0,
                    "instructions": [c.kind for c in p.if_item.constraints],
                    "instruction_strict": one["instruction_strict"], "instruction_loose": one["instruction_loose"]}
        else:
            answer = answer_in(text, p.mode)
            strict, lenient = grade_answer(answer, p.gold or "", p.aliases)
            rec |= {"answer": answer, "gold": p.gold, "strict": strict, "lenient": lenient}
        records.append(rec)
    return records


def _by_task(records: list[dict], mode: str) -> dict[str, dict[str, Any]]:
    tasks = dict.fromkeys(r["task"] for r in records)
    out = {}
    for t in tasks:
        rs = [r for r in records if r["task"] == t and r["mode"] == mode]
        out[t] = {"strict": _share([r["strict"] for r in rs]), "lenient": _share([r["lenient"] for r in rs]), "n": len(rs)}
    return out


def _gain(cot: dict, direct: dict) -> float | None:
    return None if not cot["n"] or not direct["n"] else round(cot["strict"] - direct["strict"], 4)


def _mode(records: list[dict], mode: str) -> dict[str, Any]:
    rs = [r for r in records if r["mode"] == mode]
    return {"strict": _share([r["strict"] for r in rs]), "lenient": _share([r["lenient"] for r in rs]), "n": len(rs),
            "per_task": _by_task(records, mode)}


def score_model(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-ability scores of one model from its graded records (:func:`grade`)."""
    out: dict[str, Any] = {}
    icl = [r for r in records if r["ability"] == "icl"]
    if icl:
        out["icl"] = {"zero_shot": _mode(icl, "zero_shot"), "k_shot": _mode(icl, "k_shot")}
    cot = [r for r in records if r["ability"] == "cot"]
    if cot:
        modes = {m: _mode(cot, m) for m in ("direct", "cot", "direct_k_shot", "cot_k_shot")}
        out["cot"] = modes | {"gain": _gain(modes["cot"], modes["direct"]),
                              "gain_k_shot": _gain(modes["cot_k_shot"], modes["direct_k_shot"])}
    ifr = [r for r in records if r["ability"] == "if"]
    if ifr:
        n_inst = sum(len(r["instructions"]) for r in ifr)
        out["if"] = {"prompt_strict": _share([r["strict"] for r in ifr]), "prompt_loose": _share([r["lenient"] for r in ifr]),
                     "instruction_strict": round(sum(r["instruction_strict"] * len(r["instructions"]) for r in ifr) / n_inst, 4),
                     "instruction_loose": round(sum(r["instruction_loose"] * len(r["instructions"]) for r in ifr) / n_inst, 4),
                     "n": len(ifr)}
    ctl = [r for r in records if r["ability"] == "control"]
    if ctl:
        out["control"] = {"zero_shot": _mode(ctl, "zero_shot")}
    return out


def gap_closed(student: float | None, base: float | None, reference: float | None) -> float | None:
    """(student - base) / (reference - base); None when a number is missing or the reference is not above the base."""
    if student is None or base is None or reference is None or reference - base <= 1e-9:
        return None
    return round((student - base) / (reference - base), 4)


def _get(scores: dict | None, *path: str) -> float | None:
    node: Any = scores
    for p in path:
        if not isinstance(node, dict) or node.get(p) is None:
            return None
        node = node[p]
    return node


# (ability, what is compared, path to the teacher's reference score, path to base/student scores)
HEADLINE = [
    ("ICL", "0-shot accuracy (teacher: k-shot)", ("icl", "k_shot", "strict"), ("icl", "zero_shot", "strict")),
    ("CoT", "0-shot CoT accuracy (teacher: k-shot CoT)", ("cot", "cot_k_shot", "strict"), ("cot", "cot", "strict")),
    ("CoT gain", "CoT minus direct accuracy (teacher: k-shot)", ("cot", "gain_k_shot"), ("cot", "gain")),
    ("IF", "verifiable instructions, prompt-level loose", ("if", "prompt_loose"), ("if", "prompt_loose")),
    ("control", "0-shot accuracy on tasks not trained on (lenient)", ("control", "zero_shot", "lenient"),
     ("control", "zero_shot", "lenient")),
]


def ability_table(teacher: dict | None, base: dict | None, student: dict | None,
                  tolerance: float = 0.05, start: dict | None = None) -> list[dict[str, Any]]:
    """The headline rows: ability, metric, teacher, base, the student's start, student, gap closed, and a flag for
    negative transfer: the student below where training started by more than ``tolerance`` — its ``start`` (the
    base depth-pruned, when the student was pruned: a loss the pruning caused is the pruning's, shown beside it)
    or else its base. On controls that means training hurt what the student knew. Control rows have no gap
    (nothing was meant to move)."""
    ref_model = start if start is not None else base
    rows = []
    for ability, metric, ref_path, path in HEADLINE:
        t, b, s, st = _get(teacher, *ref_path), _get(base, *path), _get(student, *path), _get(start, *path)
        if t is None and b is None and s is None:
            continue
        r = st if start is not None else b
        rows.append({"ability": ability, "metric": metric, "teacher": t, "base": b, "start": st, "student": s,
                     "gap_closed": None if ability == "control" else gap_closed(s, b, t),
                     "negative_transfer": r is not None and s is not None and s < r - tolerance})
    if ref_model and student and "control" in ref_model and "control" in student:
        for task, rt in ref_model["control"]["zero_shot"]["per_task"].items():
            stu = student["control"]["zero_shot"]["per_task"].get(task, {})
            if rt["lenient"] is not None and stu.get("lenient") is not None and stu["lenient"] < rt["lenient"] - tolerance:
                rows.append({"ability": f"control:{task}", "metric": "0-shot accuracy (lenient)", "teacher": None,
                             "base": _get(base, "control", "zero_shot", "per_task", task, "lenient"),
                             "start": _get(start, "control", "zero_shot", "per_task", task, "lenient"),
                             "student": stu["lenient"], "gap_closed": None, "negative_transfer": True})
    return rows


def _pct(x: float | None, signed: bool = False) -> str:
    return "—" if x is None else f"{x * 100:+.1f} pts" if signed else f"{x * 100:.1f} %"


def ability_markdown(rows: list[dict[str, Any]]) -> list[str]:
    """The headline table as Markdown lines: ability · metric · teacher · base · student · gap closed."""
    with_start = any(r.get("start") is not None for r in rows)
    lines = ["| ability | metric | teacher | student's base | " + ("student's start | " if with_start else "")
             + "student | gap closed |", "|---|---|---|---|" + ("---|" if with_start else "") + "---|---|"]
    for r in rows:
        signed = r["ability"] == "CoT gain"
        flag = " ⚠ negative transfer" if r["negative_transfer"] else ""
        lines.append(f"| {r['ability']} | {r['metric']} | {_pct(r['teacher'], signed)} | {_pct(r['base'], signed)} | "
                     + (f"{_pct(r.get('start'), signed)} | " if with_start else "")
                     + f"{_pct(r['student'], signed)}{flag} | {_pct(r['gap_closed'])} |")
    return lines
