"""How eakd's entry points treat a failure: one table for the CLI's exit code and the pipeline's retry rule.

Before this module the CLI (``flows/cli.py``) and the Prefect tasks (``flows/pipeline.py``) each listed the
exceptions they knew, and the lists had drifted: a template error exited 2 from the CLI but was retried twice
by the generate task, which can only fail the same way again. Each row says what the failure is, the exit code a
scheduler sees, and whether a retry can help:

=====================  ====  =====  ==========================================================================
exception              exit  retry  meaning
=====================  ====  =====  ==========================================================================
``ConfigError``        2     no     bad input (config, seed file, path): the message says what, where, how to fix
``TemplateError``      2     no     a prompt template that does not render (sandboxed, StrictUndefined)
``BudgetExceeded``     3     no     the teacher spending cap stopped the run; answers so far are cached
``BatchPending``       4     no     a remote Batch API job is still running; rerun later to collect it
``TeacherUnavailable`` 1     yes    the endpoint refused every request (auth, model, URL); may come back
anything else          1     yes    a run-time failure (traceback, or one line for a full/read-only disk)
=====================  ====  =====  ==========================================================================

Kept in ``flows/`` (the top layer, which may import every room) so the core never imports a room for it; the
exception classes themselves live with what raises them (``distill.config``, ``prompts``,
``distill.teacher.types``).

Run: ``python -c "from flows.errors import exit_code; print(exit_code(ValueError()))"``.
"""

from __future__ import annotations

from dataclasses import dataclass

from distill.config import ConfigError
from distill.teacher.types import BatchPending, BudgetExceeded, TeacherUnavailable
from prompts import TemplateError

RUNTIME_EXIT = 1  # anything not in RULES
INTERRUPTED_EXIT = 130  # Ctrl-C, as shells report SIGINT


@dataclass(frozen=True)
class Rule:
    kind: type[BaseException]
    exit_code: int
    retry: bool


RULES = (Rule(ConfigError, 2, retry=False), Rule(TemplateError, 2, retry=False),
         Rule(BudgetExceeded, 3, retry=False), Rule(BatchPending, 4, retry=False),
         Rule(TeacherUnavailable, 1, retry=True))


def rule_for(exc: BaseException) -> Rule | None:
    """The first rule whose exception class ``exc`` is an instance of; None for an unexpected failure."""
    return next((r for r in RULES if isinstance(exc, r.kind)), None)


def exit_code(exc: BaseException) -> int:
    """The CLI's exit status for ``exc`` (``RUNTIME_EXIT`` for a failure no rule names)."""
    rule = rule_for(exc)
    return rule.exit_code if rule else RUNTIME_EXIT


def retryable(exc: BaseException) -> bool:
    """Whether a Prefect task that raised ``exc`` should try again (unexpected failures: yes)."""
    rule = rule_for(exc)
    return rule.retry if rule else True
