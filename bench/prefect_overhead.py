"""Prefect's overhead on the generate stage (issue 7): the generation flow over N shards vs calling the
library function directly, on the same data, in the same run.

The bundled teacher is served once (vLLM's OpenAI-compatible server on 127.0.0.1), and the demo
config's generate section (42 seeds -> 120 requests, 192 tokens, greedy) is run alternately as
- direct: ``distill.data.dataset.generate_dataset`` (no Prefect at all);
- flow: the ``eakd-pipeline`` flow with ``run.stages=[generate]`` and ``run.shards=N`` (plan, N shard
  tasks, assembly from the response cache, artifacts, report),
each with a fresh response cache and a fresh Prefect stage cache, so every run asks the teacher for
everything. A first, unmeasured direct run warms the server's prefix cache; Prefect's temporary API
server is started by an unmeasured warm-up flow and its start-up is reported separately (a deployment
talks to a server that is already up). Overhead = flow / direct - 1 per pair; the median is the result.

Writes bench/results/prefect_overhead.json. Run: ``python bench/prefect_overhead.py --pairs 2 --shards 4``
(~10 min on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=2, help="direct/flow pairs, alternating")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=16, help="teacher.max_concurrency (the flow's shards split it)")
    args = ap.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    tmp = Path(tempfile.mkdtemp(prefix="eakd-bench-overhead-"))
    os.environ["PREFECT_HOME"] = str(tmp / "prefect")
    os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(tmp / "prefect" / "storage")

    import flows  # noqa: F401  (Prefect's environment)
    from distill.config import load_config
    from distill.data.dataset import generate_dataset
    from distill.teacher.serve import free_port, start_server, stop_server, wait_ready
    from flows.config import PipelineConfig
    from flows.pipeline import pipeline

    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    config = ROOT / "flows" / "configs" / "demo.yaml"
    base = ["teacher.backend=openai", f"teacher.base_url={url}", "teacher.model=bundled",
            f"teacher.max_concurrency={args.concurrency}", "run.stages=[generate]", f"run.runs_dir={tmp / 'runs'}"]
    proc = start_server("bundled", port, log_file=tmp / "server.log")
    res: dict = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()}, "args": vars(args),
                 "config": str(config.relative_to(ROOT)), "runs": []}
    try:
        res["server_start_s"] = round(wait_ready(url, proc, timeout_s=900), 1)

        def direct(i: int) -> float:
            cfg = load_config(PipelineConfig, config, base + [f"teacher.cache_path={tmp / f'direct{i}.sqlite'}"])
            t = time.perf_counter()
            generate_dataset(cfg.generate, cfg.teacher, tmp / f"direct{i}")
            return time.perf_counter() - t

        def flow(i: int, shards: int) -> float:
            # the same total concurrency as the direct run: split across the shards
            over = base + [f"teacher.cache_path={tmp / f'flow{i}.sqlite'}", f"run.shards={shards}", f"run.name=flow{i}",
                           f"teacher.max_concurrency={max(1, args.concurrency // shards)}"]
            os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(tmp / "prefect" / f"storage{i}")  # no stage cache hits
            t = time.perf_counter()
            pipeline(str(config), over)
            return time.perf_counter() - t

        warm = direct(-1)
        print(f"warm-up direct run (prefix cache): {warm:.1f} s", flush=True)
        t = time.perf_counter()
        from prefect import flow as prefect_flow

        prefect_flow(lambda: None, name="warm-up")()
        res["prefect_api_start_s"] = round(time.perf_counter() - t, 1)
        print(f"Prefect temporary API start-up (not counted): {res['prefect_api_start_s']} s", flush=True)
        for i in range(args.pairs):
            d = direct(i)
            f = flow(i, args.shards)
            res["runs"].append({"pair": i, "direct_s": round(d, 2), "flow_s": round(f, 2), "overhead": round(f / d - 1, 4)})
            print(f"pair {i}: direct {d:.1f} s, flow with {args.shards} shards {f:.1f} s, overhead {f / d - 1:+.1%}",
                  flush=True)
    finally:
        stop_server(proc)
    res["median_overhead"] = round(statistics.median(r["overhead"] for r in res["runs"]), 4)
    res["target"] = "<= 0.10"
    res["meets_target"] = res["median_overhead"] <= 0.10
    print(f"median Prefect overhead: {res['median_overhead']:+.1%} (target <= +10%)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "prefect_overhead.json").write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
