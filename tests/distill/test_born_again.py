"""Born-Again distillation (train.born_again): generation k is taught by generation k-1 through online logit KD,
from the same starting student; finished generations are kept and skipped on a rerun. Tiny model, CPU."""

from __future__ import annotations

import json
import shutil

import pytest

from distill.config import ConfigError
from distill.train.born_again import generation_config
from distill.train.run import TrainConfig, train_student


def _cfg(student, **kw):
    return TrainConfig(student=str(student), lora={"enabled": False}, max_steps=6, batch_size=4, lr=2e-3,
                       dtype="float32", device="cpu", **kw)


def test_generations_teach_each_other_and_resume(tiny_model, sft_dataset, tmp_path):
    out = train_student(_cfg(tiny_model, born_again=1), sft_dataset, tmp_path / "student")
    record = json.loads((out / "born_again.json").read_text())["generations"]
    gens = tmp_path / "student.generations"
    assert [r["generation"] for r in record] == [0, 1]
    assert record[0]["mode"] == "sft_sequence_kd" and record[0]["teacher"] is None
    assert record[1]["mode"] == "logit_kd_online_forward_kl" and record[1]["teacher"] == str(gens / "gen-0")
    assert all(r["val_loss"] is not None and r["top1_agreement"] is not None for r in record)
    # the result is the last generation, byte for byte
    assert (out / "model.safetensors").read_bytes() == (gens / "gen-1" / "model.safetensors").read_bytes()
    child = json.loads((gens / "gen-1" / "metrics.json").read_text())
    assert child["teacher_agreement_before"]["kl_full"] is not None  # scored against its parent, full vocabulary
    # a rerun after losing the result skips the finished generations
    stamp = (gens / "gen-0" / "metrics.json").stat().st_mtime_ns
    shutil.rmtree(out)
    train_student(_cfg(tiny_model, born_again=1), sft_dataset, tmp_path / "student")
    assert (gens / "gen-0" / "metrics.json").stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match="already holds"):
        train_student(_cfg(tiny_model, born_again=1), sft_dataset, tmp_path / "student")


def test_generation_config_keeps_the_kd_method_and_forces_a_teacher(tmp_path):
    sft = _cfg("bundled", born_again=2)
    assert generation_config(sft, None).born_again == 0 and not generation_config(sft, None).kd.enabled
    child = generation_config(sft, tmp_path / "gen-0")
    assert child.kd.enabled and child.kd.teacher == str(tmp_path / "gen-0")
    assert child.kd.method == "forward_kl" and child.kd.alpha_ce == 0.5 and child.born_again == 0
    kd = _cfg("bundled", born_again=1, kd={"enabled": True, "method": "reverse_kl", "alpha_ce": 0.2})
    child = generation_config(kd, tmp_path / "p")
    assert (child.kd.method, child.kd.alpha_ce, child.kd.teacher) == ("reverse_kl", 0.2, str(tmp_path / "p"))
