"""compress.qaf: LoftQ's start, adapters trained beside a frozen quantized base, the artifact holding exactly
what was measured, and the export's peft adapter reproducing it (tiny random Llama, byte tokenizer)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from byte_models import byte_tokenizer, tiny_llama
from compress import target_linears
from compress.artifact import load_compressed, read_manifest
from compress.export import export_compressed_tensors
from compress.qaf import loftq_init, merged_weight, qaf_model
from compress.quantize import dequantize_weight, quantize_model_rtn, quantize_weight
from compress.stage import CompressConfig, CompressStep, EvalConfig, compress_student
from distill.config import ConfigError
from distill.evaluate import perplexity

TEXT = "It was the best of times, it was the worst of times; it was the age of wisdom. " * 8


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("bits,group_size,symmetric", [(2, 16, True), (4, 32, False), (3, None, True)])
def test_loftq_start_is_closer_than_rtn_and_zero_iterations_is_qlora(bits, group_size, symmetric):
    torch.manual_seed(bits)
    w = torch.randn(48, 64) * torch.linspace(0.2, 3.0, 64)  # uneven column scales, as in real weights
    rtn = dequantize_weight(*quantize_weight(w, bits, group_size, symmetric), group_size)
    errors = []
    for iters in (1, 3):
        q, scale, zero, a, b = loftq_init(w, bits, group_size, symmetric, rank=8, iters=iters)
        assert a.shape == (8, 64) and b.shape == (48, 8) and q.shape == w.shape
        errors.append(float((w - merged_weight(q, scale, zero, group_size, a, b)).norm()))
    assert errors[0] < 0.9 * float((w - rtn).norm())
    assert errors[1] <= errors[0]  # the best iterate is kept, so more alternations never hurt
    q, scale, zero, a, b = loftq_init(w, bits, group_size, symmetric, rank=8, iters=0)
    assert torch.equal(q, quantize_weight(w, bits, group_size, symmetric)[0]) and not b.any() and a.abs().sum() > 0
    assert torch.equal(merged_weight(q, scale, zero, group_size, a, b), rtn)
    with pytest.raises(ValueError, match="lora_rank"):
        loftq_init(w, bits, group_size, symmetric, rank=49)


def _kl(teacher, student, ids) -> float:
    with torch.no_grad():
        t = torch.log_softmax(teacher(input_ids=ids).logits, -1)
        s = torch.log_softmax(student(input_ids=ids).logits, -1)
    return float((t.exp() * (t - s)).sum(-1).mean())


def test_qaf_trains_only_the_adapters_and_lands_closer_than_rtn():
    torch.manual_seed(0)
    teacher = tiny_llama().requires_grad_(False)
    calib, held_out = torch.randint(0, 256, (16, 32)), torch.randint(0, 256, (4, 32))
    rtn = copy.deepcopy(teacher)
    quantize_model_rtn(rtn, 2, 16, True)
    student = copy.deepcopy(teacher).requires_grad_(True)
    untouched = {n: p.detach().clone() for n, p in student.named_parameters() if "proj" not in n}
    codes, stats = qaf_model(student, teacher, calib, bits=2, group_size=16, rank=4, loftq_iters=1, steps=40, lr=3e-3)
    assert stats["loss_last"] < stats["loss_first"] and stats["weight_error_start"] < stats["weight_error_rtn"]
    for name, linear in target_linears(student):  # the weights are exactly codes + adapters
        q, scale, zero, a, b = codes[name]
        assert int(q.abs().max()) <= 2 and a.shape == (4, linear.in_features)
        assert torch.equal(linear.weight, merged_weight(q, scale, zero, 16, a, b))
    assert all(torch.equal(p, untouched[n]) for n, p in student.named_parameters() if n in untouched)
    assert all(p.requires_grad for p in student.parameters())  # restored
    assert not any(hasattr(m, "parametrizations") for m in student.modules())
    assert _kl(teacher, student, held_out) < 0.7 * _kl(teacher, rtn, held_out)


@pytest.mark.filterwarnings("ignore:You passed `quantization_config`")
def test_qaf_step_artifact_reloads_exactly_and_exports_a_peft_adapter(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    src = tmp_path / "model"
    tiny_llama().save_pretrained(src, safe_serialization=True)
    byte_tokenizer().save_pretrained(src)
    calib = "".join(chr(32 + (i * 7919) % 95) for i in range(4000))
    cfg = CompressConfig(steps=[CompressStep(method="qaf", bits=4, group_size=32, lora_rank=4, recover_steps=10,
                                             recover_lr=1e-3)],
                         eval=EvalConfig(window=64, max_windows=3, dtype="float32"),
                         save_dtype="float32", calibration={"n_samples": 16, "seq_len": 64})
    out = compress_student(cfg, src, tmp_path / "out", eval_text=TEXT, calib_text=calib)
    step = json.loads((out / "summary.json").read_text())["steps"][0]
    assert step["stats"]["qaf"]["steps"] == 10 and step["stats"]["bits"] == 4
    artifact = step["artifact"]
    manifest = read_manifest(artifact)
    assert len(manifest["quantized"]) == 14
    assert all(e["scheme"] == "qaf" and e["lora_rank"] == 4 for e in manifest["quantized"].values())
    tensors = load_file(f"{artifact}/model.safetensors")
    assert tensors["model.layers.0.mlp.up_proj.lora_A"].shape == (4, 64)
    assert "model.layers.0.mlp.up_proj.weight" not in tensors  # codes on disk, not the merged weight
    reloaded = load_compressed(artifact)
    ppl = perplexity(reloaded, byte_tokenizer(), TEXT, window=64, max_windows=3, dtype="float32")["perplexity"]
    assert ppl == pytest.approx(step["after"]["perplexity"], rel=1e-6)

    ct = export_compressed_tensors(artifact, tmp_path / "ct", scale_dtype="float32")
    assert json.loads((ct / "eakd_export.json").read_text())["adapter"] == "adapter"
    assert not any("lora" in k for k in load_file(str(ct / "model.safetensors")))
    base = AutoModelForCausalLM.from_pretrained(ct, quantization_config=CompressedTensorsConfig(dequantize=True),
                                                dtype=torch.float32).eval()
    served = PeftModel.from_pretrained(base, ct / "adapter").eval()
    ids = torch.tensor([list(b"the age of wisdom")])
    with torch.no_grad():
        torch.testing.assert_close(served(input_ids=ids).logits, reloaded(input_ids=ids).logits, rtol=1e-4, atol=1e-4)

    del tensors["model.layers.0.mlp.up_proj.lora_B"]  # a damaged artifact is named, not half-loaded
    from safetensors.torch import save_file

    save_file(tensors, f"{artifact}/model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConfigError, match="lora_B"):
        load_compressed(artifact)
