"""Streamed compression under a hard memory limit: the whole-model path cannot run in it, the streamed one can.

A child process limits its data segment (``RLIMIT_DATA``: private writable memory, where every tensor lives)
to what it already uses after importing eakd plus a budget smaller than the model's fp32 weights, then
compresses a random 90M-parameter Llama (8 blocks of width 1024: 362 MB in fp32, one block ~45 MB).
``RLIMIT_AS`` does not work for this: torch reserves large virtual ranges, so an address-space limit fails
or passes on imports, not on tensors. (The limit also counts whole-file mappings, which is why the streamed
reader reads tensors with plain reads instead of ``safe_open``'s mapping.)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from byte_models import byte_tokenizer

pytestmark = pytest.mark.slow  # ~1-2 min on 2 shared cores: a 90M model compressed twice in child processes

# above what is in use after the imports: less than the whole-model path's >= 543 MB (362 MB of fp32 weights +
# the 181 MB bf16 file it maps), more than the streamed path's one block (45 MB fp32) + reads + late imports
BUDGET_MB = 400
ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import resource, sys
from pathlib import Path
from compress.config import CompressConfig, CompressStep, EvalConfig
from compress.stage import compress_student
from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM  # noqa: F401  (imported before the limit)

used = next(int(x.split()[1]) * 1024 for x in Path("/proc/self/status").read_text().splitlines()
            if x.startswith("VmData:"))
limit = used + int(sys.argv[1]) * 2 ** 20
resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
cfg = CompressConfig(steps=[CompressStep(method="rtn", bits=4, group_size=64)], streaming=sys.argv[4] == "true",
                     eval=EvalConfig(window=32, max_windows=1, dtype="float32", latency=False, max_examples=0))
compress_student(cfg, Path(sys.argv[2]), Path(sys.argv[3]), eval_text="the quick brown fox jumps over a dog " * 20)
print("compressed")
"""


def _random_llama(out: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=256, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                      num_attention_heads=16, num_key_value_heads=4, tie_word_embeddings=True)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    model = model.to(torch.bfloat16).to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    model.save_pretrained(out)
    byte_tokenizer().save_pretrained(out)
    return out


def _compress(model_dir: Path, out: Path, streaming: bool) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHILD, str(BUDGET_MB), str(model_dir), str(out),
                           "true" if streaming else "false"], capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_streamed_fits_where_the_whole_model_does_not(tmp_path):
    model_dir = _random_llama(tmp_path / "model")
    whole = _compress(model_dir, tmp_path / "whole", False)
    assert whole.returncode != 0 and "compressed" not in whole.stdout
    assert "allocate memory" in whole.stderr or "MemoryError" in whole.stderr, whole.stderr[-2000:]
    assert not (tmp_path / "whole" / "01-rtn").exists()  # nothing half-written published
    streamed = _compress(model_dir, tmp_path / "streamed", True)
    assert streamed.returncode == 0, streamed.stderr[-2000:]
    assert (tmp_path / "streamed" / "01-rtn" / "model.safetensors").is_file()
