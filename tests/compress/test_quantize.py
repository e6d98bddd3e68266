"""Generic RTN (compress.quantize): error bounds, grid ranges, layouts, argument checks, the model pass."""

from __future__ import annotations

import pytest
import torch

from byte_models import tiny_llama
from compress import target_linears
from compress.quantize import (
    dequantize_weight,
    fake_quantize,
    quantize_model_rtn,
    quantize_weight,
    relative_output_error,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def weights(out: int = 24, inp: int = 96, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g) * torch.logspace(-3, 1, out)[:, None]  # rows of very different size
    w[3] = 0.0  # an all-zero row
    w[5, :40] = 0.0  # pruned weights
    return w


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [None, 16, 32])
@pytest.mark.parametrize("symmetric", [True, False])
def test_round_trip_within_half_a_step(bits, group_size, symmetric):
    w = weights()
    q, scale, zero = quantize_weight(w, bits, group_size, symmetric)
    n_groups = 1 if group_size is None else w.shape[1] // group_size
    assert q.shape == w.shape and scale.shape == (24, n_groups) and scale.dtype == torch.float32
    if symmetric:
        assert zero is None and q.dtype == torch.int8
        assert int(q.min()) >= -(2 ** (bits - 1)) and int(q.max()) <= 2 ** (bits - 1) - 1
    else:
        assert zero.shape == scale.shape and q.dtype == zero.dtype == torch.uint8
        assert int(q.max()) <= 2 ** bits - 1 and int(zero.max()) <= 2 ** bits - 1
    deq = dequantize_weight(q, scale, zero, group_size)
    gs = w.shape[1] if group_size is None else group_size
    err = (w - deq).abs().reshape(24, n_groups, gs)
    slack = 1e-6 * w.abs().reshape(err.shape)  # float rounding of w - q * s at 8 bits
    assert torch.all(err <= scale[..., None] / 2 + slack)
    assert torch.equal(deq[3], torch.zeros(96)) and torch.equal(deq[5, :40], torch.zeros(40))  # zeros stay exact
    assert torch.equal(fake_quantize(w, bits, group_size, symmetric), deq)


def test_grouping_helps_and_more_bits_help():
    w = weights()
    err = {(b, g): (w - fake_quantize(w, b, g)).pow(2).sum().item() for b in (3, 4, 8) for g in (None, 16)}
    assert err[(4, 16)] < err[(4, None)] and err[(3, 16)] > err[(4, 16)] > err[(8, 16)]


def test_asymmetric_beats_symmetric_on_one_sided_weights():
    w = weights().abs()  # all >= 0: the symmetric grid wastes its negative half
    assert (w - fake_quantize(w, 4, 32, False)).abs().max() < (w - fake_quantize(w, 4, 32, True)).abs().max()


def test_fake_quantize_keeps_dtype():
    w = weights().to(torch.bfloat16)
    assert fake_quantize(w, 4, 32).dtype == torch.bfloat16


@pytest.mark.parametrize("kwargs, match", [
    ({"bits": 4, "group_size": 40}, "group_size=40 does not divide the input dimension 96"),
    ({"bits": 1, "group_size": 32}, "bits must be an int in \\[2, 8\\]"),
    ({"bits": 9, "group_size": None}, "bits must be an int in \\[2, 8\\]"),
    ({"bits": 4, "group_size": 0}, "group_size must be a positive int"),
])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        quantize_weight(weights(), **kwargs)
    with pytest.raises(ValueError, match="2-D"):
        quantize_weight(torch.zeros(2, 3, 4))


def test_relative_output_error_matches_direct_computation():
    g = torch.Generator().manual_seed(1)
    w, x = torch.randn(8, 16, generator=g), torch.randn(16, 200, generator=g)
    w_hat = fake_quantize(w, 3, 8)
    direct = ((w - w_hat) @ x).pow(2).sum() / (w @ x).pow(2).sum()
    assert relative_output_error(w, w_hat, x @ x.T) == pytest.approx(float(direct), rel=1e-4)


def test_quantize_model_rtn_writes_codes_back():
    model = tiny_llama()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    codes = quantize_model_rtn(model, bits=4, group_size=16, symmetric=False)
    assert list(codes) == [n for n, _ in target_linears(model)] and len(codes) == 14
    for name, linear in target_linears(model):
        q, scale, zero = codes[name]
        assert torch.equal(linear.weight, dequantize_weight(q, scale, zero, 16))
        assert not torch.equal(linear.weight, before[f"{name}.weight"])
    assert torch.equal(model.model.embed_tokens.weight, before["model.embed_tokens.weight"])  # = tied lm_head


def test_quantize_model_rtn_checks_every_layer_before_touching_any():
    model = tiny_llama()  # hidden 64, intermediate 128: 128 divides neither q_proj's nor gate_proj's input
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="model.layers.0.self_attn.q_proj: .*group_size=128 does not divide"):
        quantize_model_rtn(model, bits=4, group_size=128)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
