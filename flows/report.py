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
from flows.report_html import write_html_report
from flows.report_tables import (  # evaluation_rows, ability_rows, probe_task_rows: also imported from here
    _mb,
    _num,
    _params,
    _ppl,
    ability_head,
    ability_rows,
    evaluation_rows,
    probe_task_rows,
    task_head,
)


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


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
    """``report.md``: the title, then one section per part of ``report`` a run has (abilities first, when probed)."""
    lines = ["# eakd run report", "", f"Run `{report['run_dir']}` · eakd {report['eakd_version']}", ""]
    if (e := report.get("evaluate")) and e.get("abilities"):
        lines += _abilities_section(e)
    lines += _stages_section(report.get("stages", {}))
    if g := report.get("generate"):
        lines += _generate_section(g)
    if s := report.get("train"):
        lines += _train_section(s)
    if e := report.get("evaluate"):
        lines += _evaluate_section(e)
    if c := report.get("compress"):
        lines += _compress_section(c)
    return "\n".join(lines) + "\n"


def _abilities_section(e: dict) -> list[str]:
    """The headline: the held-out probes' ability table (base, student, teacher, gap closed) and its per-task rows."""
    return ["## Abilities", "", "Held-out probes (distill/probes/): items never trained on nor shown as demos; gap "
            "closed = (student − base) / (teacher − base). Strict grading (normalised exact first line or 'The "
            "answer is'); controls are tasks not trained on, graded lenient.", "",
            "| " + " | ".join(ability_head(e)) + " |", "|" + "---|" * len(ability_head(e)),
            *["| " + " | ".join(r) + " |" for r in ability_rows(e)], "",
            "| " + " | ".join(task_head(e)) + " |", "|" + "---|" * len(task_head(e)),
            *["| " + " | ".join(r) + " |" for r in probe_task_rows(e)], ""]


def _stages_section(stages: dict) -> list[str]:
    """Each stage the flow ran: its status (completed, cached, failed) and wall time."""
    lines = ["## Stages", "", "| stage | status | seconds |", "|---|---|---|"]
    for name, t in stages.items():
        lines.append(f"| {name} | {t['status']} | {t['seconds']} |")
    return lines


def _generate_section(g: dict) -> list[str]:
    """The dataset: seeds, rows kept and removed, gold-match rates, and what the teacher was paid (tokens, cost, limits)."""
    t = g["teacher"]
    lines = ["", "## Generate", "",
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
    return lines


def _train_section(s: dict) -> list[str]:
    """The student: size, steps and throughput, train and validation loss, teacher agreement before -> after."""
    lines = ["", "## Train", "", f"- mode: {s['mode']}",
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
    return lines


def _evaluate_section(e: dict) -> list[str]:
    """Base (and pruned start) -> student on perplexity, loss, agreement and task accuracy; what could not be measured
    and why; the lm-evaluation-harness table when it ran."""
    head = ["metric", *(["base"] if e.get("base") else []), *(["start (pruned base)"] if e.get("start") else []), "student"]
    student_acc = e["student"].get("accuracy") or {}
    lines = ["", "## Evaluate", "",
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
    if e.get("lm_eval"):  # evaluate.lm_eval: lm-evaluation-harness on local tasks (distill/lmeval/)
        from distill.lmeval.run import agreement_lines, markdown_table

        lines += ["", "lm-evaluation-harness (value ± stderr):", "", *markdown_table(e["lm_eval"]),
                  *agreement_lines(e["lm_eval"])]
    return lines


def _compress_section(c: dict) -> list[str]:
    """How the steps ran (chain or side by side) and how they were measured, then one row per step after the
    baseline: size, perplexity before -> after, task accuracy, abilities kept, latency, gate and time."""
    from compress.eval import abilities, decode_latency, task_acc

    ev = c.get("eval", {})
    mode = "a chain: each step starts from the previous one" if c.get("chain", True) else \
        "side by side: each step starts from the source model"
    lines = ["", "## Compress", "", f"Steps run as {mode}.",
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
    return lines


def write_report(run_dir: Path, timings: dict | None = None) -> Path:
    """Write ``report.json``, ``report.md`` and ``report.html`` into ``run_dir``; returns the markdown path."""
    report = build_report(run_dir, timings)
    (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    md = run_dir / "report.md"
    md.write_text(render_markdown(report))
    write_html_report(run_dir, report)
    return md
