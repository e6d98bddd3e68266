"""The generate stage: seeds -> prompts (ICL / CoT / IF) -> teacher -> parsed, filtered HF dataset.

Seeds come from a seed file (``generate.seeds``) or a task file (``generate.tasks``: an instruction and a
few labelled examples per task, :mod:`distill.data.tasks`; the teacher may first write new inputs,
:mod:`distill.data.synth`); a task file's inputs are always train seeds and its held-out items validation ones.

For each seed and each style, a shipped (or user) Jinja template renders the chat ``messages``:

- **ICL** gets ``num_demos`` demonstrations (:func:`distill.data.demos.select_demos`: random, stratified
  by task or BM25 nearest neighbours; seeded; never the seed itself; as many as fit
  ``demo_budget_tokens``) — the seed's own ``demos`` when it has them. ``erase_demos`` trains the
  student on the prompt without them (context distillation).
- **CoT** asks for reasoning and a marked final answer, zero-shot or with ``cot_shots`` worked
  examples (seeds with a ``rationale``, e.g. GSM8K's solutions). The output is split into
  ``rationale`` and ``answer`` (:class:`~distill.answers.ExtractionConfig`).
- **Self-consistency** (``self_consistency.enabled``, ``sampling.n >= 2``, temperature > 0): the samples of
  each prompt of ``self_consistency.styles`` (default cot) vote (:func:`~distill.answers.majority_vote`) on
  their answer — CoT's extracted one, ICL's (few-shot labels) and instruct's normalised first line; the
  vote share is recorded in every row and only samples reaching the voted — or, where the seed has one,
  the gold — answer are kept.
- **IF** sends the instruction alone. ``bootstrap`` first grows the instruction pool Self-Instruct
  style (:mod:`distill.data.selfinstruct`); the new instructions are answered like seed ones.

Then the configured filters run (:mod:`distill.data.filters`: length, format, blocklist, contamination
against eval sets). Rows that fail anything (teacher error, truncation, empty output, a minority or
wrong answer, a filter, a near-duplicate bootstrapped instruction) are kept in a ``removed`` split
with the reason, never dropped. Train/validation are split by seed id, so no seed is in both. The
saved folder holds the ``DatasetDict``, ``stats.json`` and a dataset card (``README.md``) with the
provenance: teacher, sampling, templates and their hashes, demo method, filter counts, token counts,
self-consistency and contamination figures, and a few samples.

:func:`generate_dataset` runs these as named phases, each readable alone: load and check everything that can
fail before the teacher is paid (:func:`_load_and_check`), gather the seeds (synthesized inputs, replay,
bootstrapped instructions: :func:`_gather_seeds`), plan and send the requests (:func:`_ask_teacher`;
the prompts are rendered by :mod:`distill.data.plan`), turn responses into rows (:func:`_make_rows`;
parsing and voting in :mod:`distill.data.rows`), screen them (:mod:`distill.data.screening`), merge with a
previous version, then the figures (:func:`_dataset_stats`) and the atomic save
(:func:`distill.data.publish.publish_dataset`).

Run: ``eakd generate flows/configs/demo.yaml`` (or the ``pipeline`` flow).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from distill.answers import ExtractionConfig  # noqa: F401  (re-exported: callers import it from here)
from distill.config import ConfigError
from distill.credentials import get_secret
from distill.data.card import label_accuracy, row_provenance
from distill.data.config import (  # the config and its parts: callers import them from here too
    DATASET_FORMAT,
    ContaminationConfig,  # noqa: F401
    FiltersConfig,  # noqa: F401
    GenerateConfig,
    HubConfig,  # noqa: F401
    JudgeConfig,  # noqa: F401
    LengthBounds,  # noqa: F401
    SamplingConfig,  # noqa: F401
    SelfConsistencyConfig,  # noqa: F401
    Style,  # noqa: F401
)
from distill.data.plan import Plan, Planned, Skipped, build_requests
from distill.data.publish import publish_dataset
from distill.data.replay import replay_seeds, verify_rows
from distill.data.rows import Row, _blank_row, _rows_for, _sc_stats, _token_counts
from distill.data.screening import Screens, prepare_screens, screen_rows
from distill.data.seeds import Seed, load_seeds
from distill.data.selfinstruct import bootstrap_instructions
from distill.data.synth import synthesize_inputs
from distill.data.tasks import TaskFile, load_tasks, task_seeds
from distill.data.versions import Previous, known_seed_ids, load_previous, merge_rows, next_version
from distill.teacher.budget import Budget
from distill.teacher.context import check_context
from distill.teacher.engine import engine_session
from distill.teacher.query import TeacherConfig, TeacherRequest, TeacherResponse, TeacherStats, query_teacher
from prompts import Template, TemplateError

log = logging.getLogger(__name__)


def _unit_hash(*parts: object) -> float:
    """A stable number in [0, 1) from ``parts`` (Python's hash() is salted per process)."""
    h = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def validation_ids(seeds: list[Seed], fraction: float) -> set[str]:
    """The ids of the validation seeds: a seed's forced ``split`` (a task file's input: train, its held-out
    item: validation), else a stable hash of its id below ``fraction``; no seed is in both splits."""
    return {s.id for s in seeds if s.split == "validation" or s.split is None and _unit_hash("split", s.id) < fraction}


def check_task_styles(tasks: TaskFile, cfg: GenerateConfig) -> TaskFile:
    """Every task's style must be generated (else its inputs would silently get no prompt), and a cot task's
    worked examples are chat turns (``demo_format: chat``). Returns ``tasks``."""
    for t in tasks.tasks:
        if t.style not in cfg.styles:
            raise ConfigError(f"{tasks.where(t.name)}: task {t.name!r} has style {t.style} but generate.styles is "
                              f"{cfg.styles}; add {t.style} to generate.styles")
        if t.style == "cot" and cfg.demo_format != "chat":
            raise ConfigError(f"{tasks.where(t.name)}: task {t.name!r} is a cot task: its worked examples are shown as "
                              "chat turns; set generate.demo_format: chat")
    return tasks


def load_generate_seeds(cfg: GenerateConfig) -> list[Seed]:
    """The seeds of ``cfg`` without asking the teacher: the seed file's, or the task file's inputs and
    held-out items with their demos (ConfigError when a task asks for synthesized inputs: only the
    teacher can say what they are)."""
    if cfg.tasks is not None:
        seeds = task_seeds(check_task_styles(load_tasks(cfg.tasks), cfg), None, cfg.num_demos, cfg.demo_seed)
    else:
        seeds = load_seeds(cfg.seeds, cfg.limit, cfg.seed_format)
    return seeds + (replay_seeds(cfg.replay) if cfg.replay is not None else [])


def plan_requests(cfg: GenerateConfig, teacher_cfg: TeacherConfig,
                  incremental_from: str | Path | None = None) -> list[TeacherRequest]:
    """The teacher requests :func:`generate_dataset` will send for ``cfg``, in its order, without sending
    them: a flow can answer them in shards first (into the response cache), and the generate stage then
    finds every answer cached. Self-Instruct bootstrapping decides its requests round by round, so it
    cannot be planned ahead (ConfigError)."""
    if cfg.bootstrap is not None:
        raise ConfigError("generate.bootstrap: bootstrapping plans its requests round by round and cannot be "
                          "sharded; set run.shards=1")
    seeds = load_generate_seeds(cfg)
    targets = None
    if incremental_from is not None:
        targets = {s.id for s in seeds} - known_seed_ids(incremental_from)
    try:
        plans, _ = build_requests(seeds, cfg, teacher_cfg.model_id(), (), targets)
    except TemplateError as exc:
        raise ConfigError(f"generate.templates: {exc}") from None
    return [p.request for p in plans if isinstance(p, Plan)]


@dataclass
class _Prepared:
    """What :func:`_load_and_check` loaded and checked before the first teacher call."""

    tasks: TaskFile | None  # the task file; its inputs become seeds once synthesized (:func:`_gather_seeds`)
    seeds: list[Seed]  # the seed file's seeds; empty for a task file
    previous: Previous | None  # the dataset an incremental run appends to
    screens: Screens  # generate.filters, ready to run on the rows
    budget: Budget  # one cap for the whole run: synthesis, bootstrap rounds, responses, judge


@dataclass
class _SeedPool:
    """The seeds a run asks about, and what gathering them made (:func:`_gather_seeds`)."""

    seeds: list[Seed]  # seed-file or task seeds, then replay's
    bootstrapped: list[Seed]  # Self-Instruct's new instructions (instruct prompts only, never demos)
    targets: set[str] | None  # an incremental run: the seed ids the previous dataset lacks
    extra_rows: list[Row]  # removed rows of screened-out synthesized inputs and bootstrapped instructions
    synth_stats: dict | None
    boot_stats: dict | None


@dataclass
class _Asked:
    """The planned requests and the teacher's answers (:func:`_ask_teacher`)."""

    plans: list[Planned]  # every plan, skipped ones included (:func:`distill.data.plan.build_requests`)
    templates: dict[str, Template]
    live: list[Plan]  # the plans that carry a request, in the order sent
    responses: list[TeacherResponse]  # one per live plan
    tstats: TeacherStats


def generate_dataset(cfg: GenerateConfig, teacher_cfg: TeacherConfig, out_dir: str | Path,
                     incremental_from: str | Path | None = None) -> Path:
    """Run the generate stage and save the dataset at ``out_dir``; returns ``out_dir``.

    Refuses to overwrite a finished dataset (delete it or pick another folder); writes into a temp
    folder and renames, so a crash never leaves a half-written dataset behind. ``incremental_from``: a
    previous dataset; only seeds it lacks are sent, and its rows are kept (:mod:`distill.data.versions`).
    """
    out = Path(out_dir)
    _check_output(cfg, out)
    t0 = time.perf_counter()
    prep = _load_and_check(cfg, teacher_cfg, incremental_from)  # inputs and filters: fails before any teacher call
    with engine_session():  # synthesis, bootstrap rounds, answers and judge share one in-process engine
        pool = _gather_seeds(prep, cfg, teacher_cfg)
        asked = _ask_teacher(pool, cfg, teacher_cfg, prep.budget)
        rows, val_ids, replay_stats = _make_rows(asked, pool, cfg)
        # configured filters, then the contamination check, then the judge, on rows that survived generation
        figures = screen_rows(rows, prep.screens, cfg.filters, teacher_cfg, prep.budget) | {"replay": replay_stats}
    rows, versions = _merge_versions(rows + pool.extra_rows, prep.previous, pool.targets, asked.tstats)
    stats = _dataset_stats(cfg, teacher_cfg, pool, asked, rows, val_ids, figures, versions, t0)
    publish_dataset(rows, stats, cfg, teacher_cfg, asked.templates, out)
    log.info("dataset: %d train / %d validation / %d removed rows -> %s", stats["rows"]["train"],
             stats["rows"]["validation"], stats["rows"]["removed"], out)
    return out


def _check_output(cfg: GenerateConfig, out: Path) -> None:
    """Fail fast on the output side: a finished dataset at ``out``, or a Hub upload without its token."""
    if (out / "stats.json").exists():
        raise ConfigError(f"{out} already holds a dataset; remove it or choose another output folder")
    if cfg.push_to_hub is not None and not get_secret(cfg.push_to_hub.token_env):
        raise ConfigError(f"generate.push_to_hub: the env var {cfg.push_to_hub.token_env} holding a Hub write token is "
                          "not set; set it, or remove push_to_hub to keep the dataset local")


def _load_and_check(cfg: GenerateConfig, teacher_cfg: TeacherConfig,
                    incremental_from: str | Path | None) -> _Prepared:
    """Load the task or seed file and the previous dataset, and ready the filters: everything that can fail on
    the config (ConfigError) fails here, before the teacher is paid for anything."""
    tasks = check_task_styles(load_tasks(cfg.tasks), cfg) if cfg.tasks is not None else None  # inputs become seeds later
    seeds = load_seeds(cfg.seeds, cfg.limit, cfg.seed_format) if tasks is None else []
    previous = None
    if incremental_from is not None:
        if cfg.bootstrap is not None:
            raise ConfigError("generate.bootstrap: an incremental run cannot bootstrap; remove one of the two")
        previous = load_previous(incremental_from)
    screens = prepare_screens(cfg.filters)
    return _Prepared(tasks, seeds, previous, screens, Budget.from_config(teacher_cfg))


def _gather_seeds(prep: _Prepared, cfg: GenerateConfig, teacher_cfg: TeacherConfig) -> _SeedPool:
    """The seeds the run asks about: a task file's inputs once the teacher wrote the ones asked for, then replay's
    general instructions, then (``bootstrap``) the instructions Self-Instruct grows from them. An incremental run
    targets only the seeds the previous dataset lacks."""
    seeds, extra_rows, synth_stats = prep.seeds, [], None
    if prep.tasks is not None:  # the teacher writes the inputs tasks ask for, then every input becomes a seed
        seeds, extra_rows, synth_stats = _synthesize(prep.tasks, cfg, teacher_cfg, prep.budget)
    if cfg.replay is not None:  # general instructions beside the tasks: keeps the student reading the instruction
        seeds = seeds + replay_seeds(cfg.replay)
    targets = None
    if prep.previous is not None:
        targets = {s.id for s in seeds} - prep.previous.seed_ids
        log.info("incremental: %d of %d seeds are new since %s", len(targets), len(seeds), prep.previous.path)
    bootstrapped: list[Seed] = []
    boot_stats = None
    if cfg.bootstrap is not None:
        bootstrapped, removed, boot_stats = _bootstrap(seeds, cfg, teacher_cfg, prep.budget)
        extra_rows += removed
    return _SeedPool(seeds, bootstrapped, targets, extra_rows, synth_stats, boot_stats)


def _synthesize(tasks: TaskFile, cfg: GenerateConfig, teacher_cfg: TeacherConfig,
                budget: Budget) -> tuple[list[Seed], list[Row], dict | None]:
    """A task file's seeds (:func:`distill.data.synth.synthesize_inputs`, then
    :func:`distill.data.tasks.task_seeds`): returns them, a removed row per screened-out input, and the
    synthesis figures (None when no task asked for inputs)."""
    try:
        synth = synthesize_inputs(tasks, cfg.synthesis, teacher_cfg, budget)
    except TemplateError as exc:
        raise ConfigError(f"generate.synthesis.template: {exc}") from None
    seeds = task_seeds(tasks, synth.inputs, cfg.num_demos, cfg.demo_seed)
    removed = [_blank_row(r["id"], "synth", r["removed_reason"], r["origin"], instruction=r["text"]) for r in synth.removed]
    return seeds, removed, synth.stats(cfg.synthesis) if synth.per_task else None


def _bootstrap(seeds: list[Seed], cfg: GenerateConfig, teacher_cfg: TeacherConfig,
               budget: Budget) -> tuple[list[Seed], list[Row], dict]:
    """Self-Instruct bootstrapping (:func:`distill.data.selfinstruct.bootstrap_instructions`): returns the new
    instructions, a removed row per rejected candidate, and the figures ``stats.json`` reports."""
    try:
        boot = bootstrap_instructions(seeds, cfg.bootstrap, teacher_cfg, cfg.filters.blocklist or None, budget)
    except TemplateError as exc:
        raise ConfigError(f"generate.bootstrap.template: {exc}") from None
    removed = [_blank_row(r.get("id") or r["origin"], "instruct", r["removed_reason"], r["origin"],
                          instruction=r["instruction"]) for r in boot.removed]
    stats = {"rounds": boot.rounds, "candidates": boot.candidates, "kept": len(boot.seeds),
             "batches": boot.batches, "batches_parsed": boot.batches_parsed,
             "removed_by": boot.removed_by, "novelty_agreement": boot.agreement, "teacher": boot.teacher,
             "template": {"name": boot.template.name, "sha256": boot.template.sha256},
             "config": cfg.bootstrap.model_dump(mode="json")}
    return boot.seeds, removed, stats


def _ask_teacher(pool: _SeedPool, cfg: GenerateConfig, teacher_cfg: TeacherConfig, budget: Budget) -> _Asked:
    """Render every prompt (:func:`distill.data.plan.build_requests`), check that each fits the teacher's context,
    send them (:func:`distill.teacher.query.query_teacher`: cached, retried, within ``budget``); stop when the
    teacher could not be reached at all."""
    try:
        plans, templates = build_requests(pool.seeds, cfg, teacher_cfg.model_id(), pool.bootstrapped, pool.targets)
    except TemplateError as exc:
        raise ConfigError(f"generate.templates: {exc}") from None
    live = [p for p in plans if isinstance(p, Plan)]
    check_context(live, cfg.seeds or cfg.tasks, teacher_cfg)  # a prompt the engine would refuse fails here, before the teacher
    tstats = TeacherStats()
    responses = query_teacher([p.request for p in live], teacher_cfg, tstats, budget)
    _require_reachable(responses, teacher_cfg)
    return _Asked(plans, templates, live, responses, tstats)


def _require_reachable(responses: list[TeacherResponse], teacher_cfg: TeacherConfig) -> None:
    """Stop (TeacherUnavailable, exit 1) when every request failed to reach the endpoint at all: a dataset of
    nothing but connection errors is no result. Partial failures stay marked rows in the removed split."""
    errors = [r.error for r in responses if r.error is not None]
    if not responses or len(errors) < len(responses) or not all(e.startswith(("connection", "timeout")) for e in errors):
        return
    from distill.net import redact_url
    from distill.teacher.types import TeacherUnavailable

    urls = ", ".join(redact_url(u) for u in teacher_cfg.urls()) or teacher_cfg.backend
    raise TeacherUnavailable(
        f"teacher.base_url: could not reach the teacher at {urls}: all {len(responses)} requests failed "
        f"({errors[0].split(':', 1)[0]} errors after {teacher_cfg.max_retries} retries); start the server (e.g. `eakd "
        "teacher serve`) or fix teacher.base_url, then rerun the same command. Nothing was written")


def _make_rows(asked: _Asked, pool: _SeedPool, cfg: GenerateConfig) -> tuple[list[Row], set[str], dict | None]:
    """The rows of every response (:func:`distill.data.rows._rows_for`: parsed, checked, voted), each in its
    seed's split; replay's verifiable prompts are checked. Returns the rows, the validation seed ids and the
    replay figures (None without ``replay``)."""
    val_ids = validation_ids(pool.seeds, cfg.validation_fraction)
    # a bootstrapped instruction goes with the split of nothing in particular: split it by its own id too
    val_ids |= validation_ids(pool.bootstrapped, cfg.validation_fraction)
    rows: list[Row] = []
    for plan, resp in zip(asked.live, asked.responses):
        rows += _rows_for(plan, resp, cfg, "validation" if plan.seed.id in val_ids else "train")
    replay_stats = verify_rows(rows, cfg.replay) if cfg.replay is not None else None  # verifiable replay: checked
    return rows, val_ids, replay_stats


def _merge_versions(rows: list[Row], previous: Previous | None, targets: set[str] | None,
                    tstats: TeacherStats) -> tuple[list[Row], list[dict] | None]:
    """An incremental run: this run's removed rows go to the removed split, the previous rows are carried over
    and a version entry is added (:mod:`distill.data.versions`). Returns the rows and the versions (None
    for a fresh dataset)."""
    if previous is None:
        return rows, None
    for r in rows:
        if r["removed_reason"] is not None:
            r["split"] = "removed"
    versions = next_version(previous, len(targets), len(rows), tstats.sent)
    return merge_rows(previous.rows, rows), versions


def _dataset_stats(cfg: GenerateConfig, teacher_cfg: TeacherConfig, pool: _SeedPool, asked: _Asked, rows: list[Row],
                   val_ids: set[str], figures: dict, versions: list[dict] | None, t0: float) -> dict:
    """``stats.json``: counts per split, style and removal reason, gold-match and label accuracy, provenance, demo
    settings, token counts, the self-consistency, contamination, judge, bootstrap, replay and synthesis
    figures (``figures`` holds the screening and replay ones), the teacher's figures, templates, both configs
    and the version history."""
    from distill.provenance import code_version

    seeds, plans = pool.seeds, asked.plans
    kept = [r for r in rows if r["removed_reason"] is None]
    removed = [r for r in rows if r["removed_reason"] is not None]
    with_gold: dict[str, list[bool]] = {}
    for r in rows:
        if r["quality"]["gold_match"] is not None:
            with_gold.setdefault(r["style"], []).append(bool(r["quality"]["gold_match"]))
    stats = {
        "format": DATASET_FORMAT, "eakd_version": code_version(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seeds": len(seeds), "seeds_train": len(seeds) - len(val_ids & {s.id for s in seeds}),
        "seeds_validation": len(val_ids & {s.id for s in seeds}),
        "requests": len(asked.live), "skipped": dict(Counter(p.reason for p in plans if isinstance(p, Skipped))),
        "rows": {"generated": len(rows), "train": sum(r["split"] == "train" for r in kept),
                 "validation": sum(r["split"] == "validation" for r in kept), "removed": len(removed)},
        "kept_per_style": dict(Counter(r["style"] for r in kept)),
        "removed_by_reason": dict(Counter(r["removed_reason"].split(":")[0] for r in removed)),
        "filters": figures["filters"],
        "gold_match_rate": {s: round(sum(v) / len(v), 4) for s, v in sorted(with_gold.items())},
        "label_accuracy": label_accuracy(rows, {s.id: s.task for s in seeds}),
        "provenance": row_provenance(rows),  # templates, demo source and format, erased prompts: as the rows record them
        "demos": {"method": cfg.demo_method, "num_demos": cfg.num_demos, "cot_shots": cfg.cot_shots,
                  "same_task": cfg.demo_same_task, "budget_tokens": cfg.demo_budget_tokens, "seed": cfg.demo_seed},
        "tokens": _token_counts(kept),
        "self_consistency": _sc_stats(rows) if cfg.self_consistency.enabled else None,
        "contamination": figures["contamination"],
        "judge": figures["judge"],
        "bootstrap": pool.boot_stats, "replay": figures["replay"],
        "synthesis": pool.synth_stats,
        "teacher": asked.tstats.to_dict(),
        "templates": {s: {"name": t.name, "sha256": t.sha256} for s, t in asked.templates.items()},
        "config": cfg.model_dump(mode="json"), "teacher_config": teacher_cfg.model_dump(mode="json"),
        "seconds": round(time.perf_counter() - t0, 2),
        "version": versions[-1]["version"] if versions else 1, "versions": versions,
    }
    if not kept:
        log.warning("every generated row was removed (%s); the dataset's train split is empty", stats["removed_by_reason"])
    return stats

