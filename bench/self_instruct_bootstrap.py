"""Self-Instruct bootstrapping from the 175 seed tasks with the bundled teacher (issue 4).

Builds an instruction-following dataset with ``distill.data.dataset.generate_dataset``: the 175 seeds of
Wang et al. (../shared/data/self-instruct/seed_tasks.jsonl) plus ``--target`` bootstrapped
instructions, every one answered by the teacher. Reports the rows, the rounds, what each filter
removed, and how the pairwise ROUGE-L novelty filter and the MinHash-LSH filter agree on which
near-duplicates to drop (both run on the same candidates against the same pool every round).
The cost scaling of the two filters is measured separately by ``bench/novelty_scaling.py``.

Writes bench/results/self_instruct_bootstrap.json and keeps the dataset under --out when given.

Run: ``python bench/self_instruct_bootstrap.py --target 700 --response-tokens 256`` (bundled teacher
in-process; ~30-40 min on 2 CPU cores). The 135M teacher's answers often run past short token caps and
truncated answers are removed, so the target is set above the 500 rows wanted.
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
    ap.add_argument("--target", type=int, default=500, help="bootstrapped instructions to keep")
    ap.add_argument("--prompts-per-round", type=int, default=128)
    ap.add_argument("--max-rounds", type=int, default=8)
    ap.add_argument("--response-tokens", type=int, default=128)
    ap.add_argument("--novelty", choices=["rougel", "minhash"], default="rougel")
    ap.add_argument("--out", type=Path, default=None, help="keep the dataset here (default: a temp folder)")
    ap.add_argument("--cache", type=Path, default=None,
                    help="teacher response cache to use (default: a fresh one); an earlier run's cache makes its answers free")
    args = ap.parse_args()

    from datasets import load_from_disk

    from distill.config import shared_data_dir
    from distill.data.dataset import GenerateConfig, generate_dataset
    from distill.teacher.query import TeacherConfig

    data = shared_data_dir()
    if data is None or not (data / "self-instruct" / "seed_tasks.jsonl").exists():
        print("skipped: ../shared/data/self-instruct/seed_tasks.jsonl is absent (set EAKD_DATA_DIR)")
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="eakd-bench-si-"))
    out = args.out or tmp / "dataset"
    cfg = GenerateConfig(
        seeds=str(data / "self-instruct" / "seed_tasks.jsonl"), styles=["instruct"], validation_fraction=0.1,
        sampling={"n": 1, "temperature": 0.0, "max_tokens": args.response_tokens},
        filters={"format": True, "length": {"min_response_words": 1}},
        bootstrap={"target": args.target, "prompts_per_round": args.prompts_per_round, "max_rounds": args.max_rounds,
                   "novelty": args.novelty},
    )
    teacher = TeacherConfig(backend="vllm", model="bundled", cache_path=str(args.cache or tmp / "cache.sqlite"), max_model_len=2048)
    t0 = time.perf_counter()
    generate_dataset(cfg, teacher, out)
    wall = time.perf_counter() - t0
    stats = json.loads((out / "stats.json").read_text())
    dd = load_from_disk(str(out))
    kept = [r for split in ("train", "validation") for r in dd[split]]
    boot = stats["bootstrap"]
    res = {
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()}, "args": {k: str(v) for k, v in vars(args).items()},
        "rows_kept": len(kept), "rows_kept_bootstrapped": sum(r["origin"].startswith("bootstrap") for r in kept),
        "rows_removed": len(dd["removed"]), "removed_by_reason": stats["removed_by_reason"],
        "bootstrap": {k: boot[k] for k in ("rounds", "candidates", "kept", "removed_by", "novelty_agreement")},
        "examples": [r["prompt_messages"][-1]["content"] for r in kept if r["origin"].startswith("bootstrap")][:10],
        "wall_s": round(wall, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "self_instruct_bootstrap.json").write_text(json.dumps(res, indent=2))
    a = boot["novelty_agreement"]
    print(f"rows kept {res['rows_kept']} ({res['rows_kept_bootstrapped']} bootstrapped), removed {res['rows_removed']}")
    print(f"rounds {boot['rounds']}, candidates {boot['candidates']}, kept {boot['kept']}, removed by {boot['removed_by']}")
    print(f"near-duplicate drops: both {a['both']}, only ROUGE-L {a['only_rougel']}, only MinHash {a['only_minhash']} "
          f"(Jaccard {a['jaccard']}, MinHash precision {a['minhash_precision']}, recall {a['minhash_recall']})")
    print(f"wall {wall:.0f} s; dataset at {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
