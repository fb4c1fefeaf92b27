"""The pack's structure holds: layers only import downwards, no import circles, frameworks stay in engines/.

The layer map and the graph come from ``tools/import_graph.py`` (imports inside functions count too); run it to see
what a failure here is about. HACKING.md describes the layers.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("_sf_import_graph", REPO / "tools" / "import_graph.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def graph():
    tool = _tool()
    mods = tool.modules()
    return tool, mods, tool.edges(mods)


def test_every_module_has_a_layer(graph):
    tool, mods, _ = graph
    for name in mods:
        tool.layer_of(name)  # raises KeyError naming the module and the table to extend


def test_no_import_runs_up_the_layers(graph):
    tool, mods, edges = graph
    assert tool.upward(mods, edges) == []


def test_no_import_circles(graph):
    tool, mods, edges = graph
    assert tool.circles(mods, edges) == []


def test_the_checker_sees_an_upward_import_and_a_circle(tmp_path):
    """The check itself can fail: a small tree with one upward import and one circle."""
    tool = _tool()
    (tmp_path / "errors.py").write_text("from .cli import main\n")
    (tmp_path / "cli").mkdir()
    (tmp_path / "cli" / "__init__.py").write_text("def main():\n    from ..errors import X\n")
    mods = tool.modules(tmp_path)
    edges = tool.edges(mods)
    assert tool.upward(mods, edges) == ["errors (core) -> cli (cli)"]
    assert tool.circles(mods, edges) == [["cli", "errors"]]


FRAMEWORKS = ("torch", "mlx", "diffusers", "transformers", "safetensors.torch")
PURE = ("samplers", "models", "pixel", "rmbg", "sprites", "lora")


def _framework_imports(tool, path: Path):
    for node, lazy in tool.import_nodes(path):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            names = [node.module] if node.level == 0 and node.module else []
        for name in names:
            for fw in FRAMEWORKS:
                if name == fw or name.startswith(fw + "."):
                    yield fw, node.lineno, lazy


def test_frameworks_stay_in_engines(graph):
    """mlx only inside engines/; the framework-free libraries import no framework at all; nothing outside engines/
    imports a framework at module top (ComfyUI adapters may import torch inside a function, for ComfyUI's types)."""
    tool, mods, _ = graph
    bad = []
    for name, path in mods.items():
        area = name.split(".")[0]
        if area in ("engines", "benchmarks", "training", "tools"):
            continue
        for fw, line, lazy in _framework_imports(tool, path):
            rel = path.relative_to(REPO)
            if fw == "mlx":
                bad.append(f"{rel}:{line} imports mlx outside engines/")
            elif area in PURE:
                bad.append(f"{rel}:{line} imports {fw} in a framework-free library")
            elif not lazy:
                bad.append(f"{rel}:{line} imports {fw} at module top")
    assert bad == []
