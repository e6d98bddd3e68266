"""`train.processes: 2` hands training to `accelerate launch` (two gloo processes on the CPU): the same
global batch per step as one process with twice the accumulation, so the loss trajectory and the saved
weights must match the single-process run."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from distill.config import ConfigError
from distill.train.run import TrainConfig, train_student

pytestmark = pytest.mark.integration  # two extra Python processes with torch: ~30 s on 2 cores


def _cfg(tiny_model, **kw) -> TrainConfig:
    base = {"student": str(tiny_model), "max_steps": 3, "batch_size": 2, "lr": 1e-3, "dtype": "float32",
            "save_dtype": "float32", "log_every": 1,
            "lora": {"dropout": 0.0}}  # no dropout: its masks would differ per process
    return TrainConfig(**(base | kw))


def test_two_processes_match_one_with_twice_the_accumulation(tiny_model, sft_dataset, tmp_path):
    one = train_student(_cfg(tiny_model, grad_accum=2), sft_dataset, tmp_path / "one")
    two = train_student(_cfg(tiny_model, grad_accum=1, processes=2), sft_dataset, tmp_path / "two")

    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert m1["processes"] == 1 and m2["processes"] == 2
    assert [h["tokens"] for h in m1["history"]] == [h["tokens"] for h in m2["history"]]  # same batches per step
    assert [h["loss"] for h in m2["history"]] == pytest.approx([h["loss"] for h in m1["history"]], rel=1e-4)
    assert m2["val_loss_after"] == pytest.approx(m1["val_loss_after"], rel=1e-4)
    w1, w2 = load_file(str(one / "model.safetensors")), load_file(str(two / "model.safetensors"))
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5)
    assert not list(tmp_path.glob("two.launch*")), "the hand-off leaves no config or error file behind"


def test_a_bad_input_in_the_workers_comes_back_as_the_same_error(tiny_model, tmp_path):
    from datasets import Dataset, DatasetDict

    empty = tmp_path / "empty_ds"  # a dataset whose train split has no usable rows
    DatasetDict({"train": Dataset.from_list([{"id": "0", "text": "no messages"}])}).save_to_disk(str(empty))
    with pytest.raises(ConfigError, match="no usable rows"):
        train_student(_cfg(tiny_model, processes=2), empty, tmp_path / "out")
    assert not (tmp_path / "out").exists()
