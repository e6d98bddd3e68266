"""compress.card: the model cards of a compress step, its compressed-tensors export and GGUF files, and the
export's refusals of what no engine serves.

Tiny random Llama with the bundled tokenizer, compressed through the real compress stage (chain: false), each
artifact exported; the cards' YAML front matter is parsed and checked against the artifacts' own files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compress.card import GGUF_CARD_MARK
from compress.export import export_compressed_tensors
from compress.gguf import export_gguf
from compress.stage import CompressConfig, CompressStep, EvalConfig, compress_student
from distill.config import ConfigError
from distill.train.card import read_front_matter

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = "It was the best of times, it was the worst of times; it was the age of wisdom. " * 8
STEPS = {"rtn": {"method": "rtn", "bits": 4, "group_size": 32}, "nm": {"method": "magnitude", "nm": "2:4"},
         "nm_rtn": None, "cp": {"method": "cp", "param_reduction": 0.5}}


@pytest.fixture(scope="module")
def artifacts(tiny_model, tmp_path_factory) -> dict[str, Path]:
    """One artifact per case from the tiny model, plus a 2:4 + rtn chain (the N:M step first)."""
    root = tmp_path_factory.mktemp("card")
    ev = EvalConfig(window=32, max_windows=1, dtype="float32", latency=False)
    side = CompressConfig(steps=[CompressStep(name=k, **v) for k, v in STEPS.items() if v], chain=False, eval=ev)
    done = compress_student(side, tiny_model, root / "side", eval_text=TEXT)
    out = {s["name"]: Path(s["artifact"]) for s in json.loads((done / "summary.json").read_text())["steps"]}
    chain = CompressConfig(steps=[CompressStep(**STEPS["nm"]), CompressStep(**STEPS["rtn"])], eval=ev)
    done = compress_student(chain, tiny_model, root / "chain", eval_text=TEXT)
    out["nm_rtn"] = Path(json.loads((done / "summary.json").read_text())["steps"][-1]["artifact"])
    return out


def _body(card: Path) -> str:
    return card.read_text().split("\n---\n", 1)[1]


def test_step_card_has_hub_front_matter_and_the_recipe(artifacts, tiny_model):
    card = artifacts["rtn"] / "README.md"
    meta = read_front_matter(card)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert {"eakd", "compressed", "rtn"} <= set(meta["tags"])
    assert "base_model" not in meta and meta["license"] == "unknown"  # a local random model: no Hub id, no license
    recipe = json.loads((artifacts["rtn"] / "recipe.json").read_text())
    metrics = json.loads((artifacts["rtn"] / "metrics.json").read_text())
    body = _body(card)
    assert json.dumps({k: v for k, v in recipe[0].items() if v is not None}, sort_keys=True) in body
    assert f"{metrics['after']['perplexity']:.3f}" in body and f"`{tiny_model}` (a local folder)" in body
    assert "eakd export" in body and "load_compressed" in body


def test_the_manifest_name_is_compress_artifacts():
    from compress.artifact import MANIFEST_NAME
    from distill.train.card import COMPRESS_MANIFEST

    assert COMPRESS_MANIFEST == MANIFEST_NAME  # distill.train.card finds compress steps by it


def test_export_card_describes_the_export_and_how_to_serve_it(artifacts, tiny_model, tmp_path):
    out = export_compressed_tensors(artifacts["rtn"], tmp_path / "ct")
    meta, body = read_front_matter(out / "README.md"), _body(out / "README.md")
    record = json.loads((out / "eakd_export.json").read_text())
    assert {"compressed-tensors", "w4a16", "int4", "rtn"} <= set(meta["tags"])
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert "W4A16, group 32, sym" in body and f"{record['layers']} Linear layers" in body
    assert f"vllm serve {out.name}" in body and "from_pretrained" in body
    assert f"`{tiny_model}` (a local folder)" in body  # the lineage goes through the step to its source
    assert f"{record['bytes'] / 1e6:.1f} MB of safetensors" in body
    step_metrics = json.loads((artifacts["rtn"] / "metrics.json").read_text())
    assert f"{step_metrics['after']['perplexity']:.3f}" in body  # the quality measured on the source artifact
    assert "compressed with eakd" not in body  # the step's own card, copied with the folder, was replaced


def test_gguf_card_lists_every_file_of_the_folder(artifacts, tiny_model, tmp_path):
    first = export_gguf(artifacts["rtn"], tmp_path / "student-q4_0.gguf", "q4_0")
    export_gguf(tiny_model, tmp_path / "student-f16.gguf", "f16")
    card = first.parent / "README.md"
    meta, body = read_front_matter(card), _body(card)
    assert meta["library_name"] == "gguf" and {"gguf", "llama.cpp", "q4_0", "f16"} <= set(meta["tags"])
    assert GGUF_CARD_MARK in body and "`student-q4_0.gguf` | q4_0" in body and "`student-f16.gguf` | f16" in body
    assert "llama-server -m" in body and "Llama(model_path=" in body
    # a README.md that is not eakd's is left alone
    other = tmp_path / "mine"
    other.mkdir()
    (other / "README.md").write_text("# my notes\n")
    export_gguf(tiny_model, other / "m.gguf", "f16")
    assert (other / "README.md").read_text() == "# my notes\n"


@pytest.mark.parametrize("case, match", [
    ("cp", r"CP/Tucker factors, which no engine serves.*Instead export the chain's source"),
    ("nm", r"pruned 2:4 \(N:M sparse\), which no engine serves as sparse.*Instead export the step's source"),
    ("nm_rtn", r"pruned 2:4 \(N:M sparse\), which no engine serves as sparse.*re-compress with rtn/gptq/awq"),
])
def test_export_refuses_what_no_engine_serves_in_one_line(artifacts, tmp_path, case, match):
    with pytest.raises(ConfigError, match=match) as err:
        export_compressed_tensors(artifacts[case], tmp_path / "out")
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()
