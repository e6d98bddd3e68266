"""The evaluate stage's output folder: its check, its files written atomically, and the model card's section.

Owns the folder's layout: ``eval.json`` (every number, with the reason for any missing one), ``predictions.jsonl``
(each graded answer), ``probes.jsonl`` and ``lm_eval_samples.jsonl`` when those ran, ``README.md`` (the table
:func:`_readme` renders) and ``evaluate_config.yaml``; written into a temp folder and put in place by
:func:`distill.io.publish_dir`, so the output appears whole or not at all. :func:`record_in_model_card` copies the
table into the evaluated model's card between markers.

May import: ``distill.config``, ``distill.io``, ``distill.train.card`` (the card's markers); function-local,
``distill.probes.score`` and ``distill.lmeval.run`` (their tables). Never :mod:`distill.evaluate` (the stage,
which calls it and re-exports :func:`record_in_model_card`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from distill.config import ConfigError, StageConfig, dump_config
from distill.io import publish_dir, write_text_atomic
from distill.train.card import CARD_BEGIN, CARD_END


def check_out_dir(out: Path) -> None:
    """Refuse an output folder that holds an evaluation or anything else (before any model loads)."""
    if (out / "eval.json").exists():
        raise ConfigError(f"{out} already holds an evaluation; remove it or choose another output folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not an eakd evaluation; remove it or choose another output folder")


def write_evaluation(out: Path, cfg: StageConfig, ev: dict[str, Any], predictions: list[dict], lm_records: list[dict],
                     probe_rows: list[dict]) -> None:
    """Write the folder's files into ``<out>.tmp``, then put it in place of ``out`` (an empty folder or none)."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    dump_config(cfg, tmp / "evaluate_config.yaml")
    (tmp / "predictions.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions))
    if lm_records:
        (tmp / "lm_eval_samples.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False, default=str) + "\n"
                                                           for r in lm_records))
    if probe_rows:
        (tmp / "probes.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in probe_rows))
    (tmp / "README.md").write_text(_readme(ev))
    (tmp / "eval.json").write_text(json.dumps(ev, indent=2))
    publish_dir(tmp, out)  # replaces an empty folder (checked by check_out_dir)


def _readme(ev: dict[str, Any]) -> str:
    """``README.md``: one column per measured model (base, start, student), then the abilities and lm-eval tables
    when they ran."""
    lines = ["# eakd evaluation", "", (f"Model `{ev['model']}` on `{ev['dataset']}` (validation split); "
                                       f"perplexity on {ev['eval_text_source']}; eakd {ev['eakd_version']}."), "",
             "| metric | " + " | ".join(n for n in ("base", "start", "student") if ev.get(n)) + " |",
             "|---|" + "---|" * sum(bool(ev.get(n)) for n in ("base", "start", "student"))]
    models = [ev[n] for n in ("base", "start", "student") if ev.get(n)]
    for label, get in [("perplexity", lambda m: m["perplexity"]["perplexity"]),
                       ("validation loss", lambda m: m["validation"]["loss"]),
                       ("top-1 agreement with the teacher", lambda m: m["validation"]["top1_agreement"]),
                       ("KL(teacher || model), top-k", lambda m: m["validation"]["kl_topk"]),
                       ("task accuracy", lambda m: m["accuracy"]["accuracy"])]:
        lines.append(f"| {label} | " + " | ".join("—" if get(m) is None else str(get(m)) for m in models) + " |")
    if ev.get("abilities"):
        from distill.probes.score import ability_markdown

        lines += ["", "Abilities (held-out probes, distill/probes/; gap closed = (student - base) / (teacher - base)):", "",
                  *ability_markdown(ev["abilities"])]
    if ev.get("lm_eval"):
        from distill.lmeval.run import agreement_lines, markdown_table

        lines += ["", "lm-evaluation-harness (distill/lmeval/; value ± stderr over the scored documents):", "",
                  *markdown_table(ev["lm_eval"]), *agreement_lines(ev["lm_eval"])]
    return "\n".join(lines) + "\n\nEverything, with the reasons for any missing number: `eval.json`; " \
        "each graded answer: `predictions.jsonl` (probes: `probes.jsonl`).\n"


def record_in_model_card(model_dir: str | Path, eval_dir: str | Path) -> Path:
    """Write the evaluation in ``eval_dir`` into ``model_dir/README.md`` (the student's model card) as one
    section between markers: a later evaluation replaces it, the rest of the card is kept. Atomic (a
    temporary file renamed over the card), so a crash leaves the old card whole. Returns the card's path."""
    card, ev = Path(model_dir) / "README.md", json.loads((Path(eval_dir) / "eval.json").read_text())
    section = "\n".join([CARD_BEGIN, "## Evaluation", "", _readme(ev).split("\n", 2)[2].rstrip(),
                         f"(`{Path(eval_dir).resolve()}`, {ev['created']})", CARD_END])
    old = card.read_text() if card.is_file() else f"# {Path(model_dir).name}\n"
    if CARD_BEGIN in old and CARD_END in old:
        head, rest = old.split(CARD_BEGIN, 1)
        new = head + section + rest.split(CARD_END, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + section + "\n"
    write_text_atomic(card, new)
    return card
