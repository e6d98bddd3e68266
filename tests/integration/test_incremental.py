"""Incremental data flows: the seed file grows by 10 seeds, the pipeline (run.incremental) runs again,
and only those 10 seeds' prompts reach the teacher; their rows are appended as version 2 and the
first run's dataset is left byte-for-byte as it was.

The teacher is the real vLLM server behind a pass-through proxy (no faults) that records every request
it forwards, so "what reached the teacher" is observed, not inferred from eakd's own counters.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.faultproxy import FaultProxy

pytestmark = pytest.mark.integration


def _target(body: dict, inputs: dict[str, str]) -> str:
    """The seed a request asks about: the seed input that appears last in its final user message (ICL
    prompts show other seeds as demos before the target)."""
    text = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
    found = {}
    for sid, inp in inputs.items():  # whole-word matches only: "up" is not in "cup"
        hits = [m.start() for m in re.finditer(r"(?<!\w)" + re.escape(inp) + r"(?!\w)", text)]
        if hits:
            found[sid] = hits[-1]
    assert found, f"no seed input in request: {text[:200]!r}"
    return max(found, key=found.get)


def _digest(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def _run(repo_root: Path, config: Path) -> Path:
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(config)], cwd=repo_root,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("run directory: "))
    return repo_root / line.split(": ", 1)[1] if not Path(line.split(": ", 1)[1]).is_absolute() else Path(line.split(": ", 1)[1])


def test_ten_new_seeds_and_only_they_reach_the_teacher(repo_root, tmp_path, vllm_server):
    all_seeds = [json.loads(ln) for ln in (repo_root / "flows/configs/demo_seeds.jsonl").read_text().splitlines() if ln.strip()]
    first, added = all_seeds[:24], all_seeds[24:34]
    assert len(added) == 10
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps(s) + "\n" for s in first))
    inputs = {s["id"]: s.get("input") or s["instruction"] for s in all_seeds}
    upstream = vllm_server.removesuffix("/v1")
    with FaultProxy(upstream, rate=0.0) as proxy:
        cfg = {"run": {"name": "nightly", "runs_dir": str(tmp_path / "runs"), "stages": ["generate"], "incremental": True},
               "teacher": {"backend": "openai", "model": "bundled", "base_url": proxy.base_url, "max_concurrency": 8,
                           "cache": False},
               "generate": {"seeds": str(seeds), "sampling": {"max_tokens": 24}, "drop_truncated": False}}
        config = tmp_path / "nightly.yaml"
        config.write_text(yaml.safe_dump(cfg))

        run1 = _run(repo_root, config)
        sent1 = len(proxy.forwarded)
        assert sent1 > 0 and {_target(b, inputs) for b in proxy.forwarded} == {s["id"] for s in first}
        v1 = (run1 / "dataset").resolve()
        before = _digest(v1)

        with seeds.open("a") as fh:  # the seed source grows
            fh.writelines(json.dumps(s) + "\n" for s in added)
        run2 = _run(repo_root, config)
        second = proxy.forwarded[sent1:]

    new_ids = {s["id"] for s in added}
    targets = [_target(b, inputs) for b in second]
    assert set(targets) == new_ids, f"requests for seeds that were not new: {set(targets) - new_ids}"
    stats2 = json.loads((run2 / "dataset" / "stats.json").read_text())
    assert stats2["teacher"]["sent"] == len(second) == stats2["requests"]
    assert len(second) <= 3 * 10  # at most one request per (new seed, style)

    from datasets import load_from_disk

    def rows(path):
        dd = load_from_disk(str(path))
        return {r["id"]: r for split in dd for r in dd[split].to_list()}

    old, new = rows(v1), rows(run2 / "dataset")
    assert set(old) < set(new)
    for rid, r in old.items():  # every earlier row carried over unchanged
        assert new[rid]["raw_output"] == r["raw_output"] and new[rid]["removed_reason"] == r["removed_reason"]
    assert {r["seed_id"] for rid, r in new.items() if rid not in old} == new_ids
    assert stats2["version"] == 2 and [v["version"] for v in stats2["versions"]] == [1, 2]
    assert stats2["versions"][1]["new_seeds"] == 10 and stats2["versions"][1]["requests_sent"] == len(second)
    assert stats2["seeds"] == 34
    card = (run2 / "dataset" / "README.md").read_text()
    assert "## Versions" in card and "| 2 |" in card
    assert _digest(v1) == before, "the previous version was modified"
