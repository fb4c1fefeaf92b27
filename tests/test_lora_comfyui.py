"""The LoRA nodes in a real ComfyUI: opt-in, it boots a ComfyUI server on the CPU.

Set ``SPRITEFORGE_COMFYUI=/path/to/ComfyUI`` (with this pack in its ``custom_nodes``) and
optionally ``SPRITEFORGE_COMFY_PYTHON`` (the interpreter of ComfyUI's environment) and
``SPRITEFORGE_COMFY_PYTHONPATH`` (put in front of ComfyUI's ``PYTHONPATH``); with
``SPRITEFORGE_COMFY_TORCHVISION_STUB=1`` a torchvision stand-in is written and put there (for a
CPU-only environment without torchvision; it raises if torchvision is really used). The
test writes a tiny PixArt-Σ pipeline and two LoRA files into a models folder given to
ComfyUI with ``--extra-model-paths-config``, then queues graphs over the HTTP API:

1. one graph with two branches from one Load Model: base and Apply LoRA -> Apply LoRA
   (chained), each encoded, sampled, decoded and saved, plus LoRA Info and the Apply
   LoRA ``info`` string into PreviewAny;
2. the base branch alone again, with ``--cache-none`` so every node re-executes.

Checks: the LoRA image differs from the base, the base image of run 2 equals run 1's bit
for bit (applying the LoRA did not touch the loaded model), the info strings came back.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from spriteforge.tests.comfyui_server import COMFY, get as _get, post as _post, server, wait as _wait

pytestmark = pytest.mark.skipif(not COMFY, reason="set SPRITEFORGE_COMFYUI=/path/to/ComfyUI to run the real-ComfyUI LoRA test")


def _defaults(info: dict) -> dict:
    out = {}
    for section in ("required", "optional"):
        for name, spec in info["input"].get(section, {}).items():
            if len(spec) > 1 and isinstance(spec[1], dict) and "default" in spec[1]:
                out[name] = spec[1]["default"]
    return out


def _graph(model, loras, seed, with_lora=True, sampler_defaults=None):
    g = {
        "1": {"class_type": "SpriteForgeLoadModel", "inputs": {"model": model, "engine": "torch", "device": "cpu", "dtype": "float32"}},
        "3": {"class_type": "SpriteForgeEncodePrompt", "inputs": {"model": ["1", 0], "positive": "a knight", "negative": ""}},
        "5": {"class_type": "SpriteForgeSampler", "inputs": {**(sampler_defaults or {}), "model": ["1", 0], "conditioning": ["3", 0],
                                                             "seed": seed, "steps": 2, "batch_size": 1, "width": 64, "height": 64}},
        "7": {"class_type": "SpriteForgeVAEDecode", "inputs": {"model": ["1", 0], "latent": ["5", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "base"}},
    }
    if with_lora:
        g.update({
            "2": {"class_type": "SpriteForgeApplyLoRA", "inputs": {"model": ["1", 0], "lora_name": loras[0], "strength_model": 1.0,
                                                                   "strength_text": 1.0}},
            "2b": {"class_type": "SpriteForgeApplyLoRA", "inputs": {"model": ["2", 0], "lora_name": loras[1], "strength_model": 0.8,
                                                                    "strength_text": 1.0}},
            "4": {"class_type": "SpriteForgeEncodePrompt", "inputs": {"model": ["2b", 0], "positive": "a knight", "negative": ""}},
            "6": {"class_type": "SpriteForgeSampler", "inputs": {**g["5"]["inputs"], "model": ["2b", 0], "conditioning": ["4", 0]}},
            "8": {"class_type": "SpriteForgeVAEDecode", "inputs": {"model": ["2b", 0], "latent": ["6", 0]}},
            "10": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "lora"}},
            "11": {"class_type": "PreviewAny", "inputs": {"source": ["2b", 1]}},
            "11a": {"class_type": "PreviewAny", "inputs": {"source": ["2", 1]}},
            "12": {"class_type": "SpriteForgeLoRAInfo", "inputs": {"lora_name": loras[0], "as_json": False}},
        })
    return g


def _image(out_dir: Path, node_out) -> np.ndarray:
    from PIL import Image

    img = node_out["images"][0]
    return np.asarray(Image.open(out_dir / img.get("subfolder", "") / img["filename"]))


def test_lora_nodes_in_real_comfyui(tmp_path):
    import spriteforge.tests.tiny_models as tm
    from spriteforge.tests import test_lora_util as U

    models = tmp_path / "models"
    pipe = tm.make_pixart(models / "diffusers", layout="folder")
    tr = tm.build_pixart("sigma")
    shapes = {n: tuple(m.weight.shape) for n, m in tr.named_modules() if isinstance(m, torch.nn.Linear)}
    (models / "loras").mkdir(parents=True)
    w = U.Writer(0)
    for layer in ("transformer_blocks.0.attn1.to_q", "transformer_blocks.1.attn2.to_out.0", "transformer_blocks.0.ff.net.2"):
        w.lora("kohya", layer, shapes[layer], rank=4, alpha=4.0)
    w.save(models / "loras" / "style_kohya.safetensors")
    w2 = U.Writer(1)
    w2.lora("diffusers", "transformer_blocks.1.attn1.to_v", shapes["transformer_blocks.1.attn1.to_v"], rank=2)
    w2.save(models / "loras" / "detail_peft.safetensors")
    cfg = tmp_path / "extra_model_paths.yaml"
    cfg.write_text(f"sf_test:\n    base_path: {models}\n    diffusers: diffusers\n    loras: loras\n")
    out = tmp_path / "out"
    with server(tmp_path, cfg, out, '--cache-none', ready="SpriteForgeApplyLoRA") as (proc, base, info):
        spec = info["SpriteForgeApplyLoRA"]["input"]["required"]
        options = spec["lora_name"][1].get("options", spec["lora_name"][0])
        assert {"style_kohya.safetensors", "detail_peft.safetensors"} <= set(options)
        loras = ["style_kohya.safetensors", "detail_peft.safetensors"]
        sd = _defaults(_get(f"{base}/object_info/SpriteForgeSampler")["SpriteForgeSampler"])
        r1 = _wait(base, _post(f"{base}/prompt", {"prompt": _graph(pipe.name, loras, 7, sampler_defaults=sd)})["prompt_id"], proc)
        base1, lora1 = _image(out, r1["outputs"]["9"]), _image(out, r1["outputs"]["10"])
        assert not np.array_equal(base1, lora1)
        assert "detail_peft.safetensors: 1 LoRA layers applied" in json.dumps(r1["outputs"]["11"])
        assert "style_kohya.safetensors: 3 LoRA layers applied" in json.dumps(r1["outputs"]["11a"])
        assert "format kohya" in json.dumps(r1["outputs"]["12"])
        r2 = _wait(base, _post(f"{base}/prompt", {"prompt": _graph(pipe.name, loras, 7, with_lora=False, sampler_defaults=sd)})["prompt_id"], proc)
        assert np.array_equal(_image(out, r2["outputs"]["9"]), base1)
