"""The lm-evaluation-harness hook: lm-eval tasks over local data, run on the student and its base by the
evaluate stage (``evaluate.lm_eval``, ``eakd evaluate ... --lm-eval TASKS``). docs/deployment.md says how.

``config`` is torch- and lm-eval-free; ``run`` imports lm-eval inside its functions; ``tasks/`` holds the
shipped task YAMLs and their data (see ``SHIPPED_TASKS``).
"""

from __future__ import annotations

from pathlib import Path

from distill.lmeval.config import SHIPPED_TASKS, LmEvalConfig, parse_task_list

DEMO_TASK_FILE = Path(__file__).resolve().parents[2] / "flows" / "configs" / "demo_tasks.yaml"
DEMO_HELD_OUT = Path(__file__).resolve().parent / "tasks" / "demo_held_out.jsonl"

__all__ = ["DEMO_HELD_OUT", "DEMO_TASK_FILE", "SHIPPED_TASKS", "LmEvalConfig", "demo_held_out_rows", "parse_task_list"]


def demo_held_out_rows(task_file: str | Path = DEMO_TASK_FILE) -> list[dict]:
    """The held-out items of a task file as the student is asked them after ``generate.erase_demos``: the
    zero-shot ``instruct`` prompt (ICL tasks) or ``cot`` prompt (CoT tasks), split into ``system`` and ``user``,
    with the gold ``answer``; ``id`` as distill.data.tasks names the item's seed. Writes nothing; the shipped
    ``tasks/demo_held_out.jsonl`` is this for the demo's task file (a test checks they agree)."""
    from distill.data.tasks import load_tasks, text_id
    from prompts import load_template, render_messages

    rows = []
    for t in load_tasks(task_file).tasks:
        template = load_template("cot" if t.style == "cot" else "instruct")
        for e in t.held_out:
            msgs = render_messages(template, {"instruction": t.instruction, "input": e.input, "demos": [], "task": t.name})
            rows.append({"id": text_id(t.name, "held_out", e.input), "task": t.name, "style": t.style,
                         "system": next((m["content"] for m in msgs if m["role"] == "system"), ""),
                         "user": next(m["content"] for m in msgs if m["role"] == "user"), "answer": e.output})
    return rows
