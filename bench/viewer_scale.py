"""``eakd view`` at scale: index build time, memory and ``/api/rows`` latency on a 100k-row dataset.

Builds an N-row dataset (``--rows``, default 100,000) by replicating the newest demo run's rows
(runs/demo-*/dataset; ``--source`` for another) with varied ids, outputs, splits (80/10/10), removal
reasons, judge scores and votes. Teacher logprobs and token ids are kept, so the Arrow files have a
realistic size (~6 KB a row). It is saved with ``save_to_disk`` in a temp dir and opened with
:func:`flows.viewer.make_server` (memory-mapped; the files are still in the page cache, so this is
the warm-cache case). Measures: index build seconds, RSS growth (VmRSS, and its anonymous part:
memory the index really allocated, vs file pages mapped), and over HTTP the first-request and
p50/p95 latency plus response bytes of: first page, a style filter, a search (a new term each
request, so no cache helps), the next page of one search, a deep page, rows removed by one reason,
and /api/meta.

Writes bench/results/viewer_scale.json. Run: ``python bench/viewer_scale.py [--rows 100000]``
(~30 s and ~0.7 GB of temp disk on 2 CPU cores; sizes in MiB).
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))

TOPICS = ["apples", "marbles", "garden", "pencils", "cookies", "trains", "stickers", "books", "coins", "lemons"]
REASONS = [  # (removed_reason template, share of the removed rows)
    ("truncated", 0.3), ("contamination: {k} n-gram(s) overlap eval items (gsm8k test #{k})", 0.2),
    ("near_duplicate: similar to row {k} (0.9{d})", 0.2), ("judge_low: score 2 < 3: the answer is unsupported", 0.1),
    ("sc_minority: answer '1{d}', voted '2{d}' (2/5)", 0.1), ("schema_invalid: missing key 'answer'", 0.1),
]


def _rss() -> dict[str, int]:
    """VmRSS and its anonymous / file-backed parts, in bytes (Linux /proc)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


