"""Load seed tasks (JSONL or a saved HF dataset) and check them against the seed-row contract.

A seed row has ``id`` (unique str), ``instruction`` or ``question``, optional ``input``, optional gold
``answer``/``output``, optional ``demos`` ([{input, output}]), optional ``task`` (a group name used
for demonstration selection). Problems are reported as ``file:line: what is wrong (how to fix)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from distill.config import ConfigError


@dataclass
class Seed:
    id: str
    instruction: str
    input: str = ""
    answer: str | None = None
    task: str = "default"
    demos: list[dict[str, str]] = field(default_factory=list)


def _seed_from_row(row: dict, where: str) -> Seed:
    if not isinstance(row, dict):
        raise ConfigError(f"{where}: a seed must be a JSON object, got {type(row).__name__}")
    sid = row.get("id")
    if sid is None or str(sid).strip() == "":
        raise ConfigError(f"{where}: seed has no 'id' (every seed needs a unique string id)")
    instruction = row.get("instruction", row.get("question"))
    if not isinstance(instruction, str) or not instruction.strip():
        raise ConfigError(f"{where}: seed {sid!r} needs a non-empty 'instruction' or 'question'")
    answer = row.get("answer", row.get("output"))
    demos = row.get("demos") or []
    if not isinstance(demos, list) or not all(isinstance(d, dict) and "input" in d and "output" in d for d in demos):
        raise ConfigError(f"{where}: seed {sid!r}: 'demos' must be a list of {{input, output}} objects")
    inp = row.get("input") or ""
    return Seed(id=str(sid), instruction=instruction.strip(), input=str(inp).strip(),
                answer=None if answer is None else str(answer).strip(), task=str(row.get("task") or "default"),
                demos=[{"input": str(d["input"]), "output": str(d["output"])} for d in demos])


def load_seeds(path: str | Path, limit: int | None = None) -> list[Seed]:
    """Read and validate seeds; raises ConfigError naming file, line and field."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"seed file not found: {p} (set generate.seeds to a JSONL file or a saved dataset folder)")
    seeds: list[Seed] = []
    if p.is_dir():
        from datasets import load_from_disk

        ds = load_from_disk(str(p))
        for i, row in enumerate(ds):
            seeds.append(_seed_from_row(dict(row), f"{p}[{i}]"))
    else:
        with open(p, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"{p}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno}); fix or remove the line") from None
                seeds.append(_seed_from_row(row, f"{p}:{lineno}"))
    if not seeds:
        raise ConfigError(f"{p}: no seed rows found; add at least one JSON object per line")
    ids: dict[str, int] = {}
    for i, s in enumerate(seeds):
        if s.id in ids:
            raise ConfigError(f"{p}: duplicate seed id {s.id!r} (rows {ids[s.id] + 1} and {i + 1}); ids must be unique")
        ids[s.id] = i
    return seeds[:limit] if limit else seeds
