"""execution/graph.py: schema -> object_info, graph -> API conversion, validation, overrides."""

from __future__ import annotations

import copy
import json

import pytest

from spriteforge.errors import SpriteForgeError
from spriteforge.nodes import _standalone_io as sio
from spriteforge.execution import graph as G
from spriteforge.nodes import node_map


@pytest.fixture(scope="module")
def info():
    return G.object_info()


# ----------------------------------------------------------------------------- a few synthetic nodes

class _Src(sio.ComfyNode):
    @classmethod
    def define_schema(cls):
        return sio.Schema(node_id="TSrc", category="t", inputs=[
            sio.Int.Input("seed", default=0, min=0, max=100, tooltip="s"),
            sio.Int.Input("steps", default=4, min=1, max=50, tooltip="s", control_after_generate=True),
            sio.Float.Input("cfg", default=1.0, min=0.0, max=10.0, tooltip="c"),
            sio.Combo.Input("mode", options=["a", "b"], default="a", tooltip="m"),
            sio.String.Input("text", default="", multiline=True, tooltip="t"),
            sio.Boolean.Input("flag", default=False, tooltip="f"),
        ], outputs=[sio.Image.Output(display_name="image"), sio.Custom("SF_PALETTE").Output(display_name="palette")])

    @classmethod
    def execute(cls, **kw):
        return sio.NodeOutput(kw, None)


class _Sink(sio.ComfyNode):
    @classmethod
    def define_schema(cls):
        return sio.Schema(node_id="TSink", category="t", inputs=[
            sio.Image.Input("images", tooltip="i"),
            sio.Custom("SF_PALETTE").Input("palette", optional=True, tooltip="p"),
            sio.Int.Input("n", default=1, min=1, max=8, tooltip="n"),
        ], is_output_node=True)

    @classmethod
    def execute(cls, **kw):
        return sio.NodeOutput(ui={"text": ["ok"]})


@pytest.fixture
def tinfo():
    return G.object_info({"TSrc": _Src, "TSink": _Sink})


def test_object_info_shape_matches_comfyui(info):
    # what a real ComfyUI serves for this node (GET /object_info/SpriteForgeEngineInfo), hidden inputs aside
    e = info["SpriteForgeEngineInfo"]
    assert e["input"]["required"]["as_json"] == [
        "BOOLEAN", {"tooltip": "Output the full report as JSON instead of a summary.", "default": False}]
    assert e["input_order"]["required"] == ["as_json"]
    assert e["output"] == ["STRING"] and e["output_name"] == ["report"] and e["output_is_list"] == [False]
    assert e["output_node"] is True and e["category"] == "SpriteForge/utils"
    for name, d in info.items():
        json.dumps(d)  # plain JSON
        assert d["name"] == name
        for cat in ("required", "optional"):
            for inp, spec in d["input"].get(cat, {}).items():
                assert isinstance(spec[0], str) and isinstance(spec[1], dict), (name, inp)


def test_every_pack_node_describes_and_validates_its_defaults(info):
    """Each of our nodes' default widget values passes its own validation (combo defaults are options...)."""
    for name in node_map():
        d = info[name]
        for inp, cat, typ, opts in G.ordered_inputs(d):
            if G.is_widget(typ, opts) and "default" in opts:
                options = G.combo_options(typ, opts)
                if options == []:
                    continue  # a model list with no models installed
                _, kind, msg = G.check_value(typ, opts, opts["default"])
                assert kind is None, f"{name}.{inp}: {msg}"


def test_widget_slots_follow_frontend(tinfo, info):
    # seed (by name) and steps (explicit) get a control_after_generate companion value
    assert G.widget_slots(tinfo["TSrc"]) == ["seed", None, "steps", None, "cfg", "mode", "text", "flag"]
    assert G.widget_slots(tinfo["TSink"]) == ["n"]
    assert G.widget_slots(info["LoadImage"]) == ["image", None]  # the upload button value


