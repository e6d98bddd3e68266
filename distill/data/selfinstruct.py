"""Self-Instruct bootstrapping: grow a pool of new instructions from seed tasks with the teacher.

The algorithm of Wang et al. 2023 ("Self-Instruct: Aligning Language Models with Self-Generated
Instructions", §2), without the classification/input-first branches (the responses are generated
afterwards by the ordinary instruction-following pass, as Alpaca did):

1. Each round renders ``prompts_per_round`` prompts. Prompt ``j`` of round ``r`` shows
   ``human_shots`` seed instructions and ``machine_shots`` instructions generated in earlier rounds
   (the paper's 6 + 2), drawn with ``random.Random(f"{seed}:{r}:{j}")`` so the prompts — and with the
   teacher's fixed sampling seed, the answers and the response cache — are reproducible.
2. The teacher continues the numbered list; :func:`parse_instructions` reads the new items.
   An unfinished last item (``finish_reason == "length"``) is dropped.
3. Self-Instruct's heuristics drop bad candidates (:class:`~distill.data.filters.FormatFilter` without the
   response checks, :class:`~distill.data.filters.LengthFilter` 4..150 words, an optional blocklist).
4. Novelty: a candidate joins the pool only when it is not a near-copy of the pool (seeds plus the
   instructions kept so far) or of an earlier candidate of its round. Both filters run on the same
   candidates against the same pool — ROUGE-L F1 > ``rougel_threshold`` (the paper's rule, quadratic)
   and MinHash-LSH estimated Jaccard > ``minhash_threshold`` (linear) — and their drop-sets are
   compared (:func:`~distill.data.novelty.drop_agreement`); ``novelty`` picks which one decides.
5. Rounds repeat until ``target`` instructions are kept or ``max_rounds`` is reached.

Nothing is thrown away: every candidate that does not make it is returned with the reason
(heuristic, or the near-duplicate and its score), for the dataset's ``removed`` split.

Written here rather than taken from the Self-Instruct repository or distilabel's ``SelfInstruct`` task:
theirs call an API directly; this one goes through eakd's teacher (cache, retries, provenance) and
records both novelty filters side by side.

Run: set ``generate.bootstrap`` in a config (see ``flows/configs/self_instruct.yaml``) and ``eakd generate``.
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field

from distill.config import StageConfig
from distill.data.filters import BlocklistFilter, FormatFilter, LengthFilter, RowFilter, apply_filters
from distill.data.novelty import drop_agreement, minhash_dedup_filter, rougel_novelty_filter
from distill.data.seeds import Seed
from distill.teacher.budget import Budget
from distill.teacher.query import TeacherConfig, TeacherRequest, TeacherResponse, TeacherStats, query_teacher
from distill.teacher.structured import validate_output
from prompts import Template, load_template, render_messages

log = logging.getLogger(__name__)

_ITEM = re.compile(r"^\s*(?:task\s*)?(\d{1,3})\s*[.):\-]\s*(?:task\s*\d*\s*[.:]\s*)?(.+?)\s*$", re.IGNORECASE)


class BootstrapConfig(StageConfig):
    target: int = Field(500, ge=1, description="stop once this many new instructions are kept")
    prompts_per_round: int = Field(64, ge=1, le=4096, description="teacher prompts per round")
    max_rounds: int = Field(10, ge=1, le=1000, description="give up after this many rounds")
    human_shots: int = Field(6, ge=1, le=32, description="seed instructions shown per prompt (paper: 6)")
    machine_shots: int = Field(2, ge=0, le=32, description="earlier generated instructions shown per prompt (paper: 2)")
    new_per_prompt: int = Field(8, ge=1, le=32, description="new tasks asked for per prompt")
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(384, ge=16, le=8192)
    seed: int = Field(0, description="seeds the shot sampler and the teacher's sampling")
    novelty: Literal["rougel", "minhash"] = Field("rougel", description="which novelty filter decides (both run and are compared)")
    rougel_threshold: float = Field(0.7, gt=0.0, lt=1.0, description="drop when ROUGE-L F1 with the pool exceeds this (paper: 0.7)")
    minhash_threshold: float = Field(0.4, gt=0.0, lt=1.0, description="drop when estimated char-5-gram Jaccard exceeds this (0.4 tracks ROUGE-L 0.7 best)")
    min_words: int = Field(4, ge=1, description="shortest instruction kept (paper: > 3 words)")
    max_words: int = Field(150, ge=1, description="longest instruction kept (paper: <= 150 words)")
    template: str | None = Field(None, description="prompt template: shipped name or .jinja path (default: self_instruct, or self_instruct_json when structured)")
    structured: bool = Field(False, description="ask for the new tasks as JSON {\"instructions\": [...]} with the engine's structured-output decoding, instead of parsing a numbered list")


@dataclass
class BootstrapResult:
    seeds: list[Seed]                   # the kept machine instructions, as instruction-only seeds
    removed: list[dict]                 # {"instruction", "origin", "removed_reason"}
    template: Template
    rounds: int = 0
    candidates: int = 0
    removed_by: dict[str, int] = field(default_factory=dict)
    batches: int = 0                    # teacher answers (one per prompt)
    batches_parsed: int = 0             # answers that yielded at least one instruction (JSON valid, or a list found)
    agreement: dict = field(default_factory=dict)   # ROUGE-L vs MinHash drop-sets, summed over rounds
    teacher: dict = field(default_factory=dict)


def parse_instructions(text: str, limit: int | None = None, truncated: bool = False) -> list[str]:
    """The numbered items of a continued task list (``"9. Write ..."``, ``"Task 10: ..."``).

    Falls back to non-empty lines when nothing is numbered. ``truncated``: the output hit the token
    limit, so its last item may be cut off and is dropped.
    """
    lines = [ln for ln in text.splitlines() if ln.strip()]
    items = [m.group(2).strip() for ln in lines if (m := _ITEM.match(ln))]
    if not items:
        items = [ln.strip().lstrip("-*• ").strip() for ln in lines]
    if truncated and items:
        items = items[:-1]
    items = [i for i in items if i]
    return items[:limit] if limit else items


def template_name(cfg: BootstrapConfig) -> str:
    """The configured template, else the shipped one for the answer format."""
    return cfg.template or ("self_instruct_json" if cfg.structured else "self_instruct")


def instructions_schema(n_new: int) -> dict:
    """The JSON schema of a structured bootstrap answer: ``{"instructions": [1..n_new strings]}``."""
    return {"type": "object", "additionalProperties": False, "required": ["instructions"],
            "properties": {"instructions": {"type": "array", "minItems": 1, "maxItems": n_new,
                                            "items": {"type": "string", "minLength": 1}}}}


def structured_instructions(text: str, schema: dict) -> list[str]:
    """The instructions of a structured answer: all of them when it is valid, none otherwise."""
    value, error = validate_output(text, schema)
    if error is not None:
        return []
    return [" ".join(i.split()) for i in value["instructions"] if i.strip()]


def _prompt_vars(seeds: list[Seed], machine: list[Seed], cfg: BootstrapConfig, rnd: int, j: int) -> dict:
    rng = random.Random(f"{cfg.seed}:{rnd}:{j}")
    human = rng.sample(seeds, min(cfg.human_shots, len(seeds)))
    mach = rng.sample(machine, min(cfg.machine_shots, len(machine)))
    tasks = [s.instruction for s in human + mach]
    rng.shuffle(tasks)
    return {"tasks": tasks, "n_new": cfg.new_per_prompt}


def _heuristics(cfg: BootstrapConfig, blocklist: list[str] | None) -> list[RowFilter]:
    """Self-Instruct's heuristic filters on the instruction alone (format, length, an optional blocklist)."""
    heuristics: list[RowFilter] = [
        FormatFilter(check_response=False),
        LengthFilter(min_instruction_words=cfg.min_words, max_instruction_words=cfg.max_words, min_response_words=None)]
    if blocklist:
        heuristics.append(BlocklistFilter(tuple(blocklist), fields=("instruction",)))
    return heuristics


