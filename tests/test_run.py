"""execution/runner.py and `spriteforge run`: in-process execution of API/graph workflows."""

from __future__ import annotations

import io as _io
import json
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest
from PIL import Image

from spriteforge.errors import SpriteForgeError
from spriteforge.nodes import _standalone_io as sio
from spriteforge.execution import graph as G
from spriteforge.execution.runner import Cache, needed_nodes, run_workflow

pytest.importorskip("torch")


@pytest.fixture
def dirs(tmp_path):
    inp = tmp_path / "input"
    inp.mkdir()
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[8:24, 8:24] = [200, 30, 30, 255]
    rgba[12:20, 12:20] = [30, 30, 200, 255]
    Image.fromarray(rgba).save(inp / "sprite.png")
    return inp, tmp_path / "out"


def _pixel_wf():
    return G.fill_defaults({
        "1": {"class_type": "LoadImage", "inputs": {"image": "sprite.png"}},
        "2": {"class_type": "SpriteForgePixelDownscale",
              "inputs": {"image": ["1", 0], "method": "box", "mode": "factor", "factor": 4, "width": 64, "height": 64}},
        "3": {"class_type": "SpriteForgePixelPaletteLoad", "inputs": {"name": "pico-8", "file": ""}},
        "4": {"class_type": "SpriteForgePixelQuantize",
              "inputs": {"image": ["2", 0], "palette": ["3", 0], "dither": "none", "strength": 1.0,
                         "protect_edges": True}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "sprites/hero"}},
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["3", 1]}},
        "7": {"class_type": "SpriteForgePixelUpscale", "inputs": {"image": ["1", 0], "factor": 2}},  # not needed
    })


def test_pixel_pipeline_runs_and_never_overwrites(dirs):
    inp, out = dirs
    res = run_workflow(_pixel_wf(), out_dir=out, input_dir=inp)
    assert "7" not in res.executed  # only what the output nodes need
    saved = out / "sprites" / "hero_00001_.png"
    assert saved in res.files and saved.exists()
    assert (out / "previews" / "preview_00001_.png").exists()
    im = np.asarray(Image.open(saved))
    assert im.shape[:2] == (8, 8)
    with Image.open(saved) as f:
        assert json.loads(f.info["prompt"])["5"]["class_type"] == "SaveImage"
    res2 = run_workflow(_pixel_wf(), out_dir=out, input_dir=inp, overrides=["5.filename_prefix=sprites/hero"])
    assert out / "sprites" / "hero_00002_.png" in res2.files  # counter, no overwrite
    assert res.outputs["5"]["images"][0] == {"filename": "hero_00001_.png", "subfolder": "sprites", "type": "output"}


def test_graph_format_and_cache(dirs):
    inp, out = dirs
    graph = G.api_to_graph(_pixel_wf())
    cache = Cache()
    events = []
    res = run_workflow(graph, out_dir=out, input_dir=inp, cache=cache, on_event=lambda k, d: events.append((k, d)))
    assert set(res.executed) == {"1", "2", "3", "4", "5", "6"}
    assert [e[0] for e in events].count("executing") == 6 and events[-1][0] == "execution_success"
    with Image.open(res.files[0]) as f:
        assert "workflow" in f.info  # the graph goes into the PNG like in ComfyUI
    res2 = run_workflow(graph, out_dir=out, input_dir=inp, cache=cache, overrides=["2.factor=2"])
    assert set(res2.cached) == {"1", "3", "6"} and set(res2.executed) == {"2", "4", "5"}


class _Async(sio.ComfyNode):
    @classmethod
    def define_schema(cls):
        return sio.Schema(node_id="TAsync", inputs=[sio.Int.Input("x", default=1, min=0, max=10)],
                          outputs=[sio.Int.Output()])

    @classmethod
    async def execute(cls, x):
        return sio.NodeOutput(x * 2)


class _Show(sio.ComfyNode):
    @classmethod
    def define_schema(cls):
        return sio.Schema(node_id="TShow", inputs=[sio.Int.Input("v", default=0)],
                          hidden=[sio.Hidden.unique_id], is_output_node=True)

    @classmethod
    def execute(cls, v):
        if v > 10:
            raise SpriteForgeError("DIMENSION_LIMIT", f"{v} is too big. Lower it below 10.")
        if v == 7:
            raise ValueError("seven is unlucky")
        return sio.NodeOutput(ui={"text": [f"{cls.hidden.unique_id}:{v}"]})