def _graph():
    """A graph as the editor saves it: Note, Reroute, a PrimitiveNode, a muted and a bypassed node."""
    return {
        "last_node_id": 9, "last_link_id": 9, "version": 0.4, "groups": [], "config": {}, "extra": {},
        "nodes": [
            {"id": 1, "type": "TSrc", "mode": 0, "inputs": [
                {"name": "seed", "type": "INT", "widget": {"name": "seed"}, "link": 5}],
             "outputs": [{"name": "image", "type": "IMAGE", "links": [1]}, {"name": "palette", "type": "SF_PALETTE", "links": [2]}],
             "widgets_values": [3, "randomize", 7, "fixed", 2.5, "b", "hello", True]},
            {"id": 2, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*", "link": 1}],
             "outputs": [{"name": "", "type": "IMAGE", "links": [3]}]},
            {"id": 3, "type": "TSink", "mode": 0, "inputs": [
                {"name": "images", "type": "IMAGE", "link": 3}, {"name": "palette", "type": "SF_PALETTE", "link": 2}],
             "outputs": [], "widgets_values": [4], "title": "My sink"},
            {"id": 4, "type": "Note", "mode": 0, "inputs": [], "outputs": [], "widgets_values": ["explains the knobs"]},
            {"id": 5, "type": "PrimitiveNode", "mode": 0, "inputs": [],
             "outputs": [{"name": "INT", "type": "INT", "links": [5], "widget": {"name": "seed"}}],
             "widgets_values": [42, "fixed"]},
            {"id": 6, "type": "TSink", "mode": 2, "inputs": [{"name": "images", "type": "IMAGE", "link": None}],
             "outputs": [], "widgets_values": [1]},
            {"id": 7, "type": "TSink", "mode": 0, "inputs": [{"name": "images", "type": "IMAGE", "link": 8}],
             "outputs": [], "widgets_values": [2]},
            {"id": 8, "type": "TBypassed", "mode": 4, "inputs": [{"name": "image", "type": "IMAGE", "link": 7}],
             "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [8]}], "widgets_values": []},
            {"id": 9, "type": "TSrc", "mode": 0, "inputs": [],
             "outputs": [{"name": "image", "type": "IMAGE", "links": [7]}], "widgets_values": [1, "fixed", 1]},
        ],
        "links": [[1, 1, 0, 2, 0, "IMAGE"], [2, 1, 1, 3, 1, "SF_PALETTE"], [3, 2, 0, 3, 0, "IMAGE"],
                  {"id": 5, "origin_id": 5, "origin_slot": 0, "target_id": 1, "target_slot": 0, "type": "INT"},
                  [7, 9, 0, 8, 0, "IMAGE"], [8, 8, 0, 7, 0, "IMAGE"]],
    }


def test_graph_to_api_like_the_editor(tinfo):
    api = G.graph_to_api(_graph(), tinfo)
    assert set(api) == {"1", "3", "7", "9"}  # no Note/Reroute/Primitive, no muted or bypassed node
    assert api["1"]["inputs"] == {"seed": 42, "steps": 7, "cfg": 2.5, "mode": "b", "text": "hello", "flag": True}
    assert api["3"]["inputs"] == {"n": 4, "images": ["1", 0], "palette": ["1", 1]}
    assert api["3"]["_meta"]["title"] == "My sink"
    assert api["7"]["inputs"]["images"] == ["9", 0]  # through the bypassed node
    assert api["9"]["inputs"] == {"seed": 1, "steps": 1, "cfg": 1.0, "mode": "a", "text": "", "flag": False}
    assert G.validate_prompt(api, tinfo) == []


def test_graph_to_api_unknown_type_is_readable(tinfo):
    g = _graph()
    g["nodes"][2]["type"] = "KSamplerAdvancedPlus"
    with pytest.raises(SpriteForgeError) as ei:
        G.graph_to_api(g, tinfo)
    assert "node 3 (KSamplerAdvancedPlus)" in str(ei.value) and "not known" in str(ei.value)
    assert "3" not in G.graph_to_api(g, tinfo, strict=False)


def test_api_to_graph_round_trip(info):
    api = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
        "2": {"class_type": "SpriteForgePixelPaletteExtract", "inputs": {"image": ["1", 0], "colors": 8,
                                                                        "method": "octree", "seed": 5, "mask": ["1", 1]}},
        "3": {"class_type": "SpriteForgePixelQuantize", "inputs": {"image": ["1", 0], "palette": ["2", 0],
                                                                  "dither": "none", "strength": 0.5,
                                                                  "protect_edges": False}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "x"}},
    }
    g = G.api_to_graph(api, info)
    assert g["nodes"][1]["widgets_values"] == [8, "octree", 5, "fixed"]
    back = G.graph_to_api(g, info, titles=False)
    assert back == {k: {"inputs": v["inputs"], "class_type": v["class_type"]} for k, v in api.items()}


