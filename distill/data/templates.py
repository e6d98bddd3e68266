"""Which templates the generate stage renders: one rule, by role, for everything that renders or hashes them.

:func:`resolve_templates` returns every template a generate config will render, keyed by role:

- ``icl``: ICL prompts with ``demo_format: text`` (``generate.templates.icl``, shipped ``icl``); chat demos
  are rendered by ``instruct`` instead, so ``icl`` is then not used;
- ``cot``: CoT prompts (``generate.templates.cot``; by default ``cot_json`` with ``structured_cot``,
  ``cot_fewshot`` with ``cot_shots``, else ``cot``);
- ``instruct``: the instruct style, and ICL's chat demos and erased prompt (``demo_format: chat`` or
  ``erase_demos``) (``generate.templates.instruct``);
- ``cot_zero_shot``: the student's zero-shot CoT prompt when ``erase_demos`` removes worked examples
  (``cot_shots``, or a task file's cot task) (``generate.templates.cot``, shipped ``cot``);
- ``judge``: ``generate.filters.judge.template``, when the judge is on;
- ``bootstrap``: ``generate.bootstrap.template`` (default ``self_instruct``, ``self_instruct_json`` when
  structured), when bootstrapping;
- ``synth_inputs``: ``generate.synthesis.template``, when a task of the task file has ``synthesize > 0``.

With a task file only the styles of its tasks render (plus ``instruct`` for bootstrapped instructions).
:func:`distill.data.dataset.build_requests` renders the prompts with these templates, ``flows.config.preflight``
loads and renders every one of them (:func:`check_templates`) before any teacher call, and the generate
stage's cache key (``flows.stage_keys.generate_key``) hashes each one's sha256, so editing any template the
run renders, and only those, reruns the stage. Torch-free: importing it loads no model code.
"""

from __future__ import annotations

from distill.config import ConfigError
from distill.data.config import GenerateConfig
from distill.data.selfinstruct import template_name as bootstrap_template_name
from distill.data.tasks import TaskFile, load_tasks
from prompts import Template, TemplateError, load_template, render_messages

# the config field each role's template comes from (for errors)
FIELDS = {"icl": "generate.templates.icl", "cot": "generate.templates.cot", "instruct": "generate.templates.instruct",
          "cot_zero_shot": "generate.templates.cot", "judge": "generate.filters.judge.template",
          "bootstrap": "generate.bootstrap.template", "synth_inputs": "generate.synthesis.template"}

_DEMO = {"input": "An example input.", "output": "Its answer.", "rationale": "The worked steps."}


def _rendered_styles(cfg: GenerateConfig, tasks: TaskFile | None) -> set[str]:
    """The styles that get prompts: every configured one for a seed file, a task file's tasks' own styles (a
    task's seeds are prompted in its style only); plus instruct for bootstrapped instructions and for
    ``generate.replay``'s general instructions (seeds of their own instruct style)."""
    used = set(cfg.styles) if tasks is None else {t.style for t in tasks.tasks} & set(cfg.styles)
    if cfg.bootstrap is not None or cfg.replay is not None:
        used.add("instruct")
    return used


def template_sources(cfg: GenerateConfig, tasks: TaskFile | None = None) -> dict[str, str]:
    """Role -> shipped template name or user path, for every template the generate stage renders (the table in
    the module docstring). ``tasks``: ``cfg.tasks`` already loaded (read here when not given)."""
    if cfg.tasks is not None and tasks is None:
        tasks = load_tasks(cfg.tasks)
    styles = _rendered_styles(cfg, tasks)
    cot_task = tasks is not None and any(t.style == "cot" for t in tasks.tasks)
    out: dict[str, str] = {}
    if "icl" in styles and cfg.demo_format == "text":
        out["icl"] = cfg.templates.get("icl", "icl")
    if "cot" in styles:
        out["cot"] = cfg.templates.get("cot", "cot_json" if cfg.structured_cot else "cot_fewshot" if cfg.cot_shots else "cot")
        if cfg.erase_demos and (cfg.cot_shots or cot_task):
            out["cot_zero_shot"] = cfg.templates.get("cot", "cot")
    if "instruct" in styles or "icl" in styles and (cfg.erase_demos or cfg.demo_format == "chat"):
        out["instruct"] = cfg.templates.get("instruct", "instruct")
    if cfg.filters.judge is not None:
        out["judge"] = cfg.filters.judge.template
    if cfg.bootstrap is not None:
        out["bootstrap"] = bootstrap_template_name(cfg.bootstrap)
    if tasks is not None and any(t.synthesize for t in tasks.tasks):
        out["synth_inputs"] = cfg.synthesis.template
    return out


def resolve_templates(cfg: GenerateConfig, tasks: TaskFile | None = None) -> dict[str, Template]:
    """Every template the generate stage of ``cfg`` will render, loaded, by role. A template that cannot be
    loaded is a ConfigError naming its config field."""
    out = {}
    for role, source in template_sources(cfg, tasks).items():
        try:
            out[role] = load_template(source)
        except TemplateError as exc:
            raise ConfigError(f"{FIELDS[role]}: {exc}") from None
    return out


def sample_variables(role: str, cfg: GenerateConfig) -> dict:
    """Variables like those the role's template is rendered with, for a render check before the run."""
    base = {"instruction": "Do the task.", "input": "An input.", "demos": [], "task": "task"}
    if role == "icl" or role == "cot" and cfg.cot_shots:
        return base | {"demos": [_DEMO, _DEMO]}
    if role in ("cot", "instruct", "cot_zero_shot"):
        return base
    if role == "judge":
        return {"instruction": "Do the task.", "response": "A response."}
    if role == "bootstrap":
        return {"tasks": ["Write a poem.", "Sort these numbers."], "n_new": cfg.bootstrap.new_per_prompt}
    if role == "synth_inputs":
        return {"instruction": "Do the task.", "inputs": ["An input.", "Another input."], "task": "task"}
    raise ValueError(f"unknown template role {role!r}")


def check_templates(cfg: GenerateConfig, tasks: TaskFile | None = None) -> dict[str, Template]:
    """:func:`resolve_templates`, each template also rendered once with :func:`sample_variables`: a bad
    template is a ConfigError naming its config field, before anything is sent to the teacher."""
    templates = resolve_templates(cfg, tasks)
    for role, tmpl in templates.items():
        try:
            render_messages(tmpl, sample_variables(role, cfg))
        except TemplateError as exc:
            raise ConfigError(f"{FIELDS[role]}: {exc}") from None
    return templates
