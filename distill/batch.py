"""Batch mode: the cache misses of a run as one OpenAI Batch API file, answered by vLLM's batch runner.

``eakd generate CONFIG --batch`` (``teacher.batch: true``) writes every request that has no cached
answer as a line of the OpenAI Batch API input format (``custom_id`` = the request's cache key,
``method``, ``url``, ``body`` = exactly the body the online ``openai`` backend would send), runs the
file through vLLM's batch runner (``python -m vllm.entrypoints.openai.run_batch -i ... -o ...``, one
engine, no server), and reads the output back by ``custom_id`` into the same response cache. So a
batch that dies or partly fails is resumed by running again: only the ``custom_id``s without a stored
answer go into the next file. Per-line failures are reported with their error and not cached.

Why not the in-process backend: the batch file is the portable artifact (the same file can go to any
Batch-API-compatible service), and the batch runner is vLLM's own offline path for it. Structured
requests are validated like online ones (no re-asks in a batch). Submitting to a remote Batch API
(``/v1/batches``) is not implemented: there is no such endpoint to test against offline.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from distill.cache import ResponseCache
from distill.teacher import Choice, TeacherConfig, TeacherRequest, TeacherResponse, TeacherStats, cpu_thread_env

log = logging.getLogger(__name__)

CHAT_URL = "/v1/chat/completions"


def batch_line(r: TeacherRequest, model: str) -> dict:
    """One Batch API input line for ``r``: its cache key is the ``custom_id``."""
    from distill.teacher_openai import _body

    body = _body(r, model)
    body.pop("extra_body", None)
    if r.repetition_penalty != 1.0:  # the batch runner reads vLLM's sampling extensions from the body itself
        body["repetition_penalty"] = r.repetition_penalty
    return {"custom_id": r.key(), "method": "POST", "url": CHAT_URL, "body": body}


def write_batch_file(requests: list[TeacherRequest], model: str, path: Path) -> int:
    """Write the input file (one line per distinct request); returns the number of lines."""
    seen: set[str] = set()
    with open(path, "w") as f:
        for r in requests:
            line = batch_line(r, model)
            if line["custom_id"] in seen:
                continue
            seen.add(line["custom_id"])
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    return len(seen)


def _choice(c: dict) -> Choice:
    lps = None
    content = (c.get("logprobs") or {}).get("content")
    if content is not None:
        lps = [{"tokens": [t["token"] for t in pos.get("top_logprobs") or []],
                "logprobs": [round(t["logprob"], 5) for t in pos.get("top_logprobs") or []]} for pos in content]
    return Choice(text=(c.get("message") or {}).get("content") or "", finish_reason=c.get("finish_reason"), logprobs=lps)


def read_batch_output(path: Path, by_key: dict[str, TeacherRequest], engine: str,
                      model: str) -> tuple[list[TeacherResponse], dict[str, str]]:
    """Parse an output file: (answers, {custom_id: error}) for the ids in ``by_key`` (others are ignored)."""
    from distill.structured import validate_output

    answers, errors = [], {}
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except json.JSONDecodeError as exc:
            log.warning("%s:%d is not JSON (%s); skipped", path, n, exc.msg)
            continue
        key = line.get("custom_id")
        if key not in by_key:
            continue
        resp, err = line.get("response") or {}, line.get("error")
        body = resp.get("body") or {}
        if err or resp.get("status_code", 200) != 200 or not body.get("choices"):
            errors[key] = f"batch line {n}: status {resp.get('status_code')}: {err or body.get('message') or body}"[:500]
            continue
        usage = body.get("usage") or {}
        r = by_key[key]
        choices = [_choice(c) for c in sorted(body["choices"], key=lambda c: c.get("index", 0))]
        if r.json_schema is not None:
            for c in choices:
                c.schema_error = validate_output(c.text, r.json_schema)[1]
        answers.append(TeacherResponse(key=key, choices=choices, prompt_tokens=usage.get("prompt_tokens", 0),
                                       completion_tokens=usage.get("completion_tokens", 0), engine=engine,
                                       model=body.get("model") or model))
    return answers, errors


def runner_command(cfg: TeacherConfig, input_file: Path, output_file: Path) -> list[str]:
    """vLLM's batch runner with the same engine options as ``eakd teacher serve``."""
    import torch

    from distill.models import resolve_dtype, resolve_model_path

    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.run_batch", "-i", str(input_file), "-o", str(output_file),
           "--model", str(resolve_model_path(cfg.model)), "--served-model-name", cfg.model_id(),
           "--dtype", resolve_dtype(cfg.dtype, "cuda" if torch.cuda.is_available() else "cpu"),
           "--max-model-len", str(cfg.max_model_len), "--enable-prefix-caching",
           "--tensor-parallel-size", str(cfg.tensor_parallel_size)]
    if cfg.enforce_eager:
        cmd.append("--enforce-eager")
    if not torch.cuda.is_available():  # see distill.teacher_vllm.cpu_engine_args
        cmd += ["--no-enable-chunked-prefill", "--max-num-batched-tokens", str(max(cfg.max_model_len, 2048))]
    return cmd


def send_batch(pending: list[TeacherRequest], cfg: TeacherConfig, cache: ResponseCache,
               stats: TeacherStats) -> dict[str, TeacherResponse]:
    """Answer ``pending`` (all cache misses) through one batch file; stores answers, returns failures by key."""
    if cfg.backend != "vllm":
        from distill.config import ConfigError

        raise ConfigError("teacher.batch: submitting to a remote Batch API (/v1/batches) is not supported yet; "
                          "use the vllm backend (vLLM's local batch runner) or turn teacher.batch off")
    by_key = {r.key(): r for r in pending}
    with tempfile.TemporaryDirectory(prefix="eakd-batch-") as tmp:
        inp, out = Path(tmp) / "input.jsonl", Path(tmp) / "output.jsonl"
        lines = write_batch_file(pending, cfg.model_id(), inp)
        env = os.environ | {"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": str(cfg.kv_cache_gib)}
        env |= cpu_thread_env(env)
        t = time.perf_counter()
        log.info("batch: %d requests -> vLLM batch runner", lines)
        proc = subprocess.run(runner_command(cfg, inp, out), env=env, start_new_session=True)
        if not out.is_file():
            raise RuntimeError(f"vLLM's batch runner exited with code {proc.returncode} and wrote no output "
                               "(its log is above); nothing was lost: rerun to retry the same requests")
        answers, errors = read_batch_output(out, by_key, "vllm-batch", cfg.model_id())
        per = (time.perf_counter() - t) / max(1, len(answers))
        for a in answers:
            a.latency_s = round(per, 4)
        cache.put_many([(a.key, a.to_dict()) for a in answers])
    missing = set(by_key) - {a.key for a in answers} - set(errors)
    for k in missing:
        errors[k] = "no line for this custom_id in the batch output"
    for k in errors:
        stats.failures["batch"] = stats.failures.get("batch", 0) + 1
    if errors:
        log.warning("batch: %d of %d requests failed; they are not cached, so a rerun resubmits only them",
                    len(errors), lines)
    return {k: TeacherResponse(key=k, choices=[], engine="vllm-batch", model=cfg.model_id(), error=e)
            for k, e in errors.items()}