def test_validation_messages(tinfo):
    ok = {"1": {"class_type": "TSrc", "inputs": {"seed": "7", "steps": 3.0, "cfg": 1, "mode": "a", "text": 5, "flag": 1}},
          "2": {"class_type": "TSink", "inputs": {"images": ["1", 0], "n": 2}}}
    p = copy.deepcopy(ok)
    assert G.validate_prompt(p, tinfo) == []
    assert p["1"]["inputs"] == {"seed": 7, "steps": 3, "cfg": 1.0, "mode": "a", "text": "5", "flag": True}

    bad = copy.deepcopy(ok)
    bad["1"]["inputs"].update(steps=0, cfg=11.5, mode="c", seed=2.5)
    del bad["1"]["inputs"]["flag"]
    bad["2"]["inputs"].update(images=["1", 1], palette=["9", 0])
    texts = [str(i) for i in G.validate_prompt(bad, tinfo)]
    assert "node 1 (TSrc), input 'steps': 0 is below the minimum 1. Set it to at least 1." in texts
    assert "node 1 (TSrc), input 'cfg': 11.5 is above the maximum 10.0. Set it to at most 10.0." in texts
    assert any(t.startswith("node 1 (TSrc), input 'mode': \"c\" is not one of the choices: \"a\", \"b\"") for t in texts)
    assert any("input 'seed': 2.5 is not a whole number" in t for t in texts)
    assert any("input 'flag': required input is missing" in t for t in texts)
    assert any("input 'images': expects IMAGE but is linked to output 1 'palette' (SF_PALETTE)" in t for t in texts)
    assert any("input 'palette': it is linked to node 9, which is not in the workflow" in t for t in texts)

    with pytest.raises(SpriteForgeError) as ei:
        G.check_prompt(bad, tinfo)
    assert ei.value.code == "BAD_INPUT" and len(ei.value.details["issues"]) == len(texts)

    no_out = {"1": ok["1"]}
    assert [i.kind for i in G.validate_prompt(copy.deepcopy(no_out), tinfo)] == ["prompt_no_outputs"]
    unknown = {"1": {"class_type": "Nope", "inputs": {}}}
    assert "missing_node_type" in [i.kind for i in G.validate_prompt(unknown, tinfo)]
    wrong_slot = copy.deepcopy(ok)
    wrong_slot["2"]["inputs"]["images"] = ["1", 5]
    assert any("has only 2 output(s)" in str(i) for i in G.validate_prompt(wrong_slot, tinfo))
    value_for_socket = copy.deepcopy(ok)
    value_for_socket["2"]["inputs"]["images"] = "picture.png"
    assert any("must be connected" in str(i) for i in G.validate_prompt(value_for_socket, tinfo))


def test_types_match():
    assert G.types_match("IMAGE", "IMAGE") and G.types_match("IMAGE", "*") and G.types_match("INT,FLOAT", "FLOAT")
    assert not G.types_match("MASK", "IMAGE") and G.types_match("STRING", ["a", "b"]) is False


def test_overrides_and_prompt_input(tinfo):
    p = {"1": {"class_type": "TSrc", "inputs": {"seed": 1}, "_meta": {"title": "Source"}},
         "12": {"class_type": "SpriteForgeEncodePrompt", "inputs": {"positive": "a"}},
         "5": {"class_type": "SpriteForgeEncodePrompt", "inputs": {"positive": "b"}}}
    G.apply_overrides(p, ["1.seed=7", "Source.text=\"x y\"", "1.mode=b", "12.positive=a knight, red"], tinfo)
    assert p["1"]["inputs"] == {"seed": 7, "text": "x y", "mode": "b"}
    assert p["12"]["inputs"]["positive"] == "a knight, red"
    with pytest.raises(SpriteForgeError, match="no input 'sede'"):
        G.apply_overrides(p, ["1.sede=3"], tinfo)
    with pytest.raises(SpriteForgeError, match=r"no node '99'.*1 \(TSrc\)"):
        G.apply_overrides(p, ["99.seed=3"], tinfo)
    with pytest.raises(SpriteForgeError, match="NODE_ID.INPUT=VALUE"):
        G.apply_overrides(p, ["seed"], tinfo)
    assert G.find_prompt_input(p) == ("5", "positive")
    assert G.find_prompt_input(p, "12.positive") == ("12", "positive")
    with pytest.raises(SpriteForgeError, match="--prompt-input"):
        G.find_prompt_input({"1": p["1"]})


def test_load_workflow_formats(tmp_path, tinfo):
    api = G.graph_to_api(_graph(), tinfo)
    f = tmp_path / "g.json"
    f.write_text(json.dumps(_graph()))
    assert G.load_workflow(str(f), tinfo)[0] == api
    assert G.load_workflow({"prompt": api}, tinfo) == (api, None)
    with pytest.raises(SpriteForgeError, match="neither"):
        G.load_workflow({"a": 1}, tinfo)
    with pytest.raises(SpriteForgeError, match="does not exist"):
        G.load_workflow(str(tmp_path / "missing.json"), tinfo)


def test_format_comfyui_node_errors():
    node_errors = {"5": {"errors": [
        {"type": "value_smaller_than_min", "message": "Value 0 smaller than min of 1", "details": "steps",
         "extra_info": {"input_name": "steps", "input_config": ["INT", {"min": 1}], "received_value": 0}},
        {"type": "required_input_missing", "message": "Required input is missing", "details": "model",
         "extra_info": {"input_name": "model"}}], "dependent_outputs": ["9"], "class_type": "SpriteForgeSampler"}}
    lines = G.format_node_errors(node_errors)
    assert lines[0] == "node 5 (SpriteForgeSampler), input 'steps': 0 is below the minimum 1. Set it to at least 1."
    assert lines[1].startswith("node 5 (SpriteForgeSampler), input 'model': required input is missing")
    assert G.format_node_errors({}, error={"message": "Prompt has no outputs", "details": ""}) == ["Prompt has no outputs"]
