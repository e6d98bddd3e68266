"""The report's tables, shared by ``report.md`` (:mod:`flows.report`), ``report.html`` (:mod:`flows.report_html`)
and the flow's evaluate-summary artifact: rows of formatted cells, so every page shows the same numbers the same way.

Pure functions of the dicts in ``report.json``; imports nothing of the project. Run: via ``eakd report runs/<run-id>``.
"""

from __future__ import annotations

from pathlib import Path


def _ppl(m: dict | None) -> str:
    return "—" if not m or m.get("perplexity") is None else f"{m['perplexity']:.3f}"


def _mb(n: int | None) -> str:
    return "—" if n is None else f"{n / 1e6:.1f} MB"


def _params(n: int | None) -> str:
    return "—" if n is None else f"{n / 1e6:.2f} M"


def _num(x, spec: str) -> str:
    return "—" if x is None else format(x, spec)


STYLE_NAMES = {"icl": "few-shot (icl)", "cot": "chain of thought (cot)", "instruct": "zero-shot instruction (instruct)"}


def evaluation_rows(ev: dict) -> list[list[str]]:
    """The evaluation as table rows ``[metric, (base,) student]`` (base only when it was evaluated); shared by
    report.md, report.html and the flow's evaluate-summary artifact."""
    models = [m for m in (ev.get("base"), ev.get("start"), ev.get("student")) if m]

    def acc(m: dict) -> dict:
        return m.get("accuracy") or {}

    def row(label: str, get, spec: str) -> list[str]:
        return [label, *(_num(get(m), spec) for m in models)]

    rows = [["model", *(f"{Path(m['model']).name} ({_params(m.get('parameters'))}, {m.get('layers')} layers)"
                        for m in models)],
            row("perplexity", lambda m: m["perplexity"].get("perplexity"), ".3f"),
            row("validation loss (CE on the teacher's tokens)", lambda m: m["validation"].get("loss"), ".4f"),
            row("top-1 agreement with the teacher", lambda m: m["validation"].get("top1_agreement"), ".1%"),
            row("KL(teacher ‖ model), top-k", lambda m: m["validation"].get("kl_topk"), ".4f"),
            ["task accuracy", *(_num(acc(m).get("accuracy"), ".1%") + (f" ({acc(m)['correct']}/{acc(m)['rows']})"
                                                                         if acc(m).get("rows") else "") for m in models)]]
    styles = dict.fromkeys(s for m in models for s in acc(m).get("per_style", {}))
    for style in styles:
        rows.append([f"accuracy, {STYLE_NAMES.get(style, style)}", *(
            _num(acc(m).get("per_style", {}).get(style, {}).get("accuracy"), ".1%") for m in models)])
    rows.append(row("same answer as the teacher", lambda m: acc(m).get("teacher_agreement"), ".1%"))
    return rows


def _pct(x) -> str:
    return "—" if x is None else f"{x:.1%}"


def ability_rows(ev: dict) -> list[list[str]]:
    """The headline table ``[ability, metric, teacher, base, student, gap closed]`` (negative transfer flagged);
    shared by report.md and report.html."""
    rows = []
    with_start = bool(ev.get("start"))
    for r in ev.get("abilities") or []:
        fmt = (lambda x: "—" if x is None else f"{x * 100:+.1f} pts") if r["ability"] == "CoT gain" else _pct
        rows.append([r["ability"], r["metric"], fmt(r["teacher"]), fmt(r["base"]), *([fmt(r.get("start"))] if with_start else []),
                     fmt(r["student"]) + (" ⚠ negative transfer" if r["negative_transfer"] else ""), _pct(r["gap_closed"])])
    return rows


def ability_head(ev: dict) -> list[str]:
    """The headline table's columns: the student's start (its base, pruned) only when it was measured."""
    return ABILITY_HEAD[:4] + (["student's start (pruned base)"] if ev.get("start") else []) + ABILITY_HEAD[4:]


def probe_task_rows(ev: dict) -> list[list[str]]:
    """Per ICL/control task: teacher k-shot and 0-shot, base 0-shot, student 0-shot (strict; controls lenient)."""
    def get(m: dict | None, ability: str, mode: str, task: str, rule: str) -> float | None:
        return ((((m or {}).get("probes") or {}).get(ability) or {}).get(mode) or {}).get("per_task", {}).get(task, {}).get(rule)

    t, b, st, s = ev.get("teacher"), ev.get("base"), ev.get("start"), ev.get("student")
    rows = []
    for ability, rule in (("icl", "strict"), ("control", "lenient")):
        tasks = dict.fromkeys(k for m in (t, b, s) for k in
                              ((((m or {}).get("probes") or {}).get(ability) or {}).get("zero_shot") or {}).get("per_task", {}))
        for task in tasks:
            rows.append([task + (" (control, lenient)" if ability == "control" else ""),
                         _pct(get(t, ability, "k_shot", task, rule)), _pct(get(t, ability, "zero_shot", task, rule)),
                         _pct(get(b, ability, "zero_shot", task, rule)),
                         *([_pct(get(st, ability, "zero_shot", task, rule))] if st else []),
                         _pct(get(s, ability, "zero_shot", task, rule))])
    return rows


def task_head(ev: dict) -> list[str]:
    return TASK_HEAD[:4] + (["start 0-shot"] if ev.get("start") else []) + TASK_HEAD[4:]


ABILITY_HEAD = ["ability", "metric", "teacher", "student's base", "student", "gap closed"]
TASK_HEAD = ["task", "teacher k-shot", "teacher 0-shot", "base 0-shot", "student 0-shot"]
