"""The compress stage with the data-aware methods: chains, exact artifacts, order rules, quality gates.

Tiny random Llama + byte tokenizer (see byte_models.py); calibration text is passed in, so no data or
bundled model is needed. Each artifact is reloaded and re-measured: what was reported is what was saved.
"""

from __future__ import annotations

import json

import pytest
import torch

from byte_models import byte_tokenizer, tiny_llama
from compress.artifact import load_compressed, read_manifest, safetensors_bytes
from compress.stage import CompressConfig, CompressStep, EvalConfig, QualityGateFailed, compress_student
from distill.config import ConfigError
from distill.evaluate import perplexity

TEXT = "It was the best of times, it was the worst of times; it was the age of wisdom. " * 8
CALIB = "A different calibration text, so nothing is tuned on the evaluation windows. " * 20
EVAL = EvalConfig(window=64, max_windows=3, dtype="float32")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "model"
    tiny_llama().save_pretrained(out, safe_serialization=True)
    byte_tokenizer().save_pretrained(out)
    return out


def _cfg(*steps, chain=True):
    return CompressConfig(steps=[CompressStep(**s) for s in steps], eval=EVAL, chain=chain, save_dtype="float32",
                          calibration={"n_samples": 4, "seq_len": 32})


def _reloaded_ppl(folder):
    return perplexity(load_compressed(folder), byte_tokenizer(), TEXT, window=64, max_windows=3,
                      dtype="float32")["perplexity"]


def test_structured_then_sparse_then_lowrank_then_gptq_chain(model_dir, tmp_path):
    cfg = _cfg({"method": "width", "mlp_fraction": 0.25}, {"method": "wanda", "nm": "2:4"},
               {"method": "svdllm", "param_reduction": 0.2}, {"method": "gptq", "bits": 4, "group_size": None})
    out = compress_student(cfg, model_dir, tmp_path / "out", eval_text=TEXT, calib_text=CALIB)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["calibration"]["n_samples"] == 4
    width, wanda, svdllm, gptq = summary["steps"]
    assert json.loads((out / "01-width" / "config.json").read_text())["intermediate_size"] == 96  # 128 * 0.75
    assert width["after"]["params_total"] < width["before"]["params_total"]
    assert wanda["stats"]["sparsity_realized"] == pytest.approx(0.5) and wanda["stats"]["nm"] == [2, 4]
    assert wanda["after"]["params_nonzero"] < wanda["before"]["params_nonzero"]
    assert svdllm["after"]["params_total"] < svdllm["before"]["params_total"]
    assert gptq["after"]["bytes_on_disk"] < 0.6 * gptq["before"]["bytes_on_disk"]  # 4-bit codes + scales
    manifest = read_manifest(out / "04-gptq")
    assert manifest["quantized"] and all(e["bits"] == 4 and e["group_size"] is None for e in manifest["quantized"].values())
    for step in summary["steps"]:  # every artifact reloads to exactly what was measured
        assert _reloaded_ppl(step["artifact"]) == pytest.approx(step["after"]["perplexity"], rel=1e-5)


@pytest.mark.parametrize("method", ["rtn", "awq"])
def test_int4_artifacts_round_trip(model_dir, tmp_path, method):
    cfg = _cfg({"method": method, "bits": 4, "group_size": 16, "symmetric": method == "rtn"})
    out = compress_student(cfg, model_dir, tmp_path / method, eval_text=TEXT, calib_text=CALIB)
    step = json.loads((out / "summary.json").read_text())["steps"][0]
    assert _reloaded_ppl(step["artifact"]) == pytest.approx(step["after"]["perplexity"], rel=1e-5)
    assert safetensors_bytes(step["artifact"]) < 0.6 * step["before"]["bytes_on_disk"]


def test_group_size_that_does_not_divide_a_factor_is_a_config_error(model_dir, tmp_path):
    cfg = _cfg({"method": "svd", "rank_ratio": 0.3}, {"method": "rtn", "group_size": 32})
    with pytest.raises(ConfigError, match=r"steps\[1\] \(rtn\).*group_size=32"):
        compress_student(cfg, model_dir, tmp_path / "o", eval_text=TEXT)


