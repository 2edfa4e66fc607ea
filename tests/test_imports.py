"""The package's import graph: one namespace, imports one way, no circles."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "rasst": ROOT / "rasst",
    "rasst.client": ROOT / "client",
    "rasst.retriever": ROOT / "retriever",
    "rasst.training": ROOT / "training",
}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg, folder in PACKAGES.items():
        for f in folder.rglob("*.py"):
            sub = ".".join(f.relative_to(folder).with_suffix("").parts)
            name = pkg if sub == "__init__" else f"{pkg}.{sub}".removesuffix(".__init__")
            mods[name] = f
    return mods


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every rasst module ``name`` imports, at the top or inside a function."""
    pkg = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for a in node.names:
                full = f"{base}.{a.name}"
                out.add(full if full in known else base)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m in known and m != name}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {n: _imports(n, p, set(mods)) for n, p in mods.items()}


def test_no_import_circles():
    graph = _graph()
    cycles, state = [], {}

    def visit(n, stack):
        state[n] = "open"
        for m in sorted(graph[n]):
            if state.get(m) == "open":
                cycles.append(stack[stack.index(m) :] + [m])
            elif m not in state:
                visit(m, stack + [m])
        state[n] = "done"

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    assert cycles == []


def test_imports_run_one_way():
    """training may import retriever and client; retriever never training; client neither
    (it needs no torch); the neutral ``rasst`` modules import none of them."""
    forbidden = {
        "rasst.retriever": ("rasst.training", "rasst.client"),
        "rasst.client": ("rasst.training", "rasst.retriever"),
        "rasst.v1": ("rasst.training", "rasst.retriever", "rasst.client"),
        "rasst.pcm": ("rasst.training", "rasst.retriever", "rasst.client"),
        "rasst.formats": ("rasst.training", "rasst.retriever", "rasst.client"),
    }
    bad = [
        (n, m)
        for n, deps in _graph().items()
        for prefix, banned in forbidden.items()
        if n == prefix or n.startswith(prefix + ".")
        for m in deps
        if m.startswith(banned)
    ]
    assert bad == []
