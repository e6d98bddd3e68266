"""GPTQ (compress.gptq): properties of the per-layer algorithm and the block-by-block model pass."""

from __future__ import annotations

import pytest
import torch

from compress.calibrate import calibration_batches
from compress.gptq import gptq_model, gptq_quantize_weight
from compress.quantize import dequantize_weight, quantize_model_rtn, quantize_weight
from distill.models import load_causal_lm, load_tokenizer

TEXT = " ".join(f"word{i % 97} and token{i % 13}." for i in range(3000))


pytestmark = pytest.mark.usefixtures("one_thread")


def layer(out: int = 32, inp: int = 64, n: int = 2048, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight [out, in] and correlated inputs X [n, in] with a few large channels (like LLM activations)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g)
    mix = torch.randn(inp, inp, generator=g) / inp ** 0.5
    x = (torch.randn(n, inp, generator=g) @ mix + 0.1 * torch.randn(n, inp, generator=g))
    x[:, :4] *= 10.0
    return w, x


def out_err(w: torch.Tensor, w_hat: torch.Tensor, x: torch.Tensor) -> float:
    return float(((w - w_hat) @ x.T).pow(2).sum())


@pytest.mark.parametrize("group_size", [None, 16])
@pytest.mark.parametrize("symmetric", [True, False])
def test_identity_hessian_is_rtn(group_size, symmetric):
    """With H = I there is nothing to correct: no error is propagated and GPTQ is exactly RTN."""
    w, _ = layer()
    q, scale, zero, stats = gptq_quantize_weight(w, torch.eye(64), 4, group_size, symmetric, act_order=False)
    rq, rscale, rzero = quantize_weight(w, 4, group_size, symmetric)
    assert torch.equal(q, rq) and torch.equal(scale, rscale)
    assert (zero is None and rzero is None) or torch.equal(zero, rzero)
    assert stats["rel_error"] == pytest.approx(stats["rtn_rel_error"])


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group_size", [None, 16])
def test_beats_rtn_on_correlated_inputs(act_order, symmetric, group_size):
    w, x = layer()
    q, scale, zero, stats = gptq_quantize_weight(w, x.T @ x, 3, group_size, symmetric, act_order=act_order)
    gptq = out_err(w, dequantize_weight(q, scale, zero, group_size), x)
    rtn = out_err(w, dequantize_weight(*quantize_weight(w, 3, group_size, symmetric), group_size), x)
    assert gptq < 0.8 * rtn
    assert stats["rel_error"] == pytest.approx(gptq / float((w @ x.T).pow(2).sum()), rel=1e-3)


def test_act_order_keeps_the_plain_group_layout():
    """Act-order with static groups: each group's scale is RTN's scale of the original columns."""
    w, x = layer()
    q, scale, zero, _ = gptq_quantize_weight(w, x.T @ x, 4, 16, False, act_order=True)
    _, rscale, rzero = quantize_weight(w, 4, 16, False)
    assert torch.equal(scale, rscale) and torch.equal(zero, rzero)
    q_plain, *_ = gptq_quantize_weight(w, x.T @ x, 4, 16, False, act_order=False)
    assert not torch.equal(q, q_plain)


def test_auto_order_keeps_the_better_of_both():
    w, x = layer()
    x[:, 5] *= 300.0  # one massive activation channel, as in late down_proj layers
    h = x.T @ x
    errs = {order: gptq_quantize_weight(w, h, 4, 16, True, act_order=order)[3]["rel_error"] for order in (True, False)}
    auto = gptq_quantize_weight(w, h, 4, 16, True, act_order="auto")[3]
    assert auto["rel_error"] == min(errs.values()) and auto["act_order"] == min(errs, key=errs.get)
    with pytest.raises(ValueError, match="act_order must be"):
        gptq_quantize_weight(w, h, act_order="yes")


def test_lazy_block_updates_do_not_change_the_result():
    w, x = layer()
    a = gptq_quantize_weight(w, x.T @ x, 4, 16, True, block_size=64)[0]
    b = gptq_quantize_weight(w, x.T @ x, 4, 16, True, block_size=5)[0]
    assert (a == b).float().mean() > 0.99  # equal up to float rounding flipping a rare tie


@pytest.mark.parametrize("symmetric", [True, False])
def test_dead_columns_quantize_to_zero(symmetric):
    w, x = layer()
    x[:, [7, 30]] = 0.0  # inputs that never fire: H has zero rows/columns there
    q, scale, zero, stats = gptq_quantize_weight(w, x.T @ x, 4, 16, symmetric)
    deq = dequantize_weight(q, scale, zero, 16)
    assert stats["dead_columns"] == 2 and torch.isfinite(deq).all()
    assert torch.equal(deq[:, [7, 30]], torch.zeros(32, 2))


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="H \\[in, in\\]"):
        gptq_quantize_weight(torch.zeros(4, 8), torch.eye(4))
    with pytest.raises(ValueError, match="does not divide"):
        gptq_quantize_weight(torch.zeros(4, 8), torch.eye(8), group_size=3)


def test_gptq_model_beats_rtn_and_writes_codes(tiny_model):
    model, tok = load_causal_lm(tiny_model), load_tokenizer(tiny_model)
    batches = calibration_batches(tok, TEXT, n_samples=4, seq_len=64)
    with torch.no_grad():
        ref = model(input_ids=batches).logits
        results = gptq_model(model, batches, bits=4, group_size=32, batch_size=2)
        gptq = model(input_ids=batches).logits
        rtn_model = load_causal_lm(tiny_model)
        quantize_model_rtn(rtn_model, bits=4, group_size=32)
        rtn = rtn_model(input_ids=batches).logits
    assert len(results) == 14 and all(n.startswith("model.layers.") for n in results)
    for name, (q, scale, zero, stats) in results.items():
        assert torch.equal(model.get_submodule(name).weight, dequantize_weight(q, scale, zero, 32))
        assert stats["rel_error"] < stats["rtn_rel_error"]
    assert (gptq - ref).pow(2).mean() < 0.5 * (rtn - ref).pow(2).mean()


def test_gptq_model_checks_group_size_first(tiny_model):
    model = load_causal_lm(tiny_model)
    with pytest.raises(ValueError, match="group_size=48 does not divide"):
        gptq_model(model, torch.zeros(1, 8, dtype=torch.long), group_size=48)