def test_async_execute_hidden_and_errors(tmp_path):
    classes = {"TAsync": _Async, "TShow": _Show}
    wf = {"1": {"class_type": "TAsync", "inputs": {"x": 3}}, "2": {"class_type": "TShow", "inputs": {"v": ["1", 0]}}}
    res = run_workflow(wf, classes=classes, out_dir=tmp_path)
    assert res.outputs == {"2": {"text": ["2:6"]}}
    with pytest.raises(SpriteForgeError) as ei:
        run_workflow(wf, classes=classes, out_dir=tmp_path, overrides=["1.x=6"])
    assert ei.value.code == "DIMENSION_LIMIT" and ei.value.message.startswith("node 2 (TShow): 12 is too big")
    with pytest.raises(SpriteForgeError) as ei:
        run_workflow({"2": {"class_type": "TShow", "inputs": {"v": 7}}}, classes=classes, out_dir=tmp_path)
    assert "node 2 (TShow)" in ei.value.message and "seven is unlucky" in ei.value.message
    with pytest.raises(SpriteForgeError) as ei:
        run_workflow(wf, classes=classes, out_dir=tmp_path, overrides=["1.x=0", "1.x=-1"])
    assert "node 1 (TAsync), input 'x': -1 is below the minimum 0. Set it to at least 0." in ei.value.message


def test_cycle_is_reported():
    info = G.object_info({"TAsync": _Async, "TShow": _Show})
    p = {"1": {"class_type": "TAsync", "inputs": {"x": ["2", 0]}}, "2": {"class_type": "TAsync", "inputs": {"x": ["1", 0]}},
         "3": {"class_type": "TShow", "inputs": {"v": ["2", 0]}}}
    with pytest.raises(SpriteForgeError, match="cycle"):
        needed_nodes(p, info)


def _cli(*argv):
    from spriteforge.cli.main import main

    out, err = _io.StringIO(), _io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def test_cli_run(dirs, tmp_path):
    inp, out = dirs
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(G.api_to_graph(_pixel_wf())))
    rc, stdout, stderr = _cli("run", str(wf), "--input", str(inp), "--out", str(out), "--set", "5.filename_prefix=cli")
    assert rc == 0, stderr
    assert str(out / "cli_00001_.png") in stdout
    assert "[1/6] node 1 (LoadImage)" in stderr and "finished" in stderr
    rc, stdout, stderr = _cli("run", str(wf), "--input", str(inp), "--print-api")
    assert rc == 0 and json.loads(stdout)["2"]["class_type"] == "SpriteForgePixelDownscale"
    rc, stdout, stderr = _cli("run", str(wf), "--input", str(inp), "--out", str(out), "--set", "2.factor=0")
    assert rc == 19 and "BAD_INPUT: node 2 (SpriteForgePixelDownscale), input 'factor': 0 is below the minimum 1." in stderr
    rc, stdout, stderr = _cli("run", str(wf), "--input", str(inp), "--out", str(out), "--set", "1.image=nope.png")
    assert rc == 19 and "input 'image': \"nope.png\" is not one of the choices: \"sprite.png\"" in stderr


def test_engine_info_runs():
    res = run_workflow({"1": {"class_type": "SpriteForgeEngineInfo", "inputs": {"as_json": True}}})
    assert "devices" in json.loads(res.outputs["1"]["text"][0])


class _Many(sio.ComfyNode):
    @classmethod
    def define_schema(cls):
        return sio.Schema(node_id="TMany", inputs=[sio.Int.Input("n", default=3, min=1, max=10)],
                          outputs=[sio.Int.Output(is_output_list=True)])

    @classmethod
    def execute(cls, n):
        return sio.NodeOutput(list(range(n)))


class _Collect(sio.ComfyNode):
    @classmethod
    def define_schema(cls):
        return sio.Schema(node_id="TCollect", inputs=[sio.Int.Input("v", default=0)], is_input_list=True,
                          is_output_node=True)

    @classmethod
    def execute(cls, v):
        return sio.NodeOutput(ui={"text": [repr(v)]})


def test_output_lists_map_over_normal_nodes(tmp_path):
    """ComfyUI's list semantics: a list output runs the next node once per item; is_input_list sees the list."""
    classes = {"TMany": _Many, "TAsync": _Async, "TShow": _Show, "TCollect": _Collect}
    wf = {"1": {"class_type": "TMany", "inputs": {"n": 3}},
          "2": {"class_type": "TAsync", "inputs": {"x": ["1", 0]}},
          "3": {"class_type": "TShow", "inputs": {"v": ["2", 0]}},
          "4": {"class_type": "TCollect", "inputs": {"v": ["2", 0]}}}
    res = run_workflow(wf, classes=classes, out_dir=tmp_path)
    assert res.outputs["3"] == {"text": ["3:0", "3:2", "3:4"]}
    assert res.outputs["4"] == {"text": ["[0, 2, 4]"]}


def test_run_workflow_takes_a_path_object_and_restores_the_models_root(tmp_path):
    import json as _json

    from spriteforge import paths
    from spriteforge.execution.runner import run_workflow

    wf = tmp_path / "wf.json"
    wf.write_text(_json.dumps({"1": {"class_type": "SpriteForgeEngineInfo", "inputs": {"as_json": False}}}))
    before = list(paths._models_root)
    res = run_workflow(wf, out_dir=tmp_path / "out", models_dir=tmp_path)
    assert "1" in res.outputs
    assert paths._models_root == before
