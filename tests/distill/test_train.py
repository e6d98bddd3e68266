"""Sequence-level KD on a tiny random model: masking, depth pruning, and a loss that goes down."""

import json

import pytest
import torch

from distill.config import ConfigError
from distill.models import load_causal_lm, load_tokenizer
from distill.train import IGNORE, TrainConfig, depth_prune, tokenize_row, train_student


def test_labels_cover_only_the_assistant_turn(tiny_model):
    tok = load_tokenizer(tiny_model)
    ids, labels = tokenize_row(tok, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}], 512)
    assert len(ids) == len(labels)
    target = [t for t in labels if t != IGNORE]
    assert tok.decode(target).startswith("Hello there")
    n_prompt = labels.index(target[0])
    assert all(t == IGNORE for t in labels[:n_prompt])


def test_depth_prune_keeps_ends(tiny_model, tmp_path):
    from distill.models import build_tiny_model

    m = load_causal_lm(build_tiny_model(tmp_path / "m", tiny_model, layers=6))
    first, last = m.model.layers[0], m.model.layers[-1]
    depth_prune(m, 3)
    assert len(m.model.layers) == 3 and m.config.num_hidden_layers == 3
    assert m.model.layers[0] is first and m.model.layers[-1] is last
    m(torch.tensor([[1, 2, 3]]))  # still runs
    with pytest.raises(ConfigError, match="only 3 layers"):
        depth_prune(m, 5)


@pytest.mark.parametrize("lora", [True, False])
def test_train_student_loss_goes_down(tiny_model, tmp_path, lora, sft_dataset):
    ds = sft_dataset
    cfg = TrainConfig(student=str(tiny_model), lora={"enabled": lora, "r": 8, "alpha": 32}, max_steps=60 if lora else 25, batch_size=4,
                      lr=1e-2 if lora else 1e-3, log_every=5, dtype="float32", device="cpu")
    out = train_student(cfg, ds, tmp_path / "student")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["loss_last"] < metrics["loss_first"] - 0.2  # nats; a random tiny model starts near ln(V)
    assert metrics["val_loss_after"] < metrics["val_loss_before"]
    assert (out / "model.safetensors").exists() and not list(out.glob("*.bin"))
    assert (out / "train_config.yaml").exists()
    load_causal_lm(out)  # merged, loadable as a plain model
    with pytest.raises(ConfigError, match="already holds a trained student"):
        train_student(cfg, ds, out)


def test_train_rejects_non_dataset(tiny_model, tmp_path):
    with pytest.raises(ConfigError, match="not an eakd dataset"):
        train_student(TrainConfig(student=str(tiny_model)), tmp_path, tmp_path / "out")
