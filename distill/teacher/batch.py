"""Batch mode: the cache misses of a run as one OpenAI Batch API file, answered by vLLM's batch runner.

``eakd generate CONFIG --batch`` (``teacher.batch: true``) writes every request that has no cached
answer as a line of the OpenAI Batch API input format (``custom_id`` = the request's cache key,
``method``, ``url``, ``body`` = exactly the body the online ``openai`` backend would send), runs the
file through vLLM's batch runner (``python -m vllm.entrypoints.openai.run_batch -i ... -o ...``, one
engine, no server), and reads the output back by ``custom_id`` into the same response cache. So a
batch that dies or partly fails is resumed by running again: only the ``custom_id``s without a stored
answer go into the next file. Per-line failures are reported with their error and not cached.

With the ``openai`` backend the same file goes to the endpoint's Batch API instead (``POST /v1/files``,
``POST /v1/batches``, poll ``GET /v1/batches/{id}``, download the output and error files). Every
submitted batch is written to a journal beside the cache before it is polled, so a process that dies
or stops waiting (``teacher.batch_wait_s``) re-attaches to the batch it already paid for on the next
run instead of submitting again. A batch that expires, is cancelled, or returns retryable line errors
(429, 5xx) is resumed within the run: only the ``custom_id``s with no answer go into the next batch
(at most ``teacher.max_retries`` more); 4xx line errors are kept on their records.

Why not the in-process backend: the batch file is the portable artifact (the same file can go to any
Batch-API-compatible service), and the batch runner is vLLM's own offline path for it. Structured
requests are validated like online ones (no re-asks in a batch). Hand-written because no library
resumes a Batch API job across processes by ``custom_id`` into a content-addressed cache.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill.io import write_text_atomic
from distill.logprobs import pack_openai_logprobs
from distill.teacher.cache import ResponseCache
from distill.teacher.types import (
    BatchPending,
    Choice,
    TeacherConfig,
    TeacherRequest,
    TeacherResponse,
    TeacherStats,
    cpu_thread_env,
    require_api_key,
)

if TYPE_CHECKING:
    import openai

log = logging.getLogger(__name__)

CHAT_URL = "/v1/chat/completions"


def batch_line(r: TeacherRequest, model: str) -> dict:
    """One Batch API input line for ``r``: its cache key is the ``custom_id``."""
    from distill.teacher.openai_backend import _body

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
        lps = pack_openai_logprobs(content)  # by bytes, as the online openai backend stores them
    return Choice(text=(c.get("message") or {}).get("content") or "", finish_reason=c.get("finish_reason"), logprobs=lps)


def read_batch_output(path: Path, by_key: dict[str, TeacherRequest], engine: str,
                      model: str) -> tuple[list[TeacherResponse], dict[str, str]]:
    """Parse an output file: (answers, {custom_id: error}) for the ids in ``by_key`` (others are ignored)."""
    answers, errors = parse_batch_output(path.read_text(), by_key, engine, model, str(path))
    return answers, {k: msg for k, (_, msg) in errors.items()}


def parse_batch_output(text: str, by_key: dict[str, TeacherRequest], engine: str, model: str,
                       where: str = "batch output") -> tuple[list[TeacherResponse], dict[str, tuple[int | None, str]]]:
    """Parse Batch API output (or error) lines: (answers, {custom_id: (http status, error)})."""
    from distill.teacher.structured import validate_output

    answers, errors = [], {}
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except json.JSONDecodeError as exc:
            log.warning("%s:%d is not JSON (%s); skipped", where, n, exc.msg)
            continue
        key = line.get("custom_id")
        if key not in by_key:
            continue
        resp, err = line.get("response") or {}, line.get("error")
        body = resp.get("body") or {}
        if err or resp.get("status_code", 200) != 200 or not body.get("choices"):
            status = resp.get("status_code")
            detail = err or body.get("error") or body.get("message") or body
            errors[key] = (status, f"batch line {n}: status {status}: {detail}"[:500])
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
           "--max-model-len", str(cfg.max_model_len), "--enable-prefix-caching", "--no-trust-remote-code",
           "--tensor-parallel-size", str(cfg.tensor_parallel_size)]
    if cfg.enforce_eager:
        cmd.append("--enforce-eager")
    if not torch.cuda.is_available():  # see distill.teacher.vllm_backend.cpu_engine_args
        cmd += ["--no-enable-chunked-prefill", "--max-num-batched-tokens", str(max(cfg.max_model_len, 2048))]
    return cmd


def send_batch(pending: list[TeacherRequest], cfg: TeacherConfig, cache: ResponseCache,
               stats: TeacherStats) -> dict[str, TeacherResponse]:
    """Answer ``pending`` (all cache misses) through one batch file; stores answers, returns failures by key."""
    if cfg.backend != "vllm":
        return send_remote_batch(pending, cfg, cache, stats)
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


# --- remote Batch API (openai backend) ---------------------------------------------------------------

TERMINAL = ("completed", "failed", "expired", "cancelled")


def journal_path(cache: ResponseCache) -> Path:
    """Submitted, not yet collected batches: a JSON file beside the response cache."""
    return cache.path.with_name(cache.path.stem + ".batches.json")


def _load_journal(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RuntimeError(f"{path}: the batch journal is not valid JSON ({exc.msg}); it lists batches already "
                           "paid for, so it is not overwritten: fix or remove it (then those batches are not collected)") from exc


def _save_journal(path: Path, journal: dict[str, dict]) -> None:
    write_text_atomic(path, json.dumps(journal, indent=1))  # a crash leaves the old or the new journal


def _retryable(status: int | None) -> bool:
    return status is None or status in (408, 409, 429) or status >= 500


@dataclass
class _RemoteBatches:
    """What the steps of one :func:`send_remote_batch` call share: the client, the pending requests by cache key,
    the journal of submitted batches and the errors another batch would not fix."""

    client: openai.OpenAI
    cfg: TeacherConfig
    cache: ResponseCache
    stats: TeacherStats
    by_key: dict[str, TeacherRequest]
    jpath: Path
    journal: dict[str, dict]
    final: dict[str, str] = field(default_factory=dict)  # custom_id -> error that another batch would not fix


def _unanswered(rb: _RemoteBatches) -> list[TeacherRequest]:
    """The pending requests with neither a cached answer nor a final error."""
    got = rb.cache.get_many(list(rb.by_key))
    return [r for k, r in rb.by_key.items() if k not in got and k not in rb.final]


def _wait_for(rb: _RemoteBatches, batch_id: str) -> Any:
    """Poll ``batch_id`` until it ends; raises BatchPending after ``teacher.batch_wait_s``, and RuntimeError
    when the endpoint refused the whole file."""
    deadline = time.monotonic() + rb.cfg.batch_wait_s
    while True:
        b = rb.client.batches.retrieve(batch_id)
        if b.status in TERMINAL:
            break
        if time.monotonic() >= deadline:
            raise BatchPending(
                f"batch {batch_id} is still {b.status} after teacher.batch_wait_s={rb.cfg.batch_wait_s:g} s; it is "
                f"recorded in {rb.jpath}, so re-running the same command collects it without submitting again")
        time.sleep(min(rb.cfg.batch_poll_s, max(0.0, deadline - time.monotonic())))
    if b.status == "failed" and not b.output_file_id:  # the whole file was refused (validation)
        errs = "; ".join(f"{e.code}: {e.message}" for e in ((b.errors.data or []) if b.errors else []))
        raise RuntimeError(f"batch {batch_id} failed before any request ran: {errs or 'no reason given'}; "
                           "nothing was paid for (it stays in the journal until you remove it)")
    return b


def _read_results(rb: _RemoteBatches, batch_id: str,
                  b: Any) -> tuple[list[TeacherResponse], dict[str, tuple[int | None, str]]]:
    """The answers and line errors in the output and error files of ``b``, the finished batch ``batch_id``."""
    answers, errors = [], {}
    for file_id in (b.output_file_id, b.error_file_id):
        if file_id:
            a, e = parse_batch_output(rb.client.files.content(file_id).text, rb.by_key, "openai-batch",
                                      rb.cfg.model_id(), f"batch {batch_id} file {file_id}")
            answers += a
            errors |= e
    return answers, errors


def _collect(rb: _RemoteBatches, batch_id: str) -> None:
    """Wait for ``batch_id``, cache its answers, keep its non-retryable line errors, and drop it from the journal."""
    t0 = time.perf_counter()
    b = _wait_for(rb, batch_id)
    answers, errors = _read_results(rb, batch_id, b)
    per = (time.perf_counter() - t0) / max(1, len(answers))
    for a in answers:
        a.latency_s = round(per, 4)
    rb.cache.put_many([(a.key, a.to_dict()) for a in answers])
    for k, (status, msg) in errors.items():
        rb.stats.failures["batch"] = rb.stats.failures.get("batch", 0) + 1
        if not _retryable(status):
            rb.final[k] = msg
    log.info("batch %s %s: %d answered, %d line errors", batch_id, b.status, len(answers), len(errors))
    rb.journal.pop(batch_id, None)
    _save_journal(rb.jpath, rb.journal)


def _reattach(rb: _RemoteBatches) -> None:
    """Collect the journalled batches of this endpoint that cover any pending request (submitted by an earlier run)."""
    for batch_id, entry in list(rb.journal.items()):
        if entry.get("base_url") == rb.cfg.base_url and set(entry.get("custom_ids", ())) & set(rb.by_key):
            log.info("batch: re-attaching to %s submitted earlier (%d requests)", batch_id, len(entry["custom_ids"]))
            _collect(rb, batch_id)


def _submit(rb: _RemoteBatches, todo: list[TeacherRequest]) -> str:
    """Upload ``todo`` as one batch and journal it before anything polls it; returns the batch id.

    An endpoint without a Batch API (404) is a ConfigError."""
    import openai

    cfg = rb.cfg
    with tempfile.TemporaryDirectory(prefix="eakd-batch-") as tmp:
        inp = Path(tmp) / "input.jsonl"
        lines = write_batch_file(todo, cfg.model_id(), inp)
        try:
            with open(inp, "rb") as f:
                file_id = rb.client.files.create(file=f, purpose="batch").id
            batch = rb.client.batches.create(input_file_id=file_id, endpoint=CHAT_URL,
                                             completion_window=cfg.batch_completion_window)
        except openai.NotFoundError as exc:
            from distill.config import ConfigError

            raise ConfigError(f"teacher.batch: {cfg.base_url} has no Batch API ({exc.request.method} "
                              f"{exc.request.url.path} -> 404); turn teacher.batch off to send the same "
                              "requests online (same cache keys)") from exc
    rb.journal[batch.id] = {"base_url": cfg.base_url, "input_file_id": file_id, "created": time.time(),
                            "custom_ids": [r.key() for r in todo]}
    _save_journal(rb.jpath, rb.journal)  # before polling: a crash from here on re-attaches, never resubmits
    log.info("batch: submitted %d requests as %s", lines, batch.id)
    return batch.id


def _failures(rb: _RemoteBatches) -> dict[str, TeacherResponse]:
    """The requests still unanswered (or failed for good), as error responses by key."""
    errors = {r.key(): "no answer after the batch and its resubmissions (expired or retryable errors each time)"
              for r in _unanswered(rb)} | rb.final
    if errors:
        log.warning("batch: %d of %d requests failed; they are not cached, so a rerun resubmits only them",
                    len(errors), len(rb.by_key))
    return {k: TeacherResponse(key=k, choices=[], engine="openai-batch", model=rb.cfg.model_id(), error=e)
            for k, e in errors.items()}


def send_remote_batch(pending: list[TeacherRequest], cfg: TeacherConfig, cache: ResponseCache,
                      stats: TeacherStats) -> dict[str, TeacherResponse]:
    """Answer ``pending`` through the endpoint's Batch API; stores answers, returns failures by key.

    First re-attaches to journalled batches of this endpoint that cover any pending request (:func:`_reattach`),
    then submits what is still unanswered (:func:`_submit`, :func:`_collect`), in at most ``1 + max_retries``
    batches; what is left becomes the failures (:func:`_failures`).
    """
    import openai

    client = openai.OpenAI(base_url=cfg.base_url, api_key=require_api_key(cfg), timeout=cfg.timeout_s,
                           max_retries=cfg.max_retries)
    jpath = journal_path(cache)
    rb = _RemoteBatches(client, cfg, cache, stats, {r.key(): r for r in pending}, jpath, _load_journal(jpath))
    _reattach(rb)
    for _ in range(1 + cfg.max_retries):
        todo = _unanswered(rb)
        if not todo:
            break
        _collect(rb, _submit(rb, todo))
    return _failures(rb)