def _count(res: BootstrapResult, reason: str, n: int = 1) -> None:
    """Add ``n`` candidates removed for ``reason`` to ``res.removed_by``."""
    res.removed_by[reason] = res.removed_by.get(reason, 0) + n


def _round_requests(seeds: list[Seed], machine: list[Seed], cfg: BootstrapConfig, teacher_cfg: TeacherConfig,
                    tmpl: Template, schema: dict | None, rnd: int) -> list[TeacherRequest]:
    """The ``prompts_per_round`` teacher requests of round ``rnd``, each with its own shots and sampling seed."""
    return [TeacherRequest(messages=render_messages(tmpl, _prompt_vars(seeds, machine, cfg, rnd, j)),
                           model=teacher_cfg.model_id(), style="self_instruct", template=tmpl.name,
                           template_sha=tmpl.sha256, temperature=cfg.temperature, top_p=cfg.top_p,
                           max_tokens=cfg.max_tokens, n=1, seed=cfg.seed * 1_000_003 + rnd * 4099 + j,
                           json_schema=schema)
            for j in range(cfg.prompts_per_round)]


def _read_candidates(responses: list[TeacherResponse], cfg: BootstrapConfig, schema: dict | None,
                     res: BootstrapResult, rnd: int) -> list[dict]:
    """The new instructions in the teacher's answers, as candidates ``{"instruction", "origin", "id"}``.

    A failed or unparseable answer goes to ``res.removed`` with its reason."""
    cands: list[dict] = []
    for j, resp in enumerate(responses):
        origin = f"bootstrap:r{rnd}:p{j}"
        if resp.error is not None or not resp.choices:
            res.removed.append({"instruction": "", "origin": origin,
                                "removed_reason": f"teacher_error: {(resp.error or 'no choices')[:200]}"})
            continue
        ch = resp.choices[0]
        res.batches += 1
        if schema is not None:
            items = structured_instructions(ch.text, schema)
            why = ch.schema_error or validate_output(ch.text, schema)[1]
        else:
            items = parse_instructions(ch.text, cfg.new_per_prompt, ch.finish_reason == "length")
            why = None if items else "no task list found in the answer"
        if not items:  # kept and marked, never silently dropped
            res.removed.append({"instruction": ch.text[:300], "origin": origin,
                                "removed_reason": f"unparseable: {why}"})
            _count(res, "unparseable")
            continue
        res.batches_parsed += 1
        for k, inst in enumerate(items):
            cands.append({"instruction": inst, "origin": f"{origin}:i{k}", "id": f"si-{rnd}-{j}-{k}"})
    return cands


