"""Local TCP ports, for the teacher's vLLM server (:mod:`distill.teacher.serve`) and the rendezvous of
multi-process training (:mod:`distill.train.launch`). A leaf of the shared core: imports nothing of eakd."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (for tests and ad-hoc servers)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