def test_quantization_must_end_the_chain(model_dir, tmp_path):
    with pytest.raises(ConfigError, match="must be the last step"):
        compress_student(_cfg({"method": "gptq"}, {"method": "magnitude"}), model_dir, tmp_path / "o", eval_text=TEXT)
    with pytest.raises(ConfigError, match="changes the architecture"):
        compress_student(_cfg({"method": "svd"}, {"method": "width"}), model_dir, tmp_path / "o", eval_text=TEXT)
    assert not (tmp_path / "o").exists()  # refused before any work


def test_quality_gate_stops_the_chain_and_publishes_nothing_broken(model_dir, tmp_path):
    cfg = _cfg({"method": "magnitude", "sparsity": 0.1},
               {"method": "sparsegpt", "sparsity": 0.9, "max_ppl_increase": 0.01},
               {"method": "rtn_int8"})
    with pytest.raises(QualityGateFailed, match="max_ppl_increase"):
        compress_student(cfg, model_dir, tmp_path / "g", eval_text=TEXT, calib_text=CALIB)
    summary = json.loads((tmp_path / "g" / "summary.json").read_text())
    assert not summary["complete"] and "quality gate" in summary["stopped"]
    assert [s["gate"] for s in summary["steps"]] == [None, "failed"]
    assert (tmp_path / "g" / "01-magnitude").is_dir() and not (tmp_path / "g" / "02-sparsegpt").exists()
    assert not (tmp_path / "g" / "03-rtn_int8").exists()


def test_side_by_side_families_from_one_source(model_dir, tmp_path):
    cfg = _cfg({"method": "magnitude", "sparsity": 0.5}, {"method": "wanda", "sparsity": 0.5},
               {"method": "svd", "rank_ratio": 0.4}, {"method": "asvd", "param_reduction": 0.2}, chain=False)
    out = compress_student(cfg, model_dir, tmp_path / "s", eval_text=TEXT, calib_text=CALIB)
    steps = json.loads((out / "summary.json").read_text())["steps"]
    base = json.loads((out / "summary.json").read_text())["baseline"]
    assert all(s["before"] == base for s in steps)  # each from the source model
    assert torch.isfinite(torch.tensor([s["after"]["perplexity"] for s in steps])).all()


