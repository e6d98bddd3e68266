"""compress.calibration.data: windows cut from a dataset's chat conversations, from text, or half of each;
and the compress key follows the dataset only when the windows come from it."""

from __future__ import annotations

import pytest
from datasets import Dataset, DatasetDict

from compress.stage import CalibrationConfig, _calibration
from distill.config import ConfigError
from distill.models import load_tokenizer


@pytest.fixture
def tok(tiny_model):
    return load_tokenizer(tiny_model)


def _decoded(tok, batch) -> list[str]:
    return [tok.decode(row.tolist()) for row in batch]


def test_dataset_windows_are_the_training_conversations_in_the_chat_template(tok, sft_dataset):
    batch, source = _calibration(CalibrationConfig(data="dataset", n_samples=4, seq_len=24), tok, None, None, sft_dataset)
    assert tuple(batch.shape) == (4, 24)
    text = " ".join(_decoded(tok, batch))
    assert "plus" in text and "<|im_start|>" in text  # the rows' words, rendered as the student reads them
    assert "dataset conversations" in source and str(sft_dataset) in source


def test_mix_takes_half_of_the_windows_from_each(tok, sft_dataset, tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text(" ".join(["zebra"] * 400))
    cfg = CalibrationConfig(data="mix", text_path=str(path), n_samples=4, seq_len=16)
    batch, source = _calibration(cfg, tok, None, None, sft_dataset)
    rows = _decoded(tok, batch)
    assert all("zebra" not in r for r in rows[:2]) and all("zebra" in r and "plus" not in r for r in rows[2:])
    assert source.startswith("mix: dataset conversations") and str(path) in source


def test_text_is_unchanged_by_a_dataset_passed_in(tok, sft_dataset, tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text(" ".join(["zebra"] * 400))
    cfg = CalibrationConfig(text_path=str(path), n_samples=3, seq_len=16)
    with_ds, _ = _calibration(cfg, tok, None, None, sft_dataset)
    without, _ = _calibration(cfg, tok, None, None, None)
    assert with_ds.equal(without)


def test_dataset_calibration_without_a_dataset_says_which_key_to_set(tok):
    with pytest.raises(ConfigError, match="compress.calibration.dataset"):
        _calibration(CalibrationConfig(data="dataset", n_samples=2, seq_len=8), tok, None, None, None)


def test_a_dataset_without_conversations_is_a_config_error(tok, tmp_path):
    path = tmp_path / "ds"
    DatasetDict({"train": Dataset.from_list([{"id": "0", "text": "hi"}])}).save_to_disk(str(path))
    with pytest.raises(ConfigError, match="messages column"):
        _calibration(CalibrationConfig(data="dataset", n_samples=2, seq_len=8), tok, None, None, path)


def test_compress_key_follows_the_calibration_dataset_only_when_windows_come_from_it(tmp_path, repo_root):
    from distill.config import load_config
    from flows.config import PipelineConfig
    from flows.pipeline import calibration_digest

    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "rows.txt").write_text("a")
    cfg = load_config(PipelineConfig, repo_root / "flows" / "configs" / "demo.yaml")
    text = cfg.model_copy(deep=True)
    text.compress.calibration.data = "text"
    mixed = cfg.model_copy(deep=True)
    mixed.compress.calibration.data = "mix"
    before = {c.compress.calibration.data: calibration_digest(c, "calib text", str(ds), None) for c in (text, mixed)}
    (ds / "rows.txt").write_text("b")  # the dataset alone changes
    after = {c.compress.calibration.data: calibration_digest(c, "calib text", str(ds), None) for c in (text, mixed)}
    assert before["text"] == after["text"]
    assert before["mix"] != after["mix"]
    assert calibration_digest(mixed, "calib text", str(ds), "generate-key-1") != calibration_digest(
        mixed, "calib text", str(ds), "generate-key-2")
