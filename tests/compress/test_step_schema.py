"""The compress step schema (compress/config.py): one typed class per method, a discriminated union on ``method``.

A field of another method is refused, naming the field, the method and where it belongs; every method's class
round-trips the YAML-shaped dict it is written as; ``params()`` records what it always recorded; the shipped
configs still load; a dumped flat step (every field at its default, as old ``config.yaml`` files hold) still loads.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import TypeAdapter

from compress.config import (
    CALIBRATED,
    QUANT,
    RECOVERABLE,
    SPARSIFYING,
    STEP_CLASSES,
    STRUCTURED,
    TRAINED,
    CompressConfig,
    CompressStep,
    GptqStep,
    QafStep,
    Step,
    SvdStep,
    WandaStep,
)
from distill.config import ConfigError, load_config

# a non-default value for every step field (each class takes the ones it has)
SAMPLE = {"sparsity": 0.3, "nm": "2:4", "allocation": "owl", "owl_lambda": 0.1, "owl_m": 6.0, "rank_ratio": 0.6,
          "param_reduction": 0.3, "rank_allocation": "energy", "bits": 3, "group_size": 64, "symmetric": False,
          "entropy_coding": "zstd", "lora_rank": 8, "loftq_iters": 2, "damp": 0.05, "act_order": True,
          "fraction": 0.3, "mlp_fraction": 0.2, "kv_head_fraction": 0.5, "recover_steps": 7, "recover_lr": 3e-3,
          "recover_hint_weight": 1.0, "recover_attention_weight": 0.5, "recover_adversarial_weight": 0.2,
          "max_ppl_increase": 0.05, "min_accuracy": 0.4, "name": "a step"}


@pytest.mark.parametrize("method, field, value, owner", [
    ("gptq", "sparsity", 0.3, "magnitude, wanda, sparsegpt"),
    ("wanda", "rank_allocation", "fisher", "svd, asvd, svdllm"),
    ("rtn", "recover_steps", 5, "qat, qaf, magnitude"),
    ("qat", "recover_hint_weight", 1.0, "magnitude, wanda"),
    ("depth", "bits", 3, "rtn, gptq, awq, qat, qaf"),
    ("rtn_int8", "group_size", 64, "rtn, gptq"),
    ("magnitude", "allocation", "owl", "wanda, sparsegpt"),
    ("cp", "rank_ratio", 0.5, "svd"),
])
def test_a_field_of_another_method_is_refused_naming_field_method_and_owner(method, field, value, owner):
    with pytest.raises(ConfigError) as err:
        CompressStep(method=method, **{field: value})
    msg = str(err.value)
    assert f"steps[0].{field}: {method} has no field {field!r}" in msg and owner in msg
    assert f"fields of {method}: " in msg and f"(got {value!r})" in msg
    with pytest.raises(ConfigError) as err:  # the YAML path: file, the step's place, then the same sentence
        load_config(CompressConfig, None, [f"steps=[{{method: rtn_int8}}, {{method: {method}, {field}: {value}}}]"])
    assert f"<overrides>: steps.1.{field}: {method} has no field {field!r}" in str(err.value)


def test_an_unknown_key_or_method_names_the_place():
    with pytest.raises(ConfigError, match=r"steps\[0\]\.rnak_ratio: svd has no field 'rnak_ratio'; remove it "
                                          r"\(or check the spelling\); fields of svd: .*rank_ratio"):
        CompressStep(method="svd", rnak_ratio=0.5)
    with pytest.raises(ConfigError, match=r"steps\.0\.method: unknown method: one of rtn_int8, rtn, gptq.*\(got 'obq'\)"):
        load_config(CompressConfig, None, ["steps=[{method: obq}]"])
    with pytest.raises(ConfigError, match=r"steps\[0\]\.method: Field required"):
        CompressStep(bits=4)


@pytest.mark.parametrize("method", sorted(STEP_CLASSES))
def test_every_method_round_trips_its_yaml_dict(method):
    cls = STEP_CLASSES[method]
    d = {"method": method} | {k: v for k, v in SAMPLE.items() if k in cls.model_fields}
    step = CompressStep(**yaml.safe_load(yaml.safe_dump(d)))
    assert type(step) is cls and step.model_dump(mode="json") == d
    assert CompressConfig(steps=[d]).steps[0] == step == cls(**d)
    assert TypeAdapter(list[Step]).validate_python([step.model_dump(mode="json")]) == [step]


PARAMS = [  # what today's manifests and summaries record (the flat CompressStep's params(), before the union)
    ({"method": "gptq", "bits": 4, "group_size": 64}, GptqStep,
     {"bits": 4, "group_size": 64, "symmetric": True, "damp": 0.01, "act_order": "auto"}),
    ({"method": "gptq", "entropy_coding": "zstd", "act_order": False}, GptqStep,
     {"bits": 4, "group_size": 128, "symmetric": True, "entropy_coding": "zstd", "damp": 0.01, "act_order": False}),
    ({"method": "wanda", "sparsity": 0.7}, WandaStep, {"sparsity": 0.7, "nm": None}),
    ({"method": "wanda", "sparsity": 0.7, "allocation": "owl", "recover_steps": 3}, WandaStep,
     {"sparsity": 0.7, "nm": None, "allocation": "owl", "owl_lambda": 0.08, "owl_m": 5.0}),
    ({"method": "svd", "rank_ratio": 0.6}, SvdStep, {"rank_ratio": 0.6}),
    ({"method": "svd", "param_reduction": 0.3, "rank_allocation": "fisher"}, SvdStep,
     {"param_reduction": 0.3, "rank_allocation": "fisher"}),
    ({"method": "qaf", "bits": 3, "recover_steps": 9, "lora_rank": 4}, QafStep,
     {"bits": 3, "group_size": 128, "symmetric": True, "steps": 9, "lr": 1e-4, "lora_rank": 4, "loftq_iters": 1}),
    ({"method": "rtn_int8"}, STEP_CLASSES["rtn_int8"], {"bits": 8}),
]


@pytest.mark.parametrize("fields, cls, params", PARAMS)
def test_params_record_what_the_flat_step_recorded(fields, cls, params):
    step = CompressStep(**fields)
    assert isinstance(step, cls) and step.params() == params


def test_trait_sets_are_the_ones_the_rules_always_read():
    assert QUANT == {"rtn", "gptq", "awq", "qat", "qaf"} and STRUCTURED == {"depth", "width"}
    assert CALIBRATED == {"gptq", "awq", "qat", "qaf", "wanda", "sparsegpt", "depth", "width", "asvd", "svdllm"}
    assert RECOVERABLE == {"depth", "width", "svd", "asvd", "svdllm", "cp", "tucker", "magnitude", "wanda", "sparsegpt"}
    assert SPARSIFYING == {"magnitude", "wanda", "sparsegpt"} and TRAINED == {"qat", "qaf"}


def test_every_method_has_a_function_in_the_dispatch_table():
    from compress.methods import _RUNNERS

    assert set(_RUNNERS) == set(STEP_CLASSES)


def test_a_dumped_flat_step_still_loads():
    # compress.steps[i] of a config.yaml written before the union: every field of every method, at its default
    flat = {"method": "wanda", "sparsity": 0.6, "nm": None, "allocation": "uniform", "owl_lambda": 0.08, "owl_m": 5.0,
            "rank_ratio": None, "param_reduction": 0.2, "rank_allocation": "auto", "bits": 4, "group_size": 128,
            "symmetric": True, "entropy_coding": "none", "lora_rank": 16, "loftq_iters": 1, "damp": 0.01,
            "act_order": "auto", "fraction": 0.25, "mlp_fraction": 0.25, "kv_head_fraction": 0.0, "recover_steps": 0,
            "recover_lr": 0.0001, "recover_hint_weight": 0.0, "recover_attention_weight": 0.0,
            "recover_adversarial_weight": 0.0, "max_ppl_increase": None, "min_accuracy": None, "name": "w"}
    assert CompressStep(**flat) == WandaStep(sparsity=0.6, name="w")
    with pytest.raises(ConfigError, match=r"steps\[0\]\.bits: wanda has no field 'bits'"):
        CompressStep(**flat | {"bits": 8})  # a value that is not the default did something before: refused


def _shipped_configs(repo_root: Path) -> dict[Path, dict]:
    """The flows/configs/*.yaml pipeline configs with a compress section (the rest are task files)."""
    loaded = {p: yaml.safe_load(p.read_text()) for p in sorted((repo_root / "flows" / "configs").glob("*.yaml"))}
    return {p: d for p, d in loaded.items() if isinstance(d, dict) and "compress" in d}


def test_every_shipped_config_steps_parse(repo_root):
    from flows.config import PipelineConfig

    shipped = _shipped_configs(repo_root)
    assert shipped, "no flows/configs/*.yaml with a compress section"
    for path, data in shipped.items():
        steps = data["compress"].get("steps", [])
        parsed = TypeAdapter(list[Step]).validate_python(steps)
        assert [s.method for s in parsed] == [s["method"] for s in steps]
        assert load_config(PipelineConfig, path).compress.steps == parsed
    assert [type(s) for s in CompressConfig().steps] == [SvdStep, STEP_CLASSES["magnitude"], STEP_CLASSES["rtn_int8"]]
