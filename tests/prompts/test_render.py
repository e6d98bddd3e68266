import json
import os
from pathlib import Path

import pytest

from prompts import SHIPPED, TemplateError, load_template, render_messages

SNAPSHOTS = Path(__file__).parent / "snapshots"
VARS = {
    "instruction": "Solve the math word problem.",
    "input": "Tom has 3 boxes with 4 apples each. How many apples?",
    "demos": [{"input": "2 bags of 5 apples?", "output": "10", "rationale": "2 x 5 = 10."},
              {"input": "6 apples, eat 2?", "output": "4", "rationale": "6 - 2 = 4."}],
    "task": "arithmetic",
    "tasks": ["Name three fruits.", "Translate 'cat' into French."],
    "n_new": 2,
    "inputs": ["Tom has 3 boxes with 4 apples each. How many apples?", "A pencil costs 2 dollars. What do 7 cost?"],
    "response": "3 boxes of 4 apples is 12 apples. The answer is 12.",
}


@pytest.mark.parametrize("style", SHIPPED)
def test_shipped_template_snapshot(style):
    """Every shipped template renders exactly as its snapshot (EAKD_UPDATE_SNAPSHOTS=1 rewrites them)."""
    messages = render_messages(load_template(style), VARS)
    snap = SNAPSHOTS / f"{style}.json"
    if os.environ.get("EAKD_UPDATE_SNAPSHOTS") == "1":
        snap.write_text(json.dumps(messages, indent=2) + "\n")
    assert messages == json.loads(snap.read_text())


def test_template_hash_is_content_hash(tmp_path):
    a = tmp_path / "a.jinja"
    a.write_text("{% block user %}{{ instruction }}{% endblock %}")
    h1 = load_template(str(a)).sha256
    a.write_text("{% block user %}{{ instruction }}!{% endblock %}")
    assert load_template(str(a)).sha256 != h1


def test_sandbox_refuses_python_internals(tmp_path):
    evil = tmp_path / "evil.jinja"
    evil.write_text("{% block user %}{{ instruction.__class__.__mro__[1].__subclasses__() }}{% endblock %}")
    with pytest.raises(TemplateError, match="refused by the sandbox|undefined variable"):
        render_messages(load_template(str(evil)), {"instruction": "x"})


def test_undefined_variable_names_template_line_and_variable(tmp_path):
    t = tmp_path / "t.jinja"
    t.write_text("{% block user %}\nline one\n{{ question }}\n{% endblock %}")
    with pytest.raises(TemplateError) as err:
        render_messages(load_template(str(t)), {"instruction": "x"})
    msg = str(err.value)
    assert "t.jinja:3" in msg and "'question' is undefined" in msg


def test_seed_text_is_data_not_template_code():
    messages = render_messages(load_template("instruct"), {"instruction": "{{ 7 * 7 }} {% for x in y %}", "input": ""})
    assert messages[-1]["content"] == "{{ 7 * 7 }} {% for x in y %}"


def test_syntax_error_names_line(tmp_path):
    t = tmp_path / "broken.jinja"
    t.write_text("{% block user %}\n{% if x %}\n{% endblock %}")
    with pytest.raises(TemplateError, match=r"broken.jinja:\d+: template syntax error"):
        load_template(str(t))


def test_missing_template():
    with pytest.raises(TemplateError, match="not found"):
        load_template("no/such/template.jinja")
