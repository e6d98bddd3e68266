"""The dataset card (``README.md`` beside the saved dataset) and the provenance figures it reports.

The card describes what happened, read off the rows the generate stage made (merged rows of earlier
versions included), not what the config asked for:

- seeds: the seed file, split by a hash of the seed id, or the task file, whose inputs are the train split
  and held-out items the validation split;
- templates: the name and sha256 of the template that rendered each style's prompts, as the rows record
  them (``teacher.template``: ``instruct+chat_demos`` when ``demo_format: chat`` rendered ICL through the
  instruct template; a user ``.jinja`` by its path);
- demonstrations: whether a prompt used its seed's own ``demos`` or demos selected from other seeds by the
  configured ``demo_method`` (demo ids ``<seed id>/demo-<i>`` are a seed's own), and the demo format;
- erased demos: prompts whose student prompt differs from the teacher's (``erase_demos``);
- label accuracy of the teacher against the seeds' gold answers, per style and per task, under a strict
  and a lenient rule (:func:`distill.answers.answers_match_strict`, :func:`distill.answers.answers_match`).

Everything here is a pure function of rows and stats; :func:`distill.data.dataset.generate_dataset` calls
:func:`row_provenance` and :func:`label_accuracy` into ``stats.json`` and :func:`render_card` for the card.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import TYPE_CHECKING

from distill.answers import answers_match, answers_match_strict
from distill.data.config import DATASET_FORMAT, GenerateConfig
from distill.teacher.types import TeacherConfig

if TYPE_CHECKING:
    from prompts import Template

CHAT_DEMOS = "+chat_demos"  # suffix build_requests adds to the template name of ICL rendered as chat turns
RULES = ("strict: the normalised answer equals the normalised gold (numbers compared as numbers, text lower-cased "
         "without surrounding quotes/punctuation); lenient (`gold_match_rate`, `require_gold_match`): strict, or a "
         "text gold label that appears as a whole word in the answer (\"The capital is Paris.\" for \"Paris\")")


def _prompts(rows: list[dict]) -> list[dict]:
    """One row per prompt sent (the first sample of each seed and style), skipping rows with no teacher request."""
    seen: set[tuple[str, str]] = set()
    out = []
    for r in rows:
        key = (r.get("seed_id"), r.get("style"))
        if key in seen or not (r.get("teacher") or {}).get("template"):
            continue
        seen.add(key)
        out.append(r)
    return out


def _demo_source(r: dict) -> str | None:
    """``own`` (the seed's own demos), ``selected`` (other seeds' by demo_method) or None (no demos)."""
    ids = r.get("demo_ids") or []
    if not ids:
        return None
    own = f"{r['seed_id']}/demo-"
    return "own" if all(i.startswith(own) for i in ids) else "selected"


def row_provenance(rows: list[dict]) -> dict:
    """What the rows record about how their prompts were made, counted in prompts (not samples):

    ``{"templates": {style: [{"name", "sha256", "prompts"}]}, "demos": {style: {"own", "selected", "none"}},
    "demo_format": {"text", "chat"}, "erased": {style: prompts whose student prompt lacks the demos}}``.
    """
    templates: dict[str, Counter] = {}
    demos: dict[str, Counter] = {}
    fmt: Counter = Counter()
    erased: Counter = Counter()
    for r in _prompts(rows):
        style, t = r["style"], r["teacher"]
        templates.setdefault(style, Counter())[(t["template"], t.get("template_sha") or "")] += 1
        if style in ("icl", "cot"):
            demos.setdefault(style, Counter())[_demo_source(r) or "none"] += 1
        if style == "icl":
            fmt["chat" if t["template"].endswith(CHAT_DEMOS) else "text"] += 1
        student = (r.get("messages") or [])[:-1]
        if student and r.get("prompt_messages") and student != r["prompt_messages"]:
            erased[style] += 1
    return {
        "templates": {s: [{"name": n, "sha256": h, "prompts": k} for (n, h), k in c.most_common()]
                      for s, c in templates.items()},
        "demos": {s: {k: c.get(k, 0) for k in ("own", "selected", "none")} for s, c in demos.items()},
        "demo_format": {k: fmt.get(k, 0) for k in ("text", "chat")} if fmt else {},
        "erased": dict(erased),
    }


def label_accuracy(rows: list[dict], task_of: dict[str, str] | None = None) -> dict:
    """Teacher answers against the gold answers, under both rules, per style and per task.

    Counts every answered row whose seed has a gold answer (kept or removed, each sample), the rows behind
    ``gold_match_rate``. A row's task is its ``task`` column, else ``task_of[seed_id]`` (rows of datasets made
    before the column existed). Returns ``{"per_style": {style: {"strict", "lenient", "n"}}, "per_task": {…}}``.
    """
    task_of = task_of or {}
    groups: dict[str, dict[str, list[tuple[bool, bool]]]] = {"per_style": {}, "per_task": {}}
    for r in rows:
        if not r.get("gold") or (r.get("quality") or {}).get("gold_match") is None:
            continue
        strict = bool(answers_match_strict(r.get("answer"), r["gold"]))
        lenient = bool(answers_match(r.get("answer"), r["gold"]))
        task = r.get("task") or task_of.get(r.get("seed_id")) or "(unknown)"
        groups["per_style"].setdefault(r["style"], []).append((strict, lenient))
        groups["per_task"].setdefault(task, []).append((strict, lenient))
    return {name: {k: {"strict": round(sum(s for s, _ in v) / len(v), 4), "lenient": round(sum(le for _, le in v) / len(v), 4),
                       "n": len(v)} for k, v in sorted(g.items())}
            for name, g in groups.items()}


def _template_lines(templates: dict[str, Template], stats: dict) -> list[str]:
    used = (stats.get("provenance") or {}).get("templates")
    if not used:  # nothing answered (or stats from before provenance): every template the run rendered, by role
        return ["| role | template | sha256 |", "|---|---|---|",
                *[f"| {s} | `{t.name}` | `{t.sha256}` |" for s, t in templates.items()]]
    lines = [("As the rows record them (`teacher.template`, `teacher.template_sha`); `+chat_demos`: demos as past chat "
              "turns rendered by that template."), "",
             "| style | template | sha256 | prompts |", "|---|---|---|---|"]
    for style, entries in used.items():
        lines += [f"| {style} | `{e['name']}` | `{e['sha256']}` | {e['prompts']} |" for e in entries]
    return lines


def _demo_lines(cfg: GenerateConfig, templates: dict[str, Template], stats: dict) -> list[str]:
    prov = stats.get("provenance")
    if prov is None:
        return [(f"- demonstrations: `{json.dumps(stats['demos'])}`; ICL context distillation (demos erased for the "
                 f"student): {cfg.erase_demos}")]
    d = stats["demos"]
    method = (f"selected from other seeds by `method: {d['method']}`"
              + (", same_task: true" if d["same_task"] and d["method"] != "stratified" else "")
              + f", seed {d['seed']}" + (f", budget {d['budget_tokens']} tokens" if d.get("budget_tokens") else ""))
    lines = []
    for style, what in (("icl", "ICL demonstrations"), ("cot", "CoT worked examples")):
        c = prov["demos"].get(style)
        if not c or not (c["own"] or c["selected"]):
            continue
        parts = ([f"{c['own']} prompts used the seeds' own `demos`"] if c["own"] else []) + (
            [f"{c['selected']} prompts used demos {method}"] if c["selected"] else [])
        lines.append(f"- {what}: " + "; ".join(parts))
    fmt = prov.get("demo_format") or {}
    if fmt.get("chat"):
        lines.append(f"- ICL demo format `chat` ({fmt['chat']} prompts): each demo a past user/assistant turn before the "
                     "question, rendered by the instruct template (`generate.demo_format`)")
    if fmt.get("text"):
        lines.append(f"- ICL demo format `text` ({fmt['text']} prompts): the demos inside one user message, rendered by "
                     "the icl template")
    erased = prov.get("erased") or {}
    if not prov["demos"] and not erased:
        return lines
    if erased:
        how = []
        if erased.get("icl"):
            t = templates.get("instruct")
            how.append(f"ICL {erased['icl']} prompts, re-rendered by the instruct template"
                       + (f" `{t.name}` (sha256 `{t.sha256[:12]}`)" if t is not None else ""))
        if erased.get("cot"):
            how.append(f"CoT {erased['cot']} prompts, re-rendered zero-shot by the cot template")
        lines.append("- demos erased for the student (`erase_demos`, context distillation): " + "; ".join(how))
    else:
        lines.append("- demos erased for the student (`erase_demos`): none; the student trains on the teacher's prompts")
    return lines


def _seed_line(cfg: GenerateConfig, stats: dict) -> str:
    """Where the seeds came from and how they were split: a seed file by a hash of the seed id, a task file by
    what each item is (its inputs train, its held-out items validation)."""
    if cfg.tasks is None:
        return (f"- seeds: {stats['seeds']} from `{cfg.seeds}` (format `{cfg.seed_format}`), "
                f"{stats['seeds_train']} train / {stats['seeds_validation']} validation, split by seed id")
    synth = sum(t.get("kept", 0) for t in ((stats.get("synthesis") or {}).get("tasks") or {}).values())
    train, val = stats["seeds_train"], stats["seeds_validation"]
    return (f"- seeds: {stats['seeds']} from the task file `{cfg.tasks}`: the {train} input{'s' * (train != 1)} the "
            "teacher labelled" + (f" ({synth} of them written by the teacher, `synthesize`)" if synth else "")
            + f" {'are' if train != 1 else 'is'} the train split, the {val} held-out item{'s' * (val != 1)} (labelled, "
            "for evaluation only) the validation split")


def _accuracy_lines(stats: dict) -> list[str]:
    acc = stats.get("label_accuracy")
    if not acc or not acc["per_style"]:
        return []
    lines = ["## Label accuracy", "",
             ("Teacher answers against the seeds' gold answers (every answered row with gold, kept or removed), under "
              f"two rules: {RULES}."), "",
             "| style | strict | lenient | rows |", "|---|---|---|---|",
             *[f"| {s} | {v['strict']} | {v['lenient']} | {v['n']} |" for s, v in acc["per_style"].items()], "",
             "| task | strict | lenient | rows |", "|---|---|---|---|",
             *[f"| {t} | {v['strict']} | {v['lenient']} | {v['n']} |" for t, v in acc["per_task"].items()], ""]
    return lines


def _sc_lines(cfg: GenerateConfig, sc: dict) -> list[str]:
    """Self-consistency: each voting style's samples per prompt, the vote share, and accuracy before and after the vote.
    Stats from before ICL could vote have no ``styles``: they were CoT's."""
    styles = sc.get("styles") or ["cot"]
    what = {"cot": "the extracted final answer", "icl": "the normalised first line", "instruct": "the normalised first line"}
    samples = ", ".join(f"{st} x {cfg.sampling_per_style.get(st, cfg.sampling).n} samples ({what[st]} votes)" for st in styles)
    lines = [f"## Self-consistency ({', '.join(styles)})", "",
             f"- {sc['questions']} prompts: {samples}; keep = `{cfg.self_consistency.keep}`"]
    for name, f in ([("all", sc)] if len(styles) < 2 else [("all", sc), *sc["per_style"].items()]):
        at = "" if name == "all" else f"{name}: "
        lines += [(f"- {at}mean vote share {f['mean_vote_share']}; accuracy of the first sample {f['first_sample_accuracy']}, "
                   f"of all samples {f['all_samples_accuracy']}, of the voted answer {f['voted_accuracy']}"),
                  f"- {at}samples reaching the voted answer: {f.get('voted_rows')}, correct share {f.get('voted_rows_correct_share')}",
                  (f"- {at}kept samples: {f['kept_rows']}, correct share {f['kept_correct_share']}, "
                   f"covering {f['questions_covered']}/{f['questions_with_gold']} prompts with gold")]
    return [*lines, ""]


