"""How do the two novelty filters scale? Exact pairwise ROUGE-L vs MinHash-LSH, as the candidate set grows.

Candidates are synthetic instruction-like strings: a Self-Instruct seed instruction
(``/work/shared/data/self-instruct/seed_tasks.jsonl`` or ``--seeds``) with about half its words swapped
for random words of the seeds' vocabulary (fixed RNG seed), plus ~10 % injected near-duplicates (an
earlier candidate with one or two words substituted, deleted or inserted). Both filters run
incrementally (a kept candidate joins the pool) against the 175 seed instructions as the initial pool:
``rougel_novelty_filter`` (threshold 0.7, Self-Instruct) and ``minhash_dedup_filter`` (char 5-grams,
128 permutations, Jaccard threshold ``--jaccard``). For each size it records the CPU time of this
process (best of ``--repeats`` below 1000 candidates; wall time is kept in the JSON, as other jobs
share the machine), drop counts and how the MinHash drop-set agrees with ROUGE-L's, then fits the
log-log slope of time vs size (expect ~2 for ROUGE-L, ~1 for MinHash). ROUGE-L is skipped at sizes
where the fitted curve predicts more than ``--rouge-budget`` CPU seconds. Finally a calibration
sweep: which Jaccard threshold's drop-set best matches ROUGE-L > 0.7's.

Prints a table and writes ``bench/results/novelty_scaling.json``.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python bench/novelty_scaling.py [--sizes 250 500 1000 2000 4000]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # other jobs share this machine; numpy must not fan out

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from distill.data.novelty import drop_agreement, lsh_params, minhash_dedup_filter, rougel_novelty_filter  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SEEDS = Path("/work/shared/data/self-instruct/seed_tasks.jsonl")


def load_instructions(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["instruction"] for line in f if line.strip()]


def synthetic_candidates(seeds: list[str], n: int, rng_seed: int = 0, dup_rate: float = 0.1,
                         swap: float = 0.5) -> tuple[list[str], list[int]]:
    """n instruction-like strings; returns them and the indices of the injected near-duplicates."""
    rng = random.Random(rng_seed)
    vocab = sorted({w for s in seeds for w in s.split()})
    out: list[str] = []
    dups: list[int] = []
    for i in range(n):
        if out and rng.random() < dup_rate:
            words = rng.choice(out).split()
            for _ in range(rng.randint(1, 2)):
                op, j = rng.choice(("sub", "del", "ins")), rng.randrange(len(words))
                if op == "sub":
                    words[j] = rng.choice(vocab)
                elif op == "del" and len(words) > 3:
                    del words[j]
                else:
                    words.insert(j, rng.choice(vocab))
            dups.append(i)
        else:
            words = [w if rng.random() > swap else rng.choice(vocab) for w in rng.choice(seeds).split()]
        out.append(" ".join(words))
    return out, dups


def timed(fn, repeats: int):
    """(best CPU seconds of this process, wall seconds of that run, result): CPU time is what we fit,
    since other jobs share the machine and inflate wall time unpredictably."""
    best, wall, result = float("inf"), float("inf"), None
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        result = fn()
        cpu = time.process_time() - c
        if cpu < best:
            best, wall = cpu, time.perf_counter() - t
    return best, wall, result


def slope(ns: list[int], ts: list[float]) -> float | None:
    return float(np.polyfit(np.log(ns), np.log(ts), 1)[0]) if len(ns) >= 2 else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[250, 500, 1000, 2000, 4000])
    ap.add_argument("--seeds", type=Path, default=SEEDS)
    ap.add_argument("--rouge-threshold", type=float, default=0.7)
    ap.add_argument("--jaccard", type=float, default=0.5)
    ap.add_argument("--repeats", type=int, default=3, help="best-of repeats for sizes below 1000")
    ap.add_argument("--sweep", type=float, nargs="*", default=[0.3, 0.4, 0.5, 0.6],
                    help="Jaccard thresholds compared with ROUGE-L's drop-set at --sweep-n candidates")
    ap.add_argument("--sweep-n", type=int, default=1000)
    ap.add_argument("--rouge-budget", type=float, default=90.0, help="skip ROUGE-L where predicted seconds exceed this")
    args = ap.parse_args()

    pool = load_instructions(args.seeds)
    rows = []
    rn, rt = [], []
    print(f"pool {len(pool)} seed instructions | ROUGE-L > {args.rouge_threshold} | MinHash J > {args.jaccard} "
          f"(128 perm, char 5-grams, bands x rows = {lsh_params(args.jaccard, 128, fp_weight=0.2)})")
    print("times are CPU seconds of this process (wall time in the JSON)")
    header = f"{'n':>6} {'rouge_s':>9} {'minhash_s':>10} {'speedup':>8} {'drop_R':>7} {'drop_M':>7} {'inj':>5} " \
             f"{'jacc':>5} {'prec':>5} {'rec':>5}"
    print(header)
    print("-" * len(header))
    for n in sorted(args.sizes):
        cands, dups = synthetic_candidates(pool, n)
        reps = args.repeats if n < 1000 else 1
        t_m, w_m, (_, m_drop) = timed(lambda: minhash_dedup_filter(cands, pool, threshold=args.jaccard), reps)
        row = {"n": n, "injected_duplicates": len(dups), "minhash_s": t_m, "minhash_wall_s": w_m,
               "minhash_dropped": len(m_drop),
               "minhash_recall_injected": len({d.index for d in m_drop} & set(dups)) / max(len(dups), 1)}
        predicted = None
        if len(rn) >= 2:
            k, c = np.polyfit(np.log(rn), np.log(rt), 1)
            predicted = float(np.exp(c) * n**k)
        if predicted is not None and predicted > args.rouge_budget:
            row |= {"rouge_s": None, "rouge_skipped": f"predicted {predicted:.0f} s > budget {args.rouge_budget:.0f} s"}
            print(f"{n:>6} {'skipped':>9} {t_m:>10.3f} {'':>8} {'':>7} {len(m_drop):>7} {len(dups):>5}"
                  f"   (ROUGE-L predicted {predicted:.0f} s)")
        else:
            t_r, w_r, (_, r_drop) = timed(lambda: rougel_novelty_filter(cands, pool, threshold=args.rouge_threshold), reps)
            ag = drop_agreement({d.index for d in r_drop}, {d.index for d in m_drop})
            rn.append(n)
            rt.append(t_r)
            row |= {"rouge_s": t_r, "rouge_wall_s": w_r, "rouge_dropped": len(r_drop), "speedup": t_r / t_m,
                    "rouge_recall_injected": len({d.index for d in r_drop} & set(dups)) / max(len(dups), 1),
                    "agreement": ag.__dict__}
            print(f"{n:>6} {t_r:>9.3f} {t_m:>10.3f} {t_r / t_m:>7.0f}x {len(r_drop):>7} {len(m_drop):>7} {len(dups):>5} "
                  f"{ag.jaccard:>5.2f} {ag.precision:>5.2f} {ag.recall:>5.2f}")
        rows.append(row)
    mn = [r["n"] for r in rows]
    slopes = {"rouge_l": slope(rn, rt), "minhash_lsh": slope(mn, [r["minhash_s"] for r in rows])}
    print(f"log-log slope of time vs n: ROUGE-L {slopes['rouge_l']:.2f} (sizes {rn}), "
          f"MinHash-LSH {slopes['minhash_lsh']:.2f} (sizes {mn})")
    print("agreement: MinHash drop-set vs ROUGE-L's (reference); prec = share of MinHash drops ROUGE-L also drops")
    sweep = []
    if args.sweep:
        cands, _ = synthetic_candidates(pool, args.sweep_n)
        ref = {d.index for d in rougel_novelty_filter(cands, pool, threshold=args.rouge_threshold)[1]}
        print(f"\ncalibration at n={args.sweep_n}: which Jaccard threshold drops what ROUGE-L > {args.rouge_threshold} drops?")
        print(f"{'J':>5} {'bands x rows':>13} {'drop_M':>7} {'jacc':>5} {'prec':>5} {'rec':>5}   (ROUGE-L drops {len(ref)})")
        for t in args.sweep:
            drops = {d.index for d in minhash_dedup_filter(cands, pool, threshold=t)[1]}
            ag = drop_agreement(ref, drops)
            br = lsh_params(t, 128, fp_weight=0.2)
            sweep.append({"jaccard_threshold": t, "bands_rows": br, "dropped": len(drops), "agreement": ag.__dict__})
            print(f"{t:>5.2f} {f'{br[0]} x {br[1]}':>13} {len(drops):>7} {ag.jaccard:>5.2f} {ag.precision:>5.2f} {ag.recall:>5.2f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {
        "bench": "novelty_scaling", "python": platform.python_version(), "numpy": np.__version__,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus", "omp_threads": os.environ.get("OMP_NUM_THREADS"),
        "config": {"pool": len(pool), "rouge_threshold": args.rouge_threshold, "jaccard_threshold": args.jaccard,
                   "num_perm": 128, "shingles": "char 5-grams", "lsh_bands_rows": lsh_params(args.jaccard, 128, fp_weight=0.2),
                   "dup_rate": 0.1, "swap": 0.5, "rng_seed": 0, "repeats_below_1000": args.repeats,
                   "rouge_budget_s": args.rouge_budget},
        "rows": rows, "slopes": slopes, "calibration": {"n": args.sweep_n, "rouge_threshold": args.rouge_threshold,
                                                         "thresholds": sweep},
    }
    (RESULTS / "novelty_scaling.json").write_text(json.dumps(out, indent=2))
    print(f"wrote {RESULTS / 'novelty_scaling.json'}")


if __name__ == "__main__":
    main()
