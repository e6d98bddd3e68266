"""A Prefect API server on 127.0.0.1 for tests: ``prefect server start`` with its SQLite database under a folder.

The test session shares one (:mod:`tests.conftest` starts it before Prefect is imported), so the flows of the
``eakd`` commands tests run talk to it instead of each starting Prefect's temporary server; the deployment test
starts its own, with Prefect's services, for its work pool.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(home: Path, port: int, services: bool = True) -> subprocess.Popen:
    """``prefect server start`` on 127.0.0.1:``port`` (no UI; ``services``: the scheduler and the other loop
    services a work pool needs), database and log (``server.log``) under ``home``, in its own process group."""
    home.mkdir(parents=True, exist_ok=True)
    env = os.environ | {"PREFECT_HOME": str(home), "PREFECT_SERVER_API_HOST": "127.0.0.1",
                        "PREFECT_SERVER_API_PORT": str(port), "PREFECT_UI_ENABLED": "false",
                        "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"]
    with (home / "server.log").open("w") as log:
        return subprocess.Popen(cmd + ([] if services else ["--no-services"]), env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


def healthy(api: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{api}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait_healthy(api: str, proc: subprocess.Popen, home: Path, timeout_s: float = 240) -> None:
    """Wait until the server at ``api`` answers; AssertionError with its log's tail when it exits or times out."""
    end = time.monotonic() + timeout_s
    while not healthy(api):
        log = (home / "server.log").read_text(errors="replace")[-3000:]
        assert proc.poll() is None, f"the Prefect server exited with code {proc.returncode}:\n{log}"
        assert time.monotonic() < end, f"the Prefect server did not answer within {timeout_s:.0f} s:\n{log}"
        time.sleep(0.5)


def stop(proc: subprocess.Popen) -> None:
    """Ctrl-C the server's process group; SIGKILL it after 30 s."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
