"""Load and render prompt templates safely (sandbox + StrictUndefined) into chat messages."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.sandbox import SandboxedEnvironment

BUILTIN_DIR = Path(__file__).parent
BUILTIN_STYLES = ("icl", "cot", "instruct")
# every shipped template: the three styles, few-shot CoT, the Self-Instruct bootstrapping prompt, the judge and
# input synthesis for task files
SHIPPED = (*BUILTIN_STYLES, "cot_fewshot", "cot_json", "self_instruct", "self_instruct_json", "judge", "synth_inputs")
ROLES = ("system", "user")
# Template-loading tags. The environment has no loader, so these could read no file anyway; they are
# refused at load time so a template is self-contained: its sha256 (cache key, dataset card) covers
# everything it renders, and `{% include '/etc/passwd' %}` or `'../x'` is a one-line error, not a read.
_LOADING_TAGS = {nodes.Extends: "extends", nodes.Include: "include", nodes.Import: "import",
                 nodes.FromImport: "from ... import"}


class TemplateError(ValueError):
    """A template could not be found, parsed or rendered; the message names template, line and cause."""


@dataclass(frozen=True)
class Template:
    name: str  # "cot" for a shipped template, the path for a user one
    source: str
    sha256: str  # content hash: goes into the cache key and the dataset card
    compiled: jinja2.Template


def _env() -> SandboxedEnvironment:
    # no `loader`: a template can never open another file (include/import/extends fail)
    return SandboxedEnvironment(
        undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False,
        trim_blocks=True, lstrip_blocks=True,
    )


def load_template(name_or_path: str) -> Template:
    """A shipped template name (see ``SHIPPED``) or a path to a user ``.jinja`` file."""
    if name_or_path in SHIPPED:
        path = BUILTIN_DIR / f"{name_or_path}.jinja"
        name = name_or_path
    else:
        path = Path(name_or_path).expanduser()
        name = str(path)
        if not path.is_file():
            raise TemplateError(
                f"template {name_or_path!r} not found: use one of {', '.join(SHIPPED)} or a path to a .jinja file"
            )
    source = path.read_text()
    env = _env()
    try:
        tree = env.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"{name}:{exc.lineno}: template syntax error: {exc.message}; fix the Jinja syntax on "
                            "that line") from None
    loading = next(tree.find_all(tuple(_LOADING_TAGS)), None)
    if loading is not None:
        raise TemplateError(f"{name}:{loading.lineno}: {{% {_LOADING_TAGS[type(loading)]} %}} is not allowed: a "
                            "template must be self-contained (it may read no other file); paste the shared part into it")
    compiled = env.from_string(tree)
    missing = [r for r in ("user",) if r not in compiled.blocks]
    if missing:
        raise TemplateError(f"{name}: template must define {{% block user %}} (and optionally {{% block system %}})")
    return Template(name=name, source=source, sha256=hashlib.sha256(source.encode()).hexdigest(), compiled=compiled)


def _error_line(exc: BaseException, template: Template) -> str:
    tb = exc.__traceback__
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    if line is None:
        return template.name
    return f"{template.name}:{template.compiled.get_corresponding_lineno(line)}"  # python line -> template line


def render_block(template: Template, name: str, variables: dict[str, Any]) -> str | None:
    """The text of ``{% block name %}`` rendered with ``variables`` (stripped), or None when the template has no
    such block. Raises :class:`TemplateError` like :func:`render_messages`."""
    block = template.compiled.blocks.get(name)
    if block is None:
        return None
    try:
        ctx = template.compiled.new_context(dict(variables))
        return "".join(block(ctx)).strip()
    except jinja2.UndefinedError as exc:
        raise TemplateError(f"{_error_line(exc, template)}: undefined variable: {exc.message}; use one of "
                            f"{', '.join(sorted(variables))}") from None
    except jinja2.exceptions.SecurityError as exc:
        raise TemplateError(f"{_error_line(exc, template)}: refused by the sandbox: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any other template bug is one line naming where, not a traceback
        raise TemplateError(f"{_error_line(exc, template)}: {type(exc).__name__}: {exc}") from None


def render_messages(template: Template, variables: dict[str, Any]) -> list[dict[str, str]]:
    """Render each role block of ``template`` with ``variables`` into ``[{"role", "content"}, …]``.

    Raises :class:`TemplateError` naming the template, the line and the undefined variable or the
    refused (unsafe) operation.
    """
    messages = []
    for role in ROLES:
        if text := render_block(template, role, variables):
            messages.append({"role": role, "content": text})
    return messages
