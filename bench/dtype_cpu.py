"""Does this machine compute bf16 natively? fp32 vs bf16, side by side in one run.

Measures (1) a square torch matmul and (2) with ``--vllm``, vLLM offline generation on the bundled
teacher (64 prompts x 64 tokens, greedy, ignore_eos) in each dtype. Prints a table and writes
``bench/results/dtype_cpu.json``. The ratio is what eakd's ``dtype: auto`` rule rests on.

Run: ``.venv/bin/python bench/dtype_cpu.py [--vllm]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def matmul_gflops(dtype_name: str, n: int = 1024, reps: int = 3) -> float:
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


VLLM_SNIPPET = r"""
import sys, time, json
if __name__ == "__main__":
    from vllm import LLM, SamplingParams
    llm = LLM(model=sys.argv[1], dtype=sys.argv[2], enforce_eager=True, max_model_len=1024, seed=0)
    msgs = [[{"role": "user", "content": f"Write a short story about the number {i}."}] for i in range(64)]
    sp = SamplingParams(temperature=0, max_tokens=64, ignore_eos=True)
    llm.chat(msgs[:4], sampling_params=sp, use_tqdm=False)
    t = time.perf_counter()
    outs = llm.chat(msgs, sampling_params=sp, use_tqdm=False)
    n = sum(len(o.outputs[0].token_ids) for o in outs)
    print("RESULT " + json.dumps({"tokens": n, "seconds": time.perf_counter() - t}))
"""


def vllm_tok_s(dtype_name: str) -> float:
    from distill.models import fetch_bundled_teacher
    from distill.teacher.query import cpu_thread_env

    env = os.environ | {"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "2"}
    env |= cpu_thread_env(env)
    proc = subprocess.run([sys.executable, "-c", VLLM_SNIPPET, str(fetch_bundled_teacher()), dtype_name],
                          capture_output=True, text=True, env=env)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(proc.stderr[-3000:])
    r = json.loads(line[7:])
    return r["tokens"] / r["seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vllm", action="store_true", help="also time vLLM generation in both dtypes (~3 min)")
    args = ap.parse_args()
    from distill.models import cpu_has_fast_bf16

    rows = {d: {"matmul_gflops": round(matmul_gflops(d), 2)} for d in ("float32", "bfloat16")}
    if args.vllm:
        for d in rows:
            rows[d]["vllm_out_tok_s"] = round(vllm_tok_s(d), 1)
    result = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "native_bf16": cpu_has_fast_bf16(), "results": rows,
              "bf16_over_fp32": {k: round(rows["bfloat16"][k] / rows["float32"][k], 4) for k in rows["float32"]}}
    print(f"native bf16 (AVX512-BF16/AMX): {result['native_bf16']}")
    print(f"{'metric':<18}{'float32':>12}{'bfloat16':>12}{'bf16/fp32':>12}")
    for k in rows["float32"]:
        print(f"{k:<18}{rows['float32'][k]:>12}{rows['bfloat16'][k]:>12}{result['bf16_over_fp32'][k]:>12}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dtype_cpu.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
