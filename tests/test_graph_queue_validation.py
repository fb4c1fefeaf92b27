"""Bad widget values are refused when a prompt is queued, before anything runs (issue #22.9).

ComfyUI 0.3.64 calls a V3 node's ``validate_inputs`` while it validates ``POST /prompt``; it does not check V3
combo values against their options and lets NaN through its min/max checks. Every node of the pack checks its
values there (``nodes/validation.py``), with the same rule functions its ``execute`` uses, and ``spriteforge run``
applies the same rules before it runs anything. The real-ComfyUI side is in tests/test_comfy_sampling_comfyui.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from spriteforge.errors import SpriteForgeError
from spriteforge.execution import graph as G
from spriteforge.nodes import all_nodes
from spriteforge.nodes import _standalone_io as standalone
from spriteforge.nodes.validation import widget_spec

REPO = Path(__file__).resolve().parents[1]
DEMO = json.loads((REPO / "example_workflows" / "api" / "sprite_demo.json").read_text())
BAD = {  # node id in sprite_demo -> (input, bad value): the red-team's cases
    "3": ("sampler", "nope"),
    "8": ("dither", "sierra-9000"),
    "5": ("key_color", "#ff00zz"),
    "7": ("outline_color", "index:two"),
    "9": ("filename_prefix", "../outside/x"),
    "10": ("filename_prefix", "/abs/sheet"),
}


def _defaults(cls) -> dict:
    out = {}
    for inp in cls.define_schema().inputs:
        spec = widget_spec(inp)
        if spec and inp.default is not None and (spec[0] != "COMBO" or spec[1].get("options")):
            out[inp.id] = inp.default
    return out


@pytest.mark.parametrize("cls", all_nodes(strict=True), ids=lambda c: c.__name__)
def test_every_node_validates_its_inputs_when_queued(cls):
    # ComfyUI calls validate_inputs only when the class overrides ComfyNode's (first_real_override)
    assert cls.validate_inputs.__func__ is not standalone.ComfyNode.validate_inputs.__func__
    assert cls.validate_inputs(**_defaults(cls)) is True, "the defaults are valid"
    for inp in cls.define_schema().inputs:
        spec = widget_spec(inp)
        if spec is None:
            assert cls.validate_inputs(**{inp.id: None}) is True  # a link: checked when it runs
        elif spec[0] == "COMBO":
            msg = cls.validate_inputs(**{inp.id: "not-a-choice"})
            assert isinstance(msg, str) and msg.startswith(f"{inp.id}: ") and "not" in msg
        elif spec[0] == "FLOAT":
            msg = cls.validate_inputs(**{inp.id: math.nan})
            assert isinstance(msg, str) and "not a finite number" in msg, msg


@pytest.mark.parametrize("nid", sorted(BAD))
def test_the_red_team_values_are_refused_by_the_node(nid):
    name, value = BAD[nid]
    cls = {c.define_schema().node_id: c for c in all_nodes()}[DEMO[nid]["class_type"]]
    values = {k: v for k, v in DEMO[nid]["inputs"].items() if not isinstance(v, list)}
    assert cls.validate_inputs(**values) is True
    msg = cls.validate_inputs(**{**values, name: value})
    assert isinstance(msg, str) and msg.startswith(f"{name}: "), msg


def test_nan_cfg_is_refused_by_the_sampler():
    cls = {c.define_schema().node_id: c for c in all_nodes()}["SpriteForgeSampler"]
    values = {k: v for k, v in DEMO["3"]["inputs"].items() if not isinstance(v, list)}
    for bad in (math.nan, math.inf):
        assert "cfg: " in cls.validate_inputs(**{**values, "cfg": bad})


def test_spriteforge_run_refuses_them_before_running(tmp_path):
    from spriteforge.execution import runner
    from spriteforge.nodes.folders import Folders

    prompt = json.loads(json.dumps(DEMO))
    for nid, (name, value) in BAD.items():
        prompt[nid]["inputs"][name] = value
    prompt["3"]["inputs"]["cfg"] = math.nan
    folders = Folders(input=tmp_path / "in", output=tmp_path / "out")
    with pytest.raises(SpriteForgeError) as e:
        runner.prepare(prompt, folders)
    found = {(i["node_id"], i["input"]) for i in e.value.details["issues"]}
    assert found == {(nid, name) for nid, (name, _v) in BAD.items()} | {("3", "cfg")}
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*"))
