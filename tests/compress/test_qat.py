"""compress.qat: the straight-through fake quantizer, its removal, and QAT through the compress stage beating
plain RTN at the same bit-width on a tiny random Llama (byte tokenizer, no data or bundled model needed)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from byte_models import byte_tokenizer, tiny_llama
from compress import target_linears
from compress.artifact import load_compressed, read_manifest
from compress.qat import FakeQuantSTE, add_fake_quant, qat_model, remove_fake_quant
from compress.quantize import dequantize_weight, fake_quantize
from compress.stage import CompressConfig, CompressStep, EvalConfig, compress_student
from distill.config import ConfigError
from distill.evaluate import perplexity

TEXT = "It was the best of times, it was the worst of times; it was the age of wisdom. " * 8


pytestmark = pytest.mark.usefixtures("one_thread")


def test_fake_quant_forward_is_the_grid_and_backward_is_the_identity():
    w = torch.randn(8, 32, requires_grad=True)
    fq = FakeQuantSTE(3, 16, True)
    out = fq(w)
    assert torch.equal(out.detach(), fake_quantize(w.detach(), 3, 16, True))
    g = torch.randn(8, 32)
    out.backward(g)
    assert torch.equal(w.grad, g)


def test_add_and_remove_keep_the_latent_weights_and_refuse_bad_groups():
    model = tiny_llama()
    before = {n: m.weight.detach().clone() for n, m in target_linears(model)}
    names = add_fake_quant(model, 4, 16, True)
    assert sorted(names) == sorted(before) and len(names) == 14
    layer = model.get_submodule(names[0])
    assert torch.equal(layer.weight, fake_quantize(before[names[0]], 4, 16, True))  # computes on the grid
    remove_fake_quant(model)
    after = dict(target_linears(model))
    assert all(isinstance(after[n].weight, nn.Parameter) and torch.equal(after[n].weight, before[n]) for n in before)
    with pytest.raises(ValueError, match="group_size"):
        add_fake_quant(tiny_llama(), 4, 48, True)  # 48 divides neither 64 nor 128


def _kl(teacher, student, ids) -> float:
    with torch.no_grad():
        t = torch.log_softmax(teacher(input_ids=ids).logits, -1)
        s = torch.log_softmax(student(input_ids=ids).logits, -1)
    return float((t.exp() * (t - s)).sum(-1).mean())


def test_qat_lands_closer_to_the_teacher_than_rtn_and_its_codes_are_exact():
    torch.manual_seed(0)
    teacher = tiny_llama().requires_grad_(False)
    calib = torch.randint(0, 256, (16, 32))
    held_out = torch.randint(0, 256, (4, 32))
    rtn = copy.deepcopy(teacher)
    from compress.quantize import quantize_model_rtn

    quantize_model_rtn(rtn, 2, 16, True)
    student = copy.deepcopy(teacher).requires_grad_(True)
    codes, stats = qat_model(student, teacher, calib, bits=2, group_size=16, symmetric=True, steps=40, lr=3e-4)
    assert stats["loss_last"] < stats["loss_first"]
    for name, linear in target_linears(student):  # the weights are exactly what the codes hold
        q, scale, zero = codes[name]
        assert q.shape == linear.weight.shape and zero is None and int(q.abs().max()) <= 2
        assert torch.equal(linear.weight, dequantize_weight(q, scale, zero, 16))
    assert not any(hasattr(m, "parametrizations") for m in student.modules())
    assert _kl(teacher, student, held_out) < 0.7 * _kl(teacher, rtn, held_out)


def test_qat_step_in_the_compress_stage(tmp_path):
    src = tmp_path / "model"
    tiny_llama().save_pretrained(src, safe_serialization=True)
    byte_tokenizer().save_pretrained(src)
    calib = "".join(chr(32 + (i * 7919) % 95) for i in range(4000))
    cfg = CompressConfig(steps=[CompressStep(method="rtn", bits=2, group_size=16),
                                CompressStep(method="qat", bits=2, group_size=16, recover_steps=30, recover_lr=3e-4,
                                             entropy_coding="zstd")],
                         eval=EvalConfig(window=64, max_windows=3, dtype="float32"), chain=False,
                         save_dtype="float32", calibration={"n_samples": 16, "seq_len": 64})
    out = compress_student(cfg, src, tmp_path / "out", eval_text=TEXT, calib_text=calib)
    summary = json.loads((out / "summary.json").read_text())
    base = summary["baseline"]["perplexity"]
    rtn, qat = summary["steps"]
    assert qat["stats"]["qat"]["steps"] == 30 and qat["stats"]["bits"] == 2
    # a random model's perplexity (~vocab size) says nothing about quality: the KL test above does that
    assert qat["stats"]["qat"]["loss_last"] < qat["stats"]["qat"]["loss_first"]
    assert qat["after"]["perplexity"] != rtn["after"]["perplexity"] and qat["before"]["perplexity"] == base
    assert all(e["scheme"] == "qat" and e["coding"] == "zstd" for e in read_manifest(qat["artifact"])["quantized"].values())
    reloaded = perplexity(load_compressed(qat["artifact"]), byte_tokenizer(), TEXT, window=64, max_windows=3,
                          dtype="float32")["perplexity"]
    assert reloaded == pytest.approx(qat["after"]["perplexity"], rel=1e-5)
    with pytest.raises(ConfigError, match="recover_steps"):
        compress_student(CompressConfig(steps=[CompressStep(method="qat")], eval=cfg.eval), src, tmp_path / "x",
                         eval_text=TEXT, calib_text=calib)
    assert not (tmp_path / "x").exists()
