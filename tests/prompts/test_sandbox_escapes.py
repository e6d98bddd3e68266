"""Classic server-side template injection escapes, tried from a user template (issue 8).

Each one must be refused with a one-line :class:`prompts.TemplateError` — by the sandbox (``_``
attributes, ``attr``/``format`` tricks), by ``StrictUndefined`` (no ``request``/``config`` globals) or at
load time (``include``/``import``/``extends``: a template may read no other file) — and none may run a
command: the payloads that would shell out try to create a marker file, which must never appear.
"""

import pytest

from prompts import TemplateError, load_template, render_messages

pytestmark = pytest.mark.reliability

VARS = {"instruction": "Add the numbers.", "input": "2 + 2", "demos": []}

# (id, template body inside {% block user %}); MARKER is replaced by a path under tmp_path
RENDER_ESCAPES = [
    ("str-mro", "{{ ''.__class__.__mro__ }}"),
    ("str-subclasses", "{{ ''.__class__.__mro__[1].__subclasses__() }}"),
    ("cycler-globals-os", "{{ cycler.__init__.__globals__.os.popen('touch MARKER').read() }}"),
    ("joiner-globals", "{{ joiner.__init__.__globals__ }}"),
    ("namespace-globals", "{{ namespace.__init__.__globals__ }}"),
    ("lipsum-globals", "{{ lipsum.__globals__ }}"),
    ("lipsum-builtins-import",
     "{{ lipsum.__globals__['__builtins__']['__import__']('os').system('touch MARKER') }}"),
    ("self-context", "{{ self._TemplateReference__context }}"),
    ("config-items", "{{ config.items() }}"),
    ("request", "{{ request }}"),
    ("for-subclasses", "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}"),
    ("attr-filter", "{{ ''|attr('__class__') }}"),
    ("attr-filter-chain", "{{ ()|attr('__class__')|attr('__base__')|attr('__subclasses__')() }}"),
    ("attr-hex-escaped", "{{ ()|attr('\\x5f\\x5fclass\\x5f\\x5f') }}"),
    ("attr-joined-name", "{{ ()|attr(['_', '_class_', '_']|join) }}"),
    ("getitem-dunder", "{{ ()['__class__'] }}"),
    ("map-attribute-chain", "{{ [()]|map(attribute='__class__')|map(attribute='__mro__')|list }}"),
    ("str-format-field", "{{ '{0.__class__.__mro__}'.format(()) }}"),
    ("str-format-map", "{{ '{x.__class__}'.format_map({'x': ()}) }}"),
    ("instruction-globals", "{{ instruction.__class__.__init__.__globals__ }}"),
    ("func-code", "{{ range.__code__ }}"),
    ("huge-range", "{% for i in range(10**9) %}{% endfor %}"),
]

# rendered, but only to a harmless placeholder: nothing of Python's internals comes out
HARMLESS = [
    ("map-attribute", "{{ [()]|map(attribute='__class__')|list }}"),
]
LEAKS = ("<class", "<function", "<module", "<built-in", "__globals__", "__builtins__", "object at 0x")

LOAD_ESCAPES = [
    ("include-abs", "{% include '/etc/passwd' %}"),
    ("include-dotdot", "{% include '../../../../etc/passwd' %}"),
    ("include-variable", "{% include instruction %}"),
    ("import-abs", "{% import '/etc/passwd' as x %}"),
    ("from-import", "{% from '/etc/passwd' import root %}"),
    ("extends-shipped", "{% extends 'cot.jinja' %}"),
]


def _template(tmp_path, body: str, wrap: bool = True):
    marker = tmp_path / "PWNED"
    src = body.replace("MARKER", str(marker))
    path = tmp_path / "user.jinja"
    path.write_text("{% block user %}" + src + "{% endblock %}" if wrap else src)
    return path, marker


@pytest.mark.parametrize("body", [b for _, b in RENDER_ESCAPES], ids=[i for i, _ in RENDER_ESCAPES])
def test_escape_is_refused_at_render(tmp_path, body):
    path, marker = _template(tmp_path, body)
    with pytest.raises(TemplateError) as err:
        render_messages(load_template(str(path)), VARS)
    msg = str(err.value)
    assert msg.startswith(str(path)) and "\n" not in msg  # one line, naming the template
    assert any(why in msg for why in ("refused by the sandbox", "undefined variable", "OverflowError"))
    assert not marker.exists()


@pytest.mark.parametrize("body", [b for _, b in HARMLESS], ids=[i for i, _ in HARMLESS])
def test_escape_renders_nothing_dangerous(tmp_path, body):
    path, _ = _template(tmp_path, body)
    try:
        text = "".join(m["content"] for m in render_messages(load_template(str(path)), VARS))
    except TemplateError:
        return
    assert not any(leak in text for leak in LEAKS), text


@pytest.mark.parametrize("body", [b for _, b in LOAD_ESCAPES], ids=[i for i, _ in LOAD_ESCAPES])
def test_template_cannot_read_other_files(tmp_path, body):
    """include/import/extends are refused when the template loads (before any render), wherever they point."""
    (tmp_path / "secret.txt").write_text("root:x:0:0")
    path, _ = _template(tmp_path, body)
    with pytest.raises(TemplateError, match=r"user\.jinja:1: \{% (include|import|from \.\.\. import|extends) %\} is not allowed"):
        load_template(str(path))


def test_extends_outside_a_block_is_refused_too(tmp_path):
    path, _ = _template(tmp_path, "{% extends '/etc/passwd' %}", wrap=False)
    with pytest.raises(TemplateError, match="extends %} is not allowed"):
        load_template(str(path))


def test_include_of_a_sibling_file_is_refused(tmp_path):
    """Even the template's own folder: a template is self-contained, so its sha256 covers what it renders."""
    (tmp_path / "part.jinja").write_text("{{ instruction }}")
    path, _ = _template(tmp_path, "{% include 'part.jinja' %}")
    with pytest.raises(TemplateError, match="include %} is not allowed"):
        load_template(str(path))


def test_variables_holding_escapes_render_as_text(tmp_path):
    """Seed text is data: an SSTI payload in a variable is printed, never evaluated."""
    path, marker = _template(tmp_path, "{{ instruction }}")
    payload = "{{ cycler.__init__.__globals__.os.popen('touch " + str(marker) + "').read() }}"
    assert render_messages(load_template(str(path)), {"instruction": payload}) == [{"role": "user", "content": payload}]
    assert not marker.exists()


def test_safe_globals_still_work(tmp_path):
    """The refusals are targeted: the sandbox's ordinary helpers and string methods keep working."""
    path, _ = _template(tmp_path, "{% set ns = namespace(n=0) %}{% for d in demos %}{% set ns.n = ns.n + 1 %}{% endfor %}"
                                  "{{ instruction.upper() }} {{ ns.n }} {{ '{} + {}'.format(1, 2) }} {{ range(3)|list }}")
    messages = render_messages(load_template(str(path)), {**VARS, "demos": [1, 2]})
    assert messages == [{"role": "user", "content": "ADD THE NUMBERS. 2 1 + 2 [0, 1, 2]"}]
