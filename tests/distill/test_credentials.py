"""Secrets (issue 8): the secrets file (parsing, permissions, precedence of the environment) and the
redaction of known values from log records, tracebacks and the CLI's error line."""

import io
import logging
import os
import sys

import pytest
import typer

import distill.credentials as secrets
from distill.config import ConfigError
from distill.credentials import get_secret, known_secrets

pytestmark = pytest.mark.reliability

KEY = "sk-eakd-test-0123456789abcdef"


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No secret read by another test, no real secrets file, no real env var."""
    monkeypatch.setattr(secrets, "_read", {})
    monkeypatch.setenv("EAKD_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EAKD_SECRETS_FILE", raising=False)
    for name in ("EAKD_T_KEY", "EAKD_T_OTHER", "EAKD_T_HUB"):
        monkeypatch.delenv(name, raising=False)


def write_secrets(path, text, mode=0o600):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_secrets_file_parsing(tmp_path, monkeypatch):
    path = write_secrets(tmp_path / "s.env", "\n".join([
        "# eakd secrets",
        "",
        f"EAKD_T_KEY={KEY}",
        "  export EAKD_T_HUB = \"hf_quoted value\"  ",
        "EAKD_T_OTHER='abc==def='",  # '=' inside a value (base64) stays
        "EAKD_T_EMPTY=",
    ]) + "\n")
    monkeypatch.setenv("EAKD_SECRETS_FILE", str(path))
    assert get_secret("EAKD_T_KEY") == KEY
    assert get_secret("EAKD_T_HUB") == "hf_quoted value"
    assert get_secret("EAKD_T_OTHER") == "abc==def="
    assert get_secret("EAKD_T_EMPTY") is None
    assert get_secret("EAKD_T_ABSENT") is None


def test_malformed_line_names_file_and_line_but_never_the_text(tmp_path, monkeypatch):
    path = write_secrets(tmp_path / "s.env", f"EAKD_T_KEY={KEY}\n{KEY}\n")
    monkeypatch.setenv("EAKD_SECRETS_FILE", str(path))
    with pytest.raises(ConfigError) as err:
        get_secret("EAKD_T_KEY")
    assert f"{path}:2: expected NAME=value" in str(err.value)
    assert KEY not in str(err.value)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o660])
def test_secrets_file_open_to_group_or_others_is_refused(tmp_path, monkeypatch, mode):
    path = write_secrets(tmp_path / "s.env", f"EAKD_T_KEY={KEY}\n", mode)
    monkeypatch.setenv("EAKD_SECRETS_FILE", str(path))
    with pytest.raises(ConfigError, match=f"run `chmod 600 {path}`") as err:
        get_secret("EAKD_T_KEY")
    assert KEY not in str(err.value)
    os.chmod(path, 0o600)
    assert get_secret("EAKD_T_KEY") == KEY


def test_environment_wins_over_the_file(tmp_path, monkeypatch):
    path = write_secrets(tmp_path / "s.env", f"EAKD_T_KEY={KEY}\n")
    monkeypatch.setenv("EAKD_SECRETS_FILE", str(path))
    monkeypatch.setenv("EAKD_T_KEY", "sk-from-the-environment")
    assert get_secret("EAKD_T_KEY") == "sk-from-the-environment"
    monkeypatch.setenv("EAKD_T_KEY", "")  # set but empty counts as unset
    assert get_secret("EAKD_T_KEY") == KEY


def test_env_var_alone_needs_no_file_even_an_unsafe_one(tmp_path, monkeypatch):
    write_secrets(tmp_path / "home" / "secrets.env", "EAKD_T_KEY=x\n", 0o644)
    monkeypatch.setenv("EAKD_T_KEY", KEY)
    assert get_secret("EAKD_T_KEY") == KEY  # the file is consulted only when the variable is missing


def test_default_file_is_eakd_home_secrets_env(tmp_path, monkeypatch):
    assert get_secret("EAKD_T_KEY") is None  # no file: simply absent
    write_secrets(tmp_path / "home" / "secrets.env", f"EAKD_T_KEY={KEY}\n")
    assert get_secret("EAKD_T_KEY") == KEY


def test_named_secrets_file_must_exist(tmp_path, monkeypatch):
    monkeypatch.setenv("EAKD_SECRETS_FILE", str(tmp_path / "nope.env"))
    with pytest.raises(ConfigError, match="EAKD_SECRETS_FILE=.*nope.env: no such file"):
        get_secret("EAKD_T_KEY")


def test_known_secrets_are_the_values_read(tmp_path, monkeypatch):
    monkeypatch.setenv("EAKD_T_KEY", KEY)
    monkeypatch.setenv("EAKD_T_OTHER", "sk-never-read-by-eakd")
    monkeypatch.setenv("EAKD_T_HUB", "abc")  # too short to redact usefully
    assert known_secrets() == []
    get_secret("EAKD_T_KEY")
    get_secret("EAKD_T_HUB")
    assert known_secrets() == [KEY]


def test_api_key_from_the_secrets_file(tmp_path, monkeypatch):
    from distill.teacher.query import TeacherConfig, require_api_key

    cfg = TeacherConfig(backend="openai", model="m", base_url="https://api.example.com/v1", api_key_env="EAKD_T_KEY")
    with pytest.raises(ConfigError, match="EAKD_T_KEY is not set; export it, or add a line EAKD_T_KEY=... to the secrets"):
        require_api_key(cfg)
    write_secrets(tmp_path / "home" / "secrets.env", f"EAKD_T_KEY={KEY}\n")
    assert require_api_key(cfg) == KEY
    assert KEY in known_secrets()


# --- redaction ----------------------------------------------------------------------------------------

def _log_to_string(logger_name: str, fmt: str = "%(levelname)s %(name)s: %(message)s"):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(fmt))
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, handler, stream


def test_filter_redacts_message_args_and_exception(monkeypatch):
    monkeypatch.setenv("EAKD_T_KEY", KEY)
    get_secret("EAKD_T_KEY")
    logger, handler, stream = _log_to_string("eakd.test.filter")
    handler.addFilter(secrets.RedactSecrets())
    try:
        logger.info("key in msg " + KEY)
        logger.info("key in args %s and %r", KEY, {"auth": f"Bearer {KEY}"})
        logger.info("bad args %d", KEY)  # a formatting error: logging prints msg and args itself
        try:
            raise RuntimeError(f"401 for key {KEY}")
        except RuntimeError:
            logger.exception("request failed")
        logger.info("nothing secret here: %s", 42)
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert KEY not in out
    assert "key in msg ***" in out and "Bearer ***" in out and "RuntimeError: 401 for key ***" in out
    assert "nothing secret here: 42" in out


def test_redaction_without_secrets_leaves_records_alone():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "value %s", ("sk-not-a-read-secret",), None)
    assert secrets.RedactSecrets().filter(record)
    assert record.args == ("sk-not-a-read-secret",) and record.getMessage() == "value sk-not-a-read-secret"


@pytest.fixture
def restore_logging():
    factory = logging.getLogRecordFactory()
    root = logging.getLogger()
    handlers, filters = list(root.handlers), {h: list(h.filters) for h in root.handlers}
    hook = sys.excepthook
    yield
    logging.setLogRecordFactory(factory)
    root.handlers[:] = handlers
    for h, fs in filters.items():
        h.filters[:] = fs
    sys.excepthook = hook


def test_cli_logging_redacts_handlers_added_later(monkeypatch, restore_logging):
    """Like Prefect's run-log handler (it writes the Prefect database), one added after the CLI's setup."""
    from flows.cli import _setup_logging

    _setup_logging()
    _setup_logging()  # idempotent: one factory wrapper, one filter per handler
    assert sum(isinstance(f, secrets.RedactSecrets) for h in logging.getLogger().handlers for f in h.filters) \
        == len(logging.getLogger().handlers)
    monkeypatch.setenv("EAKD_T_KEY", KEY)
    get_secret("EAKD_T_KEY")
    logger, handler, stream = _log_to_string("distill.test_later", "%(message)s")
    try:
        logger.warning("calling the teacher with %s", KEY)
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue() == "calling the teacher with ***\n"


def test_cli_error_line_and_traceback_are_redacted(monkeypatch, capsys, restore_logging):
    from flows.cli import _fail, _redacted_excepthook

    monkeypatch.setenv("EAKD_T_KEY", KEY)
    get_secret("EAKD_T_KEY")
    with pytest.raises(typer.Exit) as exc:
        _fail(f"teacher refused key {KEY} (401)", 1)
    assert exc.value.exit_code == 1
    assert capsys.readouterr().err == "error: teacher refused key *** (401)\n"
    try:
        raise ValueError(f"bad key {KEY}")
    except ValueError as e:
        _redacted_excepthook(type(e), e, e.__traceback__)
    err = capsys.readouterr().err
    assert "ValueError: bad key ***" in err and KEY not in err
