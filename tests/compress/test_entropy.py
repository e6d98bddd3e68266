"""compress.entropy: Huffman lengths and Shannon bits (property tests over random histograms), lossless zstd
coding of the codes, and entropy-coded artifacts that reload and export to exactly the fixed-width ones."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from byte_models import byte_tokenizer, tiny_llama
from compress.artifact import load_compressed, read_manifest, safetensors_bytes
from compress.entropy import (
    code_histogram,
    coding_report,
    decode_codes,
    encode_codes,
    huffman_bits,
    huffman_lengths,
    shannon_bits,
)
from compress.export import export_compressed_tensors
from compress.quantize import quantize_weight
from compress.stage import CompressConfig, CompressStep, EvalConfig, compress_student
from distill.config import ConfigError

TEXT = "It was the best of times, it was the worst of times; it was the age of wisdom. " * 8


def test_huffman_is_a_complete_prefix_code_within_one_bit_of_the_entropy():
    rng = random.Random(0)
    for trial in range(300):
        k = rng.randint(2, 256)
        counts = [rng.choice([0, rng.randint(1, 10), rng.randint(1, 10 ** 6)]) for _ in range(k)]
        used = [c for c in counts if c]
        if not used:
            continue
        lengths = huffman_lengths(counts)
        assert all((c == 0) == (length == 0) for c, length in zip(counts, lengths))
        h, hb = shannon_bits(counts), huffman_bits(counts)
        if len(used) == 1:
            assert h == 0 and hb == 1
            continue
        assert sum(2.0 ** -length for length in lengths if length) == pytest.approx(1.0)  # Kraft equality: complete
        assert h - 1e-9 <= hb < h + 1, (trial, counts)


def test_huffman_known_answers():
    assert huffman_lengths([1, 1, 2, 4]) == [3, 3, 2, 1]
    assert huffman_bits([1, 1, 2, 4]) == pytest.approx(1.75) == shannon_bits([1, 1, 2, 4])  # dyadic: optimal
    assert shannon_bits([5] * 16) == 4.0 and huffman_bits([5] * 16) == 4.0
    assert shannon_bits([]) == 0.0 and huffman_lengths([0, 7, 0]) == [0, 1, 0]


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_zstd_coding_is_lossless(bits, symmetric):
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(37, 64, generator=g)
    q, _, _ = quantize_weight(w, bits, 16, symmetric)
    blob = encode_codes(q, bits, symmetric)
    assert blob.dtype == torch.uint8 and blob.dim() == 1
    back = decode_codes(blob, (37, 64), bits, symmetric)
    assert torch.equal(back, q.to(torch.int16))
    assert sum(code_histogram(q, bits, symmetric)) == q.numel()


def test_damaged_or_mismatched_blobs_are_clear_errors():
    q, _, _ = quantize_weight(torch.randn(8, 32), 4, 16, True)
    blob = encode_codes(q, 4, True)
    with pytest.raises(ValueError, match="damaged"):
        decode_codes(blob[: len(blob) // 2], (8, 32), 4, True)
    with pytest.raises(ValueError, match="8x16"):
        decode_codes(blob, (8, 16), 4, True)
    with pytest.raises(ValueError, match="out of range"):
        encode_codes(torch.full((2, 2), 9, dtype=torch.int8), 4, True)


def test_gaussian_int4_codes_carry_fewer_bits_than_their_width():
    """RTN codes of bell-shaped weights are far from uniform: zstd stores them below 4 bits per code and
    within a few percent of the Shannon bound."""
    g = torch.Generator().manual_seed(0)
    codes = {f"l{i}": quantize_weight(torch.randn(256, 256, generator=g), 4, 64, True) for i in range(3)}
    report = coding_report(codes, 4, True)
    assert report["codes"] == 3 * 256 * 256 and report["packed_bytes"] == report["codes"] // 2
    assert report["shannon_bits"] < 3.75  # absmax-scaled Gaussian, step ~0.3 sigma: ~3.6 bits, the extremes are rare
    assert report["shannon_bits"] <= report["huffman_bits"] < report["shannon_bits"] + 0.1
    assert report["zstd_bits"] < 4.0 and report["zstd_bytes"] < report["packed_bytes"]
    assert report["zstd_bits"] < 1.05 * report["huffman_bits"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "model"
    tiny_llama().save_pretrained(out, safe_serialization=True)
    byte_tokenizer().save_pretrained(out)
    return out


def _artifact(model_dir: Path, out: Path, **step) -> Path:
    cfg = CompressConfig(steps=[CompressStep(**step)], eval=EvalConfig(window=64, max_windows=2, dtype="float32"),
                         save_dtype="float32", calibration={"n_samples": 4, "seq_len": 32})
    done = compress_student(cfg, model_dir, out, eval_text=TEXT, calib_text=TEXT)
    return Path(json.loads((done / "summary.json").read_text())["steps"][-1]["artifact"])


@pytest.mark.parametrize("symmetric", [True, False])
def test_entropy_coded_artifact_reloads_and_exports_exactly_like_the_packed_one(model_dir, tmp_path, symmetric):
    plain = _artifact(model_dir, tmp_path / "plain", method="rtn", bits=4, group_size=32, symmetric=symmetric)
    coded = _artifact(model_dir, tmp_path / "coded", method="rtn", bits=4, group_size=32, symmetric=symmetric,
                      entropy_coding="zstd")
    entries = read_manifest(coded)["quantized"]
    assert entries and all(e["coding"] == "zstd" for e in entries.values())
    keys = load_file(str(coded / "model.safetensors"))
    assert all(f"{n}.weight_zstd" in keys and f"{n}.weight_packed" not in keys for n in entries)
    a, b = load_compressed(plain).state_dict(), load_compressed(coded).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ea = load_file(str(export_compressed_tensors(plain, tmp_path / "ea", scale_dtype="float32") / "model.safetensors"))
    eb = load_file(str(export_compressed_tensors(coded, tmp_path / "eb", scale_dtype="float32") / "model.safetensors"))
    assert ea.keys() == eb.keys() and all(torch.equal(ea[k], eb[k]) for k in ea)
    # a random 64-wide model has near-uniform codes, so only a weak saving is certain: never more bytes
    # than the packed codes plus zstd's per-frame header (~10-20 bytes a layer)
    assert safetensors_bytes(coded) <= safetensors_bytes(plain) + 32 * len(entries)


def test_damaged_entropy_coded_artifact_is_a_config_error(model_dir, tmp_path):
    coded = _artifact(model_dir, tmp_path / "coded", method="rtn", bits=4, group_size=32, entropy_coding="zstd")
    path = coded / "model.safetensors"
    tensors = load_file(str(path))
    name = next(k for k in tensors if k.endswith(".weight_zstd"))
    tensors[name] = tensors[name][:-7].clone()
    save_file(tensors, str(path), metadata={"format": "pt"})
    with pytest.raises(ConfigError, match=r"weight_zstd|damaged"):
        load_compressed(coded)


def test_recode_switches_the_storage_and_back_without_changing_a_weight(model_dir, tmp_path):
    from compress.artifact import recode

    plain = _artifact(model_dir, tmp_path / "plain", method="rtn", bits=3, group_size=16, symmetric=False)
    coded = recode(plain, tmp_path / "coded", "zstd")
    back = recode(coded, tmp_path / "back", None)
    assert all(e["coding"] == "zstd" for e in read_manifest(coded)["quantized"].values())
    assert read_manifest(back) == read_manifest(plain)
    a, b = load_file(str(plain / "model.safetensors")), load_file(str(back / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # 3-bit codes: one byte each
    sa, sc = load_compressed(plain).state_dict(), load_compressed(coded).state_dict()
    assert all(torch.equal(sa[k], sc[k]) for k in sa)
    assert (coded / "tokenizer.json").is_file() and (coded / "config.json").is_file()
    with pytest.raises(ConfigError, match="exists"):
        recode(plain, coded, "zstd")
    with pytest.raises(ConfigError, match="no rtn/gptq/awq/qat"):
        recode(model_dir, tmp_path / "x", "zstd")
