"""Batch mode vs the online path on the bundled teacher (issue 11): same records, and the time each takes.

The same N prompts (GSM8K train questions from ../shared/data), greedy, answered twice:
- online: ``eakd teacher serve`` (vLLM's OpenAI-compatible server on 127.0.0.1) + eakd's ``openai``
  backend at concurrency 32; timed with and without the server's start;
- batch: ``teacher.batch`` — one Batch API file through vLLM's batch runner (its engine start included).
Reports both wall times, their ratio and the share of records with identical text.

Writes bench/results/batch_vs_online.json. Run: ``python bench/batch_vs_online.py --n 256`` (~6 min, 2 CPU cores).
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
sys.path.insert(0, str(ROOT / "bench"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=32)
    args = ap.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")

    from teacher_throughput import INSTRUCTION, load_gsm8k

    from distill.teacher.query import TeacherConfig, TeacherRequest, TeacherStats, query_teacher
    from distill.teacher.serve import free_port, start_server, stop_server, wait_ready

    rows = load_gsm8k(args.n)
    if not rows:
        print("skipped: ../shared/data/gsm8k/train.jsonl is absent (set EAKD_DATA_DIR)")
        return 0
    reqs = [TeacherRequest(messages=[{"role": "user", "content": f"{INSTRUCTION}\n\n{q['question']}"}],
                           model="SmolLM2-135M-Instruct", style="bench", template="batch-bench", template_sha="b",
                           max_tokens=args.max_tokens, temperature=0.0, seed=0) for q in rows]
    tmp = Path(tempfile.mkdtemp(prefix="eakd-bench-batch-"))
    res: dict = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()}, "args": vars(args)}

    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    t0 = time.perf_counter()
    proc = start_server("bundled", port, log_file=tmp / "server.log")
    try:
        start_s = wait_ready(url, proc, timeout_s=900)
        stats = TeacherStats()
        t = time.perf_counter()
        online = query_teacher(reqs, TeacherConfig(backend="openai", model="bundled", base_url=url, max_concurrency=32,
                                                   cache_path=str(tmp / "online.sqlite")), stats)
        requests_s = time.perf_counter() - t
    finally:
        stop_server(proc)
    res["online"] = {"server_start_s": round(start_s, 1), "requests_s": round(requests_s, 1),
                     "total_s": round(time.perf_counter() - t0, 1), "completion_tokens": stats.completion_tokens}

    bstats = TeacherStats()
    t = time.perf_counter()
    batch = query_teacher(reqs, TeacherConfig(backend="vllm", model="bundled", batch=True,
                                              cache_path=str(tmp / "batch.sqlite")), bstats)
    res["batch"] = {"total_s": round(time.perf_counter() - t, 1), "completion_tokens": bstats.completion_tokens,
                    "failures": bstats.failures}
    same = sum(a.choices[0].text == b.choices[0].text for a, b in zip(online, batch) if a.choices and b.choices)
    res["same_text_share"] = round(same / len(reqs), 4)
    res["batch_vs_online_total"] = round(res["online"]["total_s"] / res["batch"]["total_s"], 3)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "batch_vs_online.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
