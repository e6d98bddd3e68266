"""Local TCP ports, for the teacher's vLLM server (:mod:`distill.teacher.serve`) and the rendezvous of
multi-process training (:mod:`distill.train.launch`), and the HTTP retry rules every client of a teacher
endpoint shares (:mod:`distill.teacher.openai_backend`, :mod:`distill.teacher.scoring`): a redacted URL for
logs, the server's ``Retry-After`` and exponential backoff with full jitter. A leaf of the shared core:
imports nothing of eakd."""

from __future__ import annotations

import random
import socket
from urllib.parse import urlsplit, urlunsplit


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (for tests and ad-hoc servers)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def redact_url(url: str) -> str:
    """A URL fit for logs and reports: credentials in the authority part, the query and the fragment are dropped."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def retry_after_s(exc: Exception) -> float | None:
    """The ``Retry-After`` seconds of the HTTP response an exception carries (openai and httpx errors), else None."""
    resp = getattr(exc, "response", None)
    if resp is None:
        return None
    raw = resp.headers.get("retry-after")
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except ValueError:
        return None


def backoff_s(attempt: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Exponential backoff with full jitter before retry ``attempt`` (1, 2, ...): uniform in [0, min(cap, base 2^(attempt-1))]."""
    return random.uniform(0, min(cap, base * 2 ** (attempt - 1)))
