"""Offline top-k KD vs KD from a served teacher vs served on-policy KD, side by side (issue 24).

One machine, one dataset, one student start, equal steps, seeds 0 and 1; three arms trained by
:func:`distill.train.run.train_student`:

1. ``offline`` — logit KD on the dataset's cached teacher top-``k`` (generated in-process with vLLM);
2. ``served`` — the same rows scored by the teacher's vLLM server (``kd.teacher`` = its URL, top-``k``);
3. ``served_on_policy`` — as 2, with half the micro-batches answered by the student (GKD's lambda = 0.5).

Student: the 2-layer random ``tiny_model`` with the bundled tokenizer (full fine-tuning). Held out: full-vocabulary
KL(teacher ‖ student), top-1 agreement and CE on the validation answers, the teacher in memory for the
measurement only. Wall time: each arm's training seconds (served arms include the HTTP scoring; each run starts
with an empty score cache). Writes ``bench/results/served_kd.json``.

Run: ``.venv/bin/python bench/served_kd.py [--n 42 --steps 20]`` (a few minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=42, help="demo seeds answered by the teacher")
    ap.add_argument("--k", type=int, default=20, help="teacher log-probs per token, every arm")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps per arm")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seeds", default="0,1")
    args = ap.parse_args()

    from distill_kd_vs_sft import held_out
    from machine import lscpu

    from distill.data.dataset import GenerateConfig, generate_dataset
    from distill.models import build_tiny_model, fetch_bundled_teacher, load_causal_lm
    from distill.net import free_port
    from distill.teacher.query import TeacherConfig
    from distill.teacher.serve import start_server, stop_server, wait_ready
    from distill.train.run import TrainConfig, train_student

    tmp = Path(tempfile.mkdtemp(prefix="eakd-bench-served-"))
    ds = generate_dataset(
        GenerateConfig(seeds=str(ROOT / "flows/configs/demo_seeds.jsonl"), limit=args.n, validation_fraction=0.25,
                       drop_truncated=False,
                       sampling={"temperature": 0.0, "max_tokens": args.max_tokens, "top_logprobs": args.k}),
        TeacherConfig(backend="vllm", model="bundled", cache_path=str(tmp / "cache.sqlite"), max_model_len=2048),
        tmp / "dataset")
    teacher_dir = fetch_bundled_teacher()
    student = build_tiny_model(tmp / "tiny", teacher_dir)
    port = free_port()
    proc = start_server("bundled", port, log_file=tmp / "vllm.log")
    url = f"http://127.0.0.1:{port}/v1"
    runs: dict[str, list[dict]] = {}
    try:
        wait_ready(url, proc, timeout_s=600)
        for seed in [int(s) for s in args.seeds.split(",")]:
            for arm in ("offline", "served", "served_on_policy"):
                kd: dict = {"enabled": True}
                if arm != "offline":
                    kd |= {"teacher": url, "served_top_k": args.k,
                           "served_cache_path": str(tmp / f"scores-{arm}-{seed}.sqlite")}
                if arm == "served_on_policy":
                    kd |= {"on_policy": 0.5, "on_policy_max_new_tokens": args.max_tokens}
                cfg = TrainConfig(student=str(student), kd=kd, max_steps=args.steps, batch_size=args.batch_size,
                                  lr=1e-3, lora={"enabled": False}, dtype="float32", device="cpu", seed=seed)
                m = json.loads((train_student(cfg, ds, tmp / f"{arm}-{seed}") / "metrics.json").read_text())
                runs.setdefault(arm, []).append({"seed": seed, "seconds": m["seconds"], "loss_last": m["loss_last"],
                                                 "on_policy_batches": m["on_policy_batches"]})
                print(f"{arm} seed {seed}: {m['steps']} steps in {m['seconds']:.1f} s", flush=True)
    finally:
        stop_server(proc)
    teacher = load_causal_lm(teacher_dir, dtype="float32").eval().requires_grad_(False)
    for arm, rs in runs.items():  # measured after all training, the same teacher in memory for every arm
        for r in rs:
            r["held_out"] = held_out(tmp / f"{arm}-{r['seed']}", teacher, ds, args.batch_size)
    summary = {arm: {"kl_full": statistics.mean(r["held_out"]["kl_full"] for r in rs),
                     "top1_agreement": statistics.mean(r["held_out"]["top1_agreement"] for r in rs),
                     "ce": statistics.mean(r["held_out"]["ce"] for r in rs),
                     "seconds": statistics.mean(r["seconds"] for r in rs)} for arm, rs in runs.items()}
    for arm in summary:
        summary[arm]["seconds_vs_offline"] = round(summary[arm]["seconds"] / summary["offline"]["seconds"], 2)
    model, flags = lscpu()
    cpu = f"{model}; {'AVX-512 BF16' if 'avx512_bf16' in flags else 'AVX2 only'}"
    print(f"\n{args.n} demo seeds, top-{args.k}, tiny student, {args.steps} steps x {args.batch_size}, seeds "
          f"{args.seeds}; {cpu}\n")
    print("| arm | held-out KL(teacher‖student) | top-1 agreement | CE | train s | s vs offline |")
    print("|---|---|---|---|---|---|")
    for arm, s in summary.items():
        print(f"| {arm} | {s['kl_full']:.4f} | {s['top1_agreement']:.1%} | {s['ce']:.4f} | {s['seconds']:.1f} | "
              f"{s['seconds_vs_offline']:.2f}x |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "served_kd.json"
    out.write_text(json.dumps({"config": vars(args), "cpu": cpu, "summary": summary, "runs": runs}, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
