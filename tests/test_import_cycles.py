"""No import circle between eakd's modules (flows/, distill/, compress/, prompts/).

A circle closed by a function-local import still runs, but it makes the modules one unit to read and test, and
hides what each module depends on; one under ``if TYPE_CHECKING:`` usually stands for a type that lives in the
wrong module. Counted the way ``bench/modgraph.py`` (and ``make docs``) counts them, every kind of import included.
"""

from __future__ import annotations

from bench import modgraph


def test_no_import_circle_between_the_packages():
    nodes, edges = modgraph.build_graph()
    kinds = {"module", "local", "typing"}
    found = modgraph.cycles(nodes, edges, kinds)
    detail = "\n".join(f"{' <-> '.join(c)}: " + "; ".join(modgraph._cycle_edges(c, edges, kinds)) for c in found)
    assert not found, (f"{len(found)} import circle(s); move the shared piece into a lower module that both import "
                       f"(a function-local import does not break a circle):\n{detail}")


def test_the_check_sees_a_circle_closed_by_a_function_local_import(tmp_path):
    (tmp_path / "distill").mkdir()
    (tmp_path / "distill" / "__init__.py").write_text("")
    (tmp_path / "distill" / "a.py").write_text("from distill.b import f\n")
    (tmp_path / "distill" / "b.py").write_text("def f():\n    from distill import a\n")
    nodes, edges = modgraph.build_graph(tmp_path, ("distill",))
    assert modgraph.cycles(nodes, edges, {"module", "local", "typing"}) == [["distill.a", "distill.b"]]
