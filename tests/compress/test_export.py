"""compress.export: eakd int4/int8 artifacts -> compressed-tensors pack-quantized, checked by compressed-tensors itself.

Tiny random Llama + byte tokenizer (see byte_models.py), compressed through the real compress stage. The
exported weights are decompressed by compressed-tensors' own ``pack-quantized`` compressor (and once by
transformers' CompressedTensorsHfQuantizer) and compared with what eakd's artifact dequantizes to:
exactly with fp32 scales, within the scale-cast rounding with bf16 scales. No vLLM here (see
tests/integration/test_export_vllm.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from byte_models import byte_tokenizer, tiny_llama
from compress.artifact import MANIFEST_NAME, load_compressed, read_manifest
from compress.export import EXPORT_RECORD, export_compressed_tensors
from compress.stage import CompressConfig, CompressStep, EvalConfig, compress_student
from distill.config import ConfigError

TEXT = "It was the best of times, it was the worst of times; it was the age of wisdom. " * 8
EVAL = EvalConfig(window=64, max_windows=2, dtype="float32")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "model"
    tiny_llama().save_pretrained(out, safe_serialization=True)
    byte_tokenizer().save_pretrained(out)
    return out


def _compress(model_dir: Path, out: Path, *steps: dict, save_dtype: str = "bfloat16") -> Path:
    cfg = CompressConfig(steps=[CompressStep(**s) for s in steps], eval=EVAL, save_dtype=save_dtype)
    done = compress_student(cfg, model_dir, out, eval_text=TEXT)
    return Path(json.loads((done / "summary.json").read_text())["steps"][-1]["artifact"])


def ct_decompressed(folder: Path) -> dict[str, torch.Tensor]:
    """``{layer: weight}`` for every packed layer of ``folder``, decompressed by compressed-tensors' own compressor."""
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig

    qc = json.loads((folder / "config.json").read_text())["quantization_config"]
    config = QuantizationConfig.model_validate(qc)
    compressor = BaseCompressor.get_value_from_registry(config.format)
    scheme = config.config_groups["group_0"]
    tensors = load_file(str(folder / "model.safetensors"))
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        module, local = key.rsplit(".", 1)
        if local.startswith("weight_"):
            layers.setdefault(module, {})[local] = value
    return {name: compressor.decompress(sd, scheme)["weight"].float() for name, sd in layers.items()}


CASES = [  # (bits, group_size, symmetric)
    (4, 32, True), (4, 32, False), (4, None, True), (4, None, False), (8, 16, False),
]


