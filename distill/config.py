"""Configuration plumbing shared by every stage: strict pydantic models, YAML loading, CLI overrides.

Every stage config subclasses :class:`StageConfig` (``extra="forbid"``), so an unknown key is an error
that names the key. :func:`load_config` reads YAML, applies ``a.b=value`` overrides (values parsed as
YAML scalars, so ``train.lr=3e-4`` is a float and ``generate.styles=[cot]`` a list) and turns pydantic's
errors into one readable line per problem.

Run: ``python -c "from distill.config import load_config; ..."`` — normally reached through ``eakd``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

T = TypeVar("T", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration problem a user can fix; the message says what, where and how."""


class StageConfig(BaseModel):
    """Base for all configs: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def eakd_home() -> Path:
    """Where eakd keeps models, caches and Prefect state: ``$EAKD_HOME`` or ``~/.cache/eakd``."""
    return Path(os.environ.get("EAKD_HOME", Path.home() / ".cache" / "eakd")).expanduser()


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is a value, not a section")
        node = child
    node[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=[x, y]"]`` -> ``{"a": {"b": 1}, "c": ["x", "y"]}`` (values parsed as YAML)."""
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        if not key.strip():
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", value):
            value = float(value)  # YAML 1.1 reads "3e-4" as a string
        _set_path(tree, key.strip(), value)
    return tree


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line per problem: ``config.yaml: train.lr: Input should be a valid number (got 'fast')``."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            msg = "unknown key; remove it or check the spelling (see `eakd run --help` and flows/configs/demo.yaml)"
        else:
            msg = e["msg"]
        got = e.get("input")
        got_s = "" if e["type"] in ("missing",) else f" (got {got!r})" if not isinstance(got, dict) else ""
        lines.append(f"{source}: {loc}: {msg}{got_s}")
    return "\n".join(lines)


def load_config(cls: type[T], path: str | Path | None, overrides: list[str] | None = None) -> T:
    """Read YAML at ``path`` (or start empty), apply overrides, validate into ``cls``.

    Raises :class:`ConfigError` with a message naming the file, the field and the bad value.
    """
    data: dict[str, Any] = {}
    source = "<overrides>"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p} (pass a YAML file, e.g. flows/configs/demo.yaml)")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f":{mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{p}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections, got {type(loaded).__name__}")
        data = loaded
    if overrides:
        data = deep_merge(data, parse_overrides(overrides))
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def dump_config(cfg: BaseModel, path: Path) -> None:
    """Write the resolved config as YAML (the exact inputs of an artifact)."""
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


def shared_data_dir() -> Path | None:
    """Public test/benchmark data: ``$EAKD_DATA_DIR`` or ``../shared/data`` beside the checkout; None if absent."""
    env = os.environ.get("EAKD_DATA_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parent.parent.parent / "shared" / "data")
    for c in candidates:
        if c.is_dir():
            return c
    return None
