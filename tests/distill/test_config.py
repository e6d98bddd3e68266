import pytest

from distill.config import ConfigError, load_config, parse_overrides
from flows.config import PipelineConfig


def test_overrides_parse_yaml_scalars():
    assert parse_overrides(["a.b=1", "a.c=3e-4", "d=[x, y]", "e=true", "f=hello"]) == {
        "a": {"b": 1, "c": 3e-4}, "d": ["x", "y"], "e": True, "f": "hello"}


def test_demo_config_loads_and_overrides_apply(repo_root):
    cfg = load_config(PipelineConfig, repo_root / "flows/configs/demo.yaml", ["generate.sampling.max_tokens=64"])
    assert cfg.generate.sampling.max_tokens == 64
    assert set(cfg.generate.styles) == {"icl", "cot"} and cfg.generate.tasks == "flows/configs/demo_tasks.yaml"
    assert cfg.evaluate.probes is not None and cfg.train.keep_layers == 24


@pytest.mark.parametrize("override, needle", [
    ("train.learning_rate=0.1", "train.learning_rate: unknown key"),
    ("train.lr=fast", "train.lr: Input should be a valid number"),
    ("train.lr=5", "train.lr: Input should be less than 1"),
    ("generate.styles=[poetry]", "generate.styles.0: Input should be 'icl', 'cot' or 'instruct'"),
    ("compress.steps=[{method: prune_all}]", "compress.steps.0.method"),
    ("teacher.base_url=localhost:8000", "teacher.base_url: Value error, must start with http://"),
])
def test_bad_values_name_the_field(repo_root, override, needle):
    with pytest.raises(ConfigError) as err:
        load_config(PipelineConfig, repo_root / "flows/configs/demo.yaml", [override])
    assert needle in str(err.value)
    assert "demo.yaml" in str(err.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(PipelineConfig, tmp_path / "nope.yaml")


def test_invalid_yaml_names_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("generate:\n  seeds: x\n  styles: [icl\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: not valid YAML"):
        load_config(PipelineConfig, bad)


def test_malformed_override():
    with pytest.raises(ConfigError, match="must look like key.sub=value"):
        parse_overrides(["train.lr"])
