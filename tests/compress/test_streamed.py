"""Streamed (block-at-a-time) compression: the same artifact, byte for byte, as the whole-model path.

Default tests use a tiny random Llama built here (tied and untied head, bf16 and fp32 storage); the
``slow`` one runs the bundled SmolLM2-135M. Both paths run in one ``compress_student`` call each with
``chain: false`` (every step from the source), so each step's folder is compared file by file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from byte_models import byte_tokenizer, tiny_llama
from compress.config import CalibrationConfig, CompressConfig, CompressStep, EvalConfig
from compress.stage import compress_student
from compress.streamed import streaming_plan
from compress.streamed_io import PartWriter

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = "It was the best of times, it was the worst of times; it was the age of wisdom. " * 12
EVAL = EvalConfig(window=64, max_windows=3, dtype="float32", latency=False, max_examples=0)
CALIB = CalibrationConfig(n_samples=4, seq_len=32)
STEPS = [CompressStep(method="rtn", bits=4, group_size=32), CompressStep(method="gptq", bits=4, group_size=32),
         CompressStep(method="wanda", sparsity=0.5), CompressStep(method="sparsegpt", nm="2:4"),
         CompressStep(method="magnitude", sparsity=0.3), CompressStep(method="rtn_int8"),
         CompressStep(method="gptq", bits=3, group_size=None, symmetric=False, entropy_coding="zstd")]
FILES = ("model.safetensors", "eakd_compression.json", "config.json", "generation_config.json", "recipe.json")


def _tiny_dir(root: Path, tied: bool, dtype: torch.dtype) -> Path:
    model = tiny_llama()
    if not tied:
        model.config.tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(torch.randn(model.lm_head.weight.shape) * 0.1)
    out = root / f"model-{tied}-{dtype}"
    model.to(dtype).save_pretrained(out)
    byte_tokenizer().save_pretrained(out)
    return out


def _run(model_dir: Path, out: Path, streaming: bool, steps=STEPS, chain=False) -> dict:
    cfg = CompressConfig(steps=steps, eval=EVAL, calibration=CALIB, chain=chain, streaming=streaming)
    compress_student(cfg, model_dir, out, eval_text=TEXT, calib_text=TEXT)
    return json.loads((out / "summary.json").read_text())


def _assert_same_artifacts(a: dict, b: dict) -> None:
    assert b["streamed"] and not a["streamed"]
    for sa, sb in zip(a["steps"], b["steps"], strict=True):
        for name in FILES:
            pa, pb = Path(sa["artifact"]) / name, Path(sb["artifact"]) / name
            assert pa.read_bytes() == pb.read_bytes(), f"{sa['name']}: {name} differs"
        for key in ("params_total", "params_nonzero", "bytes_on_disk", "tokens"):
            assert sa["after"][key] == sb["after"][key], (sa["name"], key)
        assert sb["after"]["perplexity"] == pytest.approx(sa["after"]["perplexity"], rel=1e-4)
        assert sa["stats"] == sb["stats"]
    assert b["baseline"]["perplexity"] == pytest.approx(a["baseline"]["perplexity"], rel=1e-4)
    assert b["baseline"]["params_nonzero"] == a["baseline"]["params_nonzero"]


def test_assembled_file_is_save_files_bytes(tmp_path):
    gen = torch.Generator().manual_seed(0)
    tensors = {"b.w": torch.randn(5, 3, generator=gen).to(torch.bfloat16), "a.w": torch.randn(4, generator=gen),
               "c.codes": torch.randint(-8, 8, (3, 6), generator=gen).to(torch.int8),
               "c.packed": torch.randint(0, 255, (3, 3), generator=gen).to(torch.uint8),
               "d": torch.randn(2, 2, generator=gen).half(), "e": torch.arange(3), "f": torch.ones(2, dtype=torch.float64)}
    writer = PartWriter(tmp_path / "streamed")
    writer.add({k: tensors[k] for k in ("b.w", "e")})
    writer.add({k: tensors[k] for k in ("a.w", "c.codes", "c.packed", "d", "f")})
    got = writer.assemble({"format": "pt"})
    save_file(dict(sorted(tensors.items())), str(tmp_path / "ref.safetensors"), metadata={"format": "pt"})
    assert got.read_bytes() == (tmp_path / "ref.safetensors").read_bytes()
    assert not (tmp_path / "streamed" / ".parts").exists()


@pytest.mark.parametrize("tied,dtype", [(True, torch.bfloat16), (False, torch.float32)])
def test_streamed_artifacts_are_byte_identical(tmp_path, tied, dtype):
    model_dir = _tiny_dir(tmp_path, tied, dtype)
    whole = _run(model_dir, tmp_path / "whole", False)
    streamed = _run(model_dir, tmp_path / "streamed", True)
    _assert_same_artifacts(whole, streamed)


def test_streamed_chain_reads_the_previous_step(tmp_path):
    model_dir = _tiny_dir(tmp_path, True, torch.bfloat16)
    steps = [CompressStep(method="wanda", sparsity=0.5), CompressStep(method="gptq", bits=4, group_size=32)]
    whole = _run(model_dir, tmp_path / "whole", False, steps, chain=True)
    streamed = _run(model_dir, tmp_path / "streamed", True, steps, chain=True)
    _assert_same_artifacts(whole, streamed)


def test_streaming_plan_falls_back_and_auto_follows_the_budget(tmp_path):
    model_dir = _tiny_dir(tmp_path, True, torch.float32)
    stream, why = streaming_plan(CompressConfig(steps=[CompressStep(method="svd")], streaming=True), model_dir, None)
    assert not stream and "svd is not streamed" in why
    tiny = CompressConfig(steps=[CompressStep(method="rtn")], memory_budget_gb=1e-6)
    assert streaming_plan(tiny, model_dir, None)[0]
    roomy = CompressConfig(steps=[CompressStep(method="rtn")], memory_budget_gb=64)
    assert not streaming_plan(roomy, model_dir, None)[0]
    assert not streaming_plan(CompressConfig(steps=[CompressStep(method="rtn")], streaming=False), model_dir, None)[0]


@pytest.mark.slow
def test_bundled_model_streamed_is_byte_identical(tmp_path, bundled_dir):
    steps = [CompressStep(method="rtn", bits=4, group_size=64),  # act_order auto (both orders) is covered above
             CompressStep(method="gptq", bits=4, group_size=64, act_order=False),
             CompressStep(method="wanda", sparsity=0.5), CompressStep(method="sparsegpt", sparsity=0.5)]
    whole = _run(bundled_dir, tmp_path / "whole", False, steps)
    streamed = _run(bundled_dir, tmp_path / "streamed", True, steps)
    _assert_same_artifacts(whole, streamed)


def test_cache_key_ignores_how_the_artifact_is_computed():
    from types import SimpleNamespace

    from flows.stage_keys import compress_key

    def key(**kw):
        return compress_key(SimpleNamespace(compress=CompressConfig(**kw)), "up", "text", "calib")

    assert key(streaming=True) == key(streaming=False) == key(memory_budget_gb=3.0)
    assert key(chain=False) != key()
