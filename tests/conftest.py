"""Shared fixtures. Heavy ones (the bundled teacher, a vLLM server) are session-scoped.

The bundled teacher comes from ``eakd models fetch`` (``make test`` runs it first); tests that need
it fetch it on demand (idempotent). Each test gets its own response cache and Prefect home.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# dtype "auto" means fp32 on every CPU under test, as on an AVX2 machine: on one with AVX512-BF16 it would mean
# bf16, whose rounding makes greedy answers depend on how vLLM batched the requests (a near-tie flips), and the
# tests assert bit-equal records across runs (faulted == fault-free, resumed == uninterrupted, batch == online)
os.environ.setdefault("EAKD_CPU_AUTO_DTYPE", "float32")
# Prefect keeps a SQLite database under PREFECT_HOME; tests use their own (never the user's).
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="eakd-test-prefect-"))

# One Prefect API server for the whole session, started now (before Prefect reads its settings) and stopped at exit:
# every flow run, in this process and in the `eakd` commands tests start, talks to it instead of starting
# Prefect's temporary server, which costs each process 13-18 s of CPU on 2 cores (CI time, issue 23). It never
# is the user's own server: PREFECT_API_URL is set to it for the session. A test that needs Prefect's temporary
# API unsets PREFECT_API_URL in its child's environment; `_prefect_api_ready` waits for the server to answer.
import prefect_server  # noqa: E402

_PREFECT_HOME, _PREFECT_PORT = Path(os.environ["PREFECT_HOME"]) / "api-server", prefect_server.free_port()
_PREFECT_API = f"http://127.0.0.1:{_PREFECT_PORT}/api"
_PREFECT_SERVER = prefect_server.start(_PREFECT_HOME, _PREFECT_PORT, services=False)
atexit.register(prefect_server.stop, _PREFECT_SERVER)
os.environ["PREFECT_API_URL"] = _PREFECT_API

import flows  # noqa: E402,F401  (Prefect's environment, before Prefect is imported)

# isort: split

# Prefect binds its console log handler to sys.stderr when it is first imported. Import it now, under
# pytest's session capture: first imported inside a test's CliRunner, it kept that runner's stream, which
# closes when the test ends, and every later in-process flow crashed writing its logs to it.
import prefect.main  # noqa: E402,F401


@pytest.fixture(scope="session", autouse=True)
def _prefect_api_ready():
    """The session's Prefect API server answers before the first test runs (it started while tests were collected)."""
    prefect_server.wait_healthy(_PREFECT_API, _PREFECT_SERVER, _PREFECT_HOME)


@pytest.fixture(autouse=True)
def _own_stage_cache(tmp_path, monkeypatch):
    """Each test's pipeline runs get their own Prefect result storage (the stage cache): a test never
    reuses a stage another test ran."""
    monkeypatch.setenv("PREFECT_LOCAL_STORAGE_PATH", str(tmp_path / "prefect-storage"))


@pytest.fixture(scope="session")
def bundled_dir() -> Path:
    from distill.models import fetch_bundled_teacher

    return fetch_bundled_teacher()


@pytest.fixture(scope="session")
def tiny_model(bundled_dir, tmp_path_factory) -> Path:
    """A 2-layer random Llama with the bundled tokenizer (fast to train and compress)."""
    from distill.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", bundled_dir)


