"""A planted API key never reaches disk or the terminal (issue 8).

``OPENAI_API_KEY`` holds a random planted key; the whole demo pipeline runs through the real CLI
(``eakd run flows/configs/demo.yaml`` + small overrides) against the vLLM server, with every output —
run folder, EAKD_HOME (teacher cache), PREFECT_HOME (Prefect's database with the forwarded run logs) —
under ``tmp_path``. The key is sent on every teacher request (the openai backend uses it whenever it
is set), yet no byte of any produced file, and nothing on stdout/stderr, may contain it.
"""

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.reliability]


def _needles(key: str) -> list[bytes]:
    """The key as written raw (UTF-8), as UTF-16, and inside base64 (e.g. an HTTP Basic header), at each
    of the three byte alignments (the edge characters that depend on neighbours are trimmed)."""
    raw = key.encode()
    found = [raw, key.encode("utf-16-le")]
    for pad in range(3):
        enc = base64.b64encode(b"\0" * pad + raw)
        found.append(enc[4 if pad else 0:-4])
    return found


def _scan(root: Path, needles: list[bytes]) -> tuple[list[Path], list[Path]]:
    """(every regular file under root, those containing a needle); symlinks are not followed."""
    files, leaks = [], []
    for folder, _, names in os.walk(root, followlinks=False):
        for name in names:
            path = Path(folder) / name
            if path.is_symlink() or not path.is_file():
                continue
            files.append(path)
            data = path.read_bytes()
            if any(n in data for n in needles):
                leaks.append(path)
    return files, leaks


def test_planted_key_is_never_written(repo_root, tmp_path, monkeypatch, vllm_server, tiny_model, bundled_dir,
                                      reliability):
    key = "sk-eakd-planted-" + os.urandom(16).hex()
    home, prefect_home, runs = tmp_path / "eakd_home", tmp_path / "prefect_home", tmp_path / "runs"
    # the bundled teacher is fetched once per machine: link it in rather than download it again (not scanned)
    from distill.models import BUNDLED_NAME

    (home / "models").mkdir(parents=True)
    (home / "models" / BUNDLED_NAME).symlink_to(bundled_dir, target_is_directory=True)
    monkeypatch.setenv("OPENAI_API_KEY", key)
    monkeypatch.setenv("EAKD_HOME", str(home))
    monkeypatch.setenv("PREFECT_HOME", str(prefect_home))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    monkeypatch.delenv("EAKD_SECRETS_FILE", raising=False)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)  # Prefect's temporary local API, database in PREFECT_HOME
    text = tmp_path / "heldout.txt"
    text.write_text(" ".join(f"The {w} sat on the mat and looked at the {w}." for w in
                             ["cat", "dog", "bird", "fox", "owl", "cow", "pig", "hen"] * 12))
    overrides = [
        f"run.runs_dir={runs}", "run.name=planted",
        "teacher.backend=openai", f"teacher.base_url={vllm_server}", "teacher.model=bundled",
        "teacher.max_concurrency=8",
        # the demo's first-wave seed file (the demo itself runs a task file, which has no `limit`)
        "generate.tasks=null", "generate.seeds=flows/configs/demo_seeds.jsonl", "generate.styles=[icl, cot, instruct]",
        "generate.limit=9", "generate.sampling.max_tokens=48", "generate.drop_truncated=false",
        # the probes ask the teacher over HTTP with the planted key too; a few items keep it fast
        "evaluate.probes.per_task=1", "evaluate.probes.if_items=2", "compress.eval.probes.per_task=1",
        "evaluate.lm_eval=null",  # local tasks on local models: no key involved, and minutes on CI
        f"train.student={tiny_model}", "train.keep_layers=null", "train.kd.enabled=false", "train.max_steps=4", "train.batch_size=2",
        "train.save_every=2", "train.log_every=1", "train.max_length=256",
        "compress.steps=[{method: rtn_int8}, {method: gptq, bits: 4, group_size: 64}, {method: magnitude, sparsity: 0.5}]",
        "compress.calibration.n_samples=4", "compress.calibration.seq_len=64",
        f"compress.eval.text_path={text}", "compress.eval.window=32", "compress.eval.max_windows=4",
        "compress.eval.dtype=float32",
    ]
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "run", "flows/configs/demo.yaml", *overrides],
                          cwd=repo_root, capture_output=True, timeout=900)
    stdout, stderr = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, stderr[-4000:]

    needles = _needles(key)
    for stream, data in (("stdout", proc.stdout), ("stderr", proc.stderr)):
        assert not any(n in data for n in needles), f"the planted key is in the CLI's {stream}"
    files, leaks = _scan(tmp_path, needles)
    reliability["secret_files_scanned"] += len(files)
    assert not leaks, f"the planted key was written to {[str(p.relative_to(tmp_path)) for p in leaks]}"

    # the scan covered what matters (a scan of nothing would pass too)
    run_dir = next(runs.iterdir())
    assert f"run directory: {run_dir}" in stdout
    names = {p.relative_to(tmp_path).as_posix() for p in files}
    rel_run = run_dir.relative_to(tmp_path).as_posix()
    for expected in (f"{rel_run}/report.json", f"{rel_run}/report.md", f"{rel_run}/config.yaml",
                     f"{rel_run}/dataset/README.md", f"{rel_run}/dataset/stats.json",
                     "eakd_home/cache/teacher.sqlite"):
        assert expected in names, f"{expected} was not produced (scanned: {sorted(names)[:50]})"
    assert any(n.startswith(f"{rel_run}/dataset/train/") and n.endswith(".arrow") for n in names)
    assert any(n.startswith(f"{rel_run}/student/") and n.endswith(".safetensors") for n in names)
    assert any(n.startswith(f"{rel_run}/compressed/") for n in names)
    prefect_db = [n for n in names if n.startswith("prefect_home/") and ".db" in n]
    assert prefect_db, f"no Prefect database under PREFECT_HOME (scanned: {sorted(names)[:50]})"
    # the library's log lines (forwarded to Prefect) are in its database (or its WAL): the scan of it was a real test
    assert b"distill.data.dataset" in b"".join((tmp_path / n).read_bytes() for n in prefect_db)
    assert len(files) >= 20
