"""Data at scale: the generate stage on 10k / 50k / 200k requests through the ``openai`` backend.

The teacher is :mod:`bench.loopback_stub` on 127.0.0.1, which answers at once, so what is measured is
eakd's own cost: per request (client, cache, rendering, rows, filters, the atomic save) and in memory.
Each size runs ``generate_dataset`` in a fresh child process on its own seeds (an ICL prompt with 3
demos and an instruct prompt per seed, so N requests are N/2 seeds), against one response cache
pre-filled with ``--cache-entries`` (default 1M) entries, so every run looks up and writes into a
cache of at least that size and every request is a miss that is really sent. Per size: wall time of the
stage and of its teacher phase, per-request overhead, peak RSS (``VmHWM``) and RSS before the stage,
rows per split. Then the response cache's lookup latency at its final size (single keys and batches of
500, hits and misses), and ``eakd view`` on the largest dataset: index build and the first page.

Writes bench/results/data_scaling.json. Run: ``python bench/data_scaling.py`` (~20 min on 2 cores, ~1 GB of
temp disk); ``--sizes 2000,10000 --cache-entries 100000`` for a quick look.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))

TOPICS = ["apples", "rivers", "trains", "gardens", "planets", "coins", "violins", "glaciers", "bridges", "owls"]
TASKS = 50  # task groups: ICL demos come from the seed's own task


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def write_seeds(path: Path, n: int, tag: str) -> None:
    """``n`` seed rows with their own ids and texts (``tag`` keeps sizes apart), spread over TASKS tasks."""
    rng = random.Random(tag)
    with path.open("w") as f:
        for i in range(n):
            task = i % TASKS
            topic = TOPICS[rng.randrange(len(TOPICS))]
            row = {"id": f"{tag}-{i}", "task": f"task-{task}",
                   "instruction": f"Task {task}: answer the question about {topic} in one short sentence.",
                   "input": f"Question {i} ({tag}): what is remarkable about {topic} number {rng.randrange(10**6)}?",
                   "answer": f"{topic} {rng.randrange(1000)}"}
            f.write(json.dumps(row) + "\n")


def prefill_cache(path: Path, n: int) -> float:
    """Fill a fresh response cache with ``n`` synthetic answers (batches of 50k); returns the seconds taken."""
    from distill.teacher.cache import ResponseCache

    cache = ResponseCache(path)
    t0 = time.perf_counter()
    for start in range(0, n, 50_000):
        items = [(f"{i:064x}", {"choices": [{"text": f"cached answer {i}", "finish_reason": "stop"}],
                                 "prompt_tokens": 40, "completion_tokens": 8}) for i in range(start, min(n, start + 50_000))]
        cache.put_many(items)
    cache.close()
    return time.perf_counter() - t0


def child(seeds: Path, out: Path, cache: Path, url: str, concurrency: int) -> None:
    """One size, in its own process: run the generate stage and print its figures as JSON."""
    from distill.data.config import GenerateConfig
    from distill.data.dataset import generate_dataset
    from distill.teacher.types import TeacherConfig

    os.environ.setdefault("OPENAI_API_KEY", "sk-loopback-stub")
    cfg = GenerateConfig(seeds=str(seeds), styles=["icl", "instruct"], num_demos=3, demo_method="random",
                         sampling={"temperature": 0.0, "max_tokens": 32})
    teacher = TeacherConfig(backend="openai", model="stub", base_url=url, max_concurrency=concurrency,
                            cache_path=str(cache))
    rss_before = _status_kib("VmRSS")
    t0 = time.perf_counter()
    generate_dataset(cfg, teacher, out)
    wall = time.perf_counter() - t0
    stats = json.loads((out / "stats.json").read_text())
    disk = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(json.dumps({"wall_s": round(wall, 2), "teacher_wall_s": stats["teacher"]["wall_s"],
                      "requests": stats["requests"], "sent": stats["teacher"]["sent"],
                      "cache_hits": stats["teacher"]["cache_hits"], "failures": stats["teacher"]["failures"],
                      "rows": stats["rows"], "rss_before_mib": round(rss_before / 1024, 1),
                      "peak_rss_mib": round(_status_kib("VmHWM") / 1024, 1), "disk_mib": round(disk / 2**20, 1)}))


def run_size(n: int, tmp: Path, cache: Path, url: str, concurrency: int) -> dict:
    """Seeds for ``n`` requests, then :func:`child` in a fresh process; its figures plus per-request ones."""
    seeds = tmp / f"seeds-{n}.jsonl"
    write_seeds(seeds, n // 2, f"s{n}")
    out = tmp / f"dataset-{n}"
    proc = subprocess.run([sys.executable, __file__, "--child", str(seeds), str(out), str(cache), url, str(concurrency)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"size {n}: the child failed:\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["overhead_ms_per_request"] = round(1000 * res["wall_s"] / max(1, res["requests"]), 3)
    res["teacher_ms_per_request"] = round(1000 * res["teacher_wall_s"] / max(1, res["sent"]), 3)
    return res


def cache_latency(path: Path, probes: int = 2000) -> dict:
    """Lookup latency of the response cache at its current size: single-key p50/p95 (µs) and batches of 500
    (µs per key), for keys it holds and keys it does not."""
    import sqlite3

    import numpy as np

    from distill.teacher.cache import ResponseCache

    keys = [k for (k,) in sqlite3.connect(path).execute("SELECT key FROM responses")]
    rng = random.Random(0)
    hits = rng.sample(keys, min(probes, len(keys)))
    misses = [f"{rng.getrandbits(256):064x}" for _ in range(probes)]
    cache = ResponseCache(path)
    out: dict = {"entries": len(keys), "file_mib": round(path.stat().st_size / 2**20, 1)}
    for name, sample in (("hit", hits), ("miss", misses)):
        single = []
        for k in sample:
            t0 = time.perf_counter()
            cache.get_many([k])
            single.append((time.perf_counter() - t0) * 1e6)
        t0 = time.perf_counter()
        found = cache.get_many(sample)
        batch = (time.perf_counter() - t0) * 1e6 / len(sample)
        out[name] = {"single_p50_us": round(float(np.percentile(single, 50)), 1),
                     "single_p95_us": round(float(np.percentile(single, 95)), 1),
                     "batched_us_per_key": round(batch, 1), "found": len(found)}
    cache.close()
    return out


def viewer_first_page(dataset: Path) -> dict:
    """``eakd view`` on ``dataset``: seconds to index it, then the first page of train rows over HTTP."""
    from bench.viewer_scale import measure
    from flows.viewer import make_server

    t0 = time.perf_counter()
    server = make_server(dataset, port=0)
    index_s = time.perf_counter() - t0
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        first = measure(server.server_address[1], ["/api/rows?split=train&limit=50"] * 20)
    finally:
        server.shutdown()
        server.server_close()
    return {"index_build_s": round(index_s, 2), "first_page": first,
            "open_to_first_page_s": round(index_s + first["first_ms"] / 1000, 2)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_stub() -> tuple[subprocess.Popen, str]:
    """The loopback stub in a child process; returns it and its base URL once it answers."""
    import urllib.request

    port = _free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "loopback_stub.py"), "--port", str(port)])
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(200):
        try:
            urllib.request.urlopen(url + "/models", timeout=1).read()
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the loopback stub did not start")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,50000,200000", help="requests per run, comma-separated")
    ap.add_argument("--cache-entries", type=int, default=1_000_000, help="entries pre-filled into the response cache")
    ap.add_argument("--concurrency", type=int, default=64, help="teacher.max_concurrency")
    ap.add_argument("--child", nargs=5, metavar=("SEEDS", "OUT", "CACHE", "URL", "CONCURRENCY"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        seeds, out, cache, url, conc = args.child
        child(Path(seeds), Path(out), Path(cache), url, int(conc))
        return 0

    from bench.machine import lscpu

    sizes = [int(s) for s in args.sizes.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="eakd-bench-data-"))
    stub, url = start_stub()
    try:
        cache = tmp / "teacher.sqlite"
        prefill_s = prefill_cache(cache, args.cache_entries)
        print(f"cache pre-filled with {args.cache_entries} entries in {prefill_s:.1f} s", flush=True)
        runs = {}
        for n in sizes:
            runs[str(n)] = run_size(n, tmp, cache, url, args.concurrency)
            r = runs[str(n)]
            print(f"{n} requests: {r['wall_s']} s ({r['overhead_ms_per_request']} ms/request, teacher phase "
                  f"{r['teacher_ms_per_request']} ms/request), peak RSS {r['peak_rss_mib']} MiB "
                  f"(before the stage {r['rss_before_mib']} MiB), rows {r['rows']}", flush=True)
        latency = cache_latency(cache)
        print(f"cache lookups at {latency['entries']} entries: {latency}", flush=True)
        viewer = viewer_first_page(tmp / f"dataset-{max(sizes)}")
        print(f"viewer on {max(sizes)} rows: {viewer}", flush=True)
    finally:
        stub.terminate()
        stub.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)

    small, big = runs[str(min(sizes))], runs[str(max(sizes))]
    model, flags = lscpu()
    result = {
        "machine": {"cpu": model, "avx512_bf16": "avx512_bf16" in flags, "cores": os.cpu_count(),
                    "python": platform.python_version()},
        "settings": {"sizes": sizes, "cache_prefill_entries": args.cache_entries, "concurrency": args.concurrency,
                     "styles": ["icl", "instruct"], "num_demos": 3, "teacher": "bench/loopback_stub.py (answers at once)"},
        "cache_prefill_s": round(prefill_s, 1),
        "runs": runs,
        "peak_rss_ratio_largest_to_smallest": round(big["peak_rss_mib"] / small["peak_rss_mib"], 3),
        "cache_lookup": latency,
        "viewer": viewer,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "data_scaling.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"peak RSS at {max(sizes)} / at {min(sizes)} requests: {result['peak_rss_ratio_largest_to_smallest']}x "
          f"-> bench/results/data_scaling.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
