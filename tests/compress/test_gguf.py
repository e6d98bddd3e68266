"""compress.gguf: a tiny random Llama (bundled tokenizer) -> GGUF, read back with the gguf package's own reader.

Checks the llama metadata, llama.cpp's tensor names and shapes, the tokenizer and chat template, the q/k
row order (a RoPE property, independent of llama.cpp's code), the rounding of each type, the bit-exact
mapping of eakd int codes onto Q4_0/Q4_1/Q8_0 blocks and the refusals. llama.cpp itself loads the files in
tests/integration/test_gguf_llamacpp.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from compress.artifact import load_compressed, read_manifest
from compress.gguf import export_gguf, record_path, rope_row_order
from compress.stage import CompressConfig, CompressStep, EvalConfig, compress_student
from distill.config import ConfigError
from distill.models import load_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

HIDDEN, HEADS, KV_HEADS, FFN, LAYERS = 64, 4, 2, 128, 2
TEXT = "It was the best of times, it was the worst of times; it was the age of wisdom. " * 8


def _tiny(out: Path, tokenizer_dir: Path, tied: bool = True) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = load_tokenizer(tokenizer_dir)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                      num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=512,
                      rope_theta=50000.0, tie_word_embeddings=tied, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny(bundled_dir, tmp_path_factory) -> Path:
    return _tiny(tmp_path_factory.mktemp("gguf") / "tiny", bundled_dir)


@pytest.fixture(scope="module")
def artifacts(tiny, tmp_path_factory) -> dict[str, Path]:
    """One compressed artifact per scheme, each from the tiny model (chain: false)."""
    steps = {"g32": {"method": "rtn", "bits": 4, "group_size": 32}, "g64": {"method": "rtn", "bits": 4, "group_size": 64},
             "g16": {"method": "rtn", "bits": 4, "group_size": 16},
             "asym": {"method": "rtn", "bits": 4, "group_size": 32, "symmetric": False},
             "int8": {"method": "rtn_int8"}, "nm": {"method": "magnitude", "nm": "2:4"},
             "svd": {"method": "svd", "rank_ratio": 0.5}}
    cfg = CompressConfig(steps=[CompressStep(name=k, **v) for k, v in steps.items()], chain=False,
                         eval=EvalConfig(window=32, max_windows=1, dtype="float32", latency=False), save_dtype="bfloat16")
    done = compress_student(cfg, tiny, tmp_path_factory.mktemp("art") / "c", eval_text=TEXT)
    summary = json.loads((done / "summary.json").read_text())
    return {s["name"]: Path(s["artifact"]) for s in summary["steps"]}


def _read(path: Path) -> tuple[gguf.GGUFReader, dict]:
    reader = gguf.GGUFReader(path)
    return reader, {t.name: t for t in reader.tensors}


def _field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


def _deq(t) -> torch.Tensor:
    """A tensor of the file as fp32 [out, in] (or [n])."""
    values = gguf.quants.dequantize(t.data, t.tensor_type)
    return torch.from_numpy(np.array(values, dtype=np.float32)).reshape(tuple(reversed([int(x) for x in t.shape])))


def _hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in load_file(str(folder / "model.safetensors")).items()}


def _expected(name: str, w: torch.Tensor) -> torch.Tensor:
    """The HF tensor ``name`` in llama.cpp's row order."""
    if name.endswith("q_proj.weight"):
        return w[rope_row_order(w.shape[0], HEADS)]
    if name.endswith("k_proj.weight"):
        return w[rope_row_order(w.shape[0], KV_HEADS)]
    return w


GGUF_NAME = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def _gguf_name(hf: str) -> str:
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    _, _, layer, rest = hf.split(".", 3)
    return f"blk.{layer}.{GGUF_NAME[rest.removesuffix('.weight')]}.weight"


