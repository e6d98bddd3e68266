"""Configs for the tokenizer transplant and the offline tokenizer trainer (torch-free: they validate without torch).

``TransplantConfig`` is what ``eakd models transplant`` runs; ``TokenizerTrainConfig`` what ``eakd models
train-tokenizer`` runs. Both are strict (``extra="forbid"``); :func:`validate_config` turns pydantic's errors into
one :class:`~distill.config.ConfigError` line per problem. The logic lives in :mod:`distill.transplant`.

Run: ``eakd models train-tokenizer --vocab 16000 --out tok/`` then ``eakd models transplant --tokenizer tok/ --out m/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, Field, ValidationError

from distill.config import ConfigError, StageConfig, format_validation_error, shared_data_dir

T = TypeVar("T", bound=BaseModel)

# Under $EAKD_DATA_DIR or ../shared/data. The *valid* split only: WikiText-2 test stays held out for evaluation.
WIKITEXT_VALID = "wikitext-2/wiki.valid.tokens"


class TransplantConfig(StageConfig):
    """Move a causal LM onto another tokenizer: embeddings re-initialised, layers kept."""

    model: str = Field("bundled", description="the old model: 'bundled' or a safetensors model folder")
    tokenizer: Path = Field(..., description="the new tokenizer: a Hugging Face tokenizer folder (tokenizer.json, ...)")
    out: Path = Field(..., description="output model folder; must not exist or be empty")


class TokenizerTrainConfig(StageConfig):
    """Train a byte-level BPE tokenizer on local text (nothing comes from a hub)."""

    vocab: int = Field(16000, ge=257, le=1_000_000,
                       description="vocabulary size incl. the 256 byte tokens and the old model's special tokens")
    out: Path = Field(..., description="output tokenizer folder; must not exist or be empty")
    text: list[Path] = Field(default_factory=list,
                             description="training text files; empty: WikiText-2 valid from ../shared/data")
    model: str = Field("bundled", description="whose special tokens (and chat template) to carry over")
    min_frequency: int = Field(2, ge=1, description="a merge must occur this often in the text to be learned")


def validate_config(cls: type[T], data: dict[str, Any], source: str = "<command line>") -> T:
    """``cls.model_validate(data)`` with pydantic's errors as one ConfigError line per problem."""
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def default_training_text() -> list[Path]:
    """WikiText-2 valid from ``$EAKD_DATA_DIR`` or ``../shared/data``; a ConfigError naming the path if absent."""
    data = shared_data_dir()
    beside = Path(__file__).resolve().parent.parent.parent / "shared" / "data"  # where shared_data_dir looks
    path = (data or beside) / WIKITEXT_VALID
    if data is None or not path.is_file():
        raise ConfigError(f"default tokenizer training text {path} is absent; put WikiText-2 there, set $EAKD_DATA_DIR to "
                          "a folder holding wikitext-2/wiki.valid.tokens, or pass --text FILE (never the test split)")
    return [path]


def check_empty_out(out: Path, what: str) -> None:
    """Fail fast unless ``out`` is absent or an empty folder (an artifact is never written over)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{what} output {out} already exists and is not empty; choose a new --out or remove it")