def build_dataset(source: Path, rows: int, out: Path, seed: int = 0) -> dict[str, int]:
    """Replicate ``source``'s rows to ``rows`` rows with varied fields; save to ``out``; rows per split."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from datasets import Dataset, DatasetDict, load_from_disk

    src = load_from_disk(str(source))
    base = pa.concat_tables([src[s].data.table for s in src if len(src[s])], promote_options="default")
    rng = np.random.default_rng(seed)
    k = np.arange(rows)
    big = base.take(pa.array(k % base.num_rows))
    split = rng.choice(["train", "validation", "removed"], size=rows, p=[0.8, 0.1, 0.1])
    removed = split == "removed"
    reason_i = rng.choice(len(REASONS), size=rows, p=[w for _, w in REASONS])
    reasons = [REASONS[r][0].format(k=int(i % 97), d=int(i % 10)) if rm else None
               for i, r, rm in zip(k, reason_i, removed)]
    truncated = removed & (reason_i == 0)
    topic = [f" (topic {TOPICS[i % len(TOPICS)]}{i % 997})" for i in k]
    q = big.column("quality")
    style = big.column("style").to_numpy(zero_copy_only=False)
    judged = rng.random(rows) < 0.5
    quality = pa.StructArray.from_arrays([
        pc.struct_field(q, "gold_match").combine_chunks(),
        pa.array(np.where(truncated, "length", pc.struct_field(q, "finish_reason").to_numpy(zero_copy_only=False))),
        pc.struct_field(q, "extraction").combine_chunks(), pc.struct_field(q, "choice").combine_chunks(),
        pa.array(np.round(rng.choice([0.2, 0.4, 0.6, 0.8, 1.0], size=rows), 4), mask=style != "cot"),
        pa.array(big.column("answer").to_pylist(), mask=style != "cot"),
        pc.cast(pc.list_value_length(big.column("teacher_token_ids")), pa.int64()).combine_chunks(),
        pa.array(rng.integers(1, 6, size=rows), mask=~judged),
        pa.array(["plausible but terse"] * rows, mask=~judged),
    ], names=["gold_match", "finish_reason", "extraction", "choice", "vote_share", "voted_answer",
              "completion_tokens", "judge_score", "judge_reason"])
    columns = {
        "id": pc.binary_join_element_wise(big.column("id"), pa.array([str(i) for i in k]), "#"),
        "raw_output": pc.binary_join_element_wise(big.column("raw_output"), pa.array(topic), ""),
        "quality": quality, "removed_reason": pa.array(reasons, pa.string()),
    }
    for name, col in columns.items():
        big = big.set_column(big.schema.get_field_index(name), name, col)
    dd = DatasetDict({s: Dataset(big.filter(pa.array(split == s))) for s in ("train", "validation", "removed")})
    dd.save_to_disk(str(out))
    stats = {"rows": {s: len(dd[s]) for s in dd}, "removed_by_reason": {}, "judge": {"min_score": 3}}
    (out / "stats.json").write_text(json.dumps(stats))
    return stats["rows"]


def _get(port: int, path: str) -> tuple[float, int, dict]:
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", path)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    if resp.status != 200:
        raise RuntimeError(f"GET {path}: HTTP {resp.status} {body[:200]!r}")
    return time.perf_counter() - t0, len(body), json.loads(body)


def measure(port: int, paths: list[str]) -> dict:
    """First-request and p50/p95 latency (ms) and mean response bytes over ``paths``, in order."""
    times, sizes, total = [], [], None
    for path in paths:
        dt, size, body = _get(port, path)
        times.append(dt * 1000)
        sizes.append(size)
        total = body.get("total", total)
    return {"requests": len(paths), "first_ms": round(times[0], 2), "p50_ms": round(float(np.percentile(times, 50)), 2),
            "p95_ms": round(float(np.percentile(times, 95)), 2), "bytes_per_response": int(np.mean(sizes)),
            "matched_rows": total}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=100_000, help="rows in the generated dataset")
    ap.add_argument("--repeats", type=int, default=30, help="requests per scenario")
    ap.add_argument("--source", type=Path, default=None, help="dataset to replicate (default: newest runs/demo-*/dataset)")
    ap.add_argument("--keep", action="store_true", help="keep the generated dataset (its path is printed)")
    args = ap.parse_args()

    import datasets
    import pyarrow

    from flows.viewer import make_server

    source = args.source or next(iter(sorted(ROOT.glob("runs/demo-*/dataset"), reverse=True)), None)
    if source is None or not (source / "dataset_dict.json").is_file():
        print("skipped: no demo dataset to replicate (run `eakd run flows/configs/demo.yaml` or pass --source)")
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="eakd-bench-view-"))
    try:
        t0 = time.perf_counter()
        # built in a child process: memory it frees would stay in this process's allocator pools and
        # hide the index's own RSS growth
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(1) as pool:
            splits = pool.apply(build_dataset, (source, args.rows, tmp / "dataset"))
        build_s = time.perf_counter() - t0
        disk = sum(f.stat().st_size for f in (tmp / "dataset").rglob("*") if f.is_file())
        print(f"built {args.rows} rows {splits} from {source} in {build_s:.1f} s ({disk / 2**20:.0f} MiB on disk)", flush=True)

        rss0 = _rss()
        t0 = time.perf_counter()
        server = make_server(tmp / "dataset", port=0)
        index_s = time.perf_counter() - t0
        rss1 = _rss()
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port, n_train, r = server.server_address[1], splits["train"], args.repeats
        scenarios = {
            "first_page": ["/api/rows?split=train&limit=50"] * r,
            "style_filter": ["/api/rows?split=train&style=cot&limit=50"] * r,
            "search_new_term": [f"/api/rows?split=train&q={TOPICS[i % len(TOPICS)]}{i * 31 % 997}&limit=50"
                                for i in range(r)],
            "search_next_page": ["/api/rows?split=train&q=cookies&offset=50&limit=50"] * r,
            "deep_page": [f"/api/rows?split=train&offset={n_train - 50}&limit=50"] * r,
            "removed_by_reason": ["/api/rows?split=removed&reason=contamination&limit=50"] * r,
            "meta": ["/api/meta"] * r,
        }
        results = {name: measure(port, paths) for name, paths in scenarios.items()}
        rss2 = _rss()
        server.shutdown()
        server.server_close()
    finally:
        if args.keep:
            print(f"kept {tmp / 'dataset'}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    def mb(b: int) -> float:
        return round(b / 2**20, 1)

    res = {
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "pyarrow": pyarrow.__version__, "datasets": datasets.__version__},
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()} | {"source": str(source)},
        "rows": splits, "disk_mb": mb(disk), "build_dataset_s": round(build_s, 1), "index_build_s": round(index_s, 2),
        "rss_mb": {"before_open": mb(rss0["VmRSS"]), "after_open": mb(rss1["VmRSS"]), "after_requests": mb(rss2["VmRSS"]),
                   "growth_on_open": mb(rss1["VmRSS"] - rss0["VmRSS"]),
                   "anon_growth_on_open": mb(rss1["RssAnon"] - rss0["RssAnon"]),
                   "file_growth_on_open": mb(rss1["RssFile"] - rss0["RssFile"])},
        "scenarios": results,
    }
    print(f"index build {res['index_build_s']} s; RSS +{res['rss_mb']['growth_on_open']} MB on open "
          f"(anon +{res['rss_mb']['anon_growth_on_open']} MB, mapped files +{res['rss_mb']['file_growth_on_open']} MB)")
    print(f"{'scenario':20s} {'matched':>8s} {'first ms':>9s} {'p50 ms':>8s} {'p95 ms':>8s} {'bytes':>9s}")
    for name, m in results.items():
        matched = "-" if m["matched_rows"] is None else str(m["matched_rows"])
        print(f"{name:20s} {matched:>8s} {m['first_ms']:9.1f} "
              f"{m['p50_ms']:8.1f} {m['p95_ms']:8.1f} {m['bytes_per_response']:9d}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "viewer_scale.json"
    out.with_suffix(".json.tmp").write_text(json.dumps(res, indent=2))
    os.replace(out.with_suffix(".json.tmp"), out)
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
