"""A served teacher's scores of token sequences: vLLM's ``prompt_logprobs`` top-k over HTTP, for online and
on-policy logit KD (``train.kd.teacher: http://HOST:PORT/v1``) with the teacher outside the student's memory.

:class:`ServedTeacher` checks once that the server tokenizes like the student (vLLM's ``/tokenize`` at the server
root), then :meth:`ServedTeacher.score` sends each batch of sequences as one ``POST {url}/completions`` with the
prompt as token ids, ``max_tokens: 1`` and ``prompt_logprobs: k``, and returns per position the teacher's top-k
(token id -> logprob of token ``i`` given tokens ``< i``; position 0 has none). Sequences already scored come from
the content-addressed response cache (:mod:`distill.teacher.cache`, keyed by model, token ids and k), so a killed
and resumed run does not ask again.

Hand-written on ``httpx`` rather than the ``openai`` client: ``prompt_logprobs`` is a vLLM extension the client
neither types nor parses back, and ``/tokenize`` is outside the OpenAI API. Retries follow the openai backend's
rules (:mod:`distill.net`): 408/409/429/5xx, timeouts, resets and malformed bodies back off with full jitter
(honouring ``Retry-After``); other statuses stop the run at once; after ``max_retries`` the run stops with
:class:`~distill.teacher.types.TeacherUnavailable` naming the redacted URL. The API key is read from the
environment or the secrets file (:func:`distill.credentials.get_secret`) and never logged.

Run: ``python -c "from distill.teacher.scoring import parse_prompt_logprobs; help(parse_prompt_logprobs)"``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import httpx

from distill.config import ConfigError
from distill.credentials import get_secret
from distill.net import backoff_s, redact_url, retry_after_s
from distill.teacher.cache import ResponseCache
from distill.teacher.types import TeacherUnavailable

log = logging.getLogger(__name__)

SCORE_VERSION = 1  # bump when the stored scores' format changes (invalidates their cache keys)
RETRY_STATUS = {408, 409, 429}
# mixed text, digits, accents, CJK and a chat-template token: tokenizers that differ anywhere usually differ here
PROBE = "<|im_start|>user\nThe teacher's 3.14 naïve café costs ¥1,280 in 東京 — ok?\n\tDone."

Position = tuple[list[int], list[float]] | None  # (token ids, logprobs) sorted by logprob, highest first


class _Retryable(Exception):
    """A failure worth another attempt (its ``response``, when set, may carry ``Retry-After``)."""

    def __init__(self, what: str, response: httpx.Response | None = None):
        super().__init__(what)
        self.response = response


def parse_prompt_logprobs(choice: dict) -> list[Position]:
    """One completion choice's ``prompt_logprobs`` -> per prompt position ``i`` the teacher's distribution of token
    ``i`` given tokens ``< i``: ``(ids [<= k + 1], logprobs [<= k + 1])`` sorted by logprob (highest first), None at
    position 0. vLLM lists the top-k plus the prompt's own token when that is not among them; keys are token ids
    as strings, values ``{"logprob", "rank", "decoded_token"}`` (or a bare float)."""
    raw = choice.get("prompt_logprobs")
    if raw is None:
        raise ValueError("no prompt_logprobs")
    out: list[Position] = []
    for entry in raw:
        if entry is None:
            out.append(None)
            continue
        pairs = sorted(((int(t), float(v["logprob"] if isinstance(v, dict) else v)) for t, v in entry.items()),
                       key=lambda p: -p[1])
        out.append(([t for t, _ in pairs], [lp for _, lp in pairs]))
    return out


def score_key(model: str, ids: list[int], k: int) -> str:
    """The cache key of one sequence's scores: sha256 of the canonical JSON of (version, model, token ids, k)."""
    return hashlib.sha256(json.dumps([SCORE_VERSION, model, list(ids), k], separators=(",", ":")).encode()).hexdigest()