def render_card(cfg: GenerateConfig, teacher_cfg: TeacherConfig, templates: dict[str, Template], stats: dict,
                samples: list[dict]) -> str:
    """The dataset card: provenance from ``stats`` (its ``provenance`` and ``label_accuracy`` computed from the
    rows), ``templates`` every template the run rendered, by role (:func:`distill.data.templates.resolve_templates`: the
    erased prompts' instruct one among them), ``samples`` a few kept rows."""

    t = stats["teacher"]
    lines = [
        "---", "license: other", "tags: [eakd, distillation, synthetic]", "---", "",
        "# eakd synthetic distillation dataset", "",
        f"Format `{DATASET_FORMAT}`. Made by eakd {stats['eakd_version']} at {stats['created']}.", "",
        "## Teacher", "",
        f"- model: `{teacher_cfg.model_id()}` via `{teacher_cfg.backend}`",
        f"- sampling: `{json.dumps(cfg.sampling.model_dump())}`", "",
        "## Templates", "",
        *_template_lines(templates, stats), "",
        "## Seeds and demonstrations", "",
        _seed_line(cfg, stats),
        *_demo_lines(cfg, templates, stats),
        ("- CoT answers: structured JSON `{rationale, answer}` (`generate.structured_cot`), no answer parsing"
         if cfg.structured_cot else f"- answer extraction: patterns `{list(cfg.extraction.patterns)}`"), "",
        *(["## Versions", "", "Each version appended the rows of seeds the previous one lacked (incremental runs).", "",
           "| version | created | new seeds | new rows | requests sent |", "|---|---|---|---|---|",
           *[f"| {v['version']} | {v['created']} | {v['new_seeds']} | {v['new_rows']} | {v['requests_sent']} |"
             for v in stats["versions"]], ""] if stats.get("versions") else []),
        "## Counts and filters", "",
        (f"- rows kept: {stats['rows']['train']} train, {stats['rows']['validation']} validation; removed: {stats['rows']['removed']} "
         "(kept in the `removed` split with the reason)"),
        f"- kept per style: `{json.dumps(stats['kept_per_style'])}`",
        f"- removed by reason: `{json.dumps(stats['removed_by_reason'])}`",
        f"- configured filters (rows each removed first): `{json.dumps(stats['filters'])}`",
        f"- gold match rate per style (rows with gold, lenient rule): `{json.dumps(stats['gold_match_rate'])}`", "",
        *_accuracy_lines(stats),
        "## Tokens", "",
        (f"- teacher: {t['prompt_tokens'] + t.get('cached_prompt_tokens', 0)} prompt, "
         f"{t['completion_tokens'] + t.get('cached_completion_tokens', 0)} completion tokens "
         f"(cache hits {t['cache_hits']}/{t['requests']})"),
        *[f"- kept `{st}` rows: {d['rows']} rows, {d['completion_tokens']} response tokens"
          + (f" ({d['estimated_rows']} rows estimated at 4 chars/token)" if d["estimated_rows"] else "")
          for st, d in stats["tokens"].items()], "",
    ]
    if stats.get("self_consistency"):
        lines += _sc_lines(cfg, stats["self_consistency"])
    if stats.get("contamination"):
        c = stats["contamination"]
        lines += ["## Contamination", "",
                  (f"- {c['contaminated']} of {c['rows_checked']} rows share a {c['n']}-gram with {c['eval_items_hit']} of "
                   f"{c['eval_items']} eval items ({', '.join(cfg.filters.contamination.eval_paths)}); action: {c['action']}"), ""]
    if stats.get("judge"):
        j = stats["judge"]
        jt = j["teacher"]
        lines += ["## LLM-as-judge", "",
                  (f"- template `{j['template']['name']}` (sha256 `{j['template']['sha256'][:12]}`), JSON verdicts "
                   f"(structured outputs); {j['judged']} of {j['rows']} rows scored, mean {j['mean_score']}, "
                   f"counts `{json.dumps(j['score_counts'])}`"),
                  (f"- invalid verdicts {j['invalid']}, failed requests {j['failed']} (rows kept, marked); action "
                   f"`{j['action']}`, min score {j['min_score']}: {j['filtered']} rows removed"),
                  (f"- judge tokens: {jt['prompt_tokens'] + jt.get('cached_prompt_tokens', 0)} prompt, "
                   f"{jt['completion_tokens'] + jt.get('cached_completion_tokens', 0)} completion"), ""]
    if stats.get("bootstrap"):
        b = stats["bootstrap"]
        a = b["novelty_agreement"]
        lines += ["## Self-Instruct bootstrapping", "",
                  (f"- {b['rounds']} rounds, {b['candidates']} candidate instructions, {b['kept']} kept; removed by: "
                   f"`{json.dumps(b['removed_by'])}`"),
                  (f"- teacher answers parsed into instructions: {b['batches_parsed']} of {b['batches']} "
                   f"({'JSON, structured decoding' if b['config'].get('structured') else 'numbered list, free text'})"),
                  (f"- novelty decided by {a['decided_by']}; ROUGE-L > {a['rougel_threshold']} vs MinHash Jaccard > "
                   f"{a['minhash_threshold']} drop-sets: both {a['both']}, only ROUGE-L {a['only_rougel']}, only MinHash "
                   f"{a['only_minhash']} (Jaccard {a['jaccard']}, MinHash precision {a['minhash_precision']}, recall {a['minhash_recall']})"),
                  f"- template `{b['template']['name']}` sha256 `{b['template']['sha256']}`", ""]
    lines += ["## Samples", ""]
    for r in samples:
        lines += [f"**{r['id']}** ({r['style']})", "", "```", r["messages"][-1]["content"][:400], "```", ""]
    return "\n".join(lines)
