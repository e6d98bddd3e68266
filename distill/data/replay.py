"""Replay: general instructions the teacher answers zero-shot, mixed into a task dataset's train split.

A student trained only on a few narrow tasks can learn their answer format as a habit: on the demo, a
24-layer student trained on six one-word-label tasks answers "animal" or "plant" when asked to "Classify
the country" (a control it never trained on). Rehearsal — training on the teacher's own answers to general
requests beside the task rows (continual-learning replay, Robins 1995; the general-data term of MiniLLM) — is
the standard remedy. Measured honestly: on that demo, 48 replay rows left the controls where they were (0 %),
because the depth-pruned student already starts at 0 % there (the evaluate stage's "student's start"); it
is a tool for students that start with the knowledge, e.g. the teacher + LoRA.

Instructions come from a built-in generator (templates x fillers written here, no hub data; disjoint from the
IF probe's writing tasks in :mod:`distill.probes.ifsuite`) or a user file (JSONL rows with ``instruction`` and
optional ``input``, or a text file with one instruction per line). They become ``instruct``-style seeds
(``origin: replay``, train split, no gold): the teacher answers them with the instruct template, and the
student learns its answers.

Run: ``generate.replay: {n: 48}`` in a config with ``generate.tasks`` (or seeds).
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from pydantic import Field, model_validator

from distill.config import ConfigError, StageConfig
from distill.data.seeds import Seed

_TEMPLATES = [
    "What is {noun} used for? Answer in one sentence.",
    "Name one thing that is {colour}.",
    "Describe {noun} to a child in two sentences.",
    "Give a synonym of the word '{adjective}'.",
    "What is the opposite of '{adjective}'?",
    "Write a short question someone might ask about {noun}.",
    "Explain why people like {activity}.",
    "List three words related to {noun}.",
    "Is {noun} usually found indoors or outdoors? Explain briefly.",
    "Write one friendly sentence inviting a friend to go {activity}.",
    "What season is best for {activity}, and why?",
    "Complete the sentence: A good {noun} should be",
    "Translate the idea 'I am {adjective}' into a more formal sentence.",
    "Give a one-line definition of '{adjective}'.",
    "How many legs does a {creature} have?",
    "What sound does a {creature} make?",
]
_FILL = {
    "noun": ["an umbrella", "a ladder", "a compass", "a blanket", "a kettle", "a microscope", "a backpack",
             "a calendar", "a candle", "a hammer", "a bridge", "a river", "a window", "a clock", "a pillow"],
    "colour": ["red", "blue", "green", "yellow", "white", "black", "orange", "purple"],
    "adjective": ["happy", "quick", "quiet", "brave", "tiny", "bright", "tired", "careful", "honest", "cold"],
    "activity": ["hiking", "swimming", "painting", "gardening", "cycling", "reading", "baking", "camping"],
    "creature": ["spider", "bird", "dog", "ant", "horse", "octopus", "chicken", "cat"],
}


class ReplayConfig(StageConfig):
    n: int = Field(48, ge=0, le=100_000, description="general instructions the teacher answers zero-shot, mixed into "
                                                     "the train split (keeps a narrowly trained student reading the "
                                                     "instruction; docs/abilities.md); 0 with verifiable > 0: only "
                                                     "verifiable ones")
    file: str | None = Field(None, description="your own instructions: JSONL {instruction, input?} or one per line of "
                                               "a text file (default: the built-in generator)")
    seed: int = Field(0, description="seeds the built-in generator")
    verifiable: int = Field(0, ge=0, le=100_000, description="also N verifiable-instruction prompts (the IF suite, "
                                                             "distill/probes/ifsuite.py, drawn apart from the probes' "
                                                             "seed): a teacher answer that fails its checks is removed "
                                                             "(rejection sampling with a verifier)")


    @model_validator(mode="after")
    def _something_to_replay(self) -> ReplayConfig:
        if self.n == 0 and self.verifiable == 0:
            raise ValueError("generate.replay: n and verifiable are both 0, so nothing would be replayed; set n (general "
                             "instructions) or verifiable (instructions with checks), or remove generate.replay")
        return self


def _generated(n: int, seed: int) -> list[str]:
    rng = random.Random(f"replay:{seed}")
    out: dict[str, None] = {}
    for _ in range(100 * n):
        template = rng.choice(_TEMPLATES)
        text = template.format(**{k: rng.choice(v) for k, v in _FILL.items() if "{" + k + "}" in template})
        out.setdefault(text)
        if len(out) == n:
            break
    return list(out)


def _from_file(path: str) -> list[tuple[str, str]]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"generate.replay.file: {p} not found (JSONL rows with 'instruction', or a text file with "
                          "one instruction per line)")
    rows = []
    for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if p.suffix != ".jsonl":
            rows.append((line.strip(), ""))
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{p}:{lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not str(row.get("instruction") or "").strip():
            raise ConfigError(f"{p}:{lineno}: a replay row needs a non-empty 'instruction'")
        rows.append((str(row["instruction"]).strip(), str(row.get("input") or "").strip()))
    return rows


IF_SEED_OFFSET = 7919  # the verifiable prompts' generator seed = replay.seed + this (the probes use their own seed)


def _if_items(cfg: ReplayConfig) -> dict[str, object]:
    from distill.probes.ifsuite import make_if_items

    return {f"replay/{it.id}": it for it in make_if_items(cfg.verifiable, cfg.seed + IF_SEED_OFFSET)} if cfg.verifiable else {}


def replay_seeds(cfg: ReplayConfig) -> list[Seed]:
    """``cfg.n`` general instructions (the file's first n, else generated) and ``cfg.verifiable`` verifiable ones, as
    instruct seeds for the train split."""
    pairs = (_from_file(cfg.file)[: cfg.n] if cfg.file else [(x, "") for x in _generated(cfg.n, cfg.seed)]) if cfg.n else []
    seeds = [Seed(id=f"replay/{hashlib.sha256(f'{i}|{x}'.encode()).hexdigest()[:10]}", instruction=i, input=x,
                  task="replay", origin="replay", split="train", style="instruct") for i, x in pairs]
    seeds += [Seed(id=sid, instruction=it.prompt, task="replay_if", origin="replay:if", split="train", style="instruct")
              for sid, it in _if_items(cfg).items()]
    return seeds


def verify_rows(rows: list[dict], cfg: ReplayConfig) -> dict[str, int]:
    """Remove (``removed_reason``) every verifiable replay row whose teacher answer fails one of its prompt's checks
    (strict, as IFEval defines it: :func:`distill.probes.ifeval.follows`). Returns ``{"checked", "kept"}``."""
    from distill.probes.ifeval import follows

    items = _if_items(cfg)
    checked = kept = 0
    for r in rows:
        item = items.get(r.get("seed_id"))
        if item is None or r["removed_reason"] is not None:
            continue
        checked += 1
        text = r["messages"][-1]["content"] if r["messages"] else ""
        failed = [c.kind for c in item.constraints if not follows(c, text)[0]]
        if failed:
            r["removed_reason"] = f"if_unverified: fails {', '.join(failed)}"
        else:
            kept += 1
    return {"checked": checked, "kept": kept}
