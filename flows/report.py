"""The run report: ``report.json`` (everything, machine-readable) and ``report.md`` (for people).

Reads what each stage left in the run directory — ``dataset/stats.json``, ``student/metrics.json``,
``eval/eval.json``, ``compressed/summary.json`` (each optional: a run without a stage, or from before
it existed, just has no section for it) — plus the flow's stage timings; :mod:`flows.report_html` renders the same
report as ``report.html``. Run: ``eakd report runs/<run-id>``.
"""

from __future__ import annotations

import json
from pathlib import Path

from distill.provenance import code_version


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


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


def build_report(run_dir: Path, timings: dict | None = None) -> dict:
    if timings is None:  # a rerun of `eakd report`: the flow's timings, else the stages of the last report
        timings = _load(run_dir / "timings.json") or (_load(run_dir / "report.json") or {}).get("stages", {})
    data = _load(run_dir / "dataset" / "stats.json")
    student = _load(run_dir / "student" / "metrics.json")
    comp = _load(run_dir / "compressed" / "summary.json")
    ev = _load(run_dir / "eval" / "eval.json")
    report: dict = {"run_dir": str(run_dir), "eakd_version": code_version(), "stages": timings}
    if data:
        report["generate"] = {k: data[k] for k in ("seeds", "requests", "rows", "kept_per_style", "removed_by_reason",
                                                    "gold_match_rate", "teacher", "templates", "seconds") if k in data}
    if student:
        report["train"] = {k: v for k, v in student.items() if k != "history"} | {
            "loss_curve": [h["loss"] for h in student.get("history", [])]}
    shards = _load(run_dir / "shards" / "summary.json")
    if data and shards:  # the teacher was paid by the shard tasks; the generate stage read their answers back
        report["generate"]["shards"] = shards
    if ev:
        report["evaluate"] = ev
    if comp:
        report["compress"] = comp
    return report


