"""A model folder's custom code never runs (issue 8): eakd loads with ``trust_remote_code=False``
everywhere — transformers (model, tokenizer, config), the in-process vLLM engine and the vLLM
server/batch-runner command lines. The folder below points ``auto_map`` at Python files that would
create a marker file when imported; loading it must use the built-in Llama code and leave no marker."""

import json
import shutil
import sys
import types

import pytest

pytestmark = pytest.mark.reliability

EVIL = "import pathlib\npathlib.Path({marker!r}).write_text('custom code ran')\n"


@pytest.fixture
def evil_model(tiny_model, tmp_path):
    """(folder, marker): the tiny Llama with auto_map -> modeling_evil / tokenization_evil."""
    folder = tmp_path / "evil-model"
    shutil.copytree(tiny_model, folder)
    marker = tmp_path / "REMOTE_CODE_RAN"
    for module in ("configuration_evil", "modeling_evil", "tokenization_evil"):
        (folder / f"{module}.py").write_text(EVIL.format(marker=str(marker)))
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig",
                       "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (folder / "config.json").write_text(json.dumps(cfg))
    tok_cfg = json.loads((folder / "tokenizer_config.json").read_text())
    tok_cfg["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    return folder, marker


def test_transformers_loaders_ignore_auto_map(evil_model):
    from transformers import LlamaForCausalLM

    from compress.artifact import load_compressed
    from compress.export import _meta_model
    from distill.models import load_causal_lm, load_tokenizer

    folder, marker = evil_model
    assert type(load_causal_lm(folder)) is LlamaForCausalLM
    assert "Evil" not in type(load_tokenizer(folder)).__name__
    assert type(load_compressed(folder)) is LlamaForCausalLM
    assert type(_meta_model(folder)) is LlamaForCausalLM
    assert not marker.exists()


def test_custom_architecture_is_refused_not_run(evil_model):
    """With no built-in class for the model_type, loading fails instead of importing the folder's code."""
    from distill.models import load_causal_lm

    folder, marker = evil_model
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "eakd-evil"}))
    with pytest.raises(Exception):  # noqa: B017 - transformers' ValueError/KeyError wording varies by version
        load_causal_lm(folder)
    assert not marker.exists()


def test_vllm_engine_and_commands_pass_no_trust_remote_code(evil_model, monkeypatch):
    from distill.teacher.batch import runner_command
    from distill.teacher.query import TeacherConfig
    from distill.teacher.serve import server_command
    from distill.teacher.vllm_backend import make_engine

    folder, _ = evil_model
    seen = {}
    fake = types.ModuleType("vllm")
    fake.LLM = lambda **kwargs: seen.update(kwargs) or object()  # no real engine: only its arguments matter
    monkeypatch.setitem(sys.modules, "vllm", fake)
    cfg = TeacherConfig(backend="vllm", model=str(folder))
    make_engine(cfg)
    assert seen["trust_remote_code"] is False
    assert "--no-trust-remote-code" in server_command(str(folder), 8000)
    assert "--no-trust-remote-code" in runner_command(cfg, folder / "in.jsonl", folder / "out.jsonl")
