"""Incremental datasets: a run over a seed source that grew sends only the new seeds to the teacher and
appends their rows to the previous dataset as a new version.

A seed is *new* when no row of the previous dataset (any split, ``removed`` included) carries its id.
The previous rows are carried over unchanged (their teacher outputs, filter verdicts and splits); the
new rows are generated, parsed and filtered as usual, with ICL demos drawn from every seed, old and new.
``stats.json`` and the card record each version: when it was made, how many seeds and rows it added,
and how many requests reached the teacher. Edits to an existing seed are not picked up (its id is
known): start a fresh dataset for that.

Run: ``eakd generate CONFIG --out NEW --incremental-from PREVIOUS``, or ``run.incremental: true`` in a
pipeline config (scheduled flows: each run appends to the newest earlier run's dataset).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from distill.config import ConfigError


@dataclass
class Previous:
    """The dataset a run appends to."""

    path: Path
    rows: list[dict]  # every row, with its split under "split"
    stats: dict
    seed_ids: set[str] = field(default_factory=set)

    @property
    def versions(self) -> list[dict]:
        """The version history so far (a dataset made before versions were recorded is version 1)."""
        return list(self.stats.get("versions") or [{"version": 1, "created": self.stats.get("created"),
                                                    "new_seeds": self.stats.get("seeds"),
                                                    "new_rows": (self.stats.get("rows") or {}).get("generated"),
                                                    "requests_sent": (self.stats.get("teacher") or {}).get("sent")}])


def _check(p: Path) -> None:
    if not (p / "stats.json").is_file() or not (p / "dataset_dict.json").is_file():
        raise ConfigError(f"incremental: {p} is not a finished eakd dataset (no stats.json/dataset_dict.json); "
                          "point at the dataset/ folder of an earlier run, or run without incremental")


def known_seed_ids(path: str | Path) -> set[str]:
    """The seed ids a finished dataset already covers (one column read; what a planner needs)."""
    from datasets import load_from_disk

    p = Path(path)
    _check(p)
    dd = load_from_disk(str(p))
    return {i for split in dd if "seed_id" in dd[split].column_names for i in dd[split]["seed_id"] if i}


def load_previous(path: str | Path) -> Previous:
    """Read a finished eakd dataset (``stats.json`` + the saved splits) to append to."""
    from datasets import load_from_disk

    p = Path(path)
    _check(p)
    stats = json.loads((p / "stats.json").read_text())
    if stats.get("bootstrap"):
        raise ConfigError(f"incremental: {p} was bootstrapped (Self-Instruct); its instructions are not seeds to "
                          "append to. Start a new dataset instead")
    dd = load_from_disk(str(p))
    rows = []
    for split in dd:
        for r in dd[split].to_list():
            rows.append(r | {"split": split})
    return Previous(p, rows, stats, {r["seed_id"] for r in rows if r.get("seed_id")})


def merge_rows(previous: list[dict], new: list[dict]) -> list[dict]:
    """Previous rows, then new ones, all with the same keys (a key one side lacks is None on it)."""
    keys = list(dict.fromkeys(k for r in previous[:1] + new[:1] + previous + new for k in r))
    return [{k: r.get(k) for k in keys} for r in previous + new]


def next_version(previous: Previous, new_seeds: int, new_rows: int, requests_sent: int) -> list[dict]:
    """The version history with this run's entry appended."""
    history = previous.versions
    return history + [{"version": history[-1]["version"] + 1, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       "new_seeds": new_seeds, "new_rows": new_rows, "requests_sent": requests_sent,
                       "previous": str(previous.path)}]
