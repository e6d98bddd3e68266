"""One Born-Again generation against its parent (issue 10).

``train.born_again: 1`` through :func:`distill.train.run.train_student`: generation 0 is the bundled model
depth-pruned to ``--keep-layers`` + LoRA trained by sequence-level KD on a teacher dataset; generation 1
starts from the same pruned model, seed and data and is trained for the same steps by online logit KD from
generation 0 (forward KL, alpha 0.5 with the CE on the teacher's answers) — no external teacher. Both are
measured the same way on the dataset's validation answers: CE on the teacher's tokens, top-1 agreement with
them, and full-vocabulary KL(teacher || student) against the bundled teacher that wrote the dataset
(loaded for the measurement only). Writes ``bench/results/distill_born_again.json``.

Run: ``.venv/bin/python bench/distill_born_again.py [--dataset runs/demo-data/dataset --steps 40]`` (~8 min on
2 CPU cores; the dataset comes from ``eakd generate flows/configs/demo.yaml --out runs/demo-data/dataset``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", type=Path, default=ROOT / "runs" / "demo-data" / "dataset")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--keep-layers", type=int, default=20)
    ap.add_argument("--lr", type=float, default=5e-4)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not (args.dataset / "dataset_dict.json").is_file():
        sys.exit(f"{args.dataset} is not an eakd dataset: run `eakd generate flows/configs/demo.yaml --out {args.dataset}`")

    from datasets import load_from_disk

    from distill.models import fetch_bundled_teacher, load_causal_lm, load_tokenizer
    from distill.train.run import TrainConfig, eval_rows, tokenize_row, train_student

    t0 = time.perf_counter()
    teacher_dir = fetch_bundled_teacher()
    cfg = TrainConfig(student="bundled", keep_layers=args.keep_layers, max_steps=args.steps, batch_size=args.batch_size,
                      lr=args.lr, dtype="float32", device="cpu", save_dtype="float32", born_again=1)
    out = Path(tempfile.mkdtemp(prefix="eakd-bench-ba-")) / "student"
    train_student(cfg, args.dataset, out)
    record = json.loads((out / "born_again.json").read_text())["generations"]

    tok = load_tokenizer(teacher_dir)
    rows = [r for r in (tokenize_row(tok, m, 512) for m in load_from_disk(str(args.dataset))["validation"]["messages"]) if r]
    teacher = load_causal_lm(teacher_dir, dtype="float32").eval()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    for r in record:
        ev = eval_rows(load_causal_lm(r["folder"], dtype="float32"), rows, pad, 4, None, None, teacher)
        r |= {"val_ce": round(ev["loss"], 4), "kl_full_vs_original_teacher": ev["agreement"]["kl_full"],
              "top1_agreement_vs_original": ev["agreement"]["top1_agreement"], "tokens": ev["agreement"]["tokens"]}
    parent, child = record
    print(f"\n{len(rows)} validation rows of {args.dataset.name}; student = bundled depth-pruned to {args.keep_layers} "
          f"layers + LoRA, {args.steps} steps x {args.batch_size}, lr {args.lr}; {os.cpu_count()} CPUs\n")
    print("| generation | trained by | validation CE | top-1 agreement | KL(original teacher ‖ student) |")
    print("|---|---|---|---|---|")
    for r in record:
        by = "the teacher's answers (SFT)" if r["teacher"] is None else "generation 0 (online KD + CE)"
        print(f"| {r['generation']} | {by} | {r['val_ce']:.4f} | {r['top1_agreement_vs_original']:.4f} | "
              f"{r['kl_full_vs_original_teacher']:.4f} |")
    better = child["kl_full_vs_original_teacher"] < parent["kl_full_vs_original_teacher"]
    print(f"\ngeneration 1 vs its parent: KL {parent['kl_full_vs_original_teacher']:.4f} -> "
          f"{child['kl_full_vs_original_teacher']:.4f} ({'lower' if better else 'not lower'})")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "distill_born_again.json"
    path.write_text(json.dumps({"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                                "generations": record, "validation_rows": len(rows), "cpu_count": os.cpu_count(),
                                "seconds": round(time.perf_counter() - t0, 1)}, indent=2))
    print(f"wrote {path} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
