"""Structured CoT vs free-text answer extraction, plus LLM-as-judge verdicts (issue 11), bundled teacher.

The first N GSM8K train questions (../shared/data/gsm8k/train.jsonl), zero-shot CoT at temperature 0,
generated twice through ``generate_dataset``: free text parsed by the answer extractor (``cot.jinja``,
"The answer is ..."), and JSON ``{rationale, answer}`` under vLLM's structured-output decoding
(``cot_json.jinja``, ``generate.structured_cot``). The structured run also has the teacher judge its
own rows (``generate.filters.judge``, JSON ``{reason, score}``, action report). Reports, for each: rows
whose answer was found and how (extraction method), schema-invalid and truncated rows, gold match
(the 135M teacher solves almost none: this measures parsing, not skill), and the judge's score counts.

Writes bench/results/structured_cot.json.
Run: ``python bench/structured_cot.py --questions 64`` (~10 min on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--questions", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=256)
    args = ap.parse_args()

    from datasets import load_from_disk

    from distill.config import shared_data_dir
    from distill.data.dataset import GenerateConfig, generate_dataset
    from distill.teacher.query import TeacherConfig

    data = shared_data_dir()
    if data is None or not (data / "gsm8k" / "train.jsonl").exists():
        print("skipped: ../shared/data/gsm8k/train.jsonl is absent (set EAKD_DATA_DIR)")
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="eakd-bench-scot-"))
    teacher = TeacherConfig(backend="vllm", model="bundled", cache_path=str(tmp / "cache.sqlite"), max_model_len=2048)
    res: dict = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
                 "args": vars(args), "variants": {}}
    for name, structured in (("free_text", False), ("structured", True)):
        gen = GenerateConfig(seeds=str(data / "gsm8k" / "train.jsonl"), limit=args.questions, styles=["cot"],
                             structured_cot=structured, validation_fraction=0.0, drop_truncated=True,
                             sampling={"max_tokens": args.max_tokens, "temperature": 0.0},
                             filters={"judge": {"action": "report"}} if structured else {})
        t0 = time.perf_counter()
        out = generate_dataset(gen, teacher, tmp / name)
        stats = json.loads((out / "stats.json").read_text())
        dd = load_from_disk(str(out))
        rows = list(dd["train"]) + list(dd["removed"])
        found = [r for r in rows if r["answer"] not in (None, "")]
        usable = [r for r in dd["train"]]
        r = {"rows": len(rows), "answer_found": len(found), "answer_found_share": round(len(found) / len(rows), 4),
             "usable_rows": len(usable), "usable_share": round(len(usable) / len(rows), 4),
             "extraction": dict(Counter(x["quality"]["extraction"] for x in rows)),
             "removed_by_reason": stats["removed_by_reason"],
             "gold_match": sum(bool(x["quality"]["gold_match"]) for x in rows),
             "completion_tokens": stats["teacher"]["completion_tokens"], "judge": None,
             "wall_s": round(time.perf_counter() - t0, 1)}
        if stats.get("judge"):
            j = stats["judge"]
            r["judge"] = {k: j[k] for k in ("rows", "judged", "invalid", "failed", "mean_score", "score_counts")}
            r["judge_examples"] = [{"answer": x["answer"], "gold": x["gold"], "score": x["quality"]["judge_score"],
                                    "reason": x["quality"]["judge_reason"]} for x in usable[:5]]
        res["variants"][name] = r
        print(f"{name:10s} answer found {r['answer_found']}/{r['rows']} ({r['answer_found_share']}), usable "
              f"{r['usable_rows']} ({r['usable_share']}), extraction {r['extraction']}, removed {r['removed_by_reason']}, "
              f"gold match {r['gold_match']}, judge {r['judge']}, {r['wall_s']} s", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "structured_cot.json").write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
