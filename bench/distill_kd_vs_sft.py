"""Does logit KD beat SFT, and does the cached top-k come close to the full distribution? (issue 5)

One teacher dataset, one student, equal steps and data, one run, three arms trained by
:func:`distill.train.run.train_student`:

1. ``sft`` — sequence-level KD: cross-entropy on the teacher's tokens;
2. ``topk`` — offline logit KD on the dataset's cached top-``k`` teacher log-probs (+ tail bucket), mixed
   with the CE (``--alpha-ce``, default 0.1: 90 % KD); the teacher is never loaded;
3. ``full`` — online logit KD against the teacher itself (full vocabulary, chunked), the same mix.

Data: ``--n`` GSM8K train questions (../shared/data), zero-shot CoT, greedy, ``--max-tokens``, answered by
the bundled teacher in-process with ``top_logprobs = k`` (a 20 % validation split by seed id). Student:
the bundled model depth-pruned to ``--keep-layers`` (the teacher's own first/last/evenly spaced layers)
with LoRA. Each arm is measured afterwards the same way: held-out full-vocabulary KL(teacher ‖ student)
on the validation answers (the teacher in memory for the measurement only), top-1 agreement, and the
training time per step. Targets checked: top-k KD's held-out KL ≥ 10 % below SFT's; top-k within 5 % of
full-vocabulary KD; top-k ≥ 1.5× faster per step than full. Writes ``bench/results/distill_kd_vs_sft.json``.

Run: ``.venv/bin/python bench/distill_kd_vs_sft.py [--n 200 --steps 120 --k 20]`` (~30-40 min on 2 CPU cores;
``--n 16 --steps 2`` is a smoke run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))


def held_out(student_dir: Path, teacher, ds_dir: Path, batch_size: int) -> dict:
    """Full-vocabulary KL(teacher || student), top-1 agreement and CE on the validation answers."""
    from datasets import load_from_disk

    from distill.models import load_causal_lm, load_tokenizer
    from distill.train.run import eval_rows, tokenize_row

    tok = load_tokenizer(student_dir)
    rows = [r for r in (tokenize_row(tok, m, 512) for m in load_from_disk(str(ds_dir))["validation"]["messages"]) if r]
    student = load_causal_lm(student_dir, dtype="float32")
    ev = eval_rows(student, rows, tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                   batch_size, None, None, teacher)
    return {"kl_full": ev["agreement"]["kl_full"], "top1_agreement": ev["agreement"]["top1_agreement"],
            "ce": round(ev["loss"], 4), "tokens": ev["agreement"]["tokens"], "rows": len(rows)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200, help="GSM8K train questions (seeds)")
    ap.add_argument("--k", type=int, default=20, help="cached teacher log-probs per token")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--steps", type=int, default=120, help="optimizer steps per arm")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--keep-layers", type=int, default=20, help="student depth (the teacher has 30 layers)")
    ap.add_argument("--arms", default="sft,topk,full")
    ap.add_argument("--lr", type=float, default=5e-4, help="peak learning rate, every arm")
    ap.add_argument("--full-ft", action="store_true", help="full fine-tuning instead of LoRA r16, every arm")
    ap.add_argument("--out", default="distill_kd_vs_sft.json", help="result file name under bench/results/")
    ap.add_argument("--alpha-ce", type=float, default=0.1, help="KD arms: weight of the CE term (1 - alpha on the KD term)")
    args = ap.parse_args()

    from distill.config import shared_data_dir
    from distill.data.dataset import GenerateConfig, generate_dataset
    from distill.models import fetch_bundled_teacher, load_causal_lm
    from distill.teacher.query import TeacherConfig
    from distill.train.run import TrainConfig, train_student

    data = shared_data_dir()
    seeds = data / "gsm8k" / "train.jsonl" if data else None
    if seeds is None or not seeds.is_file():
        sys.exit("../shared/data/gsm8k/train.jsonl not found: this benchmark needs it (see README)")
    tmp = Path(tempfile.mkdtemp(prefix="eakd-bench-kd-"))
    t = time.perf_counter()
    ds = generate_dataset(
        GenerateConfig(seeds=str(seeds), limit=args.n, styles=["cot"], validation_fraction=0.2, drop_truncated=False,
                       sampling={"temperature": 0.0, "max_tokens": args.max_tokens, "top_logprobs": args.k}),
        TeacherConfig(backend="vllm", model="bundled", cache_path=str(tmp / "cache.sqlite"), max_model_len=2048),
        tmp / "dataset")
    gen_seconds = time.perf_counter() - t
    teacher_dir = fetch_bundled_teacher()
    base = dict(student="bundled", keep_layers=args.keep_layers, max_steps=args.steps, batch_size=args.batch_size,
                lr=args.lr, dtype="float32", device="cpu", seed=0, lora={"enabled": not args.full_ft})
    arms = {"sft": {"kd": {"enabled": False}},
            "topk": {"kd": {"enabled": True, "alpha_ce": args.alpha_ce}},
            "full": {"kd": {"enabled": True, "alpha_ce": args.alpha_ce, "teacher": str(teacher_dir),
                            "teacher_dtype": "float32"}}}
    names = [a for a in args.arms.split(",") if a]
    results: dict[str, dict] = {}
    for name in names:
        m = json.loads((train_student(TrainConfig(**base, **arms[name]), ds, tmp / name) / "metrics.json").read_text())
        results[name] = {"mode": m["mode"], "seconds": m["seconds"], "seconds_per_step": round(m["seconds"] / m["steps"], 3),
                         "tokens_per_s": m["tokens_per_s"], "loss_first": m["loss_first"], "loss_last": m["loss_last"]}
        print(f"{name}: {m['steps']} steps in {m['seconds']:.0f} s ({m['tokens_per_s']} tok/s)", flush=True)
    teacher = load_causal_lm(teacher_dir, dtype="float32").eval().requires_grad_(False)
    for name in names:  # measured after all training, with the same teacher in memory, so no arm is favoured
        results[name]["held_out"] = held_out(tmp / name, teacher, ds, args.batch_size)

    def kl(name):
        return results[name]["held_out"]["kl_full"]

    checks = []
    if {"sft", "topk"} <= set(results):
        checks.append(("top-k KD's held-out KL >= 10% below SFT's", kl("topk") <= 0.9 * kl("sft"),
                       f"top-k {kl('topk'):.4f} vs SFT {kl('sft'):.4f} ({100 * (1 - kl('topk') / kl('sft')):.1f}% lower)"))
    if {"topk", "full"} <= set(results):
        checks.append(("top-k within 5% of full-vocabulary KD", kl("topk") <= 1.05 * kl("full"),
                       f"top-k {kl('topk'):.4f} vs full {kl('full'):.4f}"))
        speed = results["full"]["seconds_per_step"] / results["topk"]["seconds_per_step"]
        checks.append(("top-k >= 1.5x faster per step than full-vocabulary KD", speed >= 1.5, f"{speed:.2f}x"))
    print(f"\n{args.n} GSM8K questions (zero-shot CoT, greedy, top-{args.k}), student = bundled depth-pruned to "
          f"{args.keep_layers} layers + {'full fine-tuning' if args.full_ft else 'LoRA'}, lr {args.lr:g}, {args.steps} steps x {args.batch_size}; {os.cpu_count()} CPU threads\n")
    print("| arm | held-out KL(teacher‖student), full vocab | top-1 agreement | CE | s/step | train loss |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        h = r["held_out"]
        print(f"| {name} | {h['kl_full']:.4f} | {h['top1_agreement']:.1%} | {h['ce']:.4f} | {r['seconds_per_step']:.2f} | "
              f"{r['loss_first']:.3f} -> {r['loss_last']:.3f} |")
    print()
    for claim, ok, text in checks:
        print(f"- [{'met' if ok else 'MISSED'}] {claim}: {text}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / args.out
    out.write_text(json.dumps({"config": vars(args), "generate_seconds": round(gen_seconds, 1), "arms": results,
                               "targets": [{"claim": c, "met": ok, "numbers": t} for c, ok, t in checks],
                               "cpu_count": os.cpu_count()}, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
