"""flows.errors: one table decides the CLI's exit code and whether the pipeline retries a failed task."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest
import typer

from distill.config import ConfigError
from distill.teacher.types import BatchPending, BudgetExceeded, TeacherUnavailable
from flows.cli import _guard
from flows.errors import RULES, exit_code, retryable
from flows.stage_tasks import _not_config_error
from prompts import TemplateError


def _raise(exc: BaseException):
    def fn():
        raise exc
    return fn


class _FailedState:
    def __init__(self, exc: BaseException):
        self.exc = exc

    def result(self):
        raise self.exc


@pytest.mark.parametrize("exc, code, retry", [
    (ConfigError("train.lr: must be > 0"), 2, False),
    (TemplateError("prompts/icl.jinja: 'task' is undefined"), 2, False),
    (BudgetExceeded("teacher.max_tokens reached"), 3, False),
    (BatchPending("batch abc still running"), 4, False),
    (TeacherUnavailable("401: wrong or missing API key"), 1, True),
])
def test_the_cli_and_the_pipeline_read_the_same_row(exc, code, retry, capsys):
    with pytest.raises(typer.Exit) as out:
        _guard(_raise(exc))
    assert out.value.exit_code == code == exit_code(exc)
    assert capsys.readouterr().err.strip() == f"error: {exc}"  # one line, no traceback
    assert _not_config_error(None, None, _FailedState(exc)) is retry is retryable(exc)


def test_a_template_error_is_not_retried_by_the_generate_task():
    """The drift this table removed: the CLI exited 2 on it while the pipeline retried it twice."""
    assert not retryable(TemplateError("x"))


def test_an_unexpected_failure_is_retried_and_keeps_its_traceback():
    assert retryable(RuntimeError("boom")) and exit_code(RuntimeError("boom")) == 1
    with pytest.raises(RuntimeError, match="boom"):
        _guard(_raise(RuntimeError("boom")))
    assert _not_config_error(None, None, SimpleNamespace(result=lambda: None)) is True


def test_every_rule_names_a_distinct_exception_and_a_valid_exit_code():
    kinds = [r.kind for r in RULES]
    assert len(set(kinds)) == len(kinds)
    assert all(0 < r.exit_code < 128 for r in RULES)


def test_the_table_imports_no_torch_and_no_client_library():
    code = "import sys, flows.errors; print(sorted(m for m in ('torch', 'openai', 'vllm') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
