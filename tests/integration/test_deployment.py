"""Scheduled data flows on a real Prefect server: `prefect server start` on 127.0.0.1 (SQLite), the
pipeline deployment served by `eakd serve`, runs triggered through the server's REST API.

The first run computes every stage and publishes its artifacts; the second run of the unchanged config
finds every stage in Prefect's cache (keyed on content hashes), links the earlier outputs and must be
at least 5x faster (flow-run wall times as the server recorded them, both in this one test).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import prefect_server
import pytest
import yaml

pytestmark = pytest.mark.integration


def _wait(predicate, timeout: float, what: str, step: float = 1.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = predicate()
        if got:
            return got
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _stop(proc: subprocess.Popen | None) -> None:
    """Ctrl-C a process group we started (the server, `eakd serve`, a worker); SIGKILL it after 30 s."""
    if proc is not None and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def prefect_api(tmp_path):
    """`prefect server start` on 127.0.0.1 (SQLite under tmp_path); yields (API URL, env for its clients)."""
    from distill.teacher.serve import free_port

    home = tmp_path / "prefect"
    home.mkdir()
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    server = prefect_server.start(home, port)  # with Prefect's services: the work pool test needs them
    try:
        prefect_server.wait_healthy(api, server, home)
        yield api, os.environ | {"PREFECT_API_URL": api, "PREFECT_HOME": str(home / "client")}
    finally:
        _stop(server)


def _deployment_id(api: str, name: str) -> str | None:
    r = httpx.post(f"{api}/deployments/filter", json={"deployments": {"name": {"any_": [name]}}}, timeout=10)
    r.raise_for_status()
    return r.json()[0]["id"] if r.json() else None


def _run_and_wait(api: str, dep_id: str, timeout: float) -> dict:
    for _ in range(10):  # SQLite-backed server under load answers 503 now and then (Prefect's own client retries too)
        r = httpx.post(f"{api}/deployments/{dep_id}/create_flow_run", json={}, timeout=10)
        if r.status_code not in (502, 503, 504):
            break
        time.sleep(3)
    r.raise_for_status()
    run_id = r.json()["id"]

    def done():
        got = httpx.get(f"{api}/flow_runs/{run_id}", timeout=10)
        if got.status_code != 200:  # a busy server's 503: ask again
            return None
        fr = got.json()
        return fr if fr["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None

    fr = _wait(done, timeout, f"flow run {run_id}", step=2)
    assert fr["state"]["type"] == "COMPLETED", fr["state"]
    return fr


def _seconds(fr: dict) -> float:
    from datetime import datetime

    start, end = (datetime.fromisoformat(fr[k].replace("Z", "+00:00")) for k in ("start_time", "end_time"))
    return (end - start).total_seconds()


def _artifacts(api: str, run_ids: list[str]) -> dict[str, str]:
    r = httpx.post(f"{api}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": run_ids}}}, timeout=10)
    r.raise_for_status()
    return {a["key"]: a["type"] for a in r.json() if a["key"]}


def _subflow_ids(api: str, parent: str) -> list[str]:
    r = httpx.post(f"{api}/flow_runs/filter", json={"flow_runs": {"parent_flow_run_id": {"any_": [parent]}}}, timeout=10)
    return [fr["id"] for fr in r.json()] if r.status_code == 200 else []


def test_served_deployment_runs_through_the_api_and_reruns_from_the_cache(repo_root, tmp_path, vllm_server, tiny_model,
                                                                           prefect_api):
    text = tmp_path / "heldout.txt"
    text.write_text(" ".join(f"The {w} sat on the mat and looked at the {w}." for w in ["cat", "dog", "owl", "hen"] * 24))
    runs = tmp_path / "runs"
    cfg = {
        "run": {"name": "nightly", "runs_dir": str(runs)},
        "teacher": {"backend": "openai", "model": "bundled", "base_url": vllm_server, "max_concurrency": 4,
                    "cache_path": str(tmp_path / "teacher.sqlite")},
        "generate": {"seeds": str(repo_root / "flows/configs/demo_seeds.jsonl"), "limit": 12,
                     "sampling": {"max_tokens": 64}, "drop_truncated": False},
        "train": {"student": str(tiny_model), "max_steps": 12, "batch_size": 2, "lr": 1e-3, "log_every": 4},
        "compress": {"steps": [{"method": "magnitude", "sparsity": 0.5}, {"method": "rtn_int8"}],
                     "eval": {"text_path": str(text), "window": 32, "max_windows": 8, "dtype": "float32"}},
    }
    config = tmp_path / "nightly.yaml"
    config.write_text(yaml.safe_dump(cfg))

    api, env = prefect_api
    env = env | {"PREFECT_RUNNER_POLL_FREQUENCY": "2"}
    served = None
    try:
        served_log = (tmp_path / "serve.log").open("w")
        served = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", str(config), "--name", "tiny"],
                                  cwd=repo_root, env=env, stdout=served_log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        dep = _wait(lambda: _deployment_id(api, "tiny"), 180, "the served deployment")

        first = _run_and_wait(api, dep, 900)
        dirs = sorted(runs.iterdir())
        assert len(dirs) == 1
        run1 = dirs[0]
        t1 = json.loads((run1 / "timings.json").read_text())
        assert {k: v["status"] for k, v in t1.items()} == {"generate": "completed", "train": "completed",
                                                          "evaluate": "completed", "compress": "completed"}
        assert (run1 / "report.html").is_file()
        arts = _artifacts(api, [first["id"], *_subflow_ids(api, first["id"])])
        assert {"generate-summary", "train-summary", "evaluate-summary", "compress-summary", "eakd-report"} <= set(arts), arts
        assert "eakd-run-dir" in arts  # the link to report.html (Prefect stores links as markdown)

        second = _run_and_wait(api, dep, 600)
        run2 = next(d for d in sorted(runs.iterdir()) if d != run1)
        t2 = json.loads((run2 / "timings.json").read_text())
        assert {k: v["status"] for k, v in t2.items()} == {"generate": "cached", "train": "cached", "evaluate": "cached",
                                                          "compress": "cached"}
        for stage in ("dataset", "student", "eval", "compressed"):  # the second run links what it reused
            assert (run2 / stage).is_symlink() and (run2 / stage).resolve() == (run1 / stage).resolve()
        assert json.loads((run2 / "report.json").read_text())["compress"] == json.loads(
            (run1 / "report.json").read_text())["compress"]
        s1, s2 = _seconds(first), _seconds(second)
        print(f"served deployment: first run {s1:.1f} s, cached rerun {s2:.1f} s ({s1 / s2:.1f}x)")
        (tmp_path / "timing.json").write_text(json.dumps({"first_s": s1, "second_s": s2}))
        assert s1 >= 5 * s2, f"cached rerun {s2:.1f} s is not 5x faster than the first run {s1:.1f} s"
    finally:
        _stop(served)


def test_deployment_on_a_work_pool_runs_on_a_worker(repo_root, tmp_path, vllm_server, prefect_api):
    """The production path on one machine: a process work pool, `eakd deploy --pool --cron` registers the
    pipeline from this checkout, a `prefect worker start` process picks the triggered run up and runs it
    in its own subprocess."""
    runs = tmp_path / "runs"
    cfg = {"run": {"name": "pooled", "runs_dir": str(runs), "stages": ["generate"]},
           "teacher": {"backend": "openai", "model": "bundled", "base_url": vllm_server, "max_concurrency": 4,
                       "cache_path": str(tmp_path / "teacher.sqlite")},
           "generate": {"seeds": str(repo_root / "flows/configs/demo_seeds.jsonl"), "limit": 6,
                        "sampling": {"max_tokens": 16}, "drop_truncated": False}}
    config = tmp_path / "pooled.yaml"
    config.write_text(yaml.safe_dump(cfg))
    api, env = prefect_api
    env = env | {"PREFECT_WORKER_QUERY_SECONDS": "2"}
    worker = None
    try:
        subprocess.run([sys.executable, "-m", "prefect", "work-pool", "create", "cpu", "--type", "process"],
                       env=env, check=True, capture_output=True, timeout=120)
        dep = subprocess.run([sys.executable, "-m", "flows.cli", "deploy", str(config), "--pool", "cpu", "--name",
                              "pooled", "--cron", "0 2 * * *"], cwd=repo_root, env=env, capture_output=True,
                             text=True, timeout=300)
        assert dep.returncode == 0, dep.stderr[-3000:]
        assert "eakd-pipeline/pooled" in dep.stdout and "schedule 0 2 * * *" in dep.stdout
        dep_id = _deployment_id(api, "pooled")
        schedules = httpx.get(f"{api}/deployments/{dep_id}", timeout=10).json()["schedules"]
        assert [s["schedule"]["cron"] for s in schedules] == ["0 2 * * *"]

        worker_log = (tmp_path / "worker.log").open("w")
        worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", "cpu"],
                                  cwd=tmp_path, env=env, stdout=worker_log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        fr = _run_and_wait(api, dep_id, 600)
        assert fr["state"]["type"] == "COMPLETED"
        (run,) = runs.iterdir()
        assert json.loads((run / "timings.json").read_text())["generate"]["status"] == "completed"
        assert (run / "dataset" / "stats.json").is_file() and (run / "report.html").is_file()
        assert "Worker" in (tmp_path / "worker.log").read_text()  # the worker ran it, not this process
    finally:
        _stop(worker)
