"""Generation in shards: the planned teacher requests are answered by `run.shards` Prefect tasks, each
retried alone; the dataset is then assembled from the response cache.

The teacher is the real vLLM server behind the fault proxy: with no client-side retries, a fifth of
the attempts answered 500 make some shards fail; Prefect retries just those shards, which resend only
their unanswered requests. Every request is answered exactly once and the dataset equals the one an
unsharded run builds from the same answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.faultproxy import FaultProxy

pytestmark = pytest.mark.integration


def _run(repo_root: Path, config: Path, *overrides: str) -> Path:
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(config), *overrides], cwd=repo_root,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return Path(next(ln for ln in proc.stdout.splitlines() if ln.startswith("run directory: ")).split(": ", 1)[1])


def test_sharded_generation_retries_only_failed_shards_and_loses_nothing(repo_root, tmp_path, vllm_server):
    upstream = vllm_server.removesuffix("/v1")
    with FaultProxy(upstream, rate=0.2, seed=7, faults=("500",)) as proxy:
        cfg = {"run": {"name": "sharded", "runs_dir": str(tmp_path / "runs"), "stages": ["generate"], "shards": 4},
               "teacher": {"backend": "openai", "model": "bundled", "base_url": proxy.base_url, "max_concurrency": 4,
                           "max_retries": 0, "cache_path": str(tmp_path / "teacher.sqlite")},
               "generate": {"seeds": str(repo_root / "flows/configs/demo_seeds.jsonl"), "limit": 16,
                            "sampling": {"max_tokens": 24}, "drop_truncated": False}}
        config = tmp_path / "sharded.yaml"
        config.write_text(yaml.safe_dump(cfg))
        run = _run(repo_root, config)
        faulted, answered = proxy.counts["500"], proxy.counts["answered"]

    summary = json.loads((run / "shards" / "summary.json").read_text())
    planned = sum(1 for _ in (run / "shards" / "requests.jsonl").open())
    assert summary["shards"] == 4 and summary["requests"] == planned > 0
    assert faulted > 0, "the proxy injected no fault: the test would prove nothing"
    assert summary["failed"] == 0 and answered == planned  # each request answered once, after shard retries
    shard_files = sorted((run / "shards").glob("shard-*.json"))
    assert len(shard_files) == 4
    stats = json.loads((run / "dataset" / "stats.json").read_text())
    assert stats["teacher"]["sent"] == 0 and stats["teacher"]["cache_hits"] == planned  # assembled from the cache
    report = json.loads((run / "report.json").read_text())  # the report says who paid for the answers, all attempts
    assert report["generate"]["shards"]["sent"] == planned + faulted

    # the same config unsharded, on the same response cache: the same rows, and nothing sent
    plain = _run(repo_root, config, "run.shards=1", "run.name=plain")
    from datasets import load_from_disk

    def rows(path):
        dd = load_from_disk(str(path))
        return sorted((r["id"], r["raw_output"], r["removed_reason"]) for s in dd for r in dd[s].to_list())

    assert rows(run / "dataset") == rows(plain / "dataset")


@pytest.fixture
def second_vllm_server(bundled_dir, tmp_path):
    """A second replica of the bundled teacher (its own vLLM server process on 127.0.0.1)."""
    from distill.teacher.serve import free_port, start_server, stop_server, wait_ready

    port = free_port()
    log_file = tmp_path / "vllm-2.log"
    proc = start_server("bundled", port, kv_cache_gib=1, log_file=log_file)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_ready(url, proc, timeout_s=600)
        yield url
    finally:
        stop_server(proc)


def test_shards_on_a_local_dask_cluster_with_two_workers_and_two_teacher_replicas(repo_root, tmp_path, vllm_server,
                                                                                   second_vllm_server):
    """run.task_runner=dask: the shard tasks run in two Dask worker processes (prefect-dask) on 127.0.0.1,
    against two vLLM server replicas (teacher.base_url + teacher.base_urls); pass-through proxies in front
    of the replicas count what each one answered."""
    pytest.importorskip("prefect_dask", reason="prefect-dask is not installed")
    with FaultProxy(vllm_server.removesuffix("/v1"), rate=0.0) as one, \
            FaultProxy(second_vllm_server.removesuffix("/v1"), rate=0.0) as two:
        cfg = {"run": {"name": "dask", "runs_dir": str(tmp_path / "runs"), "stages": ["generate"], "shards": 4,
                       "task_runner": "dask", "dask_workers": 2},
               "teacher": {"backend": "openai", "model": "bundled", "base_url": one.base_url,
                           "base_urls": [two.base_url], "max_concurrency": 4,
                           "cache_path": str(tmp_path / "teacher.sqlite")},
               "generate": {"seeds": str(repo_root / "flows/configs/demo_seeds.jsonl"), "limit": 8,
                            "sampling": {"max_tokens": 16}, "drop_truncated": False}}
        config = tmp_path / "dask.yaml"
        config.write_text(yaml.safe_dump(cfg))
        run = _run(repo_root, config)
        answered = (len(one.forwarded), len(two.forwarded))
    summary = json.loads((run / "shards" / "summary.json").read_text())
    planned = sum(1 for _ in (run / "shards" / "requests.jsonl").open())
    assert summary["shards"] == 4 and summary["sent"] == planned and summary["failed"] == 0
    assert sum(answered) == planned and min(answered) > 0, f"replica loads {answered}: both replicas must serve"
    stats = json.loads((run / "dataset" / "stats.json").read_text())
    assert stats["teacher"]["sent"] == 0 and stats["teacher"]["cache_hits"] == planned
    pids = {json.loads(p.read_text()).get("pid") for p in (run / "shards").glob("shard-*.json")}
    assert len(pids) >= 2 and os.getpid() not in pids  # the shards ran in Dask's worker processes


def test_a_prefect_rate_limit_paces_every_shards_requests(repo_root, tmp_path, vllm_server):
    """run.teacher_rate_limit: each request of every shard takes a slot of one Prefect rate limit (2 slots,
    decaying at 4 per second), so the shards together never send faster than it allows; a missing limit is
    a clear configuration error, not a silent no-op."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    from distill.config import ConfigError
    from flows.pipeline import run_pipeline

    upstream = vllm_server.removesuffix("/v1")
    with FaultProxy(upstream, rate=0.0) as proxy:
        cfg = {"run": {"name": "paced", "runs_dir": str(tmp_path / "runs"), "stages": ["generate"], "shards": 3,
                       "teacher_rate_limit": "teacher-rps"},
               "teacher": {"backend": "openai", "model": "bundled", "base_url": proxy.base_url, "max_concurrency": 8,
                           "cache_path": str(tmp_path / "teacher.sqlite")},
               "generate": {"seeds": str(repo_root / "flows/configs/demo_seeds.jsonl"), "limit": 8,
                            "sampling": {"max_tokens": 8}, "drop_truncated": False}}
        config = tmp_path / "paced.yaml"
        config.write_text(yaml.safe_dump(cfg))
        with pytest.raises(ConfigError, match="teacher_rate_limit.*prefect gcl create teacher-rps"):
            run_pipeline(config)  # the limit does not exist yet
        assert not proxy.forwarded

        with get_client(sync_client=True) as client:  # the same (temporary) Prefect API the flow runs against
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(
                name="teacher-rps", limit=2, slot_decay_per_second=4.0))
        run = run_pipeline(config)
        times = sorted(proxy.arrivals)

    planned = sum(1 for _ in (run / "shards" / "requests.jsonl").open())
    assert len(times) == planned >= 20
    span = times[-1] - times[0]
    # 2 slots at once, then 4 per second: n requests need at least (n - 2) / 4 s (unpaced, they took well under 1 s)
    assert span >= 0.9 * (planned - 2) / 4, f"{planned} requests in {span:.2f} s: faster than the limit allows"
    busiest = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert busiest <= 2 + 4 + 1, f"{busiest} requests within one second"
