"""Keep the shipped workflows honest (example_workflows/*.json; skipped while there are none).

For every workflow: every node type exists, every widget value passes the node's validation,
links type-check, the graph file and its API twin (``api/NAME.json``) agree through the
converter, and -- with tiny real-format models -- it runs end to end.
The end-to-end run uses ``SPRITEFORGE_WORKFLOW_MODELS`` (a models root with real models: every
workflow runs as shipped) or else the ``tiny_models_root`` fixture of ``test_workflows_e2e``
(tiny real-format models under the release file names; each workflow runs once per session at
small sizes, shared with the detailed output checks there); without either it is skipped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from spriteforge.execution import graph as G
from spriteforge.execution.core_info import CORE_INFO, with_core

try:  # the tiny models root and the shared small runs (needs torch + diffusers + transformers)
    from spriteforge.tests.test_workflows_e2e import tiny_models_root, workflow_runs  # noqa: F401
except pytest.skip.Exception:  # pragma: no cover - its importorskip of the ML stack (our own modules must import)
    pass

WF = Path(__file__).resolve().parents[1] / "example_workflows"
GRAPHS = sorted(WF.glob("*.json"))
APIS = sorted((WF / "api").glob("*.json"))
ALL = GRAPHS + APIS


def _load(p: Path) -> dict:
    return json.loads(p.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def info():
    from spriteforge import paths

    from spriteforge.nodes.folders import Folders

    # the model dropdowns list that root's files; LoadImage lists the shipped example images
    with paths.models_root(os.environ.get("SPRITEFORGE_WORKFLOW_MODELS")):
        # with ComfyUI's descriptions of the core nodes the SDXL workflow uses (they run only in ComfyUI)
        return with_core(G.object_info(folders=Folders(input=WF / "input")))


def _models_present(info) -> bool:
    # model-list combos are empty until models are installed: their values cannot be checked then
    return bool(os.environ.get("SPRITEFORGE_WORKFLOW_MODELS"))


def _model_list_empty(info, issue) -> bool:
    """The combo has no user models yet: an empty list, or only placeholders such as "(from model)" and the
    built-in demo model (which is always there)."""
    if "there are no choices" in issue.message:
        return True
    _c, typ, opts = G.input_spec(info.get(issue.class_type) or {}, issue.input)
    options = G.combo_options(typ, opts) or []
    from spriteforge.resolve import DEMO

    return all(str(o).startswith("(") or o == DEMO for o in options)


@pytest.mark.skipif(not ALL, reason="no workflows shipped yet")
@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_workflow_validates(path, info):
    data = _load(path)
    if path.parent.name == "api":
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
        issues = [i for i in issues if not (i.kind == "value_not_in_list" and _model_list_empty(info, i))]
    assert not issues, "\n".join(map(str, issues))


@pytest.mark.skipif(not GRAPHS, reason="no workflows shipped yet")
@pytest.mark.parametrize("path", GRAPHS, ids=lambda p: p.name)
def test_graph_and_api_agree(path, info):
    twin = WF / "api" / path.name
    assert twin.exists(), f"{path.name} has no API twin {twin.name}"
    converted = G.graph_to_api(_load(path), info, titles=False)
    api = {k: {"inputs": v["inputs"], "class_type": v["class_type"]} for k, v in _load(twin).items()}
    assert converted == api
    assert path.with_suffix(".jpg").exists(), f"{path.name} has no .jpg thumbnail"


@pytest.mark.slow
@pytest.mark.skipif(not APIS, reason="no workflows shipped yet")
@pytest.mark.parametrize("path", APIS, ids=lambda p: p.name)
def test_workflow_runs_end_to_end(path, tmp_path, request):
    from spriteforge.execution.runner import run_workflow

    core = sorted({n["class_type"] for n in _load(path).values()} & set(CORE_INFO))
    if core:
        pytest.skip(f"uses ComfyUI's core nodes {core}: runs in a real ComfyUI (tests/test_comfy_sampling_comfyui.py)")
    models = os.environ.get("SPRITEFORGE_WORKFLOW_MODELS")
    if not models:
        try:
            runs = request.getfixturevalue("workflow_runs")
        except pytest.FixtureLookupError:
            pytest.skip("no tiny models root (set SPRITEFORGE_WORKFLOW_MODELS or provide a tiny_models_root fixture)")
        res = runs(path.stem)  # tiny models, small sizes (see test_workflows_e2e)
        assert res["outputs"], "the workflow produced no output"
        return
    inputs = WF / "input"
    res = run_workflow(str(path), models_dir=models, out_dir=tmp_path / "out",
                       input_dir=inputs if inputs.is_dir() else None)
    assert res.outputs, "the workflow produced no output"
