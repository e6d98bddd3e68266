"""compress.servable: the one rule both exporters use to refuse what no engine serves."""

from __future__ import annotations

from pathlib import Path

import pytest

from compress.servable import check_servable
from distill.config import ConfigError

PLAIN = {"factorized": {}, "tensorized": {}, "quantized": {"a": {}}, "steps": [{"name": "01-gptq", "params": {}}]}
UNSERVABLE = {
    "low-rank factorized": PLAIN | {"factorized": {"model.layers.0.mlp.up_proj": 64}},
    "CP/Tucker": PLAIN | {"tensorized": {"model.layers.0.mlp.up_proj": {"format": "cp", "ranks": [8]}}},
    "N:M sparse": PLAIN | {"steps": [{"name": "02-wanda", "params": {"nm": "2:4"}}]},
}


@pytest.mark.parametrize("engine", ["vllm", "llama.cpp"])
def test_a_servable_manifest_passes(engine):
    check_servable(Path("x"), PLAIN, engine)


@pytest.mark.parametrize("engine", ["vllm", "llama.cpp"])
@pytest.mark.parametrize("what", sorted(UNSERVABLE))
def test_each_unservable_structure_is_refused_naming_the_folder_and_an_alternative(what, engine):
    with pytest.raises(ConfigError, match=what) as err:
        check_servable(Path("runs/x/03-step"), UNSERVABLE[what], engine)
    message = str(err.value)
    assert message.startswith("runs/x/03-step:") and "Instead export" in message and "\n" not in message
    assert {"vllm": "vLLM", "llama.cpp": "llama.cpp"}[engine] in message
