"""Shared fixtures. Heavy ones (the bundled teacher, a vLLM server) are session-scoped.

The bundled teacher comes from ``eakd models fetch`` (``make test`` runs it first); tests that need
it fetch it on demand (idempotent). Each test gets its own response cache and Prefect home.
"""

from __future__ import annotations

import os
import tempfile
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Prefect keeps a SQLite database under PREFECT_HOME; tests use their own (never the user's).
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="eakd-test-prefect-"))


@pytest.fixture(scope="session")
def bundled_dir() -> Path:
    from distill.models import fetch_bundled_teacher

    return fetch_bundled_teacher()


@pytest.fixture(scope="session")
def tiny_model(bundled_dir, tmp_path_factory) -> Path:
    """A 2-layer random Llama with the bundled tokenizer (fast to train and compress)."""
    from distill.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", bundled_dir)


@pytest.fixture
def sft_dataset(tmp_path) -> Path:
    """A 12-row chat dataset (10 train / 2 validation) saved like `eakd generate` saves one."""
    from datasets import Dataset, DatasetDict

    rows = [{"id": str(i), "messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                                        {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(12)]
    path = tmp_path / "sft_ds"
    DatasetDict({"train": Dataset.from_list(rows[:-2]), "validation": Dataset.from_list(rows[-2:])}).save_to_disk(str(path))
    return path


@pytest.fixture
def cache_path(tmp_path) -> Path:
    return tmp_path / "teacher.sqlite"


@pytest.fixture(scope="session")
def vllm_server(bundled_dir, tmp_path_factory):
    """vLLM's OpenAI-compatible server with the bundled teacher on 127.0.0.1; yields its base URL."""
    from distill.serve import free_port, start_server, stop_server, wait_ready

    port = free_port()
    log_file = tmp_path_factory.mktemp("server") / "vllm.log"
    proc = start_server("bundled", port, log_file=log_file)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_ready(url, proc, timeout_s=600)
    except Exception:
        stop_server(proc)
        sys.stderr.write(log_file.read_text()[-5000:])
        raise
    yield url
    stop_server(proc)


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config, items):
    """`gpu` tests skip (with the reason) where no CUDA device is visible."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none visible)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
