"""``report.html``: one self-contained page a person can open for a run (no network, images inline).

Built from ``report.json`` (see :mod:`flows.report`; the tables both pages share are in :mod:`flows.report_tables`) plus the per-step training history in
``student/metrics.json``. Plots are matplotlib figures rendered to SVG with text kept as text, embedded
inline, so the page needs nothing but a browser and the plots' labels are searchable. Sections:

- the pipeline as a diagram of the stages that ran (status colour, wall time);
- generation: rows per style, the filter funnel (generated -> parsed -> gold-matched -> voted ->
  filtered -> novel = kept, from ``removed_by_reason``), paid completion tokens over time and the
  throughput, tokens and cost;
- distillation: loss curves (total, CE and KD terms per step), validation loss and teacher agreement
  before and after;
- evaluation: base model -> student on perplexity, validation loss, teacher agreement, KL and task
  accuracy per style (``eval/eval.json``);
- compression: size vs perplexity, one point per step, the Pareto frontier highlighted, and a table of
  every step with its quality-gate result.

Every string that comes from a run (paths, reasons, config values) is HTML-escaped.
Run: ``eakd report runs/<run-id>`` (``eakd run`` writes it at the end).
"""

from __future__ import annotations

import html
import io
import json
from pathlib import Path

from flows.report_tables import ability_head, ability_rows, evaluation_rows, probe_task_rows, task_head

# reason categories (text before ':' in removed_reason) -> the funnel stage that removes them; anything
# else counts as a filter (the configured length/format/blocklist/contamination/judge filters)
FUNNEL = [("parsed", {"teacher_error", "truncated", "empty", "unparseable", "schema_invalid"}),
          ("gold-matched", {"gold_mismatch"}),
          ("voted", {"sc_minority"}),
          ("filtered", None),
          ("novel", {"novelty", "near_duplicate", "over_target", "duplicate"})]
STATUS_COLOUR = {"completed": "#2e7d32", "cached": "#1565c0", "failed": "#c62828", "skipped": "#9e9e9e"}


def funnel(generated: int, removed_by_reason: dict[str, int]) -> list[tuple[str, int]]:
    """[(stage, rows surviving it)], starting with ("generated", generated); the last stage is what was kept."""
    known = set().union(*(s for _, s in FUNNEL if s))
    out, left = [("generated", generated)], generated
    for stage, reasons in FUNNEL:
        left -= sum(n for r, n in removed_by_reason.items() if (r in reasons if reasons else r not in known))
        out.append((stage, left))
    return out


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both size and perplexity (lower is better), by size."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], float("inf")
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def throughput_bins(timeline: list[list[float]], bins: int = 20) -> tuple[list[float], list[float]]:
    """Completion tokens per second in ``bins`` equal windows of the run: (window centres, tok/s).

    Answers arrive in bursts (a batch finishes at once), so rates between consecutive answers would be
    spikes; equal time windows give the throughput a person means.
    """
    t0, t1 = timeline[0][0], timeline[-1][0]
    width = (t1 - t0) / bins if t1 > t0 else 1.0
    tokens = [0.0] * bins
    prev = 0.0
    for t, cum in timeline:
        tokens[min(bins - 1, int((t - t0) / width))] += cum - prev
        prev = cum
    return [t0 + (i + 0.5) * width for i in range(bins)], [n / width for n in tokens]


def _svg(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _figure(w: float = 6.4, h: float = 3.2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False, "axes.spines.right": False,
                         "svg.hashsalt": "eakd"})  # fixed ids: the same run renders the same bytes
    return plt.subplots(figsize=(w, h))


def plot_funnel(stages: list[tuple[str, int]]) -> str:
    fig, ax = _figure(6.4, 0.35 * len(stages) + 0.8)
    names, counts = [s for s, _ in stages][::-1], [n for _, n in stages][::-1]
    bars = ax.barh(names, counts, color="#5c6bc0")
    ax.bar_label(bars, labels=[str(n) for n in counts], padding=3)
    ax.set_xlabel("rows")
    ax.set_title("filter funnel")
    return _svg(fig)


