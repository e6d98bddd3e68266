"""Disk full and a read-only output folder: one clear error line, a non-zero exit, earlier artifacts intact.

Real filesystems: a 4 MiB tmpfs (full after a few MB of weights) and a tmpfs remounted read-only.
Mounting needs root with mount rights; without them those two tests skip and say so. The third case
needs no privileges: a file-size limit on the process (RLIMIT_FSIZE), which fails the write the way
a full disk does (EFBIG instead of ENOSPC). The command is `eakd compress` on the tiny model: it
writes megabytes of safetensors, JSON and a summary.
"""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.reliability

TEXT = "It was the best of times, it was the worst of times; it was the age of wisdom. " * 40


def _config(tmp_path: Path) -> Path:
    text = tmp_path / "eval.txt"
    text.write_text(TEXT)
    cfg = {"run": {"name": "disk", "stages": ["compress"]}, "generate": {"seeds": str(text)},
           "compress": {"chain": False, "steps": [{"method": "rtn_int8"}], "save_dtype": "float32",
                        "calibration": {"n_samples": 2, "seq_len": 32, "text_path": str(text)},
                        "eval": {"window": 64, "max_windows": 2, "dtype": "float32", "text_path": str(text)}}}
    path = tmp_path / "compress.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _compress(repo_root: Path, config: Path, model: Path, out: Path, preexec=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", "compress", str(config), "--model", str(model),
                           "--out", str(out)], cwd=repo_root, capture_output=True, text=True, timeout=300,
                          preexec_fn=preexec)


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _earlier(folder: Path) -> dict[str, str]:
    """An artifact from an earlier run that must survive untouched."""
    (folder / "earlier").mkdir(parents=True)
    (folder / "earlier" / "model.safetensors").write_bytes(os.urandom(256 * 1024))
    (folder / "earlier" / "metrics.json").write_text('{"perplexity": 12.5}\n')
    return _digest(folder / "earlier")


def _assert_one_clear_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def tmpfs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({(r.stderr or r.stdout).strip()[:120]}); needs root with mount rights")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_full_is_one_line_and_keeps_earlier_artifacts(tmpfs, tmp_path, tiny_model, repo_root, reliability):
    before = _earlier(tmpfs)
    proc = _compress(repo_root, _config(tmp_path), tiny_model, tmpfs / "out")
    line = _assert_one_clear_line(proc, "No space left on device", "free")
    assert str(tmpfs) in line  # names where it could not write
    assert _digest(tmpfs / "earlier") == before
    assert not (tmpfs / "out" / "rtn_int8").exists()  # nothing half-written is published
    assert not [p for p in (tmpfs / "out").glob(".*tmp*")]  # and the temp folder is gone (space given back)
    reliability["bad_inputs_tried"] += 1


def test_read_only_output_is_one_line_and_keeps_earlier_artifacts(tmpfs, tmp_path, tiny_model, repo_root, reliability):
    before = _earlier(tmpfs)
    r = subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot remount read-only here: {r.stderr.strip()[:120]}")
    proc = _compress(repo_root, _config(tmp_path), tiny_model, tmpfs / "out")
    _assert_one_clear_line(proc, "Read-only file system", "writable")
    assert _digest(tmpfs / "earlier") == before
    reliability["bad_inputs_tried"] += 1


def test_file_size_limit_fails_like_a_full_disk(tmp_path, tiny_model, repo_root, reliability):
    out = tmp_path / "out"
    before = _earlier(out)

    def limit() -> None:  # in the child: writes past 1 MiB fail with EFBIG instead of killing it
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    proc = _compress(repo_root, _config(tmp_path), tiny_model, out, preexec=limit)
    _assert_one_clear_line(proc, "File too large", "free")
    assert _digest(out / "earlier") == before
    assert not (out / "rtn_int8").exists() and not list(out.glob(".*tmp*"))
    reliability["bad_inputs_tried"] += 1
