"""Depth and width pruning give standard, smaller HF models that reload with identical outputs (CPU, fast)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from compress.structured import (
    block_importance,
    depth_prune,
    drop_layers,
    prune_kv_groups,
    width_importance,
    width_prune,
)

VOCAB = 128
IDS = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(1))
BATCHES = torch.randint(0, VOCAB, (4, 32), generator=torch.Generator().manual_seed(2))


def llama(layers: int = 5, heads: int = 6, kv: int = 3, hidden: int = 96, inter: int = 128) -> LlamaForCausalLM:
    """A random GQA Llama shaped like SmolLM2 in miniature (3 query heads per KV head, tied embeddings)."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=128,
                      tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # larger weights than the 0.02 init, so blocks change the residual visibly
        for p in model.model.layers.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.15)
    return model


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS, use_cache=False).logits


def reload(model, tmp_path) -> LlamaForCausalLM:
    model.save_pretrained(tmp_path, safe_serialization=True)
    return AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()


# --- depth --------------------------------------------------------------------------------------------

def make_identity(block) -> None:
    """Zero the two residual writes, so the block returns its input unchanged."""
    block.self_attn.o_proj.weight.data.zero_()
    block.mlp.down_proj.weight.data.zero_()


def test_identity_block_has_zero_importance_and_is_dropped_first():
    model = llama()
    make_identity(model.model.layers[2])
    scores = block_importance(model, BATCHES, batch_size=2)
    assert len(scores) == 5 and scores[2] < 1e-6 and min(s for i, s in enumerate(scores) if i != 2) > 1e-3
    assert all(0.0 <= s <= 1.0 for s in scores)
    result = depth_prune(model, BATCHES, fraction=0.2, batch_size=2)  # round(0.2 * 5) = 1 block
    assert result["dropped"] == [2] and model.config.num_hidden_layers == 4


def test_depth_prune_never_drops_ends_by_default():
    model = llama()
    make_identity(model.model.layers[0])
    make_identity(model.model.layers[4])
    result = depth_prune(model, BATCHES, fraction=0.4, batch_size=2)
    assert 0 not in result["dropped"] and 4 not in result["dropped"] and len(result["dropped"]) == 2
    model = llama()
    make_identity(model.model.layers[0])
    assert depth_prune(model, BATCHES, fraction=0.2, keep_first=False, batch_size=2)["dropped"] == [0]
    with pytest.raises(ValueError, match="only 3 may be dropped"):
        depth_prune(llama(), BATCHES, fraction=0.8)


def test_drop_layers_round_trip_and_cache(tmp_path):
    model = llama()
    drop_layers(model, [1, 3])
    assert model.config.num_hidden_layers == 3
    assert [b.self_attn.layer_idx for b in model.model.layers] == [0, 1, 2]
    loaded = reload(model, tmp_path)
    assert loaded.config.num_hidden_layers == 3 and len(loaded.model.layers) == 3
    assert torch.equal(logits(loaded), logits(model))
    with torch.no_grad():  # incremental decoding with a KV cache matches the full forward
        out = model(input_ids=IDS[:, :20], use_cache=True)
        step = model(input_ids=IDS[:, 20:21], past_key_values=out.past_key_values, use_cache=True).logits[:, -1]
    torch.testing.assert_close(step, logits(model)[:, 20], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="indices must be in"):
        drop_layers(model, [3])


# --- width --------------------------------------------------------------------------------------------

def test_width_keep_all_is_exact():
    model = llama()
    before = logits(model)
    result = width_prune(model, BATCHES, mlp_fraction=0.0, kv_head_fraction=0.0, batch_size=2)
    assert result["intermediate_size"] == [128, 128] and result["num_key_value_heads"] == [3, 3]
    assert torch.equal(logits(model), before)


def test_width_prune_reloads_from_standard_folder(tmp_path):
    model = llama()
    result = width_prune(model, BATCHES, mlp_fraction=0.25, kv_head_fraction=1 / 3, multiple_of=32, batch_size=2)
    assert result["intermediate_size"] == [128, 96] and result["num_attention_heads"] == [6, 4]
    assert result["num_key_value_heads"] == [3, 2] and result["head_dim"] == [16, 16]
    blk = model.model.layers[0]
    assert blk.mlp.gate_proj.weight.shape == (96, 96) and blk.mlp.down_proj.weight.shape == (96, 96)
    assert blk.self_attn.q_proj.weight.shape == (64, 96) and blk.self_attn.k_proj.weight.shape == (32, 96)
    assert blk.self_attn.o_proj.weight.shape == (96, 64)
    loaded = reload(model, tmp_path)
    assert type(loaded) is LlamaForCausalLM and loaded.config.head_dim == 16
    assert (loaded.config.intermediate_size, loaded.config.num_attention_heads) == (96, 4)
    assert torch.equal(logits(loaded), logits(model))


def test_pruning_dead_channels_and_groups_keeps_outputs():
    """Channels / KV groups whose activations are zero score 0, are pruned first, and change nothing."""
    model = llama()
    dead = [5, 17, 40, 41, 99, 127]
    with torch.no_grad():
        for blk in model.model.layers:
            blk.mlp.up_proj.weight[dead] = 0  # act(gate) * up = 0 for these channels
            blk.self_attn.v_proj.weight[16:32] = 0  # KV head 1 -> its 3 query heads output 0
    before = logits(model)
    imp = width_importance(model, BATCHES, batch_size=2)
    assert all(torch.all(s[dead] == 0) and (s > 0).sum() == 128 - len(dead) for s in imp["mlp"])
    assert all(g[1] == 0 and torch.all(g[[0, 2]] > 0) for g in imp["kv_groups"])
    width_prune(model, BATCHES, mlp_fraction=len(dead) / 128, kv_head_fraction=1 / 3, multiple_of=1, batch_size=2)
    assert model.config.intermediate_size == 122 and model.config.num_key_value_heads == 2
    torch.testing.assert_close(logits(model), before, rtol=1e-5, atol=1e-5)


def test_width_rejects_invalid_head_counts():
    model = llama(heads=10, kv=5, hidden=20)  # 3 of 5 KV groups = 6 heads, and 20 % 6 != 0
    with pytest.raises(ValueError, match=r"valid KV-head counts: \[1, 2, 5\]"):
        width_prune(model, BATCHES, kv_head_fraction=0.4)
    with pytest.raises(ValueError, match="keep must be in"):
        prune_kv_groups(llama(), [torch.ones(3)] * 5, 0)
