"""AWQ (compress.awq): folding is exact before quantization, the search helps where outliers exist."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from compress.awq import awq_model, awq_scales, fold_scales, search_clip, search_scale, usable_groups
from compress.calibrate import InputStats, calibration_batches, run_sequential
from compress.quantize import dequantize_weight, fake_quantize, quantize_model_rtn
from distill.models import load_causal_lm, load_tokenizer

TEXT = " ".join(f"word{i % 97} and token{i % 13}." for i in range(3000))


pytestmark = pytest.mark.usefixtures("one_thread")


def stats_of(x: torch.Tensor) -> InputStats:
    """InputStats of inputs ``x`` [n, in], as compress.calibrate collects them."""
    return InputStats(gram=x.T @ x, abs_sum=x.abs().sum(0), count=x.shape[0])


def outlier_layer(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """W [48, 128] and inputs X [1024, 128] where 4 input channels are ~20x larger than the rest."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1024, 128, generator=g)
    x[:, [3, 50, 77, 100]] *= 20.0
    return torch.randn(48, 128, generator=g), x


def mha_llama() -> LlamaForCausalLM:
    """A tiny multi-head (no GQA) Llama, so v_proj -> o_proj scaling applies too."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256)
    return LlamaForCausalLM(cfg).eval()


def randomize_norms(model: torch.nn.Module) -> None:
    """Non-trivial RMSNorm gains (a fresh model has all ones)."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))


@pytest.mark.parametrize("mha", [False, True])
def test_folding_searched_scales_keeps_the_float_model(tiny_model, mha):
    model = mha_llama() if mha else load_causal_lm(tiny_model)
    randomize_norms(model)
    ids = calibration_batches(load_tokenizer(tiny_model), TEXT, n_samples=3, seq_len=32) % 256
    applied = []

    def scale_only(_i, block, stats):
        groups = usable_groups(block, stats)
        found = [(g, search_scale([block.get_submodule(n).weight for n in g.linears], stats[g.linears[0]],
                                  3, 16, True)) for g in groups]
        for g, (s, alpha, _ratio) in found:
            assert alpha > 0 or torch.equal(s, torch.ones_like(s))
            fold_scales(block, g, awq_scales(stats[g.linears[0]].abs_mean, 0.5))  # a non-trivial s for sure
        applied.append([g.prev for g in groups])

    with torch.no_grad():
        ref = model(input_ids=ids).logits
        run_sequential(model, ids, scale_only, batch_size=2)
        out = model(input_ids=ids).logits
    expected = ["input_layernorm", "post_attention_layernorm", "mlp.up_proj"]
    if mha:
        expected.insert(1, "self_attn.v_proj")
    assert applied == [expected, expected]  # v_proj -> o_proj only without GQA
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_scale_search_beats_rtn_with_outlier_channels():
    w, x = outlier_layer()
    s, alpha, ratio = search_scale([w], stats_of(x), 4, 32, True)
    rtn = ((w - fake_quantize(w, 4, 32)) @ x.T).pow(2).sum()
    awq = ((w - fake_quantize(w * s, 4, 32) / s) @ x.T).pow(2).sum()
    assert alpha > 0 and awq < 0.8 * rtn
    assert float(awq / rtn) == pytest.approx(ratio, rel=1e-3)


def test_scale_search_never_worse_than_rtn():
    g = torch.Generator().manual_seed(3)
    w, x = torch.randn(16, 64, generator=g), torch.randn(256, 64, generator=g)  # no outliers
    s, _alpha, ratio = search_scale([w], stats_of(x), 4, 16, False)
    assert ratio <= 1.0


def test_clip_search_only_shrinks_and_lowers_group_error():
    w, x = outlier_layer()
    w[0, 0] = 8.0  # one outlier weight: clipping it pays off for the other weights of its group
    clipped = search_clip(w, x.T @ x, 3, 32, True)
    assert torch.all(clipped.abs() <= w.abs() + 1e-6) and clipped[0, 0] < 8.0
    err = lambda v: ((w - fake_quantize(v, 3, 32)) @ x.T).pow(2).sum()  # noqa: E731
    assert err(clipped) < err(w)


def test_awq_model_quantizes_every_linear_and_beats_rtn(tiny_model):
    model, tok = load_causal_lm(tiny_model), load_tokenizer(tiny_model)
    batches = calibration_batches(tok, TEXT, n_samples=4, seq_len=64)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, :3] *= 15.0  # a few outlier residual channels, as in real LLMs
        ref = model(input_ids=batches).logits
        rtn_model = load_causal_lm(tiny_model)
        rtn_model.model.embed_tokens.weight.copy_(model.model.embed_tokens.weight)
        quantize_model_rtn(rtn_model, bits=4, group_size=32)
        rtn = rtn_model(input_ids=batches).logits
        results = awq_model(model, batches, bits=4, group_size=32, batch_size=2)
        awq = model(input_ids=batches).logits
    assert len(results) == 14
    for name, (q, scale, zero, info) in results.items():
        assert torch.equal(model.get_submodule(name).weight, dequantize_weight(q, scale, zero, 32))
        assert (info["alpha"] is None) == name.endswith("o_proj")  # GQA: o_proj is not scaled
    assert (awq - ref).pow(2).mean() < (rtn - ref).pow(2).mean()