def plot_tokens(timeline: list[list[float]]) -> str:
    """Cumulative paid completion tokens over time, and the throughput between consecutive points."""
    fig, ax = _figure()
    timeline = [[0.0, 0]] + [p for p in timeline]  # from the first call: an engine's start-up shows as a flat start
    t = [p[0] for p in timeline]
    tok = [p[1] for p in timeline]
    ax.plot(t, tok, color="#1e88e5", marker="." if len(t) < 40 else None, label="completion tokens (cumulative)")
    ax.set_xlabel("seconds since the first teacher call")
    ax.set_ylabel("completion tokens")
    ax.set_title("teacher tokens and throughput over time")
    if len(t) > 2 and t[-1] > t[0]:
        ax2 = ax.twinx()
        centres, rates = throughput_bins(timeline)
        ax2.step(centres, rates, where="mid", color="#fb8c00", alpha=0.8, label="throughput (tok/s)")
        ax2.set_ylabel("tok/s")
        ax2.spines["right"].set_visible(True)
        lines = ax.get_lines() + ax2.get_lines()
        ax.legend(lines, [ln.get_label() for ln in lines], loc="upper left", frameon=False)
    return _svg(fig)


def plot_losses(history: list[dict]) -> str:
    fig, ax = _figure()
    steps = [h["step"] for h in history]
    ax.plot(steps, [h["loss"] for h in history], label="loss (trained on)", color="#263238")
    if any(h.get("ce") is not None for h in history):
        ax.plot(steps, [h.get("ce") for h in history], label="CE term", color="#1e88e5", alpha=0.8)
    if any(h.get("kd") is not None for h in history):
        ax.plot(steps, [h.get("kd") for h in history], label="KD term", color="#e53935", alpha=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title("training loss")
    ax.legend(frameon=False)
    return _svg(fig)


def plot_size_quality(points: list[dict]) -> str:
    """``points``: [{"name", "mb", "ppl"}] with the baseline first."""
    fig, ax = _figure()
    xy = [(p["mb"], p["ppl"]) for p in points]
    front = pareto_front(xy)
    ax.scatter([x for x, _ in xy], [y for _, y in xy], color="#90a4ae", zorder=2, label="step")
    fx, fy = [xy[i][0] for i in front], [xy[i][1] for i in front]
    ax.plot(fx, fy, color="#e53935", marker="o", zorder=3, label="Pareto frontier")
    for p in points:
        ax.annotate(p["name"], (p["mb"], p["ppl"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if max(y for _, y in xy) / max(1e-9, min(y for _, y in xy)) > 20:
        ax.set_yscale("log")
    ax.set_xlabel("bytes on disk (MB)")
    ax.set_ylabel("perplexity (lower is better)")
    ax.set_title("size vs quality")
    ax.legend(frameon=False)
    return _svg(fig)


def plot_abilities(rows: list[dict]) -> str:
    """Grouped bars: teacher / base / student per ability (the headline table's numbers, in %)."""
    rows = [r for r in rows if r["ability"] in ("ICL", "CoT", "IF", "control")]
    fig, ax = _figure(6.4, 2.8)
    who = [("teacher", "#607d8b", "teacher"), ("base", "#ffb300", "student's base")]
    who += [("start", "#e57373", "student's start")] if any(r.get("start") is not None for r in rows) else []
    who += [("student", "#43a047", "student")]
    width = 0.8 / len(who)
    for j, (key, colour, label) in enumerate(who):
        xs = [i + (j - (len(who) - 1) / 2) * width for i in range(len(rows))]
        ax.bar(xs, [100 * (r.get(key) or 0) for r in rows], width, color=colour, label=label)
    ax.set_xticks(range(len(rows)), [r["ability"] for r in rows])
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, 100)
    ax.set_title("abilities on held-out probes")
    ax.legend(frameon=False, ncol=4, fontsize=8)
    return _svg(fig)


def _abilities_section(ev: dict) -> str:
    return ('<section id="abilities"><h2>Abilities</h2><p>Held-out probes: items never trained on nor shown as demos; '
            "gap closed = (student − base) / (teacher − base).</p>"
            f'<figure id="abilities-plot">{plot_abilities(ev["abilities"])}</figure>'
            + _table(ability_head(ev), ability_rows(ev), "abilities-table")
            + _table(task_head(ev), probe_task_rows(ev), "abilities-tasks") + "</section>")


def _pipeline_svg(stages: dict) -> str:
    """Boxes for generate -> train -> evaluate -> compress -> report, coloured by status, with their wall time."""
    names = ["generate", "train", "evaluate", "compress", "report"]
    w, h, gap = 140, 56, 36
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{len(names) * (w + gap)}" height="{h + 8}" '
             'role="img" aria-label="pipeline stages">']
    for i, name in enumerate(names):
        t = stages.get(name) or ({"status": "completed", "seconds": None} if name == "report" else None)
        status = t["status"] if t else "skipped"
        x = i * (w + gap) + 4
        secs = "" if not t or t.get("seconds") is None else f"{t['seconds']:.1f} s"
        parts.append(f'<g class="stage" data-stage="{name}" data-status="{status}">'
                     f'<rect x="{x}" y="4" width="{w}" height="{h}" rx="8" fill="{STATUS_COLOUR.get(status, "#9e9e9e")}"/>'
                     f'<text x="{x + w / 2}" y="27" text-anchor="middle" fill="#fff" font-weight="600">{name}</text>'
                     f'<text x="{x + w / 2}" y="46" text-anchor="middle" fill="#fff" font-size="12">{status} {secs}</text></g>')
        if i + 1 < len(names):
            ax = x + w
            parts.append(f'<path d="M{ax + 4} {4 + h / 2} h{gap - 12}" stroke="#555" stroke-width="2" '
                         f'marker-end="url(#arrow)"/>')
    parts.insert(1, '<defs><marker id="arrow" markerWidth="8" markerHeight="8" refX="6" refY="3" orient="auto">'
                    '<path d="M0,0 L6,3 L0,6 z" fill="#555"/></marker></defs>')
    parts.append("</svg>")
    return "".join(parts)


def _table(head: list[str], rows: list[list], table_id: str) -> str:
    e = html.escape
    out = [f'<table id="{table_id}"><thead><tr>' + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    out += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in rows]
    return "".join(out) + "</tbody></table>"


def _fmt(x, spec: str = ".3f") -> str:
    return "—" if x is None else format(x, spec)


def _generate_section(g: dict) -> str:
    e = html.escape
    t = g.get("teacher", {})
    rows = g.get("rows", {})
    parts = ['<section id="generate"><h2>Generation</h2>']
    styles = sorted(set(g.get("kept_per_style", {})) | set(g.get("gold_match_rate", {})))
    parts.append(_table(["style", "rows kept", "gold-match rate"],
                        [[s, g.get("kept_per_style", {}).get(s, 0), _fmt(g.get("gold_match_rate", {}).get(s), ".1%")]
                         for s in styles], "rows-per-style"))
    if rows.get("generated") is not None:
        stages = funnel(rows["generated"], g.get("removed_by_reason", {}))
        parts.append(f'<figure id="funnel">{plot_funnel(stages)}<figcaption>removed by reason: '
                     f'{e(json.dumps(g.get("removed_by_reason", {})))}</figcaption></figure>')
    facts = [("teacher requests", g.get("requests")), ("answered from the cache", t.get("cache_hits")),
             ("prompt tokens paid", t.get("prompt_tokens")), ("completion tokens paid", t.get("completion_tokens")),
             ("completion tok/s", t.get("completion_tokens_per_s")), ("teacher wall time (s)", _fmt(t.get("wall_s"), ".1f")),
             ("retries", t.get("retries")), ("failures", json.dumps(t.get("failures", {}))),
             ("cost (USD)", "not priced" if t.get("cost_usd") is None else f"{t['cost_usd']:.4f}")]
    if sh := g.get("shards"):
        facts += [("answered first by shard tasks", f"{sh['shards']} shards: {sh['sent']} sent, {sh['cache_hits']} cached, "
                                                    f"{sh['failed']} failed, {sh['prompt_tokens']} + {sh['completion_tokens']} tokens paid")]
    parts.append(_table(["", "value"], [[k, "—" if v is None else v] for k, v in facts], "teacher-facts"))
    if len(t.get("timeline") or []) >= 1:
        tl = t["timeline"]
        distinct = len({p[0] for p in tl})
        caption = (f"{len(tl)} answers written to the cache between {tl[0][0]:.1f} s and {tl[-1][0]:.1f} s after the first "
                   f"teacher call" + (" — the in-process engine returns a whole batch at once, so the curve is a step"
                                      if distinct <= 2 else ""))
        parts.append(f'<figure id="tokens-over-time">{plot_tokens(tl)}<figcaption>{html.escape(caption)}</figcaption></figure>')
    else:
        parts.append('<p id="tokens-over-time" class="note">No teacher tokens were paid in this run '
                     '(every answer came from the cache), so there is no throughput curve.</p>')
    return "".join(parts) + "</section>"


def _train_section(s: dict, history: list[dict]) -> str:
    parts = ['<section id="train"><h2>Distillation</h2>',
             f'<p>{html.escape(str(s.get("mode")))} · student {html.escape(str(s.get("base")))} with {s.get("layers")} layers, '
             f'{s.get("steps")} steps, {s.get("tokens")} tokens, {s.get("tokens_per_s")} tok/s on {html.escape(str(s.get("device")))}</p>']
    if history:
        parts.append(f'<figure id="loss-curves">{plot_losses(history)}</figure>')
    a0, a1 = s.get("teacher_agreement_before") or {}, s.get("teacher_agreement_after") or {}
    parts.append(_table(["metric (validation)", "before", "after"], [
        ["loss (same loss as training)", _fmt(s.get("val_loss_before"), ".4f"), _fmt(s.get("val_loss_after"), ".4f")],
        ["top-1 agreement with the teacher", _fmt(a0.get("top1_agreement"), ".1%"), _fmt(a1.get("top1_agreement"), ".1%")],
        ["KL(teacher ‖ student), top-k", _fmt(a0.get("kl_topk"), ".4f"), _fmt(a1.get("kl_topk"), ".4f")],
    ], "train-metrics"))
    return "".join(parts) + "</section>"


def _evaluate_section(ev: dict) -> str:
    e = html.escape
    p = ev.get("perplexity_protocol", {})
    intro = (f'<p>Perplexity on {e(str(ev.get("eval_text_source")))} ({e(str(p.get("protocol")))} protocol, '
             f'{p.get("max_windows") or "all"} windows × {p.get("window")} tokens); loss and agreement on the validation '
             f'split; task accuracy: greedy answers to {ev.get("rows", {}).get("task")} validation prompts with a gold '
             "answer, parsed as the dataset parsed the teacher's.</p>")
    parts = ['<section id="evaluate"><h2>Evaluation</h2>', intro]
    head = ["metric", *(["base"] if ev.get("base") else []), *(["start (pruned base)"] if ev.get("start") else []), "student"]
    parts.append(_table(head, evaluation_rows(ev), "eval-metrics"))
    reasons = sorted({f"{part}: {m[part]['reason']}" for m in (ev.get("base"), ev.get("student")) if m
                      for part in ("perplexity", "validation", "accuracy") if m[part].get("reason")})
    parts += [f'<p class="note">no {e(r)}</p>' for r in reasons]
    if ev.get("lm_eval"):  # evaluate.lm_eval: the scores, then eakd's grades of the same questions beside them
        from distill.lmeval.run import AGREEMENT_NOTE, agreement_rows, score_rows

        parts += ["<h3>lm-evaluation-harness</h3>", _table(*score_rows(ev["lm_eval"]), "lm-eval")]
        head, rows = agreement_rows(ev["lm_eval"])
        parts += [f"<p>{e(AGREEMENT_NOTE)}</p>", _table(head, rows, "lm-eval-agreement")] if rows else []
    return "".join(parts) + "</section>"


def _compress_section(c: dict) -> str:
    from compress.eval import abilities, decode_latency, task_acc

    b = c["baseline"]
    mb = lambda m: None if m.get("bytes_on_disk") is None else m["bytes_on_disk"] / 1e6  # noqa: E731
    points = [{"name": "baseline", "mb": mb(b), "ppl": b.get("perplexity")}] + [
        {"name": st["name"], "mb": mb(st["after"]), "ppl": st["after"].get("perplexity")} for st in c["steps"]]
    points = [p for p in points if p["mb"] is not None and p["ppl"] is not None]
    parts = ['<section id="compress"><h2>Compression</h2>']
    ev = c.get("eval", {})
    parts.append(f'<p>Perplexity on {html.escape(str(c.get("eval_text_source") or ev.get("text_path")))}: '
                 f'{html.escape(str(ev.get("protocol")))} protocol, {ev.get("windows")} windows × {ev.get("window")} tokens. '
                 + ("Each step starts from the previous one." if c.get("chain", True) else "Each step starts from the source model.")
                 + "</p>")
    if len(points) >= 2:
        parts.append(f'<figure id="size-quality">{plot_size_quality(points)}</figure>')
    rows = [["baseline", "—", "", _fmt(b.get("params_total", 0) / 1e6, ".2f"), _fmt(b.get("params_nonzero", 0) / 1e6, ".2f"),
             _fmt(mb(b), ".1f"), _fmt(b.get("perplexity")), task_acc(b), abilities(b), decode_latency(b), "—", "—"]]
    for st in c["steps"]:
        a = st["after"]
        rows.append([st["name"], st["method"], json.dumps(st.get("params", {})), _fmt(a.get("params_total", 0) / 1e6, ".2f"),
                     _fmt(a.get("params_nonzero", 0) / 1e6, ".2f"), _fmt(mb(a), ".1f"),
                     f'{_fmt(st["before"].get("perplexity"))} → {_fmt(a.get("perplexity"))}', task_acc(a), abilities(a, b),
                     decode_latency(a),
                     st.get("gate") or "no gate", _fmt(st.get("seconds"), ".1f")])
    parts.append(_table(["step", "method", "params", "parameters (M)", "non-zero (M)", "MB on disk", "perplexity",
                         "task accuracy", "abilities (kept)", "latency (one stream · batched)", "gate", "seconds"], rows,
                        "compress-steps"))
    if c.get("complete") is False:
        parts.append('<p class="warn">The chain stopped early (a quality gate failed or a step failed).</p>')
    return "".join(parts) + "</section>"


CSS = """body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#212121;background:#fafafa}
main{max-width:1000px;margin:0 auto;padding:24px}h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
.meta{color:#616161}table{border-collapse:collapse;margin:12px 0;background:#fff}th,td{border:1px solid #e0e0e0;padding:4px 8px;text-align:left}
th{background:#f1f3f4}figure{margin:12px 0;background:#fff;padding:8px;border:1px solid #e0e0e0;display:inline-block}
figure svg{max-width:100%;height:auto}.note{color:#616161;font-style:italic}.warn{color:#c62828}"""


def render_html(report: dict, history: list[dict] | None = None) -> str:
    """The page for one run's ``report`` (``flows.report.build_report``); ``history``: training steps."""
    e = html.escape
    body = [f"<h1>eakd run report</h1><p class=\"meta\">run <code>{e(report['run_dir'])}</code> · eakd "
            f"{e(str(report.get('eakd_version')))}</p>",
            f'<section id="pipeline"><h2>Pipeline</h2>{_pipeline_svg(report.get("stages", {}))}</section>']
    if (ev := report.get("evaluate")) and ev.get("abilities"):
        body.append(_abilities_section(ev))
    if g := report.get("generate"):
        body.append(_generate_section(g))
    if s := report.get("train"):
        body.append(_train_section(s, history or []))
    if ev := report.get("evaluate"):
        body.append(_evaluate_section(ev))
    if c := report.get("compress"):
        body.append(_compress_section(c))
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">"
            f"<title>eakd report · {e(Path(report['run_dir']).name)}</title><style>{CSS}</style></head>"
            f"<body><main>{''.join(body)}</main></body></html>\n")


def write_html_report(run_dir: Path, report: dict) -> Path:
    """Write ``report.html`` into ``run_dir`` (atomically); returns its path."""
    metrics = run_dir / "student" / "metrics.json"
    history = json.loads(metrics.read_text()).get("history", []) if metrics.is_file() else []
    out = run_dir / "report.html"
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(render_html(report, history))
    tmp.replace(out)
    return out
