"""Bad workflow files, fuzzed: random JSON, wrong types, cycles, missing links, unknown nodes, broken graphs.

Every case goes through what ``spriteforge run`` does (:func:`spriteforge.execution.runner.run_workflow`: reading the file,
the graph -> API converter, ``--set`` overrides, validation, execution of the real pixel nodes on a real input
image) and must end in a :class:`SpriteForgeError` with a stable code or a valid result: no other exception, nothing
written outside the output folder, no input or earlier output file changed. Each test runs the same cases in every
clone and on every run (an explicit seed, :mod:`spriteforge.tests.fuzzing`); each ``@example`` is a bug a fuzzer
found (kept as a regression).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from PIL import Image

from spriteforge.errors import CODES, SpriteForgeError
from spriteforge.execution import graph as G
from spriteforge.nodes.folders import Folders
from spriteforge.execution.runner import needed_nodes, run_workflow
from spriteforge.tests.fuzzing import fuzz

pytest.importorskip("torch")

_ROOT = Path(tempfile.mkdtemp(prefix="sf-fuzz-wf-"))
INPUT = _ROOT / "input"
OUT = _ROOT / "out"
INPUT.mkdir()
_rgba = np.zeros((16, 16, 4), np.uint8)
_rgba[4:12, 4:12] = [200, 30, 30, 255]
Image.fromarray(_rgba).save(INPUT / "sprite.png")
(INPUT / "not_an_image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 10)
INFO = G.object_info(folders=Folders(input=INPUT, output=OUT))  # LoadImage's choices: the input folder's files
NODE_TYPES = sorted(INFO)


def _pixel_wf() -> dict:
    return G.fill_defaults({
        "1": {"class_type": "LoadImage", "inputs": {"image": "sprite.png"}},
        "2": {"class_type": "SpriteForgePixelDownscale",
              "inputs": {"image": ["1", 0], "method": "box", "mode": "factor", "factor": 2}},
        "3": {"class_type": "SpriteForgePixelPaletteLoad", "inputs": {"name": "pico-8", "file": ""}},
        "4": {"class_type": "SpriteForgePixelQuantize",
              "inputs": {"image": ["2", 0], "palette": ["3", 0], "dither": "none", "strength": 1.0}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "fuzz/img"}},
        "6": {"class_type": "SpriteForgePixelSaveIndexed",
              "inputs": {"images": ["4", 0], "palette": ["3", 0], "mask": ["2", 1], "filename_prefix": "fuzz/idx"}},
    })


def _tree() -> dict[str, str]:
    """Every file under the fuzz root -> sha256 (the input folder, the output folder, anything else)."""
    out = {}
    for p in _ROOT.rglob("*"):
        if p.is_file():
            out[str(p.relative_to(_ROOT))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _validate(workflow, overrides):
    """What run_workflow does before executing (read, convert, --set, validate, order), with the cached INFO."""
    prompt, _graph = G.load_workflow(workflow, INFO)
    G.apply_overrides(prompt, overrides, INFO)
    G.check_prompt(prompt, INFO, only_needed=True)
    needed_nodes(prompt, INFO)


def _run_case(workflow, overrides=()):
    """Run one case; returns the RunResult or the SpriteForgeError; fails on anything else."""
    before = _tree()
    cwd_before = set(os.listdir(os.getcwd()))
    try:
        _validate(workflow, overrides)  # the runner's own first steps, without re-describing every node
        res = run_workflow(workflow, out_dir=OUT, input_dir=INPUT, overrides=overrides)
    except SpriteForgeError as exc:
        assert exc.code in CODES and exc.message
        res = exc
    after = _tree()
    for name, digest in before.items():  # nothing changed or removed
        assert after.get(name) == digest, f"{name} was changed or removed"
    for name in set(after) - set(before):  # new files only in the output folder
        assert name.startswith("out" + os.sep), f"{name} was written outside the output folder"
    assert set(os.listdir(os.getcwd())) == cwd_before, "a file was written into the working directory"
    return res


# --------------------------------------------------------------------------- strategies

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
_json = st.recursive(_scalars, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                     st.dictionaries(st.text(max_size=6), kids, max_size=4)),
                     max_leaves=16)
_ids = st.sampled_from(["1", "2", "3", "4", "5", "6", "7", "99", "", "x"])
_links = st.builds(lambda a, b: [a, b], _ids, st.one_of(st.integers(-2, 6), st.booleans(), st.text(max_size=2)))
_values = st.one_of(_json, _links, st.sampled_from(["sprite.png", "not_an_image.png", "../sprite.png",
                                                    "/etc/passwd", "pico-8", "box", "factor", "none"]))


@st.composite
def _mutated(draw):
    """The pixel workflow with a few random edits: values, links (cycles too), class types, removed nodes."""
    wf = _pixel_wf()
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["value", "link", "drop_input", "drop_node", "class", "cycle", "inputs", "node"]))
        nid = draw(st.sampled_from(sorted(wf) or ["1"]))
        node = wf.get(nid)
        if not isinstance(node, dict) or not isinstance(node.get("inputs"), dict):
            continue
        names = sorted(node["inputs"]) or ["x"]
        name = draw(st.sampled_from(names + ["unknown_input"]))
        if op == "value":
            node["inputs"][name] = draw(_values)
        elif op == "link":
            node["inputs"][name] = draw(_links)
        elif op == "drop_input":
            node["inputs"].pop(name, None)
        elif op == "drop_node":
            wf.pop(nid)
        elif op == "class":
            node["class_type"] = draw(st.one_of(st.sampled_from(NODE_TYPES), st.text(max_size=8), _scalars))
        elif op == "cycle":  # make an upstream node depend on this one
            up = [str(v[0]) for v in node["inputs"].values() if isinstance(v, list) and len(v) == 2]
            if up and up[0] in wf and isinstance(wf[up[0]], dict):
                target = wf[up[0]]
                if not isinstance(target.get("inputs"), dict):  # an earlier mutation broke it: give it inputs
                    target["inputs"] = {}
                tname = draw(st.sampled_from(sorted(target["inputs"]) or ["image"]))
                target["inputs"][tname] = [nid, draw(st.integers(0, 1))]
        elif op == "inputs":
            node["inputs"] = draw(_json)
        elif op == "node":
            wf[nid] = draw(_json)
    return wf


@st.composite
def _random_api(draw):
    """A random prompt over the real node types (and some unknown ones) with random links and values."""
    n = draw(st.integers(1, 6))
    wf = {}
    for i in range(1, n + 1):
        ctype = draw(st.one_of(st.sampled_from(NODE_TYPES), st.just("NoSuchNode")))
        desc = INFO.get(ctype) or {}
        inputs = {}
        for name, _cat, typ, opts in G.ordered_inputs(desc):
            if draw(st.integers(0, 9)) == 0:
                continue
            if G.is_widget(typ, opts) and draw(st.booleans()):
                default = opts.get("default")
                choices = G.combo_options(typ, opts) or []
                inputs[name] = draw(st.one_of(st.just(default), st.sampled_from(choices or [default]), _scalars))
            else:
                inputs[name] = [str(draw(st.integers(1, n + 1))), draw(st.integers(0, 3))]
        wf[str(i)] = {"class_type": ctype, "inputs": inputs}
    return wf


@st.composite
def _graph(draw):
    """The editor's graph format: the pixel workflow's graph with random damage, or random node/link tables."""
    g = G.api_to_graph(_pixel_wf())
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["node_field", "link", "widgets", "drop_link", "node", "links", "reroute_loop",
                                   "mode", "slot"]))
        if not isinstance(g.get("nodes"), list) or not g["nodes"] or not isinstance(g.get("links"), list):
            break
        k = draw(st.integers(0, len(g["nodes"]) - 1))
        node = g["nodes"][k]
        if op == "node_field" and isinstance(node, dict):
            node[draw(st.sampled_from(["id", "type", "inputs", "outputs", "widgets_values", "mode"]))] = draw(_json)
        elif op == "link" and g["links"]:
            j = draw(st.integers(0, len(g["links"]) - 1))
            link = list(g["links"][j]) if isinstance(g["links"][j], (list, tuple)) else [0]
            if not link:
                continue
            link[draw(st.integers(0, len(link) - 1))] = draw(st.one_of(_scalars, st.integers(0, 8)))
            g["links"][j] = link
        elif op == "widgets" and isinstance(node, dict):
            node["widgets_values"] = draw(st.lists(_scalars, max_size=8))
        elif op == "drop_link" and g["links"]:
            g["links"].pop(draw(st.integers(0, len(g["links"]) - 1)))
        elif op == "node":
            g["nodes"][k] = draw(_json)
        elif op == "links":
            g["links"] = draw(st.one_of(_json, st.lists(st.lists(st.integers(-1, 8), max_size=7), max_size=5)))
        elif op == "reroute_loop":  # two reroutes feeding each other, linked into a node input
            lid = 900
            g["nodes"] += [{"id": 90, "type": "Reroute", "inputs": [{"name": "", "type": "*", "link": lid + 1}]},
                           {"id": 91, "type": "Reroute", "inputs": [{"name": "", "type": "*", "link": lid}]}]
            g["links"] += [[lid, 90, 0, 91, 0, "*"], [lid + 1, 91, 0, 90, 0, "*"], [lid + 2, 91, 0, 5, 0, "*"]]
            if isinstance(node, dict) and isinstance(node.get("inputs"), list) and node["inputs"]:
                slot = node["inputs"][0]
                if isinstance(slot, dict):
                    slot["link"] = lid + 2
        elif op == "mode" and isinstance(node, dict):
            node["mode"] = draw(st.sampled_from([0, 2, 4, "x", None]))
        elif op == "slot" and isinstance(node, dict) and isinstance(node.get("inputs"), list) and node["inputs"]:
            node["inputs"][0] = draw(_json)
    return g


def _is_valid_result(res) -> bool:
    if isinstance(res, SpriteForgeError):
        return False
    for p in res.files:
        assert Path(p).is_file() and OUT in Path(p).parents
    return True


# --------------------------------------------------------------------------- tests

def test_the_unmutated_workflows_run():
    assert _is_valid_result(_run_case(_pixel_wf()))
    assert _is_valid_result(_run_case(G.api_to_graph(_pixel_wf())))


@fuzz(400, case_seed=11)
@given(_json)
@example("{not json")  # JSON text that is not JSON: a raw JSONDecodeError escaped read_workflow
@example('{"1": ' * 5000)  # deeply nested JSON text: RecursionError
@example("x" * 5000)  # a "path" too long for the file system: OSError(ENAMETOOLONG)
@example(b'{"1": {"class_type": "SaveImage", "inputs": {}}}')  # bytes were taken for a path (TypeError)
@example({"1": {"class_type": ["SaveImage"], "inputs": {}}})  # unhashable class_type: TypeError in info.get
@example({"1": {"class_type": "SaveImage", "inputs": 5}})  # inputs not a dict
@example({"nodes": [5], "links": []})  # a graph node that is not an object
@example({"prompt": {"1": {"class_type": "x"}}, "nodes": 1})
def test_random_json(data):
    text = json.dumps(data, allow_nan=True) if not isinstance(data, (str, bytes)) else data
    _run_case(data)
    _run_case(text)


@fuzz(120, case_seed=12)
@given(_mutated(), st.lists(st.text(max_size=20), max_size=2))
@example({"1": {"class_type": "LoadImage", "inputs": {"image": "sprite.png"}},
          "5": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "ok"}}},
         ["5.filename_prefix=../../escaped"])  # an override cannot save outside the output folder
@example({"1": {"class_type": "SpriteForgePixelPaletteLoad", "inputs": {"name": "pico-8", "file": ""}},
          "2": {"class_type": "SpriteForgePixelQuantize",
                "inputs": {"image": ["2", 0], "palette": ["1", 0], "dither": "none", "strength": 1.0}},
          "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "c"}}}, [])  # self-loop
@example({"1": {"class_type": "SpriteForgePixelKeyToAlpha",
                "inputs": {"image": ["2", 0], "key_color": "#ff00ff", "threshold": float("nan")}},
          "2": {"class_type": "LoadImage", "inputs": {"image": "sprite.png"}},
          "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "nan"}}}, [])
def test_mutated_pixel_workflow(wf, overrides):
    _run_case(copy.deepcopy(wf), overrides)


@fuzz(300, case_seed=13)
@given(_random_api())
def test_random_api_prompts(wf):
    _run_case(wf)


@fuzz(300, case_seed=14)
@given(_graph())
@example({"nodes": [{"id": 1, "type": "Reroute", "inputs": [{"link": 1}]},
                    {"id": 2, "type": "SaveImage", "inputs": [{"name": "images", "link": 1}]}],
          "links": [[1, 1, 0, 2, 0, "IMAGE"]]})  # a reroute feeding itself
@example({"nodes": [{"id": 1, "type": "SaveImage", "inputs": [{"name": "images", "link": 1}],
                     "widgets_values": ["a"]}], "links": [[1, 1, "x", 1, 0, "IMAGE"]]})  # a slot that is not a number
def test_broken_graphs(g):
    res = _run_case(copy.deepcopy(g))
    try:  # the converter alone: same contract
        G.graph_to_api(copy.deepcopy(g), INFO)
    except SpriteForgeError as exc:
        assert exc.code in CODES
    if not isinstance(res, SpriteForgeError):
        assert _is_valid_result(res)


def test_long_chains_and_cycles_end_in_bad_input():
    """A 3000-node chain runs (no recursion limit) and a 3000-node cycle is reported, not a RecursionError."""
    n = 3000
    wf = {"1": {"class_type": "LoadImage", "inputs": {"image": "sprite.png"}}}
    for i in range(2, n + 1):
        wf[str(i)] = {"class_type": "SpriteForgePixelUpscale", "inputs": {"image": [str(i - 1), 0], "factor": 1}}
    wf[str(n + 1)] = {"class_type": "PreviewImage", "inputs": {"images": [str(n), 0]}}
    res = _run_case(copy.deepcopy(wf))
    assert _is_valid_result(res)
    wf["1"] = {"class_type": "SpriteForgePixelUpscale", "inputs": {"image": [str(n), 0], "factor": 1}}
    res = _run_case(wf)
    assert isinstance(res, SpriteForgeError) and res.code == "BAD_INPUT" and "cycle" in res.message
