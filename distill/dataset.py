"""The generate stage: seeds -> prompts (ICL / CoT / IF) -> teacher -> parsed, filtered HF dataset.

For each seed and each style, a shipped (or user) Jinja template renders the chat ``messages``:
ICL gets ``num_demos`` demonstrations drawn (seeded, without replacement, never the seed itself)
from the seed's own ``demos`` or from other seeds of the same ``task``; CoT asks for reasoning and a
marked final answer (split into ``rationale`` and ``answer``); IF sends the instruction alone.

Rows that fail (teacher error, truncation, empty output, and — if asked — a wrong answer) are kept
in a ``removed`` split with the reason, never dropped. Train/validation are split by seed id, so no
seed is in both. The saved folder holds the ``DatasetDict``, ``stats.json`` and a dataset card
(``README.md``) with the provenance: teacher, sampling, templates and their hashes, filter counts.

Run: ``eakd generate flows/configs/demo.yaml`` (or the ``pipeline`` flow).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Literal

from pydantic import Field

from distill.answers import answers_match, extract_answer
from distill.config import ConfigError, StageConfig
from distill.seeds import Seed, load_seeds
from distill.teacher import TeacherConfig, TeacherRequest, TeacherResponse, TeacherStats, query_teacher
from prompts import Template, TemplateError, load_template, render_messages

log = logging.getLogger(__name__)

Style = Literal["icl", "cot", "instruct"]
DATASET_FORMAT = "eakd-dataset/v1"


class SamplingConfig(StageConfig):
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 = greedy (reproducible)")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass")
    max_tokens: int = Field(256, ge=1, le=32768, description="completion length cap; longer outputs are marked truncated")
    n: int = Field(1, ge=1, le=64, description="samples per prompt")
    seed: int | None = Field(0, description="sampling seed (None = engine's choice)")
    top_logprobs: int | None = Field(None, ge=1, le=100, description="store top-k teacher logprobs per token (for logit KD)")


class GenerateConfig(StageConfig):
    seeds: str = Field(..., description="seed tasks: a JSONL file or a saved HF dataset folder")
    limit: int | None = Field(None, ge=1, description="use only the first N seeds")
    styles: list[Style] = Field(default_factory=lambda: ["icl", "cot", "instruct"], min_length=1)
    templates: dict[Style, str] = Field(default_factory=dict, description="per-style template: shipped name or .jinja path")
    num_demos: int = Field(3, ge=1, le=64, description="ICL: demonstrations per prompt")
    demo_seed: int = Field(0, description="ICL: seed of the demonstration sampler")
    erase_demos: bool = Field(False, description="ICL context distillation: the student sees the prompt without demos")
    drop_truncated: bool = Field(True, description="move finish_reason=length rows to the removed split")
    require_gold_match: bool = Field(False, description="move rows whose answer disagrees with the gold answer to removed")
    validation_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="share of seeds held out (split by seed id)")
    sampling: SamplingConfig = SamplingConfig()


def _unit_hash(*parts: object) -> float:
    """A stable number in [0, 1) from ``parts`` (Python's hash() is salted per process)."""
    h = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def select_demos(seed: Seed, pool: list[Seed], k: int, rng_seed: int) -> list[tuple[str, dict[str, str]]]:
    """k demonstrations for ``seed``: its own ``demos`` if it has them, else other gold-labelled seeds of its task.

    Seeded per seed id, so the choice does not depend on seed order; the seed itself is never a demo.
    Returns ``[(demo_id, {"input", "output"}), …]``.
    """
    if seed.demos:
        return [(f"{seed.id}/demo-{i}", d) for i, d in enumerate(seed.demos[:k])]
    candidates = sorted((s for s in pool if s.task == seed.task and s.id != seed.id and s.answer), key=lambda s: s.id)
    rng = random.Random(f"{rng_seed}:{seed.id}")
    chosen = rng.sample(candidates, min(k, len(candidates)))
    return [(s.id, {"input": s.input or s.instruction, "output": s.answer}) for s in chosen]


def _template_vars(seed: Seed, demos: list[dict[str, str]]) -> dict:
    return {"instruction": seed.instruction, "input": seed.input, "demos": demos, "task": seed.task}


def build_requests(seeds: list[Seed], cfg: GenerateConfig, model_id: str) -> tuple[list[dict], dict[str, Template]]:
    """Render every (seed, style) prompt. Returns plans (request + bookkeeping) and the templates used."""
    templates = {style: load_template(cfg.templates.get(style, style)) for style in cfg.styles}
    if cfg.erase_demos and "instruct" not in templates:
        templates["instruct"] = load_template(cfg.templates.get("instruct", "instruct"))
    s = cfg.sampling
    plans = []
    for seed in seeds:
        for style in cfg.styles:
            demos = select_demos(seed, seeds, cfg.num_demos, cfg.demo_seed) if style == "icl" else []
            if style == "icl" and not demos:
                plans.append({"seed": seed, "style": style, "skip": "no_demos"})
                continue
            tmpl = templates[style]
            messages = render_messages(tmpl, _template_vars(seed, [d for _, d in demos]))
            req = TeacherRequest(
                messages=messages, model=model_id, style=style, template=tmpl.name, template_sha=tmpl.sha256,
                temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, n=s.n, seed=s.seed,
                top_logprobs=s.top_logprobs,
            )
            student_prompt = messages
            if style == "icl" and cfg.erase_demos:
                student_prompt = render_messages(templates["instruct"], _template_vars(seed, []))
            plans.append({"seed": seed, "style": style, "request": req, "demo_ids": [i for i, _ in demos],
                          "student_prompt": student_prompt})
    return plans, templates


def _rows_for(plan: dict, resp: TeacherResponse, cfg: GenerateConfig, split: str) -> list[dict]:
    seed, style, req = plan["seed"], plan["style"], plan["request"]
    teacher = {"model": resp.model or req.model, "engine": resp.engine,
               "params": json.dumps({k: getattr(req, k) for k in ("temperature", "top_p", "max_tokens", "n", "seed", "top_logprobs")}),
               "template": req.template, "template_sha": req.template_sha}
    base = {"seed_id": seed.id, "style": style, "prompt_messages": req.messages, "gold": seed.answer,
            "demo_ids": plan["demo_ids"], "teacher": teacher, "split": split}
    if resp.error is not None:
        return [base | {"id": f"{seed.id}:{style}:0", "messages": [], "raw_output": "", "rationale": "", "answer": None,
                        "quality": {"gold_match": None, "finish_reason": None, "extraction": "none", "choice": 0},
                        "teacher_logprobs": None, "teacher_token_ids": None,
                        "removed_reason": f"teacher_error: {resp.error[:200]}"}]
    rows = []
    for i, choice in enumerate(resp.choices):
        text = choice.text.strip()
        if style == "cot":
            ex = extract_answer(text)
            rationale, answer, method = ex.rationale, ex.answer, ex.method
        else:
            first = text.splitlines()[0].strip() if text else ""
            rationale, answer, method = "", first or None, "first_line"
        gold_match = answers_match(answer, seed.answer)
        reason = None
        if not text:
            reason = "empty"
        elif choice.finish_reason == "length" and cfg.drop_truncated:
            reason = "truncated"
        elif cfg.require_gold_match and gold_match is False:
            reason = "gold_mismatch"
        rows.append(base | {
            "id": f"{seed.id}:{style}:{i}",
            "messages": plan["student_prompt"] + [{"role": "assistant", "content": text}],
            "raw_output": choice.text, "rationale": rationale, "answer": answer,
            "quality": {"gold_match": gold_match, "finish_reason": choice.finish_reason, "extraction": method, "choice": i},
            "teacher_logprobs": json.dumps(choice.logprobs) if choice.logprobs else None,
            "teacher_token_ids": choice.token_ids,
            "removed_reason": reason,
        })
    return rows


def _card(cfg: GenerateConfig, teacher_cfg: TeacherConfig, templates: dict[str, Template], stats: dict, samples: list[dict]) -> str:
    lines = [
        "---", "license: other", "tags: [eakd, distillation, synthetic]", "---", "",
        "# eakd synthetic distillation dataset", "",
        f"Format `{DATASET_FORMAT}`. Made by eakd {stats['eakd_version']} at {stats['created']}.", "",
        "## Teacher", "",
        f"- model: `{teacher_cfg.model_id()}` via `{teacher_cfg.backend}`",
        f"- sampling: `{json.dumps(cfg.sampling.model_dump())}`", "",
        "## Templates", "",
        "| style | template | sha256 |", "|---|---|---|",
        *[f"| {s} | `{t.name}` | `{t.sha256}` |" for s, t in templates.items()], "",
        "## Counts and filters", "",
        f"- seeds: {stats['seeds']} ({stats['seeds_train']} train / {stats['seeds_validation']} validation, split by seed id)",
        f"- rows kept: {stats['rows']['train']} train, {stats['rows']['validation']} validation; removed: {stats['rows']['removed']}",
        f"- kept per style: `{json.dumps(stats['kept_per_style'])}`",
        f"- removed by reason: `{json.dumps(stats['removed_by_reason'])}`",
        f"- gold match rate per style (rows with gold): `{json.dumps(stats['gold_match_rate'])}`",
        f"- teacher tokens: {stats['teacher']['prompt_tokens']} prompt, {stats['teacher']['completion_tokens']} completion; "
        f"cache hits {stats['teacher']['cache_hits']}/{stats['teacher']['requests']}", "",
        "## Samples", "",
    ]
    for r in samples:
        lines += [f"**{r['id']}** ({r['style']})", "", "```", r["messages"][-1]["content"][:400], "```", ""]
    return "\n".join(lines)


def generate_dataset(cfg: GenerateConfig, teacher_cfg: TeacherConfig, out_dir: str | Path) -> Path:
    """Run the generate stage and save the dataset at ``out_dir``; returns ``out_dir``.

    Refuses to overwrite a finished dataset (delete it or pick another folder); writes into a temp
    folder and renames, so a crash never leaves a half-written dataset behind.
    """
    from datasets import Dataset, DatasetDict

    from distill.provenance import code_version

    out = Path(out_dir)
    if (out / "stats.json").exists():
        raise ConfigError(f"{out} already holds a dataset; remove it or choose another output folder")
    t0 = time.perf_counter()
    seeds = load_seeds(cfg.seeds, cfg.limit)
    try:
        plans, templates = build_requests(seeds, cfg, teacher_cfg.model_id())
    except TemplateError as exc:
        raise ConfigError(f"generate.templates: {exc}") from None
    live = [p for p in plans if "request" in p]
    tstats = TeacherStats()
    responses = query_teacher([p["request"] for p in live], teacher_cfg, tstats)

    val_ids = {s.id for s in seeds if _unit_hash("split", s.id) < cfg.validation_fraction}
    rows: list[dict] = []
    for plan, resp in zip(live, responses):
        rows += _rows_for(plan, resp, cfg, "validation" if plan["seed"].id in val_ids else "train")
    kept = [r for r in rows if r["removed_reason"] is None]
    removed = [r for r in rows if r["removed_reason"] is not None]
    with_gold: dict[str, list[bool]] = {}
    for r in rows:
        if r["quality"]["gold_match"] is not None:
            with_gold.setdefault(r["style"], []).append(bool(r["quality"]["gold_match"]))
    stats = {
        "format": DATASET_FORMAT, "eakd_version": code_version(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seeds": len(seeds), "seeds_train": len(seeds) - len(val_ids), "seeds_validation": len(val_ids),
        "requests": len(live), "skipped": dict(Counter(p["skip"] for p in plans if "skip" in p)),
        "rows": {"generated": len(rows), "train": sum(r["split"] == "train" for r in kept),
                 "validation": sum(r["split"] == "validation" for r in kept), "removed": len(removed)},
        "kept_per_style": dict(Counter(r["style"] for r in kept)),
        "removed_by_reason": dict(Counter(r["removed_reason"].split(":")[0] for r in removed)),
        "gold_match_rate": {s: round(sum(v) / len(v), 4) for s, v in sorted(with_gold.items())},
        "teacher": tstats.to_dict(), "templates": {s: {"name": t.name, "sha256": t.sha256} for s, t in templates.items()},
        "config": cfg.model_dump(mode="json"), "teacher_config": teacher_cfg.model_dump(mode="json"),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if not kept:
        log.warning("every generated row was removed (%s); the dataset's train split is empty", stats["removed_by_reason"])

    # One table, then a filter per split: every split (an empty one too) shares one schema, and an
    # empty split built on its own would have none and fail to load back.
    for r in removed:
        r["split"] = "removed"
    full = Dataset.from_list(rows) if rows else Dataset.from_dict({"id": [], "split": []})
    dd = DatasetDict({name: full.filter(lambda v, name=name: v == name, input_columns="split").remove_columns("split")
                      for name in ("train", "validation", "removed")})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    dd.save_to_disk(str(tmp))
    (tmp / "stats.json").write_text(json.dumps(stats, indent=2))
    (tmp / "README.md").write_text(_card(cfg, teacher_cfg, templates, stats, kept[:3]))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    log.info("dataset: %d train / %d validation / %d removed rows -> %s", stats["rows"]["train"],
             stats["rows"]["validation"], stats["rows"]["removed"], out)
    return out