@pytest.fixture(scope="session")
def untied_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny model with a random, untied LM head. (With tied embeddings a tiny random model repeats its
    last input token: greedy answers are all blank lines, and tests of answers and batching would pass for
    nothing.) Its greedy outputs are varied word salad; tokens holding a line break get 1.4x larger
    logits, so most answers break their first line within a few dozen tokens."""
    import torch

    from distill.models import load_causal_lm, load_tokenizer

    torch.manual_seed(0)
    model, tok = load_causal_lm(tiny_model), load_tokenizer(tiny_model)
    model.config.tie_word_embeddings = False
    weight = torch.randn(model.lm_head.weight.shape) * 0.5
    weight[[i for i in range(len(tok)) if "\n" in tok.decode([i])]] *= 1.4
    model.lm_head.weight = torch.nn.Parameter(weight)
    out = tmp_path_factory.mktemp("untied") / "model"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


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
    from distill.teacher.serve import free_port, start_server, stop_server, wait_ready

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


@pytest.fixture(scope="session")
def e2e_run(vllm_server, tiny_model, tmp_path_factory):
    """One whole pipeline run on a tiny config through the real CLI (real vLLM server over HTTP, real
    Prefect flow, LoRA training, three compression steps); yields (run_dir, the finished process)."""
    import subprocess

    import yaml

    root = Path(__file__).resolve().parent.parent
    tmp_path = tmp_path_factory.mktemp("e2e")
    text = tmp_path / "heldout.txt"
    text.write_text(" ".join(f"The {w} sat on the mat and looked at the {w}." for w in
                             ["cat", "dog", "bird", "fox", "owl", "cow", "pig", "hen"] * 12))
    cfg = {
        "run": {"name": "e2e", "runs_dir": str(tmp_path / "runs")},
        "teacher": {"backend": "openai", "model": "bundled", "base_url": vllm_server, "max_concurrency": 8,
                    "cache_path": str(tmp_path / "cache.sqlite")},
        "generate": {"seeds": str(root / "flows/configs/demo_seeds.jsonl"), "limit": 9,
                     "sampling": {"max_tokens": 48}, "drop_truncated": False},
        "train": {"student": str(tiny_model), "max_steps": 4, "batch_size": 2, "lr": 1e-3, "log_every": 1},
        "compress": {"steps": [{"method": "svd", "rank_ratio": 0.5}, {"method": "magnitude", "sparsity": 0.5},
                               {"method": "rtn_int8"}],
                     "eval": {"text_path": str(text), "window": 32, "max_windows": 4, "dtype": "float32"}},
    }
    path = tmp_path / "e2e.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(path)], cwd=root,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return next((tmp_path / "runs").iterdir()), proc


def pytest_collection_modifyitems(config, items):
    """`gpu` tests skip (with the reason) where no CUDA device is visible."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none visible)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# --- the reliability table (issue 8) -----------------------------------------------------------------
# Tests marked `reliability` add what they did to this tally through the `reliability` fixture; the
# table is printed at the end of the run and, with EAKD_RELIABILITY_OUT=path, written as JSON.
RELIABILITY_ROWS = {
    "faults_injected": "faults injected (proxy: 429/5xx/hang/reset/malformed/empty, truncation, server death)",
    "crashes_survived": "crashes survived (kill -9, then resume)",
    "bad_inputs_tried": "bad inputs tried (one-line error, non-zero exit, earlier output intact)",
    "secret_files_scanned": "produced files scanned for a planted secret",
    "records_checked": "records checked after faults and crashes",
    "records_lost": "records lost",
    "records_duplicated": "records duplicated",
}
_RELIABILITY: Counter = Counter()


@pytest.fixture
def reliability() -> Counter:
    """The run's reliability tally: ``reliability["faults_injected"] += n`` etc. (keys: RELIABILITY_ROWS)."""
    return _RELIABILITY


def pytest_terminal_summary(terminalreporter) -> None:
    if not _RELIABILITY:
        return
    unknown = set(_RELIABILITY) - set(RELIABILITY_ROWS)
    assert not unknown, f"unknown reliability keys {unknown}"
    terminalreporter.section("reliability")
    width = max(len(v) for v in RELIABILITY_ROWS.values())
    for key, label in RELIABILITY_ROWS.items():
        terminalreporter.write_line(f"{label:<{width}}  {_RELIABILITY.get(key, 0):>6}")
    out = os.environ.get("EAKD_RELIABILITY_OUT")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps({k: _RELIABILITY.get(k, 0) for k in RELIABILITY_ROWS}, indent=2) + "\n")


def pytest_unconfigure(config) -> None:
    """Prefect logs "Stopping temporary server" at interpreter exit, after pytest closed the capture stream
    its console handler writes to: point that handler at the real stderr so the line is printed, not a
    logging error."""
    import logging

    for handler in logging.getLogger().handlers:
        console = getattr(handler, "console", None)
        if console is not None and hasattr(handler, "setStream"):
            try:
                handler.setStream(sys.__stderr__)
                console.file = sys.__stderr__
            except Exception:  # noqa: BLE001 - cosmetics only; never fail the session over a log line
                pass
