"""distill.io: published artifacts follow the process umask (safetensors alone writes its files 0600).

The umask used, 027, gives modes (0640 files, 0750 folders) that neither safetensors' 0600 nor the usual
022 default (0644) produce, so a test passes only when the mode really comes from the umask.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from byte_models import byte_tokenizer, tiny_llama
from distill.io import apply_umask, current_umask, publish_dir, write_text_atomic

UMASK = 0o027


@pytest.fixture
def umask_027():
    old = os.umask(UMASK)
    yield
    os.umask(old)


def _modes(folder: Path) -> dict[str, str]:
    """``{relative path: octal mode}`` of ``folder`` and everything under it."""
    return {str(p.relative_to(folder)): oct(stat.S_IMODE(p.lstat().st_mode)) for p in [folder, *folder.rglob("*")]}


def _assert_follows_umask(folder: Path) -> None:
    modes = _modes(folder)
    want = {name: oct(0o750 if (folder / name).is_dir() else 0o640) for name in modes}
    assert modes == want
    assert any(name.endswith(".safetensors") for name in modes)


def test_current_umask_reads_without_changing_it(umask_027):
    assert current_umask() == UMASK
    assert current_umask() == UMASK


def test_safetensors_alone_ignores_the_umask(umask_027, tmp_path):
    """The cause, pinned: if a safetensors release fixes it, this fails and distill.io's note can go."""
    save_file({"x": torch.zeros(2)}, str(tmp_path / "w.safetensors"))
    assert stat.S_IMODE((tmp_path / "w.safetensors").stat().st_mode) == 0o600


def test_publish_dir_applies_the_umask_and_replaces(umask_027, tmp_path):
    tmp, final = tmp_path / ".out.tmp", tmp_path / "out"
    (tmp / "sub").mkdir(parents=True)
    save_file({"x": torch.zeros(2)}, str(tmp / "sub" / "w.safetensors"))
    (tmp / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(tmp / "run.sh", 0o700)
    os.chmod(tmp, 0o700)  # as tempfile.mkdtemp makes it
    final.mkdir()
    (final / "stale.txt").write_text("old")
    publish_dir(tmp, final)
    assert not tmp.exists() and not (final / "stale.txt").exists()
    assert _modes(final) == {".": "0o750", "sub": "0o750", "sub/w.safetensors": "0o640", "run.sh": "0o750"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # the old folder moved aside is gone


def test_apply_umask_leaves_links(umask_027, tmp_path):
    (tmp_path / "a").write_text("a")
    os.chmod(tmp_path / "a", 0o600)
    (tmp_path / "link").symlink_to(tmp_path / "a")
    apply_umask(tmp_path)
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o640


def test_trained_student_is_readable_as_the_umask_says(umask_027, tiny_model, sft_dataset, tmp_path):
    """The reported bug, through the real code path: `eakd train`'s student folder."""
    from distill.train.run import TrainConfig, train_student

    cfg = TrainConfig(student=str(tiny_model), lora={"enabled": False}, max_steps=1, batch_size=2, dtype="float32",
                      device="cpu", log_every=1)
    _assert_follows_umask(train_student(cfg, sft_dataset, tmp_path / "student"))


def test_compressed_step_and_export_follow_the_umask(umask_027, tmp_path):
    """A compress step (published from a tempfile.mkdtemp folder, 0700), its compressed-tensors export and a re-coded copy."""
    import json

    from compress.artifact import recode
    from compress.export import export_compressed_tensors
    from compress.stage import CompressConfig, CompressStep, EvalConfig, compress_student

    src = tmp_path / "model"
    tiny_llama().save_pretrained(src, safe_serialization=True)
    byte_tokenizer().save_pretrained(src)
    cfg = CompressConfig(steps=[CompressStep(method="rtn", bits=4, group_size=32)],
                         eval=EvalConfig(window=32, max_windows=1, dtype="float32", latency=False))
    done = compress_student(cfg, src, tmp_path / "out", eval_text="the cat sat on the mat. " * 20)
    step = Path(json.loads((done / "summary.json").read_text())["steps"][-1]["artifact"])
    _assert_follows_umask(step)
    _assert_follows_umask(export_compressed_tensors(step, tmp_path / "ct"))
    _assert_follows_umask(recode(step, tmp_path / "coded", "zstd"))


def test_write_text_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path):
    card = tmp_path / "README.md"
    card.write_text("old\n")
    assert write_text_atomic(card, "new\n") == card
    assert card.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["README.md"]


def test_write_text_atomic_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    card = tmp_path / "README.md"
    card.write_text("old\n")
    real = Path.write_text

    def full_disk(self, text, *a, **k):
        real(self, text[:2], *a, **k)  # half written, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError):
        write_text_atomic(card, "new and longer\n")
    monkeypatch.undo()
    assert card.read_text() == "old\n"
