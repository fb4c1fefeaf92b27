"""The shipped SDXL pixel-art workflow (core Load Checkpoint + Load LoRA -> SpriteForge KSampler -> BiRefNet ->
pixel art -> indexed PNGs + sheet).  Its core nodes run only in ComfyUI, so here: the files are what
tools/build_workflows.py writes, the chain is wired as documented and names the release files; it validates in
test_graph_workflows.py and runs for real in test_comfy_sampling_comfyui.py."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from spriteforge.execution import graph as G
from spriteforge.execution.core_info import CORE_INFO, with_core

WF = Path(__file__).resolve().parents[1] / "example_workflows"
NAME = "sdxl_pixel_art"


def _build_module():
    spec = importlib.util.spec_from_file_location("_sf_workflows_build_sdxl", WF.parent / "tools" / "build_workflows.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.modules.pop(spec.name, None)
    return mod


def test_files_are_what_build_py_writes():
    graph, api = _build_module().build(NAME, G.object_info())
    assert json.loads((WF / f"{NAME}.json").read_text()) == json.loads(json.dumps(graph))
    assert json.loads((WF / "api" / f"{NAME}.json").read_text()) == json.loads(json.dumps(api))
    assert (WF / f"{NAME}.jpg").exists()


def test_chain_and_release_names():
    api = json.loads((WF / "api" / f"{NAME}.json").read_text())
    by_type = {}
    for nid, n in api.items():
        by_type.setdefault(n["class_type"], []).append(nid)

    def src(nid, inp):
        return api[nid]["inputs"][inp][0]

    (ck,), (lora,), (ks,), (dec,), (rb,) = (by_type[t] for t in ("CheckpointLoaderSimple", "LoraLoader",
                                                                 "SpriteForgeKSampler", "VAEDecode",
                                                                 "SpriteForgeRemoveBackground"))
    assert api[ck]["inputs"]["ckpt_name"] == "sd_xl_base_1.0.safetensors"
    assert api[lora]["inputs"]["lora_name"] == "pixel-art-xl.safetensors"
    assert src(lora, "model") == ck and src(ks, "model") == lora
    for side in ("positive", "negative"):
        enc = src(ks, side)
        assert api[enc]["class_type"] == "CLIPTextEncode" and src(enc, "clip") == lora
    assert api[src(ks, "latent_image")]["class_type"] == "EmptyLatentImage"
    assert src(dec, "samples") == ks and src(dec, "vae") == ck and src(rb, "image") == dec
    assert api[src(rb, "birefnet")]["inputs"]["model_name"] == "BiRefNet_lite.safetensors"
    for t in ("SpriteForgePixelSaveIndexed", "SpriteForgePixelSpriteSheet"):
        (nid,) = by_type[t]
        assert api[src(nid, "images")]["class_type"] == "SpriteForgePixelQuantize"
    assert "pixel art" in api[src(ks, "positive")]["inputs"]["text"]


def test_core_descriptions_type_check_the_links():
    info = with_core(G.object_info())
    issues = G.validate_prompt(json.loads((WF / "api" / f"{NAME}.json").read_text()), info)
    issues = [i for i in issues if i.kind != "value_not_in_list"]  # our model dropdowns are empty without models
    assert not issues, "\n".join(map(str, issues))
    # a wrong link is caught: CLIP into the sampler's model input
    bad = json.loads((WF / "api" / f"{NAME}.json").read_text())
    ks = next(k for k, v in bad.items() if v["class_type"] == "SpriteForgeKSampler")
    ck = next(k for k, v in bad.items() if v["class_type"] == "CheckpointLoaderSimple")
    bad[ks]["inputs"]["model"] = [ck, 1]
    found = [i for i in G.validate_prompt(bad, info) if i.node_id == ks and i.input == "model"]
    assert found and "CLIP" in found[0].message
    assert set(CORE_INFO) == {"CheckpointLoaderSimple", "LoraLoader", "CLIPTextEncode", "EmptyLatentImage", "VAEDecode"}