def _drop_exact_repeats(cands: list[dict], seen: set[str], res: BootstrapResult) -> list[dict]:
    """The candidates not seen before (after whitespace/case); exact repeats are not worth a novelty comparison."""
    exact = []
    for c in cands:
        norm = " ".join(c["instruction"].lower().split())
        if norm in seen:
            res.removed.append(c | {"removed_reason": "novelty: exact repeat of an earlier instruction"})
            _count(res, "exact_repeat")
        else:
            seen.add(norm)
            exact.append(c)
    return exact


def _apply_heuristics(cands: list[dict], heuristics: list[RowFilter], res: BootstrapResult) -> list[dict]:
    """The candidates every heuristic filter passes; the others go to ``res.removed`` with the filter's reason."""
    fr = apply_filters(cands, heuristics)
    for r in fr.removed:
        res.removed.append({"instruction": r["instruction"], "origin": r["origin"], "id": r["id"],
                            "removed_reason": f"{r['removed_by']}: {r['reason']}"})
        _count(res, r["removed_by"])
    return fr.kept


def _drop_near_copies(cands: list[dict], pool_texts: list[str], cfg: BootstrapConfig, agree: dict[str, int],
                      res: BootstrapResult) -> list[dict]:
    """The candidates that ``cfg.novelty``'s filter finds novel against the pool and each other.

    Both filters run; their drop-sets' agreement is added to ``agree``."""
    texts = [c["instruction"] for c in cands]
    kept_r, drops_r = rougel_novelty_filter(texts, pool_texts, cfg.rougel_threshold)
    kept_m, drops_m = minhash_dedup_filter(texts, pool_texts, cfg.minhash_threshold, seed=cfg.seed)
    a = drop_agreement([d.index for d in drops_r], [d.index for d in drops_m])
    agree["both"] += a.both
    agree["only_rougel"] += a.only_reference
    agree["only_minhash"] += a.only_other
    kept, drops, label = (kept_r, drops_r, "rouge-l") if cfg.novelty == "rougel" else (kept_m, drops_m, "minhash")
    for d in drops:
        c = cands[d.index]
        res.removed.append(c | {"removed_reason": f"novelty: {label} {d.score:.2f} with {d.match_source} "
                                                  f"{d.match[:120]!r}"})
    _count(res, f"novelty_{cfg.novelty}", len(drops))
    return [cands[i] for i in kept]


