"""Secrets (API keys, Hub tokens): read from the environment, else from a private secrets file; redacted in logs.

A config only ever names a secret (``teacher.api_key_env: OPENAI_API_KEY``); :func:`get_secret` looks the
name up in the environment first, then in the secrets file: ``$EAKD_SECRETS_FILE``, else
``$EAKD_HOME/secrets.env`` when it exists. The file is dotenv-style::

    # eakd secrets (chmod 600)
    OPENAI_API_KEY=sk-...
    export HF_TOKEN="hf_..."

and is refused unless only its owner can read it. Every value eakd reads is remembered
(:func:`known_secrets`) so the CLI's logging can replace it with ``***`` wherever it would appear
(:class:`RedactSecrets`, :func:`install_redaction`); values are never logged, and errors name the
variable and the file, never a value or a line's text.

Run: ``python -c "from distill.credentials import get_secret; print(get_secret('HF_TOKEN') is not None)"``.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from distill.config import ConfigError, eakd_home

SECRETS_FILE_ENV = "EAKD_SECRETS_FILE"
REDACTED = "***"
# Shorter values are not redacted: replacing every "abc" in the logs would hide them without protecting
# anything (no real credential is that short).
MIN_REDACT_LEN = 4

_read: dict[str, str] = {}  # name -> value of every secret read in this process


def secrets_file() -> Path | None:
    """The secrets file in use: ``$EAKD_SECRETS_FILE`` (must exist), else ``$EAKD_HOME/secrets.env`` if present."""
    named = os.environ.get(SECRETS_FILE_ENV)
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise ConfigError(f"{SECRETS_FILE_ENV}={path}: no such file; create it (NAME=value lines, chmod 600) "
                              f"or unset {SECRETS_FILE_ENV}")
        return path
    default = eakd_home() / "secrets.env"
    return default if default.is_file() else None


def _parse_secrets(path: Path) -> dict[str, str]:
    """``NAME=value`` lines; blank lines and ``#`` comments skipped, ``export`` and matching quotes allowed."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"secrets file {path} is accessible by group or others (mode {stat.filemode(mode)}); "
                          f"run `chmod 600 {path}`")
    values: dict[str, str] = {}
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        name, sep, value = line.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name.isidentifier():  # never echo the line: it may hold a value
            raise ConfigError(f"{path}:{lineno}: expected NAME=value (a dotenv line)")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name] = value
    return values


def get_secret(name: str) -> str | None:
    """The value of secret ``name``: the environment variable if set and non-empty, else the secrets file's
    ``name=`` line; None when neither has it. Raises :class:`ConfigError` for an unsafe or malformed file."""
    value = os.environ.get(name)
    if not value:
        path = secrets_file()
        value = _parse_secrets(path).get(name) if path is not None else None
    if not value:
        return None
    _read[name] = value
    return value


def known_secrets() -> list[str]:
    """Values of every secret eakd has read in this process (longest first, so a value containing another
    is replaced whole)."""
    return sorted({v for v in tuple(_read.values()) if len(v) >= MIN_REDACT_LEN}, key=len, reverse=True)


def redact(text: str) -> str:
    """``text`` with every known secret value replaced by ``***``."""
    for value in known_secrets():
        if value in text:
            text = text.replace(value, REDACTED)
    return text


class RedactSecrets(logging.Filter):
    """Replace known secret values in a log record (message with its args, exception and stack text) by ``***``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _read:
            return True
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - bad %-args: logging reports them (msg and args), so redact each
            record.msg = redact(str(record.msg))
            record.args = tuple(redact(str(a)) for a in record.args) if isinstance(record.args, tuple) else ()
        else:
            record.msg, record.args = redact(message), ()
        if record.exc_info and not record.exc_text:  # formatters reuse exc_text once it is set
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            clean = redact(record.exc_text)
            if clean != record.exc_text:  # a handler rendering exc_info itself (rich) would show the raw value
                record.exc_text, record.exc_info = clean, None
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install_redaction() -> None:
    """Redact every log record of this process: on the root handlers, and at record creation so handlers
    added later (Prefect's run-log handler that writes its database, vLLM's) never see a secret. Idempotent."""
    redactor = RedactSecrets()
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactSecrets) for f in handler.filters):
            handler.addFilter(redactor)
    factory = logging.getLogRecordFactory()
    if getattr(factory, "_eakd_redacts", False):
        return

    def make_record(*args, **kwargs) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        redactor.filter(record)
        return record

    make_record._eakd_redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(make_record)
