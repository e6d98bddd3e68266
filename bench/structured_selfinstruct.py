"""Structured outputs vs free-text parsing for Self-Instruct bootstrapping (issue 11), bundled teacher.

One bootstrap round over the 175 seed tasks (../shared/data/self-instruct/seed_tasks.jsonl), the same
prompts' seeds and sampling, twice: the new tasks asked for as a numbered list and parsed from free
text (``self_instruct.jinja``), and asked for as JSON ``{"instructions": [...]}`` with vLLM's
structured-output decoding and schema validation (``self_instruct_json.jinja``, ``bootstrap.structured``).
Reports, for each: the share of teacher answers that parse into at least one instruction, the
candidates they yield, how many survive the Self-Instruct heuristics and novelty filter, and the
answers still failing their schema (kept and marked, never dropped).

Writes bench/results/structured_selfinstruct.json.
Run: ``python bench/structured_selfinstruct.py --prompts 64`` (~10 min on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=64, help="bootstrap prompts (teacher answers) per variant")
    ap.add_argument("--max-tokens", type=int, default=384)
    ap.add_argument("--temperature", type=float, default=1.0)
    args = ap.parse_args()

    from distill.config import shared_data_dir
    from distill.data.seeds import load_seeds
    from distill.data.selfinstruct import BootstrapConfig, bootstrap_instructions
    from distill.teacher.query import TeacherConfig

    data = shared_data_dir()
    if data is None or not (data / "self-instruct" / "seed_tasks.jsonl").exists():
        print("skipped: ../shared/data/self-instruct/seed_tasks.jsonl is absent (set EAKD_DATA_DIR)")
        return 0
    seeds = load_seeds(str(data / "self-instruct" / "seed_tasks.jsonl"))
    tmp = Path(tempfile.mkdtemp(prefix="eakd-bench-so-"))
    teacher = TeacherConfig(backend="vllm", model="bundled", cache_path=str(tmp / "cache.sqlite"), max_model_len=2048)
    res: dict = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
                 "args": vars(args), "variants": {}}
    for name, structured in (("free_text", False), ("structured", True)):
        cfg = BootstrapConfig(target=100_000, prompts_per_round=args.prompts, max_rounds=1, structured=structured,
                              max_tokens=args.max_tokens, temperature=args.temperature)
        t0 = time.perf_counter()
        out = bootstrap_instructions(seeds, cfg, teacher)
        r = {"answers": out.batches, "answers_parsed": out.batches_parsed,
             "parseable_share": round(out.batches_parsed / out.batches, 4) if out.batches else None,
             "candidates": out.candidates, "kept_after_filters": len(out.seeds), "removed_by": out.removed_by,
             "schema_invalid": out.teacher.get("schema_invalid"), "schema_retries": out.teacher.get("schema_retries"),
             "completion_tokens": out.teacher.get("completion_tokens"), "template": out.template.name,
             "examples": [s.instruction for s in out.seeds[:8]], "wall_s": round(time.perf_counter() - t0, 1)}
        res["variants"][name] = r
        print(f"{name:10s} parseable {r['answers_parsed']}/{r['answers']} ({r['parseable_share']}), "
              f"{r['candidates']} candidates, {r['kept_after_filters']} kept after filters, "
              f"schema-invalid {r['schema_invalid']}, {r['wall_s']} s", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "structured_selfinstruct.json").write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
