"""Print the import graph of eakd's packages (flows/, distill/, compress/, prompts/) and every import cycle in it.

Reads the source with the standard library's ``ast`` only (nothing is imported, so it runs without torch). Each
import is one of three kinds:

- ``module``: runs when the module is imported (top level, class bodies, ``try``/``if`` at top level);
- ``local``: inside a function, runs when the function is first called (the usual way to break a cycle or defer
  a heavy import);
- ``typing``: under ``if TYPE_CHECKING:``, never runs; left out of the cycles.

A cycle is a strongly connected component of more than one module (Tarjan's algorithm), listed twice: counting
module-level and function-local imports (what a reader must hold in their head), and counting module-level ones
only (what can fail at import time). Edges that break the layering of docs/architecture.md (flows -> compress ->
distill -> prompts; nothing imports flows) are listed too.

Run: ``.venv/bin/python bench/modgraph.py`` (the whole graph), ``--cycles`` (only the summary), ``--write-docs``
(the summary into docs/architecture.md between its ``<!-- bench:modgraph -->`` markers; ``make docs`` does it).
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("flows", "distill", "compress", "prompts")
DOC = ROOT / "docs" / "architecture.md"
# which top-level package may import which (docs/architecture.md, DESIGN.md "Dependencies point one way")
ALLOWED = {"flows": {"flows", "compress", "distill", "prompts"}, "compress": {"compress", "distill", "prompts"},
           "distill": {"distill", "prompts"}, "prompts": {"prompts"}}


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    kind: str  # "module" | "local" | "typing"
    line: int


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def find_modules(root: Path, packages: Iterable[str] = PACKAGES) -> dict[str, Path]:
    """Module name -> file, for every .py file under the packages."""
    return {module_name(p, root): p for pkg in packages if (root / pkg).is_dir()
            for p in sorted((root / pkg).rglob("*.py"))}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The deepest known module that ``name`` (a dotted import target) names, or None for an outside module."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in modules:
            return ".".join(parts)
        parts.pop()
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
           (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(mod: str, path: Path, modules: dict[str, Path]) -> list[Edge]:
    """Every import of ``mod`` that lands in ``modules``, with its kind."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    edges: list[Edge] = []

    def targets(node: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        base = node.module or ""
        if node.level:  # relative: from the module's package, one level up per extra dot
            pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
            pkg = pkg[:len(pkg) - (node.level - 1)]
            base = ".".join(pkg + ([base] if base else []))
        # `from pkg import name`: name is a submodule when one exists, else a name defined in pkg
        return [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]

    def visit(node: ast.AST, kind: str) -> None:
        for child in ast.iter_child_nodes(node):
            k = kind
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                k = "local" if kind == "module" else kind
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for sub in child.body:
                    visit_node(sub, "typing")
                for sub in child.orelse:
                    visit_node(sub, kind)
                continue
            visit_node(child, k)

    def visit_node(node: ast.AST, kind: str) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for t in targets(node):
                dst = _resolve(t, modules)
                if dst and dst != mod:
                    edges.append(Edge(mod, dst, kind, node.lineno))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and kind == "module":
            kind = "local"
        visit(node, kind)

    visit(tree, "module")
    return edges


def build_graph(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> tuple[list[str], list[Edge]]:
    modules = find_modules(root, packages)
    edges = [e for m, p in modules.items() for e in imports_of(m, p, modules)]
    return sorted(modules), edges


def strongly_connected(nodes: list[str], edges: Iterable[tuple[str, str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one node, each sorted, largest first."""
    succ: dict[str, set[str]] = {n: set() for n in nodes}
    for a, b in edges:
        succ.setdefault(a, set()).add(b)
        succ.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    for start in sorted(succ):  # iterative, so a deep graph cannot hit the recursion limit
        if start in index:
            continue
        work = [(start, iter(sorted(succ[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(succ[nxt]))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    n = stack.pop()
                    on_stack.discard(n)
                    comp.append(n)
                    if n == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return sorted(out, key=lambda c: (-len(c), c))


def cycles(nodes: list[str], edges: list[Edge], kinds: set[str]) -> list[list[str]]:
    return strongly_connected(nodes, {(e.src, e.dst) for e in edges if e.kind in kinds})


def layer_violations(edges: list[Edge]) -> list[Edge]:
    """Imports against the one-way rule: a package importing one it may not (typing-only imports included)."""
    return [e for e in edges if e.dst.split(".")[0] not in ALLOWED.get(e.src.split(".")[0], {e.dst.split(".")[0]})]


def _cycle_edges(comp: list[str], edges: list[Edge], kinds: set[str]) -> list[str]:
    members = set(comp)
    seen: dict[tuple[str, str], str] = {}
    for e in edges:
        if e.src in members and e.dst in members and e.kind in kinds:
            k = (e.src, e.dst)
            seen[k] = "module" if "module" in (seen.get(k), e.kind) else e.kind
    return [f"`{a}` → `{b}`" + (" (local)" if kind == "local" else "") for (a, b), kind in sorted(seen.items())]


def summary(nodes: list[str], edges: list[Edge]) -> str:
    """The markdown summary: counts, the cycles both ways with the edges inside each, the layering violations."""
    n_kind = {k: sum(e.kind == k for e in edges) for k in ("module", "local", "typing")}
    lines = [f"{len(nodes)} modules in {', '.join(f'`{p}/`' for p in PACKAGES)}; {len({(e.src, e.dst) for e in edges})} "
             f"distinct import edges ({n_kind['module']} module-level imports, {n_kind['local']} function-local, "
             f"{n_kind['typing']} under `TYPE_CHECKING`).", ""]
    for title, kinds in (("Cycles counting module-level and function-local imports", {"module", "local"}),
                         ("Cycles counting module-level imports only (these can fail at import time)", {"module"})):
        found = cycles(nodes, edges, kinds)
        lines.append(f"**{title}: {len(found)}.**")
        lines.append("")
        for i, comp in enumerate(found, 1):
            lines.append(f"{i}. {len(comp)} modules: " + ", ".join(f"`{m}`" for m in comp))
            lines.append("   - edges: " + "; ".join(_cycle_edges(comp, edges, kinds)))
        if found:
            lines.append("")
    bad = layer_violations(edges)
    lines.append(f"**Imports against the layering: {len(bad)}.**")
    if bad:
        lines.append("")
        lines += [f"- `{e.src}` → `{e.dst}` ({e.kind}, line {e.line})" for e in sorted(bad, key=lambda e: (e.src, e.dst))]
    return "\n".join(lines)


def write_docs(text: str, doc: Path = DOC) -> None:
    page = doc.read_text()
    pattern = re.compile(r"<!-- bench:modgraph -->.*?<!-- /bench:modgraph -->", re.S)
    if not pattern.search(page):
        sys.exit(f"{doc}: no <!-- bench:modgraph --> ... <!-- /bench:modgraph --> markers")
    block = f"<!-- bench:modgraph -->\n{text}\n<!-- /bench:modgraph -->"
    doc.write_text(pattern.sub(lambda _m: block, page))
    print(f"wrote {doc.relative_to(ROOT)}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cycles", action="store_true", help="print only the summary (counts, cycles, layering)")
    ap.add_argument("--write-docs", action="store_true", help="put the summary into docs/architecture.md")
    args = ap.parse_args(argv)
    nodes, edges = build_graph()
    if not args.cycles and not args.write_docs:
        by_src: dict[str, list[Edge]] = {}
        for e in edges:
            by_src.setdefault(e.src, []).append(e)
        for m in nodes:
            out = by_src.get(m, [])
            mod = sorted({e.dst for e in out if e.kind == "module"})
            loc = sorted({e.dst for e in out if e.kind == "local"} - set(mod))
            typ = sorted({e.dst for e in out if e.kind == "typing"} - set(mod) - set(loc))
            print(m)
            for label, group in (("->", mod), ("~>", loc), ("..>", typ)):
                for d in group:
                    print(f"  {label} {d}")
        print("\n(-> module-level import, ~> function-local import, ..> TYPE_CHECKING only)\n")
    text = summary(nodes, edges)
    if args.write_docs:
        write_docs(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