def test_metadata_tokenizer_names_shapes_and_f16_values(tiny, tmp_path):
    out = export_gguf(tiny, tmp_path / "tiny-f16.gguf", "f16")
    reader, tensors = _read(out)
    tok = load_tokenizer(tiny)
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "general.file_type") == int(gguf.LlamaFileType.MOSTLY_F16)
    want = {"block_count": LAYERS, "embedding_length": HIDDEN, "feed_forward_length": FFN, "context_length": 512,
            "attention.head_count": HEADS, "attention.head_count_kv": KV_HEADS, "rope.dimension_count": HIDDEN // HEADS,
            "vocab_size": len(tok)}
    assert {k: _field(reader, f"llama.{k}") for k in want} == want
    assert _field(reader, "llama.rope.freq_base") == 50000.0
    assert _field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)
    vocab = tok.get_vocab()
    assert _field(reader, "tokenizer.ggml.tokens") == sorted(vocab, key=vocab.get)
    assert (_field(reader, "tokenizer.ggml.model"), _field(reader, "tokenizer.ggml.pre")) == ("gpt2", "gpt-2")
    merges = json.loads((tiny / "tokenizer.json").read_text())["model"]["merges"]
    assert _field(reader, "tokenizer.ggml.merges") == [m if isinstance(m, str) else " ".join(m) for m in merges]
    types = _field(reader, "tokenizer.ggml.token_type")
    assert types[tok.eos_token_id] == gguf.TokenType.CONTROL and types[tok.convert_tokens_to_ids("the")] == gguf.TokenType.NORMAL
    assert _field(reader, "tokenizer.ggml.bos_token_id") == tok.bos_token_id
    assert _field(reader, "tokenizer.ggml.eos_token_id") == tok.eos_token_id
    assert _field(reader, "tokenizer.ggml.add_bos_token") is False  # SmolLM2's tokenizer adds no BOS
    assert _field(reader, "tokenizer.chat_template") == tok.chat_template

    hf = _hf_weights(tiny)
    assert set(tensors) == {_gguf_name(n) for n in hf}  # tied: no output.weight, llama.cpp reuses token_embd
    assert "output.weight" not in tensors and len(tensors) == 2 + LAYERS * 9
    for name, w in hf.items():
        t = tensors[_gguf_name(name)]
        assert list(reversed([int(x) for x in t.shape])) == list(w.shape), name  # GGUF lists ne (in, out)
        assert t.tensor_type == (gguf.GGMLQuantizationType.F32 if w.dim() == 1 else gguf.GGMLQuantizationType.F16)
        assert torch.equal(_deq(t), _expected(name, w).to(torch.float16).float()), name
    record = json.loads(record_path(out).read_text())
    assert record["bytes"] == out.stat().st_size and record["tensors"] == {"cast": len(tensors)}
    assert record["per_tensor"]["blk.0.attn_q.weight"]["rope_permuted"] is True


