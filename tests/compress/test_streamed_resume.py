"""A streamed step killed mid-way resumes from its last checkpointed block and writes the same bytes.

The tiny random Llama of test_streamed.py, streamed GPTQ and SparseGPT (calibrated: the checkpoint carries the
next block's hidden states) and RTN (uncalibrated); the "kill" is an exception raised from the block loop, so
the test can count the blocks the rerun computes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import compress.streamed as streamed
import compress.streamed_resume as resume
from compress.config import CompressStep
from tests.compress.test_streamed import FILES, _run, _tiny_dir

pytestmark = pytest.mark.usefixtures("one_thread")


REAL_BLOCK = streamed._compress_block


class Killed(Exception):
    pass


def _count_blocks(monkeypatch, kill_at: int | None) -> list[str]:
    """Record every block _compress_block runs; raise Killed when it is asked for block number ``kill_at``."""
    seen: list[str] = []

    def spy(step, block, prefix, *args):
        if kill_at is not None and len(seen) == kill_at:
            raise Killed(prefix)
        seen.append(prefix)
        return REAL_BLOCK(step, block, prefix, *args)

    monkeypatch.setattr(streamed, "_compress_block", spy)
    return seen


@pytest.mark.parametrize("step", [CompressStep(method="gptq", bits=4, group_size=32),
                                  CompressStep(method="sparsegpt", sparsity=0.5), CompressStep(method="rtn", group_size=32)],
                         ids=["gptq", "sparsegpt", "rtn"])
def test_a_killed_step_resumes_from_its_last_checkpoint(tmp_path, monkeypatch, step):
    model_dir = _tiny_dir(tmp_path, True, torch.float32)
    reference = _run(model_dir, tmp_path / "whole", True, [step])
    monkeypatch.setattr(resume, "CHECKPOINT_S", 0.0)  # checkpoint after every block

    out = tmp_path / "killed"
    seen = _count_blocks(monkeypatch, kill_at=1)
    with pytest.raises(Killed):
        _run(model_dir, out, True, [step])
    assert seen == ["model.layers.0"]
    work = next(out.glob(".*.blocks"))
    assert (work / "checkpoint.json").is_file()

    seen = _count_blocks(monkeypatch, None)
    again = _run(model_dir, out, True, [step])
    assert seen and seen[0] == "model.layers.1", "the rerun starts after the checkpointed block"
    assert not work.exists(), "the work folder goes once the step is written"
    for name in FILES:
        a = Path(reference["steps"][0]["artifact"]) / name
        b = Path(again["steps"][0]["artifact"]) / name
        assert a.read_bytes() == b.read_bytes(), f"{name} differs after the resume"
    assert again["steps"][0]["stats"] == reference["steps"][0]["stats"]


def test_a_checkpoint_from_other_inputs_is_not_taken_up(tmp_path, monkeypatch):
    model_dir = _tiny_dir(tmp_path, True, torch.float32)
    monkeypatch.setattr(resume, "CHECKPOINT_S", 0.0)
    out = tmp_path / "out"
    _count_blocks(monkeypatch, kill_at=1)
    with pytest.raises(Killed):
        _run(model_dir, out, True, [CompressStep(method="gptq", bits=4, group_size=32)])
    seen = _count_blocks(monkeypatch, None)
    _run(model_dir, out, True, [CompressStep(method="gptq", bits=4, group_size=64)])  # another step: same folder name
    assert seen[0] == "model.layers.0", "a checkpoint of group 32 must not seed a group-64 run"


def test_a_checkpoint_missing_a_part_starts_again(tmp_path, monkeypatch):
    model_dir = _tiny_dir(tmp_path, True, torch.float32)
    step = CompressStep(method="gptq", bits=4, group_size=32)
    reference = _run(model_dir, tmp_path / "whole", True, [step])
    monkeypatch.setattr(resume, "CHECKPOINT_S", 0.0)
    out = tmp_path / "out"
    _count_blocks(monkeypatch, kill_at=1)
    with pytest.raises(Killed):
        _run(model_dir, out, True, [step])
    next(next(out.glob(".*.blocks")).glob("parts/00000.safetensors")).unlink()
    seen = _count_blocks(monkeypatch, None)
    again = _run(model_dir, out, True, [step])
    assert seen[0] == "model.layers.0"
    name = "model.safetensors"
    assert (Path(again["steps"][0]["artifact"]) / name).read_bytes() == \
        (Path(reference["steps"][0]["artifact"]) / name).read_bytes()