@pytest.mark.parametrize("bits,group_size,symmetric", CASES)
def test_compressed_tensors_decompresses_to_eakd_weights(model_dir, tmp_path, bits, group_size, symmetric):
    artifact = _compress(model_dir, tmp_path / "c", {"method": "rtn", "bits": bits, "group_size": group_size,
                                                     "symmetric": symmetric})
    reference = load_compressed(artifact).state_dict()  # eakd's fp32 dequantization of its codes
    quantized = read_manifest(artifact)["quantized"]

    exact = ct_decompressed(export_compressed_tensors(artifact, tmp_path / "fp32", scale_dtype="float32"))
    assert set(exact) == set(quantized) and len(exact) == 14  # 2 blocks x 7 linears; lm_head stays float
    for name, w in exact.items():  # fp32 scales: compressed-tensors computes (q - z) * s exactly as eakd
        assert torch.equal(w, reference[f"{name}.weight"]), name

    out = export_compressed_tensors(artifact, tmp_path / "bf16")  # default: the artifact's dtype (bf16)
    record = json.loads((out / EXPORT_RECORD).read_text())
    assert record["scale_dtype"] == "bfloat16" and record["ignore"] == ["lm_head"]
    tensors = load_file(str(out / "model.safetensors"))
    name = "model.layers.0.mlp.down_proj"  # [64, 128]
    groups = 1 if group_size is None else 128 // group_size
    assert tensors[f"{name}.weight_packed"].dtype == torch.int32
    assert tuple(tensors[f"{name}.weight_packed"].shape) == (64, 128 * bits // 32)
    assert tensors[f"{name}.weight_scale"].dtype == torch.bfloat16
    assert tuple(tensors[f"{name}.weight_scale"].shape) == (64, groups)
    assert tensors[f"{name}.weight_shape"].tolist() == [64, 128]
    if symmetric:
        assert f"{name}.weight_zero_point" not in tensors
    else:  # zero points are packed along the output dimension
        assert tuple(tensors[f"{name}.weight_zero_point"].shape) == (64 * bits // 32, groups)
    worst = 0.0
    for name, w in ct_decompressed(out).items():
        ref = reference[f"{name}.weight"]
        # the bf16 scale (rel. <= 2^-8) and the bf16 product compressed-tensors computes (rel. <= 2^-8)
        torch.testing.assert_close(w, ref, rtol=2 ** -7 * 1.01, atol=0.0)
        worst = max(worst, (w - ref).abs().max().item())
    largest = max(reference[f"{n}.weight"].abs().max().item() for n in quantized)
    assert 0 < record["max_abs_weight_change_from_scale_cast"] <= largest * 2 ** -8 and worst <= largest * 2 ** -7
    # the float tensors are copied untouched; the tied lm_head stays implicit
    assert "lm_head.weight" not in tensors
    assert torch.equal(tensors["model.embed_tokens.weight"], load_file(str(artifact / "model.safetensors"))["model.embed_tokens.weight"])


@pytest.mark.filterwarnings("ignore:You passed `quantization_config`")  # dequantize=True is meant to override
def test_transformers_loads_the_export_tied_and_equal(model_dir, tmp_path):
    """The whole folder through transformers' CompressedTensorsHfQuantizer: same weights, same logits, lm_head tied."""
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    artifact = _compress(model_dir, tmp_path / "c", {"method": "rtn", "bits": 4, "group_size": 32})
    out = export_compressed_tensors(artifact, tmp_path / "ct", scale_dtype="float32")
    assert read_manifest(out) is None  # a plain Hugging Face folder to eakd (no manifest copied)
    assert (out / "tokenizer.json").is_file() and not (out / MANIFEST_NAME).exists()
    model = AutoModelForCausalLM.from_pretrained(out, quantization_config=CompressedTensorsConfig(dequantize=True),
                                                 dtype=torch.float32).eval()
    ref = load_compressed(artifact).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    for key, value in ref.state_dict().items():
        assert torch.equal(model.state_dict()[key].float(), value), key
    ids = torch.tensor([list(b"the age of wisdom")])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits)


def test_legacy_rtn_int8_maps_to_int8_channel(model_dir, tmp_path):
    artifact = _compress(model_dir, tmp_path / "c", {"method": "rtn_int8"}, save_dtype="float32")
    out = export_compressed_tensors(artifact, tmp_path / "ct")
    weights = json.loads((out / "config.json").read_text())["quantization_config"]["config_groups"]["group_0"]["weights"]
    assert (weights["num_bits"], weights["strategy"], weights["group_size"], weights["symmetric"]) == (8, "channel", None, True)
    reference = load_compressed(artifact).state_dict()
    for name, w in ct_decompressed(out).items():
        assert torch.equal(w, reference[f"{name}.weight"]), name


def test_refuses_what_it_cannot_express(model_dir, tmp_path):
    factorized = _compress(model_dir, tmp_path / "svd", {"method": "svd", "rank_ratio": 0.3})
    with pytest.raises(ConfigError, match="low-rank factorized"):
        export_compressed_tensors(factorized, tmp_path / "a")
    with pytest.raises(ConfigError, match="plain Hugging Face folder"):
        export_compressed_tensors(model_dir, tmp_path / "b")
    artifact = _compress(model_dir, tmp_path / "rtn", {"method": "rtn", "bits": 4, "group_size": 32})
    mixed = tmp_path / "mixed"
    shutil.copytree(artifact, mixed)
    manifest = json.loads((mixed / MANIFEST_NAME).read_text())
    next(iter(manifest["quantized"].values()))["group_size"] = 16
    (mixed / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="different quantization schemes"):
        export_compressed_tensors(mixed, tmp_path / "c")
    export_compressed_tensors(artifact, tmp_path / "d")
    with pytest.raises(ConfigError, match="exists and is not empty"):
        export_compressed_tensors(artifact, tmp_path / "d")
    assert export_compressed_tensors(artifact, tmp_path / "d", overwrite=True).is_dir()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # no half-written folder left behind
