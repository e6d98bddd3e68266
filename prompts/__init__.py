"""Jinja prompt templates for the three emergent-ability styles, and their sandboxed renderer.

Templates: ``icl.jinja`` (task description + few-shot demonstrations), ``cot.jinja`` (reason step by
step, then a marked final answer) and ``instruct.jinja`` (the task description alone); also ``cot_fewshot.jinja`` (worked examples with
rationales, for few-shot CoT), ``self_instruct.jinja`` (Self-Instruct's continue-the-task-list prompt) and ``synth_inputs.jinja``
(one new input for a task file's task, :mod:`distill.data.synth`). Each template
defines ``{% block system %}`` and ``{% block user %}``; :func:`render_messages` renders each block into
one chat message, so prompts stay tokenizer-independent ``messages``.

Every template — shipped or user-supplied — renders in Jinja's ``SandboxedEnvironment`` with
``StrictUndefined``. Seed text and teacher outputs are only ever template *variables*, never template
source, so generated text cannot run template code.
"""

from prompts.render import (
    BUILTIN_STYLES,
    SHIPPED,
    Template,
    TemplateError,
    load_template,
    render_block,
    render_messages,
)

__all__ = ["BUILTIN_STYLES", "SHIPPED", "Template", "TemplateError", "load_template", "render_block", "render_messages"]
