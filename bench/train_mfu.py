"""Model-FLOPs utilisation of ``eakd train`` against the GEMM peak measured in the same run (issue 25).

MFU = (model FLOPs per token x tokens/s) / peak FLOP/s, the PaLM definition (Chowdhery et al. 2022, App. B):
only the FLOPs the model needs count, not recomputation. Per trained token of a decoder with ``N`` matmul
parameters (every linear, the LM head included: it runs even when tied), ``L`` layers, width ``d`` and
sequence length ``T``:

* full fine-tuning: ``6 N + 12 L d T`` (forward 2N, backward 4N: gradients of activations and of weights;
  attention scores and values 4 L d T forward, 8 backward);
* LoRA: ``4 N + 6 N_lora + 12 L d T`` (the frozen weights get no weight gradient: forward 2N and the
  activation gradients 2N; the adapters train in full).

The peak is the best of a few dense GEMMs of the shapes training runs (``[B*T, d] x [d, 4d]``-like, from the
model's own widths) and one large square, timed in this process with torch's threads, in fp32 and bf16, before
and after the training arms (the mean of both is the denominator; their spread is recorded). Each arm is
:func:`distill.train.run.train_student` on full-length rows (no padding, so every attended token is a
trained one): ``metrics.json``'s ``tokens_per_s`` (attended tokens over the step loop's seconds).

Arms: full fine-tuning in fp32, full fine-tuning with bf16 autocast (``dtype: bfloat16``; needs AVX-512 BF16 or
AMX, else skipped), LoRA r=16 with bf16 autocast. Student: the bundled SmolLM2-135M. Data: WikiText-2 valid
text from ../shared/data cut into ``--max-length``-token answers (skips with the reason when absent).
Target (issue 25): >= 35 % MFU on CPU. Writes ``bench/results/train_mfu.json``.

Run: ``.venv/bin/python bench/train_mfu.py [--steps 8 --batch-size 4 --max-length 512]`` (~6 min on 2 cores).
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
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"


def gemm_peak(dtype, shapes: list[tuple[int, int, int]], repeats: int = 5) -> dict:
    """Best GFLOP/s of ``[m, k] x [k, n]`` over ``shapes`` (each timed ``repeats`` times after a warm-up)."""
    import torch

    best = {}
    for m, k, n in shapes:
        a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
        torch.matmul(a, b)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            torch.matmul(a, b)
            times.append(time.perf_counter() - t)
        best[f"{m}x{k}x{n}"] = round(2 * m * k * n / min(times) / 1e9, 1)
    return {"gflops": max(best.values()), "by_shape": best}


def model_flops(cfg, n_matmul: int, n_lora: int, seq: int, lora: bool) -> int:
    """FLOPs per trained token (module docstring)."""
    attention = 12 * cfg.num_hidden_layers * cfg.hidden_size * seq
    return (4 * n_matmul + 6 * n_lora if lora else 6 * n_matmul) + attention


def dataset(out: Path, rows: int, max_length: int) -> Path:
    """``rows`` train rows whose chat encoding is longer than ``max_length`` tokens (cut to it: no padding)."""
    from datasets import Dataset, DatasetDict

    from distill.config import shared_data_dir

    data = shared_data_dir()
    path = data / "wikitext-2" / "wiki.valid.tokens" if data else None
    if path is None or not path.is_file():
        sys.exit("train_mfu: ../shared/data/wikitext-2/wiki.valid.tokens is absent; nothing to train on (skipped)")
    words = path.read_text().split()
    per_row = max_length  # words per answer: more tokens than max_length
    convos = [{"messages": [{"role": "user", "content": "Continue the article."},
                            {"role": "assistant", "content": " ".join(words[i * per_row:(i + 1) * per_row])}]}
              for i in range(rows + 2)]
    DatasetDict({"train": Dataset.from_list(convos[:rows]), "validation": Dataset.from_list(convos[rows:])}
                ).save_to_disk(str(out))
    return out


def arm(name: str, student: Path, ds: Path, tmp: Path, args, dtype: str, lora: bool) -> dict:
    from distill.train.run import TrainConfig, train_student

    cfg = TrainConfig(student=str(student), lora={"enabled": lora, "r": 16}, kd={"enabled": False},
                      max_steps=args.steps, batch_size=args.batch_size, max_length=args.max_length, lr=1e-5,
                      dtype=dtype, device="cpu", log_every=args.steps, warmup_ratio=0.0)
    out = train_student(cfg, ds, tmp / name)
    m = json.loads((out / "metrics.json").read_text())
    return {"tokens_per_s": m["tokens_per_s"], "seconds": m["seconds"], "tokens": m["tokens"],
            "autocast": m["autocast"], "trainable_parameters": m["trainable_parameters"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--arms", default="full_fp32,full_bf16,lora_bf16")
    args = ap.parse_args()
    import torch

    from bench.machine import lscpu
    from distill.models import fetch_bundled_teacher, load_causal_lm

    model_name, flags = lscpu()
    bf16_native = bool({"avx512_bf16", "amx_bf16"} & flags)
    student = fetch_bundled_teacher()
    model = load_causal_lm(student)
    cfg = model.config
    n_matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))  # head included
    del model
    tokens = args.batch_size * args.max_length
    shapes = [(tokens, cfg.hidden_size, cfg.intermediate_size), (tokens, cfg.intermediate_size, cfg.hidden_size),
              (tokens, cfg.hidden_size, cfg.hidden_size), (2048, 2048, 2048)]
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peak_before = {k: gemm_peak(d, shapes) for k, d in dtypes.items()}
    results = {}
    with tempfile.TemporaryDirectory(prefix="eakd-mfu-") as tmp:
        ds = dataset(Path(tmp) / "ds", args.steps * args.batch_size, args.max_length)
        for name in args.arms.split(","):
            lora, dt = name.startswith("lora"), name.rsplit("_", 1)[1]
            if dt == "bf16" and not bf16_native:
                results[name] = {"skipped": "no native bf16 on this CPU (AVX-512 BF16 / AMX): autocast would emulate it"}
                continue
            r = arm(name, student, ds, Path(tmp), args, "bfloat16" if dt == "bf16" else "float32", lora)
            n_lora = r["trainable_parameters"] if lora else 0
            r["flops_per_token"] = model_flops(cfg, n_matmul, n_lora, args.max_length, lora)
            results[name] = r
            print(f"{name:10} {r['tokens_per_s']:8.1f} tok/s  {r['flops_per_token'] * r['tokens_per_s'] / 1e9:7.1f} "
                  f"GFLOP/s", flush=True)
    peak_after = {k: gemm_peak(d, shapes) for k, d in dtypes.items()}
    peak = {k: (peak_before[k]["gflops"] + peak_after[k]["gflops"]) / 2 for k in dtypes}
    for name, r in results.items():
        if "tokens_per_s" in r:
            achieved = r["flops_per_token"] * r["tokens_per_s"] / 1e9
            r["achieved_gflops"] = round(achieved, 1)
            r["mfu"] = round(achieved / peak[name.rsplit("_", 1)[1]], 4)
            print(f"{name:10} MFU {100 * r['mfu']:5.1f} % of the {name.rsplit('_', 1)[1]} GEMM peak "
                  f"{peak[name.rsplit('_', 1)[1]]:.0f} GFLOP/s", flush=True)
    measured = [r["mfu"] for r in results.values() if "mfu" in r]
    result = {
        "machine": {"cpu": model_name, "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
                    "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "settings": {"student": "bundled SmolLM2-135M", "steps": args.steps, "batch_size": args.batch_size,
                     "max_length": args.max_length, "n_matmul_params": n_matmul, "layers": cfg.num_hidden_layers,
                     "hidden": cfg.hidden_size, "data": "WikiText-2 valid, full-length rows (no padding)",
                     "flops": "full 6N + 12LdT, LoRA 4N + 6N_lora + 12LdT per token (PaLM MFU: no recompute)"},
        "gemm_peak_gflops": {"before": peak_before, "after": peak_after, "used": peak},
        "arms": results,
        "target": "MFU >= 0.35 on CPU",
        "target_met": bool(measured) and max(measured) >= 0.35,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train_mfu.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"target met: {result['target_met']}; wrote {RESULTS / 'train_mfu.json'}")


if __name__ == "__main__":
    main()