def test_untied_output_matrix_is_written(bundled_dir, tmp_path):
    src = _tiny(tmp_path / "untied", bundled_dir, tied=False)
    _, tensors = _read(export_gguf(src, tmp_path / "u.gguf", "q8_0"))
    w = _hf_weights(src)["lm_head.weight"]
    assert tensors["output.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    assert (_deq(tensors["output.weight"]) - w).abs().max() <= w.abs().max() / 127


def test_rope_row_order_turns_rotate_half_into_adjacent_pairs():
    """HF's Llama rotates (x_i, x_{i+h/2}); llama.cpp's llama rope rotates (x_{2i}, x_{2i+1}). Rotating the
    reordered projection pairwise must give the reordered HF result."""
    torch.manual_seed(0)
    n_head, head, pos = 3, 8, 5
    q = torch.randn(n_head * head)
    theta = pos * 10000.0 ** (-torch.arange(0, head, 2).float() / head)  # [head / 2]
    cos, sin = theta.cos(), theta.sin()
    x = q.reshape(n_head, head)
    a, b = x[:, : head // 2], x[:, head // 2:]
    hf = torch.cat([a * cos - b * sin, b * cos + a * sin], dim=1).reshape(-1)  # rotate_half
    y = q[rope_row_order(q.numel(), n_head)].reshape(n_head, head // 2, 2)
    pairs = torch.stack([y[..., 0] * cos - y[..., 1] * sin, y[..., 1] * cos + y[..., 0] * sin], dim=-1).reshape(-1)
    torch.testing.assert_close(pairs, hf[rope_row_order(q.numel(), n_head)])
    assert not torch.equal(rope_row_order(q.numel(), n_head), torch.arange(q.numel()))


@pytest.mark.parametrize("kind", ["bf16", "q8_0", "q4_0", "q4_1"])
def test_types_are_within_their_rounding(tiny, tmp_path, kind):
    _, tensors = _read(export_gguf(tiny, tmp_path / f"{kind}.gguf", kind))
    for name, w in _hf_weights(tiny).items():
        t = tensors[_gguf_name(name)]
        got, ref = _deq(t), _expected(name, w)
        if w.dim() == 1:
            assert torch.equal(got, ref)
            continue
        blocks = ref.reshape(ref.shape[0], -1, 32)
        amax = blocks.abs().amax(-1, keepdim=True)
        err = (got.reshape(blocks.shape) - blocks).abs()
        qtype = t.tensor_type.name
        if qtype == "BF16":
            assert torch.equal(got, ref.to(torch.bfloat16).float())  # the source is bf16: exact
        elif qtype == "Q8_0":  # d = amax / 127: half a step, plus the f16 rounding of d times 127
            assert (err <= amax / 127 / 2 + amax * 2 ** -10).all(), name
        elif qtype == "Q4_0":  # d = -amax / 8; the far end clips at 7d: one step
            assert (err <= amax / 8 * (1 + 2 ** -7)).all(), name
        else:  # Q4_1: d = range / 15, half a step, plus the f16 rounding of d and m
            span = blocks.amax(-1, keepdim=True) - blocks.amin(-1, keepdim=True)
            assert (err <= span / 15 / 2 + amax * 2 ** -9).all(), name
    want = {"bf16": "BF16", "q8_0": "Q8_0", "q4_0": "Q8_0", "q4_1": "Q8_0"}[kind]  # 4-bit files keep the embedding at 8
    assert tensors["token_embd.weight"].tensor_type.name == want
    assert tensors["blk.0.ffn_up.weight"].tensor_type.name == kind.upper()


def _codes_in_file(t, out: int) -> torch.Tensor:
    """Unsigned 4-bit codes [out, in] of a Q4_0 (18-byte) or Q4_1 (20-byte) tensor, read from its raw bytes."""
    head = 2 if t.tensor_type == gguf.GGMLQuantizationType.Q4_0 else 4
    raw = torch.from_numpy(np.array(t.data, dtype=np.uint8)).reshape(out, -1, head + 16)[..., head:]
    return torch.cat([raw & 0x0F, raw >> 4], dim=-1).reshape(out, -1).to(torch.int16)


@pytest.mark.parametrize("step,kind", [("g32", "q4_0"), ("g64", "q4_0"), ("asym", "q4_1"), ("g32", "q4_1"), ("int8", "q8_0")])
def test_eakd_codes_map_bit_exactly(artifacts, tmp_path, step, kind):
    from compress.artifact import code_key, read_codes

    art = artifacts[step]
    out = export_gguf(art, tmp_path / f"{step}.gguf", kind)
    _, tensors = _read(out)
    record = json.loads(record_path(out).read_text())
    manifest = read_manifest(art)
    quantized = manifest["quantized"]
    assert len(quantized) == LAYERS * 7 and record["requantized"] == {}
    assert sorted(record["exact_codes"]) == sorted(_gguf_name(f"{n}.weight") for n in quantized)
    stored = load_file(str(art / "model.safetensors"))
    reference = load_compressed(art).state_dict()  # eakd's own fp32 dequantization
    for name, entry in quantized.items():
        t = tensors[_gguf_name(f"{name}.weight")]
        ref = _expected(f"{name}.weight", reference[f"{name}.weight"])
        rec = record["per_tensor"][_gguf_name(f"{name}.weight")]
        assert rec["how"] == "exact codes" and t.tensor_type.name == kind.upper()
        if rec["scales_exact_in_f16"] == rec["scales"]:
            assert torch.equal(_deq(t), ref), name  # nothing rounded at all: bit-exact weights
        assert (_deq(t) - ref).abs().max() == pytest.approx(rec["max_abs_weight_change"], abs=0)
        assert rec["max_abs_weight_change"] <= ref.abs().max() * 2 ** -10
        if kind == "q8_0":
            continue
        codes = read_codes(stored[code_key(name, entry)], entry, tuple(ref.shape))
        codes = _expected(f"{name}.weight", codes) + (8 if entry["symmetric"] else 0)
        assert torch.equal(_codes_in_file(t, ref.shape[0]), codes), name  # the very same integers


def test_grid_mismatch_is_requantized_and_recorded(artifacts, tmp_path):
    for step, why in [("g16", "group size 16"), ("asym", "asymmetric")]:
        out = export_gguf(artifacts[step], tmp_path / f"{step}.gguf", "q4_0")
        record = json.loads(record_path(out).read_text())
        assert record["exact_codes"] == [] and len(record["requantized"]) == LAYERS * 7
        assert all(why in reason for reason in record["requantized"].values())
        _, tensors = _read(out)
        reference = load_compressed(artifacts[step]).state_dict()
        w = _expected("model.layers.1.self_attn.k_proj.weight", reference["model.layers.1.self_attn.k_proj.weight"])
        got = _deq(tensors["blk.1.attn_k.weight"])
        assert (got - w).abs().max() <= w.abs().max() / 8 * (1 + 2 ** -7)  # Q4_0's own rounding of eakd's weights


def test_refusals_say_what_and_how(tiny, artifacts, tmp_path):
    with pytest.raises(ConfigError, match="N:M"):
        export_gguf(artifacts["nm"], tmp_path / "a.gguf")
    with pytest.raises(ConfigError, match="low-rank factorized"):
        export_gguf(artifacts["svd"], tmp_path / "a.gguf")
    with pytest.raises(ConfigError, match="--type must be one of f16, bf16, q8_0, q4_0, q4_1"):
        export_gguf(tiny, tmp_path / "a.gguf", "q3_k")
    other = tmp_path / "mistral"
    shutil.copytree(tiny, other)
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "model_type": "mistral", "architectures": ["MistralForCausalLM"]}))
    with pytest.raises(ConfigError, match="model_type 'mistral'.*convert_hf_to_gguf"):
        export_gguf(other, tmp_path / "a.gguf")
    (tmp_path / "taken.gguf").write_text("x")
    with pytest.raises(ConfigError, match="exists"):
        export_gguf(tiny, tmp_path / "taken.gguf")
    assert (tmp_path / "taken.gguf").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mistral", "taken.gguf"]  # nothing half-written


def test_cli_export(tiny, artifacts, tmp_path):
    from flows.cli import app

    result = CliRunner().invoke(app, ["export", str(tiny), str(tmp_path / "t.gguf"), "--type", "q4_0"])
    assert result.exit_code == 0, result.output
    assert gguf.GGUFReader(tmp_path / "t.gguf").fields["general.file_type"].contents() == int(gguf.LlamaFileType.MOSTLY_Q4_0)
    result = CliRunner().invoke(app, ["export", str(artifacts["g32"]), str(tmp_path / "ct"), "--format", "compressed-tensors"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]["format"] == "pack-quantized"
    for args, msg in [(["--type", "q5_k"], "--type must be one of"), (["--format", "onnx"], "--format must be gguf"),
                      (["--format", "compressed-tensors", "--type", "q8_0"], "--type is for --format gguf")]:
        result = CliRunner().invoke(app, ["export", str(artifacts["nm"]), str(tmp_path / "x"), *args])
        assert result.exit_code == 2 and msg in result.output, result.output
    result = CliRunner().invoke(app, ["export", str(artifacts["nm"]), str(tmp_path / "x.gguf")])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1 and "N:M" in result.output
