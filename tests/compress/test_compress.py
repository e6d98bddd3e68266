"""Tests for compress/: the three methods' math, exact artifact round trips, and the stage (CPU, a few s).

A tiny random Llama (tied embeddings) and a 256-token byte-level tokenizer are built in the test, so
nothing is downloaded and the bundled teacher is not needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from byte_models import VOCAB, byte_tokenizer, tiny_llama  # noqa: F401
from compress.artifact import (
    MANIFEST_NAME,
    load_compressed,
    new_manifest,
    quant_entry,
    safetensors_bytes,
    save_compressed,
)
from compress.factorize import LowRankLinear, factorize_model, low_rank_from_linear, svd_factors
from compress.prune import magnitude_mask, prune_model
from compress.quantize import dequantize, is_on_int8_grid, quantize_model, quantize_rtn_int8
from compress.stage import CompressConfig, CompressStep, EvalConfig, compress_student
from distill.config import ConfigError, load_config

TEXT = "It was the best of times, it was the worst of times; it was the age of wisdom. " * 6  # ~480 tokens
EVAL = EvalConfig(window=64, max_windows=3, dtype="float32")


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tok) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "model"
    tiny_llama().save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


IDS = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(1))


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


# --- the methods' math -------------------------------------------------------------------------------

def test_rtn_int8_error_bound_and_idempotence():
    w = torch.randn(48, 80) * torch.logspace(-3, 1, 48)[:, None]
    w[5] = 0.0
    q, scale = quantize_rtn_int8(w)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (48,)
    assert int(q.abs().max()) <= 127
    deq = dequantize(q, scale)
    assert torch.all((w - deq).abs() <= scale[:, None] / 2 * (1 + 1e-6))
    assert torch.equal(deq[5], torch.zeros(80))
    q2, scale2 = quantize_rtn_int8(deq)  # re-quantizing saved weights must not drift
    assert torch.equal(q2, q) and torch.equal(scale2, scale) and is_on_int8_grid(deq)


def test_magnitude_mask_exact_and_keeps_largest():
    w = torch.randn(37, 53)
    mask = magnitude_mask(w, 0.3)
    assert int((~mask).sum()) == round(0.3 * w.numel())
    assert w[mask].abs().min() >= w[~mask].abs().max()
    ties = magnitude_mask(torch.ones(10, 10), 0.25)  # equal magnitudes: still exactly 25 dropped
    assert int((~ties).sum()) == 25
    assert magnitude_mask(w, 0.0).all()


def test_svd_full_rank_exact_and_error_monotone():
    w = torch.randn(24, 40)
    up, down = svd_factors(w, 24)
    assert up.shape == (24, 24) and down.shape == (24, 40)
    assert torch.allclose(up @ down, w, atol=1e-5)
    errors = []
    for rank in range(1, 25):
        up, down = svd_factors(w, rank)
        errors.append(torch.linalg.norm(w - up @ down).item())
    assert all(a >= b - 1e-5 for a, b in zip(errors, errors[1:]))
    assert errors[0] > errors[-1] + 1.0


def test_low_rank_linear_keeps_bias():
    linear = torch.nn.Linear(16, 12, bias=True)
    lr = low_rank_from_linear(linear, 12)
    x = torch.randn(3, 16)
    assert isinstance(lr, LowRankLinear) and lr.down.bias is None
    assert torch.allclose(lr(x), linear(x), atol=1e-5)


def test_methods_touch_only_decoder_linears():
    model = tiny_llama()
    embed = model.model.embed_tokens.weight.clone()
    stats = prune_model(model, 0.5)
    assert stats["layers"] == 14 and stats["sparsity_realized"] == pytest.approx(0.5)
    assert torch.equal(model.model.embed_tokens.weight, embed)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    result = factorize_model(model, 0.5)
    # 64x64 q/o projections cannot save weights at half rank; k/v (32x64) and MLP (128x64) can.
    assert len(result["factorized"]) == 10 and len(result["skipped"]) == 4
    assert all(".self_attn.q_proj" in n or ".self_attn.o_proj" in n for n in result["skipped"])
    assert len(quantize_model(model)) == 4 + 2 * 10  # the factors are linears too


# --- artifacts ---------------------------------------------------------------------------------------

def _apply(model, method: str, manifest: dict) -> None:
    if method == "magnitude":
        prune_model(model, 0.4)
    elif method == "svd":
        manifest["factorized"].update(factorize_model(model, 0.4)["factorized"])
    else:
        manifest["quantized"].update({n: quant_entry() for n in quantize_model(model)})


@pytest.mark.parametrize("chain", [["magnitude"], ["svd"], ["rtn_int8"], ["magnitude", "svd", "rtn_int8"]])
def test_artifact_round_trip_is_exact(tmp_path, tok, chain):
    model = tiny_llama()
    manifest = new_manifest()
    for method in chain:
        _apply(model, method, manifest)
    save_compressed(model, tmp_path / "art", tok, manifest)
    loaded = load_compressed(tmp_path / "art")
    assert torch.equal(logits(loaded), logits(model))
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    written = json.loads((tmp_path / "art" / MANIFEST_NAME).read_text())
    assert written["format"] == "eakd-compressed/v1"
    assert written["tied"] == {"lm_head.weight": "model.embed_tokens.weight"}


def test_int8_artifact_is_smaller(tmp_path, tok):
    model = tiny_llama()
    save_compressed(model, tmp_path / "fp32", tok, new_manifest())
    manifest = new_manifest()
    _apply(model, "rtn_int8", manifest)
    save_compressed(model, tmp_path / "int8", tok, manifest)
    fp32, int8 = safetensors_bytes(tmp_path / "fp32"), safetensors_bytes(tmp_path / "int8")
    linear_weights = 2 * (2 * 64 * 64 + 2 * 32 * 64 + 3 * 128 * 64)
    assert fp32 - int8 >= 3 * linear_weights * 0.95  # 4 bytes -> 1 byte (+ a small scale per row)


def test_plain_folder_loads(model_dir):
    assert torch.equal(logits(load_compressed(model_dir)), logits(tiny_llama()))


# --- the stage ---------------------------------------------------------------------------------------

def test_compress_student_writes_summary(tmp_path, model_dir, tok):
    cfg = CompressConfig(eval=EVAL, save_dtype="bfloat16")  # default chain: svd -> magnitude -> rtn_int8
    out = compress_student(cfg, model_dir, tmp_path / "out", TEXT)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["eval"]["protocol"] == "quick"
    assert [s["method"] for s in summary["steps"]] == ["svd", "magnitude", "rtn_int8"]
    assert summary["steps"][0]["before"] == summary["baseline"]
    for step in summary["steps"]:
        assert {"name", "method", "params", "before", "after", "artifact", "seconds"} <= set(step)
        folder = Path(step["artifact"])
        assert {"model.safetensors", "config.json", MANIFEST_NAME, "recipe.json", "metrics.json", "README.md"} <= {
            p.name for p in folder.iterdir()}
        card = (folder / "README.md").read_text()  # the model card: recipe so far and the measured numbers
        assert f"{step['after']['perplexity']:.3f}" in card and f"{summary['baseline']['perplexity']:.3f}" in card
        assert f'"method": "{step["method"]}"' in card and str(model_dir) in card
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp leftovers
    last = summary["steps"][-1]
    assert last["after"]["bytes_on_disk"] < summary["steps"][0]["after"]["bytes_on_disk"]
    assert last["after"]["params_nonzero"] < summary["baseline"]["params_nonzero"]
    assert len(json.loads((Path(last["artifact"]) / "recipe.json").read_text())) == 3
    # The saved artifact is exactly what was measured.
    from distill.evaluate import perplexity

    again = perplexity(load_compressed(last["artifact"]), tok, TEXT, window=64, max_windows=3, dtype="float32")
    assert again["perplexity"] == last["after"]["perplexity"]

    # Continue the chain from a compressed artifact: pruning int8 layers keeps them on their grid.
    more = compress_student(CompressConfig(eval=EVAL, steps=[CompressStep(method="magnitude", sparsity=0.5)]),
                            Path(last["artifact"]), tmp_path / "more", TEXT)
    extra = json.loads((more / "summary.json").read_text())["steps"][0]
    assert extra["before"]["perplexity"] == pytest.approx(last["after"]["perplexity"])
    reloaded = perplexity(load_compressed(extra["artifact"]), tok, TEXT, window=64, max_windows=3, dtype="float32")
    assert reloaded["perplexity"] == extra["after"]["perplexity"]
    assert len(json.loads((Path(extra["artifact"]) / "recipe.json").read_text())) == 4


@pytest.mark.parametrize("override, field", [
    ("steps=[{method: magnitude, sparsity: 1.5}]", "steps.0.sparsity"),
    ("steps=[{method: svd, rank_ratio: 0}]", "steps.0.rank_ratio"),
    ("steps=[{method: svd, rank: 3}]", "steps.0.rank"),
    ("steps=[{method: obq}]", "steps.0.method"),
    ("steps=[{method: wanda, nm: two-four}]", "steps.0.nm"),
    ("calibration.n_samples=0", "calibration.n_samples"),
    ("eval.windw=3", "eval.windw"),
])
def test_bad_config_names_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(CompressConfig, None, [override])


def test_missing_inputs_raise_config_error(tmp_path, model_dir):
    with pytest.raises(ConfigError, match="eval text"):
        compress_student(CompressConfig(eval=EVAL), model_dir, tmp_path / "out")
    with pytest.raises(ConfigError, match="does not exist"):
        compress_student(CompressConfig(eval=EVAL), tmp_path / "nope", tmp_path / "out", TEXT)


def test_a_perplexity_text_shorter_than_a_window_fails_first_naming_its_source(tmp_path, model_dir):
    with pytest.raises(ConfigError, match=r"compress.eval: the perplexity text \(held-out answers\) has \d+ tokens, "
                                          r"fewer than one window of 4096; set compress.eval.text_path"):
        compress_student(CompressConfig(eval=EvalConfig(window=4096, max_windows=1)), model_dir, tmp_path / "out",
                         "too short", eval_source="held-out answers")
    assert not (tmp_path / "out").exists(), "nothing is written before the check"