class ServedTeacher:
    """A vLLM OpenAI-compatible server (``url`` ending in ``/v1``) that scores token sequences; see the module doc."""

    def __init__(self, url: str, top_k: int, api_key_env: str = "OPENAI_API_KEY", cache_path: str | Path | None = None,
                 timeout_s: float = 300.0, max_retries: int = 8):
        self.url, self.top_k, self.max_retries = url.rstrip("/"), top_k, max_retries
        self.root = self.url.removesuffix("/v1")  # vLLM serves /tokenize beside /v1, not under it
        self.api_key_env = api_key_env
        key = get_secret(api_key_env)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(timeout=timeout_s, headers=headers)
        self.cache = ResponseCache(cache_path)
        self.requests = 0  # completions requests the server answered
        self.retries = 0
        self.model = self._model_id()

    def _call(self, path: str, body: dict | None = None, complete=None) -> dict:
        """GET (no body) or POST ``path`` (a full URL) with retries; the JSON answer. ``complete(answer)``: False
        for a 200 that is missing what was asked (retried like a 5xx)."""
        last = ""
        for attempt in range(1, self.max_retries + 2):
            try:
                r = self._client.post(path, json=body) if body is not None else self._client.get(path)
                if r.status_code in RETRY_STATUS or r.status_code >= 500:
                    raise _Retryable(f"HTTP {r.status_code}", r)
                if r.status_code in (401, 403, 404):  # as the openai backend: the endpoint refuses everything
                    raise TeacherUnavailable(f"train.kd.teacher: {redact_url(path)} answered {r.status_code}; check "
                                             f"the URL (a vLLM server's /v1) and ${self.api_key_env}")
                if r.status_code != 200:  # this request is wrong (k above the server's --max-logprobs, too long)
                    raise ConfigError(f"train.kd.teacher: {redact_url(path)} answered {r.status_code} "
                                      f"({r.text[:200]!r}); start vLLM with --max-logprobs >= train.kd.served_top_k "
                                      "and --max-model-len >= train.max_length")
                answer = r.json()
                if complete is not None and not complete(answer):
                    raise _Retryable("a 200 without what was asked")
                return answer
            except (_Retryable, httpx.TransportError, json.JSONDecodeError) as exc:  # a body cut off mid-JSON too
                last, wait = f"{type(exc).__name__}: {exc}"[:200], retry_after_s(exc)
            if attempt <= self.max_retries:
                self.retries += 1
                time.sleep(backoff_s(attempt) if wait is None else wait)
        raise TeacherUnavailable(f"train.kd.teacher: no answer from {redact_url(path)} after {self.max_retries + 1} "
                                 f"attempts ({last}); start the teacher's vLLM server (eakd teacher serve) or fix the URL")

    def _model_id(self) -> str:
        models = self._call(f"{self.url}/models").get("data") or []
        if not models:
            raise TeacherUnavailable(f"train.kd.teacher: {redact_url(self.url)}/models lists no model; "
                                     "point train.kd.teacher at a vLLM server's /v1")
        return str(models[0]["id"])

    def check_tokenizer(self, tok) -> None:
        """Refuse a server whose tokenizer is not the student's ``tok`` (served KD compares token ids)."""
        want = list(tok(PROBE, add_special_tokens=False)["input_ids"])
        got = self._call(f"{self.root}/tokenize", {"model": self.model, "prompt": PROBE, "add_special_tokens": False})
        if list(got.get("tokens") or []) != want:
            raise ConfigError(
                f"train.kd.teacher: {self.model} at {redact_url(self.url)} tokenizes differently from the student "
                f"({len(got.get('tokens') or [])} vs {len(want)} ids for a probe); served logit KD needs the same "
                "tokenizer (across tokenizers it is not supported yet): serve a teacher of the student's family, or "
                "use offline KD with byte-level top-k (train.kd.teacher=null)")

    def score(self, seqs: list[list[int]]) -> list[list[Position]]:
        """Per sequence of ``seqs`` (token ids), per position the teacher's top-k (:func:`parse_prompt_logprobs`);
        cached sequences are not sent, the others go as one request."""
        keys = [score_key(self.model, s, self.top_k) for s in seqs]
        found = self.cache.get_many(list(dict.fromkeys(keys)))
        todo = [i for i, k in enumerate(keys) if k not in found]
        if todo:
            body = {"model": self.model, "prompt": [list(seqs[i]) for i in todo], "max_tokens": 1,
                    "temperature": 0.0, "prompt_logprobs": self.top_k}
            choices = self._completions(body, len(todo))
            fresh = [(keys[i], {"positions": parse_prompt_logprobs(c)}) for i, c in zip(todo, choices)]
            self.cache.put_many(fresh)
            found.update(fresh)
        return [[None if p is None else (list(p[0]), list(p[1])) for p in found[k]["positions"]] for k in keys]

    def _completions(self, body: dict, n: int) -> list[dict]:
        """The answer's ``n`` choices in prompt order; a 200 without them is retried, one without
        ``prompt_logprobs`` refused (the server is no vLLM)."""
        answer = self._call(f"{self.url}/completions", body, complete=lambda a: len(a.get("choices") or []) == n)
        choices = sorted(answer["choices"], key=lambda c: c.get("index", 0))
        self.requests += 1
        if any(c.get("prompt_logprobs") is None for c in choices):
            raise ConfigError(f"train.kd.teacher: {redact_url(self.url)} returned no prompt_logprobs; served KD needs "
                              "a vLLM server (its completions API scores prompts), or use offline KD (train.kd.teacher=null)")
        return choices

    def close(self) -> None:
        self._client.close()
        self.cache.close()
