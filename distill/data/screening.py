"""The generate stage's checks on generated rows (``generate.filters``): filters, contamination, the LLM judge.

Owns turning ``generate.filters`` into checks before any teacher call (:func:`prepare_screens`: the filter
objects, the judge template rendered once, the eval sets read into an n-gram index, so a config error costs
nothing) and running them on the rows generation kept (:func:`screen_rows`): the configured filters
(:mod:`distill.data.filters`), then the contamination check against eval sets, then the judge
(:mod:`distill.data.judge`), which asks the teacher and so runs last, on the rows every cheaper check kept.
A failing row gets its ``removed_reason``; no row is dropped.

May import: :mod:`distill.data.filters`, :mod:`distill.data.judge`, :mod:`distill.config` and the data config,
the teacher's config and budget, and ``prompts``; never :mod:`distill.data.dataset` (which calls it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from distill.config import ConfigError
from distill.data.config import FiltersConfig
from distill.data.filters import (
    BlocklistFilter,
    FormatFilter,
    LengthFilter,
    NgramIndex,
    apply_filters,
    ngram_contamination,
)
from distill.teacher.budget import Budget
from distill.teacher.query import TeacherConfig
from prompts import TemplateError, load_template, render_messages


@dataclass
class Screens:
    """``generate.filters`` made ready to run: built before the first teacher call."""

    row_filters: list  # length / format / blocklist, in that order
    contamination: NgramIndex | None  # the eval sets' n-grams; None without ``filters.contamination``
    eval_items: int  # how many eval items the index holds (reported in stats.json)


def prepare_screens(cfg: FiltersConfig) -> Screens:
    """The checks of ``cfg``, with every config error raised now (ConfigError), before any teacher call: the
    filters' settings, the judge template (rendered once with empty fields), the eval files (read and indexed)."""
    row_filters = _row_filters(cfg)
    if cfg.judge is not None:  # the judge runs last: check its template before paying for anything
        try:
            render_messages(load_template(cfg.judge.template), {"instruction": "", "response": ""})
        except TemplateError as exc:
            raise ConfigError(f"generate.filters.judge.template: {exc}") from None
    contamination, eval_items = None, 0
    if cfg.contamination is not None:
        cc = cfg.contamination
        eval_texts = _read_eval_texts(cc.eval_paths)
        eval_items = len(eval_texts)
        contamination = NgramIndex(eval_texts, n=cc.n, min_n=cc.min_n)
    return Screens(row_filters, contamination, eval_items)


def screen_rows(rows: list[dict], screens: Screens, cfg: FiltersConfig, teacher_cfg: TeacherConfig,
                budget: Budget) -> dict:
    """Run the checks on the rows that survived generation (``removed_reason`` None), marking the ones that fail.

    Returns the figures ``stats.json`` reports: ``filters`` (rows removed per filter), ``contamination`` (the
    overlap report, or None) and ``judge`` (:func:`distill.data.judge.judge_rows`' figures, or None).
    """
    filter_counts: dict[str, int] = {}
    if screens.row_filters:
        fr = apply_filters([r for r in rows if r["removed_reason"] is None], screens.row_filters)
        by_id = {r["id"]: r for r in fr.removed}
        for r in rows:
            if r["id"] in by_id:
                r["removed_reason"] = f"filter_{by_id[r['id']]['removed_by']}: {by_id[r['id']]['reason']}"
        filter_counts = fr.counts
    contamination_stats = None
    if screens.contamination is not None:
        live_rows = [r for r in rows if r["removed_reason"] is None]
        rep = ngram_contamination(live_rows, screens.contamination)
        contamination_stats = {"n": rep.n, "rows_checked": rep.rows, "contaminated": rep.contaminated,
                               "eval_items": screens.eval_items,
                               "eval_items_hit": rep.eval_items_hit, "skipped_short_eval": rep.skipped_short_eval,
                               "action": cfg.contamination.action}
        if cfg.contamination.action == "filter":  # the report already scanned every row: reuse it
            for r, hit in zip(live_rows, rep.per_row):
                if hit.ngrams >= 1:
                    r["removed_reason"] = (f"contamination: {hit.ngrams} {rep.n}-gram(s) overlap eval items "
                                           f"{hit.eval_indices[:5]}, e.g. {hit.example!r}")
    judge_stats = None
    if cfg.judge is not None:  # last: the teacher only judges rows every cheaper check kept
        from distill.data.judge import judge_rows

        try:
            judge_stats = judge_rows([r for r in rows if r["removed_reason"] is None], cfg.judge, teacher_cfg, budget)
        except TemplateError as exc:
            raise ConfigError(f"generate.filters.judge.template: {exc}") from None
    return {"filters": filter_counts, "contamination": contamination_stats, "judge": judge_stats}


def _read_eval_texts(paths: list[str]) -> list[str]:
    """Eval items for the contamination check: JSONL rows (question | instruction+input | text) or text lines."""
    texts: list[str] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if not p.is_file():
            raise ConfigError(f"generate.filters.contamination.eval_paths: {p} not found (give JSONL or text files)")
        for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            if p.suffix == ".jsonl":
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"{p}:{lineno}: not valid JSON ({exc.msg}); fix the line or pass a text file") from None
                parts = [row.get(k) for k in ("question", "instruction", "input", "text")] if isinstance(row, dict) else [row]
                texts.append(" ".join(str(x) for x in parts if x))
            else:
                texts.append(line)
    return texts


def _row_filters(cfg: FiltersConfig) -> list:
    """The row filters ``cfg`` turns on, in the order they run: length, format, blocklist."""
    out: list = []
    if cfg.length is not None:
        out.append(LengthFilter(**cfg.length.model_dump()))
    if cfg.format:
        out.append(FormatFilter())
    if cfg.blocklist:
        out.append(BlocklistFilter(tuple(cfg.blocklist)))
    return out