def _saved_llama(folder, layers: int):
    """A random tied Llama (hidden 64, ``layers`` blocks) with the byte tokenizer, saved to ``folder``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from byte_models import VOCAB

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(folder, safe_serialization=True)
    byte_tokenizer().save_pretrained(folder)
    return folder


def test_depth_pruning_with_recovery_distillation_closes_the_gap(tmp_path):
    src = _saved_llama(tmp_path / "six", 6)
    steps = _cfg({"method": "depth", "fraction": 0.34}, {"method": "depth", "fraction": 0.34, "recover_steps": 40,
                                                         "recover_lr": 3e-3}, chain=False)
    steps.calibration.text_path = None
    out = compress_student(steps, src, tmp_path / "d", eval_text=TEXT, calib_text=TEXT)
    summary = json.loads((out / "summary.json").read_text())
    base = summary["baseline"]["perplexity"]
    plain, recovered = summary["steps"]
    assert json.loads((out / "01-depth" / "config.json").read_text())["num_hidden_layers"] == 4
    assert plain["stats"]["dropped"] == recovered["stats"]["dropped"]
    rec = recovered["stats"]["recovery"]
    assert rec["loss_last"] < 0.5 * rec["loss_first"]
    gap = abs(plain["after"]["perplexity"] - base)
    assert abs(recovered["after"]["perplexity"] - base) < 0.5 * gap  # closes more than half the gap
    with pytest.raises(ConfigError, match="recover_steps"):
        compress_student(_cfg({"method": "rtn", "recover_steps": 5}), src, tmp_path / "x", eval_text=TEXT)


def test_wanda_with_masked_recovery_keeps_the_zeros_and_trains_the_rest(tmp_path):
    src = _saved_llama(tmp_path / "four", 4)
    steps = _cfg({"method": "wanda", "sparsity": 0.7}, {"method": "wanda", "sparsity": 0.7, "recover_steps": 30,
                                                        "recover_lr": 3e-3}, chain=False)
    steps.calibration.text_path = None
    out = compress_student(steps, src, tmp_path / "w", eval_text=TEXT, calib_text=TEXT)
    summary = json.loads((out / "summary.json").read_text())
    plain, recovered = summary["steps"]
    assert recovered["stats"]["recovery"]["masked_layers"] == 4 * 7  # q k v o gate up down per block
    a, b = load_compressed(out / "01-wanda"), load_compressed(out / "02-wanda")
    for name, p in a.named_parameters():
        if name.endswith("proj.weight"):
            q = dict(b.named_parameters())[name]
            assert torch.equal(p == 0, q == 0), name  # recovery moved no pruned weight off zero
            assert not torch.equal(p, q), name  # ... and trained the kept ones
    rec = recovered["stats"]["recovery"]
    assert rec["loss_last"] < 0.8 * rec["loss_first"]  # the KL to the unpruned model fell (a random model's
    # perplexity says nothing here: pruning it can even lower it)
    assert recovered["after"]["params_nonzero"] == plain["after"]["params_nonzero"]


def test_rank_allocation_is_chosen_in_config_and_recorded(model_dir, tmp_path):
    cfg = _cfg({"method": "svdllm", "param_reduction": 0.3, "rank_allocation": "uniform"},
               {"method": "svdllm", "param_reduction": 0.3}, chain=False)
    out = compress_student(cfg, model_dir, tmp_path / "r", eval_text=TEXT, calib_text=CALIB)
    uniform, auto = json.loads((out / "summary.json").read_text())["steps"]
    assert uniform["stats"]["rank_allocation"] == "uniform" and auto["stats"]["rank_allocation"] == "fisher"
    ranks = [read_manifest(s["artifact"])["factorized"] for s in (uniform, auto)]
    assert ranks[0] != ranks[1]  # a different split of the same budget
    for step in (uniform, auto):  # both spend the budget, and reload to what was measured
        assert step["stats"]["weights_after"] <= 0.7 * step["stats"]["weights_before"] + 1
        assert _reloaded_ppl(step["artifact"]) == pytest.approx(step["after"]["perplexity"], rel=1e-5)


@pytest.mark.parametrize("step", [{"method": "wanda", "rank_allocation": "uniform"},
                                  {"method": "svd", "rank_ratio": 0.3, "rank_allocation": "energy"}])
def test_rank_allocation_outside_a_budgeted_factorization_is_a_config_error(model_dir, tmp_path, step):
    with pytest.raises(ConfigError, match=r"steps\[0\]\.rank_allocation"):
        compress_student(_cfg(step), model_dir, tmp_path / "o", eval_text=TEXT, calib_text=CALIB)
    assert not (tmp_path / "o").exists()


def test_cp_and_tucker_steps_store_factors_and_reload_exactly(model_dir, tmp_path):
    from safetensors import safe_open

    from compress.export import export_compressed_tensors
    from compress.tensorized import TensorizedLinear

    cfg = _cfg({"method": "tucker", "param_reduction": 0.5}, {"method": "cp", "param_reduction": 0.5}, chain=False)
    out = compress_student(cfg, model_dir, tmp_path / "t", eval_text=TEXT, calib_text=CALIB)
    for step in json.loads((out / "summary.json").read_text())["steps"]:
        fmt = step["method"]
        entries = read_manifest(step["artifact"])["tensorized"]
        assert len(entries) == step["stats"]["layers_tensorized"] == 14 and all(e["format"] == fmt for e in entries.values())
        assert step["stats"]["weights_after"] <= 0.5 * step["stats"]["weights_before"]
        assert step["after"]["params_total"] < step["before"]["params_total"]
        assert step["after"]["bytes_on_disk"] < step["before"]["bytes_on_disk"]
        with safe_open(str(step["artifact"]) + "/model.safetensors", "pt") as f:
            keys = set(f.keys())
        assert "model.layers.0.mlp.up_proj.factors.0" in keys and "model.layers.0.mlp.up_proj.weight" not in keys
        assert ("model.layers.0.mlp.up_proj.core" in keys) == (fmt == "tucker")
        reloaded = load_compressed(step["artifact"])
        assert isinstance(reloaded.get_submodule("model.layers.1.self_attn.o_proj"), TensorizedLinear)
        assert _reloaded_ppl(step["artifact"]) == pytest.approx(step["after"]["perplexity"], rel=1e-5)
        with pytest.raises(ConfigError, match="CP/Tucker"):
            export_compressed_tensors(step["artifact"], tmp_path / f"export-{fmt}")
