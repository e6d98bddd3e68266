"""Feature distillation in recovery: does adding FitNets hints and TinyBERT attention maps to logit KD help a
depth-pruned student? (issue 10)

One run of :func:`compress.stage.compress_student` (``chain: false``): the bundled SmolLM2-135M depth-pruned by
``--fraction`` (angular distance, the same blocks every time), then ``--steps`` recovery steps from the
unpruned model on the calibration windows, three ways at equal steps, data and learning rate:

1. logit KD alone (forward KL), as in ``bench/compress_methods.py``'s ``depth25_recovered``;
2. + hints (``recover_hint_weight``): each kept block regresses on the block it came from;
3. + hints + attention maps (``recover_attention_weight``);
4. + an adversarial term (``recover_adversarial_weight``): a discriminator on the final hidden states.

Measured on WikiText-2 test (first ``--windows`` 512-token windows, never trained on): perplexity, and the
full-vocabulary KL(teacher || student) per token with the unpruned model as the teacher. Reported whatever
the numbers are. Writes ``bench/results/compress_hints.json`` (``--out`` to name another file).

Run: ``.venv/bin/python bench/compress_hints.py [--steps 16 --fraction 0.25]`` (~20 min on 2 CPU cores).
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


def held_out_kl(student, teacher, windows) -> float:
    """Mean full-vocabulary KL(teacher || student) per next-token position over ``windows`` [n, T]."""
    import torch

    from distill.train.losses import kd_loss

    total, n = 0.0, 0
    with torch.no_grad():
        for ids in windows.split(2):
            t = teacher(input_ids=ids, use_cache=False).logits[:, :-1]
            s = student(input_ids=ids, use_cache=False).logits[:, :-1]
            labels = ids[:, 1:]
            total += float(kd_loss(s, t, labels, method="forward_kl", reduction="sum", chunk_size=256))
            n += labels.numel()
    return total / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fraction", type=float, default=0.25, help="share of decoder blocks dropped")
    ap.add_argument("--steps", type=int, default=16, help="recovery steps per arm (4 windows of 512 tokens each)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--hint-weight", type=float, default=1.0)
    ap.add_argument("--attention-weight", type=float, default=1.0)
    ap.add_argument("--adversarial-weight", type=float, default=0.1)
    ap.add_argument("--only", default="", help="comma-separated subset of the arms (kd is always run)")
    ap.add_argument("--windows", type=int, default=20, help="WikiText-2 test windows of 512 tokens")
    ap.add_argument("--calib", type=int, default=64, help="calibration windows of 512 tokens (WikiText-2 valid)")
    ap.add_argument("--out", default="compress_hints.json", help="file name under bench/results/")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    import torch

    from compress.artifact import load_compressed
    from compress.stage import CompressConfig, compress_student
    from distill.config import shared_data_dir
    from distill.evaluate import load_eval_text
    from distill.models import fetch_bundled_teacher, load_causal_lm, load_tokenizer

    data = shared_data_dir()
    test = data / "wikitext-2" / "wiki.test.tokens" if data else None
    if test is None or not test.is_file():
        sys.exit("../shared/data/wikitext-2 not found: this benchmark needs WikiText-2 (see README)")
    rec = {"method": "depth", "fraction": args.fraction, "recover_steps": args.steps, "recover_lr": args.lr}
    arms = {"kd": rec, "kd_hints": {**rec, "recover_hint_weight": args.hint_weight},
            "kd_hints_attention": {**rec, "recover_hint_weight": args.hint_weight,
                                   "recover_attention_weight": args.attention_weight},
            "kd_adversarial": {**rec, "recover_adversarial_weight": args.adversarial_weight}}
    if args.only:
        arms = {n: s for n, s in arms.items() if n == "kd" or n in args.only.split(",")}
    cfg = CompressConfig(steps=[{**s, "name": n} for n, s in arms.items()], chain=False, save_dtype="float32",
                         eval={"text_path": str(test), "window": 512, "max_windows": args.windows, "dtype": "float32",
                               "max_examples": 0, "latency": False},
                         calibration={"n_samples": args.calib, "seq_len": 512, "seed": 0})
    t0 = time.perf_counter()
    src = fetch_bundled_teacher()
    out = Path(tempfile.mkdtemp(prefix="eakd-bench-hints-"))
    compress_student(cfg, src, out)
    summary = json.loads((out / "summary.json").read_text())
    teacher = load_causal_lm(src, dtype="float32").eval()
    ids = torch.tensor(load_tokenizer(src)(load_eval_text(test), add_special_tokens=False)["input_ids"])
    windows = ids[: (ids.numel() // 512) * 512].view(-1, 512)[: args.windows]
    rows = {}
    for step in summary["steps"]:
        student = load_compressed(step["artifact"]).eval()
        r = step["stats"]["recovery"]
        rows[step["name"]] = {"perplexity": step["after"]["perplexity"], "kl": held_out_kl(student, teacher, windows),
                              "kd_first": r.get("kd_first", r["loss_first"]), "kd_last": r.get("kd_last", r["loss_last"]),
                              "loss_last": r["loss_last"], "seconds": r["seconds"], "dropped": step["stats"]["dropped"]}
        if "discriminator_accuracy_last" in r:  # 0.5: the student's states pass for the teacher's
            rows[step["name"]]["discriminator_accuracy"] = [r["discriminator_accuracy_first"], r["discriminator_accuracy_last"]]
    base = summary["baseline"]["perplexity"]
    print(f"\nSmolLM2-135M depth -{args.fraction:.0%} ({len(rows['kd']['dropped'])} blocks), {args.steps} recovery steps "
          f"x 4 x 512 tokens, lr {args.lr}; WikiText-2 test {args.windows} x 512; baseline perplexity {base:.2f}; "
          f"{os.cpu_count()} CPUs\n")
    print("| recovery | held-out KL(teacher ‖ student) | perplexity | train KL first → last fifth | seconds |")
    print("|---|---|---|---|---|")
    for n, r in rows.items():
        print(f"| {n} | {r['kl']:.4f} | {r['perplexity']:.2f} | {r['kd_first']:.3f} → {r['kd_last']:.3f} | {r['seconds']:.0f} |")
    best = min(rows, key=lambda n: rows[n]["kl"])
    print(f"\nlowest held-out KL: {best} ({rows[best]['kl']:.4f} vs logit KD alone {rows['kd']['kl']:.4f}, "
          f"{100 * (rows[best]['kl'] / rows['kd']['kl'] - 1):+.1f}%)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / args.out
    path.write_text(json.dumps({"config": vars(args), "baseline": summary["baseline"], "arms": rows,
                                "cpu_count": os.cpu_count(), "seconds": round(time.perf_counter() - t0, 1)}, indent=2))
    print(f"wrote {path} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
