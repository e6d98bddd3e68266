"""Load seed tasks (JSONL or a saved HF dataset) and check them against the seed-row contract.

A seed row has ``id`` (unique str), ``instruction`` or ``question``, optional ``input``, optional gold
``answer``/``output``, optional ``demos`` ([{input, output}]), optional ``task`` (a group name used
for demonstration selection), optional ``rationale`` (worked reasoning, used by few-shot CoT demos).
Problems are reported as ``file:line: what is wrong (how to fix)``.

Two public formats load as they are (``fmt="auto"`` recognises them from the first row):

- ``gsm8k``: ``{question, answer}`` where ``answer`` is the worked solution ending ``#### 72``
  (Cobbe et al. 2021). The id is ``gsm8k-<line>``, the gold answer the part after ``####``, the
  rationale the part before it with the ``<<3*4=12>>`` calculator annotations removed.
- ``self_instruct``: the 175 seed tasks of Wang et al. 2023 (``{id, name, instruction, instances:
  [{input, output}], is_classification}``); the first instance gives ``input`` and ``answer``, ``name``
  becomes ``task``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from distill.config import ConfigError

SeedFormat = Literal["auto", "eakd", "gsm8k", "self_instruct"]
_CALC = re.compile(r"<<[^<>]*>>")


@dataclass
class Seed:
    id: str
    instruction: str
    input: str = ""
    answer: str | None = None
    task: str = "default"
    demos: list[dict[str, str]] = field(default_factory=list)
    rationale: str = ""
    origin: str = "seed"  # where the seed came from: a seed file, or a task file's input/held-out/synthesized item
    split: str | None = None  # "train" / "validation" forces the seed's split; None: split by a hash of the id
    style: str | None = None  # a task file's style for this seed (icl | cot); None: every configured style


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
                demos=[{"input": str(d["input"]), "output": str(d["output"])} for d in demos],
                rationale=str(row.get("rationale") or "").strip())


def detect_format(row: object) -> str:
    """``gsm8k`` / ``self_instruct`` / ``eakd`` from the shape of one row."""
    if isinstance(row, dict):
        if "instances" in row and "instruction" in row:
            return "self_instruct"
        if "id" not in row and "question" in row and "####" in str(row.get("answer", "")):
            return "gsm8k"
    return "eakd"


def _convert(row: object, fmt: str, lineno: int, where: str) -> object:
    """A public-format row as an eakd seed row (``row`` unchanged for ``eakd``)."""
    if fmt == "eakd" or not isinstance(row, dict):
        return row
    if fmt == "gsm8k":
        solution = str(row.get("answer", ""))
        if "####" not in solution:
            raise ConfigError(f"{where}: GSM8K row has no '#### <answer>' line in 'answer' (is this file GSM8K?)")
        reasoning, gold = solution.rsplit("####", 1)
        return {"id": f"gsm8k-{lineno}", "question": row.get("question"), "answer": gold.strip(),
                "task": "gsm8k", "rationale": _CALC.sub("", reasoning).strip()}
    instances = row.get("instances") or [{}]
    if not isinstance(instances, list) or not isinstance(instances[0], dict):
        raise ConfigError(f"{where}: self-instruct row: 'instances' must be a list of {{input, output}} objects")
    first = instances[0]
    return {"id": row.get("id"), "instruction": row.get("instruction"), "input": first.get("input") or "",
            "answer": first.get("output"), "task": row.get("name") or "self_instruct"}


def load_seeds(path: str | Path, limit: int | None = None, fmt: SeedFormat = "auto") -> list[Seed]:
    """Read and validate seeds (``fmt``: see the module docstring); raises ConfigError naming file, line and field."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"seed file not found: {p} (set generate.seeds to a JSONL file or a saved dataset folder)")
    seeds: list[Seed] = []
    if p.is_dir():
        from datasets import load_from_disk

        ds = load_from_disk(str(p))
        for i, row in enumerate(ds):
            row = dict(row)
            fmt = detect_format(row) if fmt == "auto" else fmt
            seeds.append(_seed_from_row(_convert(row, fmt, i + 1, f"{p}[{i}]"), f"{p}[{i}]"))
    else:
        with open(p, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"{p}:{lineno}: not valid JSON ({exc.msg}, column {exc.colno}); fix or remove the line") from None
                fmt = detect_format(row) if fmt == "auto" else fmt
                seeds.append(_seed_from_row(_convert(row, fmt, lineno, f"{p}:{lineno}"), f"{p}:{lineno}"))
                if limit and len(seeds) >= limit:
                    break
    if not seeds:
        raise ConfigError(f"{p}: no seed rows found; add at least one JSON object per line")
    ids: dict[str, int] = {}
    for i, s in enumerate(seeds):
        if s.id in ids:
            raise ConfigError(f"{p}: duplicate seed id {s.id!r} (rows {ids[s.id] + 1} and {i + 1}); ids must be unique")
        ids[s.id] = i
    return seeds[:limit] if limit else seeds
