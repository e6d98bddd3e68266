"""Does self-consistency + the gold filter raise the share of correct CoT rationales? (issue 4)

Same GSM8K train questions (../shared/data/gsm8k/train.jsonl), same bundled teacher, same few-shot
CoT prompt, one run, two datasets built by ``distill.data.dataset.generate_dataset``:

1. single-sample: greedy, one rationale per question, no answer filter;
2. self-consistency: ``--samples`` rationales per question at ``--temperature``, majority vote,
   keep the rationales that reach the gold answer (``self_consistency.keep: gold``).

Reported per dataset: the share of kept rationales whose answer matches the gold one, how many
questions they cover, and (run 2) the voted answer's accuracy and the share among rationales that
reach the voted answer (the vote alone as a filter, no gold). Writes bench/results/cot_self_consistency.json.

Run: ``python bench/cot_self_consistency.py --n 100`` (``--seeds FILE --shots 0 --out NAME.json`` for other seeds) (bundled teacher in-process; ~10-20 min on 2 CPU cores).
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
    ap.add_argument("--n", type=int, default=100, help="GSM8K train questions")
    ap.add_argument("--samples", type=int, default=8, help="self-consistency samples per question")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--shots", type=int, default=2, help="few-shot CoT demonstrations (GSM8K worked solutions)")
    ap.add_argument("--max-tokens", type=int, default=192)
    ap.add_argument("--seeds", type=Path, default=None, help="another seed file with gold answers (default: GSM8K train)")
    ap.add_argument("--out", default="cot_self_consistency.json", help="results file name under bench/results/")
    args = ap.parse_args()

    from distill.config import shared_data_dir
    from distill.data.dataset import GenerateConfig, generate_dataset
    from distill.teacher.query import TeacherConfig

    data = shared_data_dir()
    seeds = args.seeds or (data / "gsm8k" / "train.jsonl" if data is not None else None)
    if seeds is None or not seeds.exists():
        print("skipped: ../shared/data/gsm8k/train.jsonl is absent (set EAKD_DATA_DIR or pass --seeds)")
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="eakd-bench-sc-"))
    # the first --n questions are the targets; demos come from the same pool (never a question itself)
    base = dict(seeds=str(seeds), limit=args.n, styles=["cot"], cot_shots=args.shots,
                validation_fraction=0.0, drop_truncated=True)
    teacher = TeacherConfig(backend="vllm", model="bundled", cache_path=str(tmp / "cache.sqlite"), max_model_len=2048)
    runs = {
        "single_sample": GenerateConfig(**base, sampling={"n": 1, "temperature": 0.0, "max_tokens": args.max_tokens}),
        "self_consistency": GenerateConfig(**base, sampling={"n": args.samples, "temperature": args.temperature,
                                                             "max_tokens": args.max_tokens, "seed": 0},
                                           self_consistency={"enabled": True, "keep": "gold"}),
    }
    results: dict = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
                     "args": {k: str(v) for k, v in vars(args).items()}, "runs": {}}
    for name, cfg in runs.items():
        t0 = time.perf_counter()
        out = generate_dataset(cfg, teacher, tmp / name)
        stats = json.loads((out / "stats.json").read_text())
        from datasets import load_from_disk

        dd = load_from_disk(str(out))
        kept = [r for split in ("train", "validation") for r in dd[split]]
        graded = [r for r in kept if r["quality"]["gold_match"] is not None]  # rows whose seed has a gold answer
        correct = sum(r["quality"]["gold_match"] is True for r in graded)
        r = {"kept_rows": len(kept), "kept_rows_with_gold": len(graded), "kept_correct": correct,
             "kept_correct_share": round(correct / len(graded), 4) if graded else None,
             "questions_covered": len({r["seed_id"] for r in kept}),
             "correct_questions": len({r["seed_id"] for r in kept if r["quality"]["gold_match"] is True}),
             "removed_by_reason": stats["removed_by_reason"], "teacher_completion_tokens": stats["teacher"]["completion_tokens"],
             "wall_s": round(time.perf_counter() - t0, 1)}
        if stats.get("self_consistency"):
            r["self_consistency"] = stats["self_consistency"]
        results["runs"][name] = r
        print(f"{name:17s} kept {r['kept_rows']:4d} rationales, correct share {r['kept_correct_share']}, "
              f"covering {r['questions_covered']}/{args.n} questions ({r['wall_s']} s)", flush=True)
    single, sc = results["runs"]["single_sample"], results["runs"]["self_consistency"]
    results["summary"] = {
        "single_sample_correct_share": single["kept_correct_share"],
        "sc_gold_correct_share": sc["kept_correct_share"],
        "sc_vote_only_correct_share": sc["self_consistency"]["voted_rows_correct_share"],
        "first_sample_accuracy_at_temperature": sc["self_consistency"]["first_sample_accuracy"],
        "voted_accuracy": sc["self_consistency"]["voted_accuracy"],
        "questions_with_a_correct_rationale": {"single_sample": single["correct_questions"],
                                               "self_consistency": sc["correct_questions"]},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
