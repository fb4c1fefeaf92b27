"""The pack's import graph: layers, upward imports and circles (top-level and lazy imports alike).

    python tools/import_graph.py            # violations and circles; exit 1 if any
    python tools/import_graph.py --layers   # the layer map, one line a layer
    python tools/import_graph.py --dot      # the graph between top-level areas, Graphviz format

A module may import its own layer or any layer below it, never one above. Imports inside functions count the
same as imports at the top: a lazy import is still a dependency. ``tests/test_architecture.py`` runs the same
check in CI. This script is a development tool; it is not part of the installed package.
"""

from __future__ import annotations

import ast
import collections
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Lowest first. A module belongs to the first entry whose name equals it or is a dotted prefix of it.
LAYERS: list[tuple[str, list[str]]] = [
    ("core", ["errors", "log", "progress", "paths", "oom", "version"]),
    ("libraries", ["samplers", "models", "pixel", "rmbg", "sprites", "lora"]),
    ("engines", ["engines"]),
    ("services", ["pipeline", "generation", "comfy_bridge", "preview", "resolve", "diagnostics"]),
    ("nodes", ["nodes"]),
    ("execution", ["execution"]),
    ("cli", ["cli"]),
    ("entry", ["", "benchmarks", "training", "tools"]),
]
SKIP_DIRS = {"tests", ".git", "__pycache__", "out", ".ci", "node_modules"}


def modules(root: Path = ROOT) -> dict[str, Path]:
    found = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part in SKIP_DIRS or part.endswith(".egg-info") for part in rel.parts[:-1]):
            continue
        name = ".".join(rel.with_suffix("").parts)
        if name == "__init__":
            name = ""
        elif name.endswith(".__init__"):
            name = name[: -len(".__init__")]
        found[name] = path
    return found


def layer_of(module: str) -> int:
    for i, (_, names) in enumerate(LAYERS):
        for n in names:
            if module == n or (n and module.startswith(n + ".")):
                return i
    raise KeyError(f"module {module!r} is in no layer; add it to LAYERS in tools/import_graph.py")


def _nearest(name: str, mods) -> str | None:
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name if name in mods else None


def import_nodes(path: Path):
    """Every import statement of a file, with whether it runs lazily (inside a function): ``(node, lazy)``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    lazy = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            for n in ast.walk(f)}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, id(node) in lazy


def edges(mods: dict[str, Path]) -> dict[tuple[str, str], set[str]]:
    """``{(importer, imported): {"top"|"lazy"}}`` for imports between the pack's own modules."""
    out: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        for node, is_lazy in import_nodes(path):
            targets = []
            if isinstance(node, ast.ImportFrom):
                if node.level == 0:
                    if not (node.module or "").split(".")[0] == "spriteforge":
                        continue
                    base = node.module[len("spriteforge."):] if node.module != "spriteforge" else ""
                else:
                    parts = mod.split(".") if mod else []
                    if not is_pkg:
                        parts = parts[:-1]
                    parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
                    base = ".".join(p for p in parts + ([node.module] if node.module else []) if p)
                for alias in node.names:
                    full = f"{base}.{alias.name}" if base else alias.name
                    targets.append(full if full in mods else base)
            elif isinstance(node, ast.Import):
                targets = [a.name[len("spriteforge."):] for a in node.names if a.name.startswith("spriteforge.")]
            for t in targets:
                t = _nearest(t, mods)
                if t is not None and t != mod:
                    out[(mod, t)].add("lazy" if is_lazy else "top")
    return out


def upward(mods, graph) -> list[str]:
    bad = []
    for (a, b), kinds in sorted(graph.items()):
        if layer_of(b) > layer_of(a):
            bad.append(f"{a or '<root>'} ({LAYERS[layer_of(a)][0]}) -> {b or '<root>'} ({LAYERS[layer_of(b)][0]})"
                       f"{' [lazy]' if kinds == {'lazy'} else ''}")
    return bad


def circles(mods, graph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    succ = collections.defaultdict(list)
    for a, b in graph:
        succ[a].append(b)
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for start in mods:
        if start in index:
            continue
        work = [(start, iter(succ[start]))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(succ[w])))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(m or "<root>" for m in comp))
    return out


def area(module: str) -> str:
    return module.split(".")[0] if module else "<root>"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    mods = modules()
    graph = edges(mods)
    if "--layers" in argv:
        for i, (name, members) in enumerate(LAYERS):
            print(f"{i} {name:10s} {', '.join(m or '<root>' for m in members)}")
        return 0
    if "--dot" in argv:
        pairs = sorted({(area(a), area(b)) for a, b in graph if area(a) != area(b)})
        print("digraph spriteforge {\n  rankdir=BT;")
        for a, b in pairs:
            print(f'  "{a}" -> "{b}";')
        print("}")
        return 0
    up, circ = upward(mods, graph), circles(mods, graph)
    for line in up:
        print("upward:", line)
    for c in circ:
        print("circle:", " <-> ".join(c))
    print(f"{len(mods)} modules, {len(graph)} imports, {len(up)} upward, {len(circ)} circles")
    return 1 if up or circ else 0


if __name__ == "__main__":
    sys.exit(main())
