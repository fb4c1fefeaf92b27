"""Keep the shipped workflows honest (workflows/*.json; skipped while there are none).

For every workflow: every node type exists, every widget value passes the node's validation,
links type-check, the graph file and its API twin (``NAME.api.json``) agree through the
converter, and -- with tiny real-format models -- it runs end to end.
The tiny-model run needs ``SPRITEFORGE_WORKFLOW_MODELS`` (a models root) or a ``tiny_models``
fixture providing one; without either it is skipped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from spriteforge.nodes import graph as G

WF = Path(__file__).resolve().parents[1] / "workflows"
GRAPHS = sorted(p for p in WF.glob("*.json") if not p.name.endswith(".api.json"))
APIS = sorted(WF.glob("*.api.json"))
ALL = GRAPHS + APIS


def _load(p: Path) -> dict:
    return json.loads(p.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def info():
    return G.object_info()


def _models_present(info) -> bool:
    # model-list combos are empty until models are installed: their values cannot be checked then
    return bool(os.environ.get("SPRITEFORGE_WORKFLOW_MODELS"))


@pytest.mark.skipif(not ALL, reason="no workflows shipped yet")
@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_workflow_validates(path, info):
    data = _load(path)
    if path.name.endswith(".api.json"):
        assert G.is_api_format(data), f"{path.name} must be API format"
        prompt = data
    else:
        assert G.is_graph_format(data), f"{path.name} must be graph format (the editor opens it)"
        for n in data["nodes"]:
            assert n["type"] in info or n["type"] in G.VIRTUAL_NODES, f"{path.name}: unknown node type {n['type']}"
            assert "pos" in n, f"{path.name}: node {n['id']} has no position"
        prompt = G.graph_to_api(data, info)
    issues = G.validate_prompt(json.loads(json.dumps(prompt)), info)
    if not _models_present(info):
        issues = [i for i in issues if not (i.kind == "value_not_in_list" and "there are no choices" in i.message)]
    assert not issues, "\n".join(map(str, issues))


@pytest.mark.skipif(not GRAPHS, reason="no workflows shipped yet")
@pytest.mark.parametrize("path", GRAPHS, ids=lambda p: p.name)
def test_graph_and_api_agree(path, info):
    twin = path.with_name(path.stem + ".api.json")
    assert twin.exists(), f"{path.name} has no API twin {twin.name}"
    converted = G.graph_to_api(_load(path), info, titles=False)
    api = {k: {"inputs": v["inputs"], "class_type": v["class_type"]} for k, v in _load(twin).items()}
    assert converted == api
    assert path.with_suffix(".jpg").exists(), f"{path.name} has no .jpg thumbnail"


@pytest.mark.slow
@pytest.mark.skipif(not APIS, reason="no workflows shipped yet")
@pytest.mark.parametrize("path", APIS, ids=lambda p: p.name)
def test_workflow_runs_end_to_end(path, tmp_path, request):
    from spriteforge.runner import run_workflow

    models = os.environ.get("SPRITEFORGE_WORKFLOW_MODELS")
    if not models:
        try:
            models = request.getfixturevalue("tiny_models_root")
        except pytest.FixtureLookupError:
            pytest.skip("no tiny models root (set SPRITEFORGE_WORKFLOW_MODELS or provide a tiny_models_root fixture)")
    inputs = WF / "input"
    res = run_workflow(path, models_dir=models, out_dir=tmp_path / "out", input_dir=inputs if inputs.is_dir() else None)
    assert res.outputs, "the workflow produced no output"