def render_markdown(report: dict) -> str:
    lines = ["# eakd run report", "", f"Run `{report['run_dir']}` · eakd {report['eakd_version']}", ""]
    if (e := report.get("evaluate")) and e.get("abilities"):
        lines += ["## Abilities", "", "Held-out probes (distill/probes/): items never trained on nor shown as demos; gap "
                  "closed = (student − base) / (teacher − base). Strict grading (normalised exact first line or 'The "
                  "answer is'); controls are tasks not trained on, graded lenient.", "",
                  "| " + " | ".join(ability_head(e)) + " |", "|" + "---|" * len(ability_head(e)),
                  *["| " + " | ".join(r) + " |" for r in ability_rows(e)], "",
                  "| " + " | ".join(task_head(e)) + " |", "|" + "---|" * len(task_head(e)),
                  *["| " + " | ".join(r) + " |" for r in probe_task_rows(e)], ""]
    lines += ["## Stages", "", "| stage | status | seconds |", "|---|---|---|"]
    for name, t in report.get("stages", {}).items():
        lines.append(f"| {name} | {t['status']} | {t['seconds']} |")
    if g := report.get("generate"):
        t = g["teacher"]
        lines += ["", "## Generate", "",
                  f"- seeds: {g['seeds']}, teacher requests: {g['requests']}",
                  f"- rows: {g['rows']['generated']} generated → {g['rows']['train']} train, {g['rows']['validation']} validation, "
                  f"{g['rows']['removed']} removed {json.dumps(g['removed_by_reason'])}",
                  f"- kept per style: {json.dumps(g['kept_per_style'])}",
                  f"- gold-match rate per style: {json.dumps(g['gold_match_rate'])}",
                  f"- teacher, paid this run: {t['prompt_tokens']} prompt + {t['completion_tokens']} completion tokens "
                  f"({t['completion_tokens_per_s']} completion tok/s over {t['wall_s']:.1f} s); from the cache: "
                  f"{t.get('cached_prompt_tokens', 0)} + {t.get('cached_completion_tokens', 0)} "
                  f"({t['cache_hits']}/{t['requests']} requests); retries {t['retries']}, failures {json.dumps(t['failures'])}"]
        if t.get("cost_usd") is not None:
            lines.append(f"- teacher cost this run: ${t['cost_usd']:.4f} (at the configured per-token prices)")
        if t.get("concurrency_lowest") is not None:
            lines.append(f"- concurrency window: lowest {t['concurrency_lowest']}, final {t.get('concurrency_final')} "
                         f"({t.get('pushbacks', 0)} pushbacks); waited {t.get('rate_limited_s', 0):.1f} s on rpm/tpm limits; "
                         f"answered per replica {json.dumps(t.get('replicas', {}))}")
        if sh := g.get("shards"):
            lines.append(f"- answered in {sh['shards']} Prefect shard tasks first: {sh['sent']} requests sent, "
                         f"{sh['cache_hits']} cached, {sh['failed']} failed, {sh['prompt_tokens']} prompt + "
                         f"{sh['completion_tokens']} completion tokens paid (the stage then read them from the cache)")
        if t.get("prefix_groups") is not None:
            lines.append(f"- prefix-aware scheduling: {t['prefix_groups']} prompt-prefix groups")
    if s := report.get("train"):
        lines += ["", "## Train", "", f"- mode: {s['mode']}",
                  f"- student: {s['base']} with {s['layers']} layers, {_params(s['parameters'])} parameters "
                  f"({s['trainable_parameters']} trainable)",
                  f"- {s['steps']} steps, {s['tokens']} tokens, {s['tokens_per_s']} tok/s, autocast {s['autocast']}",
                  f"- train loss: {s['loss_first']} → {s['loss_last']} (first vs last fifth of steps)",
                  f"- validation loss (assistant tokens, same loss as training): {s['val_loss_before']} → {s['val_loss_after']}"]
        a0, a1 = s.get("teacher_agreement_before"), s.get("teacher_agreement_after")
        if a0 and a1:
            lines.append(f"- teacher agreement on validation ({a1['tokens']} teacher tokens): top-1 "
                         f"{a0['top1_agreement']:.1%} → {a1['top1_agreement']:.1%}"
                         + (f"; KL(teacher ‖ student) on top-k {a0['kl_topk']} → {a1['kl_topk']}" if a1["kl_topk"] is not None else ""))
    if e := report.get("evaluate"):
        head = ["metric", *(["base"] if e.get("base") else []), *(["start (pruned base)"] if e.get("start") else []), "student"]
        student_acc = e["student"].get("accuracy") or {}
        lines += ["", "## Evaluate", "",
                  f"Perplexity on {e.get('eval_text_source')} ({e['perplexity_protocol']['protocol']} protocol, "
                  f"{e['perplexity_protocol']['max_windows'] or 'all'} windows × {e['perplexity_protocol']['window']} tokens); "
                  f"loss and agreement on {e['student']['validation']['rows']} validation rows; task accuracy: greedy answers "
                  f"to {e['rows']['task']} validation prompts with a gold answer, parsed as the dataset parsed the teacher's"
                  + (f" (the teacher: {_num(student_acc.get('teacher_accuracy'), '.1%')})" if student_acc.get("rows") else "") + ".",
                  "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in evaluation_rows(e)]
        reasons = {f"{part}: {m[part]['reason']}" for m in (e.get("base"), e["student"]) if m
                   for part in ("perplexity", "validation", "accuracy") if m[part].get("reason")}
        lines += [""] + [f"- no {r}" for r in sorted(reasons)] if reasons else []
    if c := report.get("compress"):
        from compress.eval import abilities, decode_latency, task_acc

        ev = c.get("eval", {})
        mode = "a chain: each step starts from the previous one" if c.get("chain", True) else \
            "side by side: each step starts from the source model"
        lines += ["", "## Compress", "", f"Steps run as {mode}.",
                  f"Perplexity on {c.get('eval_text_source', ev.get('text_path'))}: {ev.get('protocol')} protocol, "
                  f"{ev.get('windows')} windows × {ev.get('window')} tokens, {ev.get('dtype')}.", "",
                  *([f"Task accuracy: greedy answers to {c['tasks']['rows']} held-out questions of {c['tasks']['dataset']}."]
                    if c.get("tasks") else []),
                  *(["Latency: greedy decoding in PyTorch on this machine, as the model sits in memory (quantized "
                     "weights dequantized, zeros stored: only depth/width/low-rank steps can be faster here)."]
                    if c["baseline"].get("latency") else []), "",
                  *(["Abilities: the EA probes on every model (0-shot, strict; controls lenient), with the share of the "
                     "baseline's score each step keeps."] if c["baseline"].get("probes") else []), "",
                  "| step | method | params | nonzero | bytes on disk | perplexity | task accuracy | abilities (kept) | latency "
                  "| gate | seconds |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        b = c["baseline"]
        lines.append(f"| baseline | — | {_params(b['params_total'])} | {_params(b['params_nonzero'])} | "
                     f"{_mb(b['bytes_on_disk'])} | {_ppl(b)} | {task_acc(b)} | {abilities(b)} | {decode_latency(b)} | — | — |")
        for st in c["steps"]:
            a = st["after"]
            lines.append(f"| {st['name']} | {st['method']} {json.dumps(st['params'])} | {_params(a['params_total'])} | "
                         f"{_params(a['params_nonzero'])} | {_mb(a['bytes_on_disk'])} | {_ppl(st['before'])} → {_ppl(a)} | "
                         f"{task_acc(a)} | {abilities(a, b)} | {decode_latency(a)} | {st.get('gate') or '—'} | "
                         f"{st['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def write_report(run_dir: Path, timings: dict | None = None) -> Path:
    """Write ``report.json``, ``report.md`` and ``report.html`` into ``run_dir``; returns the markdown path."""
    from flows.report_html import write_html_report

    report = build_report(run_dir, timings)
    (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    md = run_dir / "report.md"
    md.write_text(render_markdown(report))
    write_html_report(run_dir, report)
    return md