def _keep(cands: list[dict], pool_texts: list[str], cfg: BootstrapConfig, res: BootstrapResult) -> None:
    """Add the novel candidates to the kept instructions and the pool, up to ``cfg.target``."""
    for c in cands:
        if len(res.seeds) >= cfg.target:
            res.removed.append(c | {"removed_reason": "over_target: the target was reached in this round"})
            _count(res, "over_target")
            continue
        res.seeds.append(Seed(id=c["id"], instruction=c["instruction"], task="self_instruct"))
        pool_texts.append(c["instruction"])


def _agreement(agree: dict[str, int], cfg: BootstrapConfig) -> dict:
    """The ROUGE-L vs MinHash drop-set counts with their Jaccard, MinHash's precision/recall and the settings."""
    union = sum(agree.values())
    both = agree["both"]
    return agree | {
        "jaccard": round(both / union, 4) if union else 1.0,
        "minhash_precision": round(both / (both + agree["only_minhash"]), 4) if both + agree["only_minhash"] else 1.0,
        "minhash_recall": round(both / (both + agree["only_rougel"]), 4) if both + agree["only_rougel"] else 1.0,
        "rougel_threshold": cfg.rougel_threshold, "minhash_threshold": cfg.minhash_threshold, "decided_by": cfg.novelty,
    }


def bootstrap_instructions(seeds: list[Seed], cfg: BootstrapConfig, teacher_cfg: TeacherConfig,
                           blocklist: list[str] | None = None, budget: Budget | None = None) -> BootstrapResult:
    """Run the rounds; returns the kept instructions (as seeds with ids ``si-<round>-<prompt>-<item>``).

    Each round: :func:`_round_requests` -> :func:`~distill.teacher.query.query_teacher` -> :func:`_read_candidates`
    -> :func:`_drop_exact_repeats` -> :func:`_apply_heuristics` -> :func:`_drop_near_copies` -> :func:`_keep`.
    ``budget``: the run's spending cap, shared with the response step (see :mod:`distill.teacher.budget`)."""
    tmpl = load_template(template_name(cfg))
    schema = instructions_schema(cfg.new_per_prompt) if cfg.structured else None
    stats = TeacherStats()
    heuristics = _heuristics(cfg, blocklist)
    pool_texts = [s.instruction for s in seeds]
    res = BootstrapResult(seeds=[], removed=[], template=tmpl)
    agree = {"both": 0, "only_rougel": 0, "only_minhash": 0}
    seen: set[str] = set()
    for rnd in range(cfg.max_rounds):
        if len(res.seeds) >= cfg.target:
            break
        res.rounds = rnd + 1
        reqs = _round_requests(seeds, res.seeds, cfg, teacher_cfg, tmpl, schema, rnd)
        responses = query_teacher(reqs, teacher_cfg, stats, budget)
        cands = _read_candidates(responses, cfg, schema, res, rnd)
        res.candidates += len(cands)
        fresh = _apply_heuristics(_drop_exact_repeats(cands, seen, res), heuristics, res)
        _keep(_drop_near_copies(fresh, pool_texts, cfg, agree, res), pool_texts, cfg, res)
        log.info("self-instruct round %d: %d candidates, %d kept so far (target %d)",
                 rnd, len(cands), len(res.seeds), cfg.target)
    res.agreement = _agreement(agree, cfg)
    res.teacher = stats.to_dict()
    if len(res.seeds) < cfg.target:
        log.warning("self-instruct: kept %d of the %d instructions asked for after %d rounds (raise max_rounds)",
                    len(res.seeds), cfg.target, res.rounds)
    return res
