"""The in-process vLLM teacher's child process: one per :func:`query_teacher` call, or one per engine for a session.

The ``vllm`` backend runs ``vllm.LLM`` in a child Python (``python -m distill.teacher.vllm_backend``) that writes
every response into the response cache, so the engine's memory and worker processes are gone when the child
ends, and an engine crash cannot take the flow down with it. Starting an engine costs 20-40 s on CPU (minutes for
a large model on a GPU), so work that asks the teacher several times (the generate stage's synthesis, bootstrap
rounds, answers and judge; a test module) opens an :func:`engine_session`: inside it, calls whose engine
settings match (:func:`engine_key`) send their requests to one long-lived child, which stops when the session
ends, still before training needs the memory. Outside a session each call starts and stops its own child.

A session child (``vllm_backend --serve CONFIG FD``) reads one JSON job per line on its stdin (file paths:
``{"requests", "config", "cache", "budget"}``) and answers each with one JSON line on the pipe ``FD``
(``{"rc": 0 | BUDGET_EXIT | 1}``); closing its stdin shuts its engine down. vLLM logs to stdout, hence the pipe.

May import: :mod:`distill.teacher.types`, :mod:`distill.teacher.budget`, :mod:`distill.models`. Not
:mod:`distill.teacher.query`, which imports it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from distill.teacher.budget import Budget
from distill.teacher.types import BUDGET_EXIT, TeacherConfig, TeacherRequest, cpu_thread_env

log = logging.getLogger(__name__)

_LOCAL = threading.local()  # .session: engine key -> its child, while this thread has a session open


def _session() -> dict[tuple, _Worker] | None:
    """This thread's open session (None outside one): a session is its thread's, so no two threads ever send
    jobs to one child at once."""
    return getattr(_LOCAL, "session", None)


@contextlib.contextmanager
def engine_session() -> Iterator[None]:
    """Share one in-process engine per engine configuration among this thread's vllm-backend calls inside the
    block; the engines stop when it ends (or raises).

    Re-entrant: a session opened inside another one uses the outer one's engines (the outermost closes them).
    """
    if _session() is not None:
        yield
        return
    _LOCAL.session = {}
    try:
        yield
    finally:
        workers, _LOCAL.session = _LOCAL.session, None
        for worker in workers.values():
            worker.close()


def engine_key(cfg: TeacherConfig) -> tuple:
    """What the engine is built from (:func:`distill.teacher.vllm_backend.make_engine` and the child's
    environment): calls that agree on it can share one engine."""
    from distill.models import resolve_model_path

    return (str(resolve_model_path(cfg.model)), cfg.dtype, cfg.max_model_len, cfg.enforce_eager,
            cfg.tensor_parallel_size, cfg.kv_cache_gib)


def run_engine(pending: list[TeacherRequest], cfg: TeacherConfig, cache_path: Path,
               budget: Budget | None = None) -> bool:
    """Answer ``pending`` on an in-process engine (the session's, when one is open); every response lands in the
    cache at ``cache_path``. Returns False when the budget stopped it (what is left of ``budget`` is passed on)."""
    with tempfile.TemporaryDirectory(prefix="eakd-vllm-") as tmp:
        job = _write_job(Path(tmp), pending, cfg, cache_path, budget)
        session = _session()
        rc = _run_once(job, cfg) if session is None else _run_in_session(session, job, cfg)
    if rc == BUDGET_EXIT:
        return False
    if rc != 0:
        raise RuntimeError(f"the vLLM teacher process exited with code {rc} (its log is above); "
                           "responses it finished are cached — rerun to resume")
    return True


def _write_job(tmp: Path, pending: list[TeacherRequest], cfg: TeacherConfig, cache_path: Path,
               budget: Budget | None) -> dict[str, str | None]:
    """The job's files under ``tmp``: requests (JSON lines), config, and what is left of the budget."""
    req_file, cfg_file = tmp / "requests.jsonl", tmp / "teacher.json"
    with open(req_file, "w") as f:
        for r in pending:
            f.write(json.dumps(asdict(r)) + "\n")
    cfg_file.write_text(cfg.model_dump_json())
    left = None
    if budget is not None:
        left = tmp / "budget.json"
        left.write_text(json.dumps({
            "max_tokens": None if budget.max_tokens is None else budget.max_tokens - budget.spent_tokens - budget.reserved_tokens,
            "max_cost_usd": None if budget.max_cost_usd is None else budget.max_cost_usd - budget.spent_cost - budget.reserved_cost,
            "price_prompt_per_mtok": budget.price_prompt_per_mtok, "price_completion_per_mtok": budget.price_completion_per_mtok}))
    return {"requests": str(req_file), "config": str(cfg_file), "cache": str(cache_path),
            "budget": None if left is None else str(left)}


def _child_env(cfg: TeacherConfig) -> dict[str, str]:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": str(cfg.kv_cache_gib)}
    return env | cpu_thread_env(env)


def _run_once(job: dict[str, str | None], cfg: TeacherConfig) -> int:
    """One child for one job: it builds the engine, answers, shuts the engine down and exits with the job's code."""
    cmd = [sys.executable, "-m", "distill.teacher.vllm_backend", job["requests"], job["config"], job["cache"]]
    if job["budget"] is not None:
        cmd.append(job["budget"])
    # its own process group: the engine's worker processes join it, so one killpg cleans them all up
    # (a plain terminate of the child would leave vLLM's EngineCore/Worker running)
    proc = subprocess.Popen(cmd, env=_child_env(cfg), start_new_session=True)
    try:
        proc.wait()
    finally:
        stop_group(proc)
    return proc.returncode


def _run_in_session(session: dict[tuple, _Worker], job: dict[str, str | None], cfg: TeacherConfig) -> int:
    """The job on the session's child for ``cfg``'s engine (started on first use); a child that failed is dropped,
    so the next call starts a fresh one."""
    key = engine_key(cfg)
    worker = session.get(key)
    if worker is None or not worker.alive():
        if worker is not None:
            worker.close()
        worker = session[key] = _Worker(cfg)
    rc = worker.run(job)
    if rc not in (0, BUDGET_EXIT):
        session.pop(key).close()
    return rc


class _Worker:
    """A long-lived ``vllm_backend --serve`` child: one engine, many jobs (module docstring)."""

    def __init__(self, cfg: TeacherConfig) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="eakd-vllm-engine-")
        cfg_file = Path(self._tmp.name) / "engine.json"
        cfg_file.write_text(cfg.model_dump_json())
        read_end, write_end = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "distill.teacher.vllm_backend", "--serve", str(cfg_file), str(write_end)],
                stdin=subprocess.PIPE, text=True, env=_child_env(cfg), start_new_session=True, pass_fds=(write_end,))
        finally:
            os.close(write_end)
        self.results = os.fdopen(read_end, "r")
        self.busy = False  # a job is in flight (closing then cannot wait for the child to finish it)
        log.info("teacher: started a shared vLLM engine (pid %d) for this session", self.proc.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def run(self, job: dict[str, str | None]) -> int:
        """Send one job and wait for its code; the child's exit code (or 1) when it dies on the way."""
        self.busy = True
        try:
            self.proc.stdin.write(json.dumps(job) + "\n")
            self.proc.stdin.flush()
            line = self.results.readline()
        except (BrokenPipeError, OSError):
            line = ""
        self.busy = False
        if not line:  # the child died before answering
            return self.proc.wait() or 1
        return int(json.loads(line)["rc"])

    def close(self, timeout_s: float = 60.0) -> None:
        """Close the child's stdin (it shuts its engine down and exits), then stop its process group; a child still
        answering (the caller was interrupted) is stopped at once."""
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        if not self.busy:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout_s)
        stop_group(self.proc)
        self.results.close()
        self._tmp.cleanup()


def stop_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """Stop ``proc``'s process group (the teacher child and the engine processes it started)."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return  # the group is gone
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        try:  # the child exited; engine processes may linger a moment
            time.sleep(0.5)
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return
