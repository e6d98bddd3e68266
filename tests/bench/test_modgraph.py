"""bench/modgraph.py: the import graph (module-level, function-local, TYPE_CHECKING) and its cycles."""

from __future__ import annotations

from pathlib import Path

from bench import modgraph


def _tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_kinds_cycles_relative_imports_and_layering(tmp_path):
    _tree(tmp_path, {
        "distill/__init__.py": "",
        "distill/a.py": "from distill import b\n",                      # module-level, submodule by name
        "distill/b.py": "def f():\n    from . import a\n",               # function-local, relative: closes a <-> b
        "distill/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import distill.d\n",
        "distill/d.py": "import distill.c\n",                            # c -> d only for the type checker
        "distill/e.py": "import os\nfrom .f import g\n",                 # module-level cycle e <-> f
        "distill/f.py": "from distill.e import h\ng = 1\n",
        "distill/sub/__init__.py": "",
        "distill/sub/s.py": "from ..a import x\nimport torch\n",         # two dots: distill.a; torch is outside
        "prompts/__init__.py": "",
        "prompts/p.py": "class K:\n    import distill.a\n",              # class body runs at import: module-level
    })
    nodes, edges = modgraph.build_graph(tmp_path, ("distill", "prompts"))
    assert "distill.sub.s" in nodes and "distill" in nodes
    kinds = {(e.src, e.dst): e.kind for e in edges}
    assert kinds[("distill.a", "distill.b")] == "module"
    assert kinds[("distill.b", "distill.a")] == "local"
    assert kinds[("distill.c", "distill.d")] == "typing"
    assert kinds[("distill.sub.s", "distill.a")] == "module"
    assert kinds[("prompts.p", "distill.a")] == "module"
    assert not any(e.dst.startswith(("os", "torch")) for e in edges)

    with_local = modgraph.cycles(nodes, edges, {"module", "local"})
    module_only = modgraph.cycles(nodes, edges, {"module"})
    assert with_local == [["distill.a", "distill.b"], ["distill.e", "distill.f"]]  # c <-> d is typing-only
    assert module_only == [["distill.e", "distill.f"]]
    assert [(e.src, e.dst) for e in modgraph.layer_violations(edges)] == [("prompts.p", "distill.a")]

    text = modgraph.summary(nodes, edges)
    assert "module-level and function-local imports: 2" in text and "module-level imports only" in text
    assert "`distill.b` → `distill.a` (local)" in text and "Imports against the layering: 1" in text


def test_strongly_connected_finds_a_long_cycle_and_ignores_a_chain():
    edges = [(str(i), str(i + 1)) for i in range(2000)] + [("2000", "0"), ("x", "y")]
    comps = modgraph.strongly_connected([], edges)
    assert len(comps) == 1 and len(comps[0]) == 2001  # iterative: no recursion limit


def test_the_repo_graph_and_its_section_in_the_architecture_page():
    nodes, edges = modgraph.build_graph()
    assert {"flows.cli", "distill.teacher", "compress.stage", "prompts.render"} <= set(nodes)
    page = modgraph.DOC.read_text()
    assert "<!-- bench:modgraph -->" in page and "<!-- /bench:modgraph -->" in page
    assert modgraph.layer_violations([e for e in edges if e.kind != "typing"]) == [], \
        "a package imports one it may not (docs/architecture.md: flows -> compress -> distill -> prompts)"
