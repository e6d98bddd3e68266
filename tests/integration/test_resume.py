"""Kill -9 a running `eakd generate` at 5 random points and restart it each time: only the requests that
were in flight are sent again, and the dataset equals an uninterrupted run's. Real CLI, real vLLM
server; a counting proxy in between."""

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import yaml

from faultproxy import FaultProxy

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

CONCURRENCY = 4


def _config(tmp_path, repo_root, base_url, cache):
    cfg = {"teacher": {"backend": "openai", "model": "bundled", "base_url": base_url,
                       "max_concurrency": CONCURRENCY, "adaptive_concurrency": False, "cache_path": str(cache)},
           "generate": {"seeds": str(repo_root / "flows/configs/demo_seeds.jsonl"), "limit": 30,
                        "sampling": {"max_tokens": 48}, "drop_truncated": False}}
    path = tmp_path / f"{cache.stem}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _cached(cache) -> int:
    if not cache.exists():
        return 0
    with sqlite3.connect(cache) as conn:
        try:
            return conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
        except sqlite3.OperationalError:  # table not created yet
            return 0


def _generate(repo_root, config, out, **kw):
    return subprocess.Popen([sys.executable, "-m", "flows.cli", "generate", str(config), "--out", str(out)],
                            cwd=repo_root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _rows(out):
    from datasets import load_from_disk

    ds = load_from_disk(str(out))
    return {split: sorted((r["id"], json.dumps(r["messages"])) for r in ds[split]) for split in ds}


KILLS = 5


def test_kill_and_restart_resends_only_in_flight(vllm_server, repo_root, tmp_path, reliability):
    upstream = vllm_server.rsplit("/v1", 1)[0]
    cache = tmp_path / "resume.sqlite"
    out = tmp_path / "ds"
    rng = random.Random(7)
    with FaultProxy(upstream, rate=0.0) as proxy:
        config = _config(tmp_path, repo_root, proxy.base_url, cache)
        lost = 0
        for kill in range(KILLS):
            # each run is killed after a random number (1..8) of new answers reach the cache
            target = _cached(cache) + rng.randint(1, 8)
            sent_before, cached_before = proxy.counts["forwarded"], _cached(cache)
            run = _generate(repo_root, config, out, start_new_session=True)
            deadline = time.time() + 600
            while _cached(cache) < target:
                assert run.poll() is None, run.stderr.read()[-3000:]
                assert time.time() < deadline, f"run {kill + 1} made no progress"
                time.sleep(0.1)
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
            time.sleep(1.0)  # requests the proxy already forwarded finish upstream; their answers are lost
            in_flight = (proxy.counts["forwarded"] - sent_before) - (_cached(cache) - cached_before)
            assert 0 <= in_flight <= CONCURRENCY, in_flight  # what a kill loses is at most what was in flight
            lost += in_flight
            assert not (out / "stats.json").exists()  # nothing half-written looks finished
        cached_at_kill = _cached(cache)
        sent_killed = proxy.counts["forwarded"]

        last = _generate(repo_root, config, out)
        stdout, stderr = last.communicate(timeout=900)
        assert last.returncode == 0, stderr[-3000:]
        sent_last = proxy.counts["forwarded"] - sent_killed

    stats = json.loads((out / "stats.json").read_text())
    total = stats["requests"]
    assert stats["teacher"]["cache_hits"] == cached_at_kill
    assert sent_last == stats["teacher"]["sent"] == total - cached_at_kill  # re-sends nothing that was stored
    assert sent_killed + sent_last == total + lost  # the only requests sent twice are the ones a kill cut off
    reliability["crashes_survived"] += KILLS

    # the same generation uninterrupted, on a fresh cache, gives the same dataset
    fresh = _config(tmp_path, repo_root, vllm_server, tmp_path / "fresh.sqlite")
    ref = _generate(repo_root, fresh, tmp_path / "ref")
    _, stderr = ref.communicate(timeout=900)
    assert ref.returncode == 0, stderr[-3000:]
    assert _rows(out) == _rows(tmp_path / "ref")
    got = _rows(out)
    reliability["records_checked"] += total
    reliability["records_lost"] += total - sum(len(v) for v in got.values())
    reliability["records_duplicated"] += sum(len(v) - len(set(v)) for v in got.values())
