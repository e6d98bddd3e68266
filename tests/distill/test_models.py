import pytest

from distill.config import ConfigError
from distill.models import BUNDLED_SHA256, check_model_dir, fetch_bundled_teacher, resolve_dtype


def test_fetch_is_idempotent_and_complete(bundled_dir):
    import time

    t = time.perf_counter()
    assert fetch_bundled_teacher() == bundled_dir
    assert time.perf_counter() - t < 1.0
    assert (bundled_dir / ".eakd-complete").read_text().strip() == BUNDLED_SHA256
    for name in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"):
        assert (bundled_dir / name).exists(), name


def test_pickle_weights_are_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(ConfigError, match="pickled weights"):
        check_model_dir(tmp_path)


@pytest.mark.parametrize("make, needle", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: (p / "f.txt").write_text("x") and p / "f.txt", "is a file"),
    (lambda p: p, "config.json is missing"),
])
def test_not_a_model(tmp_path, make, needle):
    with pytest.raises(ConfigError, match=needle):
        check_model_dir(make(tmp_path))


def test_resolve_dtype_passthrough():
    assert resolve_dtype("float32") == "float32"
    assert resolve_dtype("auto") in ("float32", "bfloat16")
