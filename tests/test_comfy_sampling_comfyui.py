"""Our samplers on ComfyUI's own SDXL MODEL / CONDITIONING in a real ComfyUI: opt-in, it boots a
ComfyUI server on the CPU (set ``SPRITEFORGE_COMFYUI``; see tests/test_lora_comfyui.py for the other
variables).  ``SPRITEFORGE_SDXL_MODELS`` may name a models folder already holding the files that
``tests/sdxl_fixture.py`` writes (they take a minute and 2 GB to build; otherwise they are built in a
temporary folder).

Files (release names): ``checkpoints/sd_xl_base_1.0.safetensors`` (single-file SDXL in the SGM
layout, detected by ComfyUI as SDXL) and ``loras/pixel-art-xl.safetensors`` (kohya keys).
One prompt, core Load Checkpoint -> LoraLoader -> CLIP Text Encode, with branches:

* a/b/c: SpriteForge KSampler at batch 2 seed 5, batch 1 seed 5, batch 1 seed 6 -> item i of the
  batch equals seed 5 + i alone (CPU-made noise);
* d: the LoRA at strength 0 -> differs from b (the LoRA reached the model);
* j: Latent From Batch (index 1) of the batch-2 latent -> equals a's item 1;
* e: core SamplerCustomAdvanced with SpriteForge Noise + core CFGGuider + SpriteForge Sampler Select
  + core BasicScheduler -> equals b (same maths through ComfyUI's own sampling entry point);
* f: core SamplerCustom (its own noise) with our SAMPLER (dpmpp_2m_sde);
* g: img2img + inpaint mask + seamless tile + CFG-rescale + dynamic thresholding;
* t: a tiled latent (tile on) decoded by SpriteForge VAE Decode (seamless) twice side by side: equal halves;
* h/i: an SD1.x checkpoint (``v1-5-pruned-emaonly.safetensors``) through SpriteForge KSampler and SamplerCustom;
then a long run interrupted over HTTP, and the shipped example_workflows/api/sdxl_pixel_art.json at 64x64
(indexed PNGs with index 0 transparent and a sheet come back).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from spriteforge.tests.comfyui_server import COMFY, env as comfy_env, get as _get, post as _post, python as comfy_python, server, wait as _wait

pytestmark = pytest.mark.skipif(not COMFY, reason="set SPRITEFORGE_COMFYUI=/path/to/ComfyUI to run the real-ComfyUI SDXL test")

CKPT, LORA, SD15 = "sd_xl_base_1.0.safetensors", "pixel-art-xl.safetensors", "v1-5-pruned-emaonly.safetensors"


def _models(tmp_path) -> Path:
    given = os.environ.get("SPRITEFORGE_SDXL_MODELS")
    root = Path(given) if given else tmp_path / "models"
    if not (root / "checkpoints" / CKPT).exists() or not (root / "loras" / LORA).exists():
        from safetensors import safe_open

        from spriteforge.tests.sdxl_fixture import make_sdxl_checkpoint, make_sdxl_lora

        ck = make_sdxl_checkpoint(root / "checkpoints" / CKPT)
        with safe_open(str(ck), "pt") as f:
            keys = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        make_sdxl_lora(root / "loras" / LORA, keys)
    if not (root / "checkpoints" / SD15).exists():
        from spriteforge.tests.sdxl_fixture import make_sd15_checkpoint

        make_sd15_checkpoint(root / "checkpoints" / SD15)
    if not (root / "birefnet" / "BiRefNet_lite.safetensors").exists():
        from spriteforge.tests.test_workflows_e2e import _birefnet_lite

        _birefnet_lite(root / "birefnet" / "BiRefNet_lite.safetensors")
    return root


def _ks(model, latent, seed, **kw):
    inputs = {"model": model, "positive": ["3", 0], "negative": ["4", 0], "latent_image": latent, "seed": seed, "steps": 2,
              "cfg": 5.0, "sampler": "euler_ancestral", "schedule": "karras", "denoise": 1.0}
    inputs.update(kw)
    return {"class_type": "SpriteForgeKSampler", "inputs": inputs}


def _save(src, prefix):
    return {"class_type": "SaveImage", "inputs": {"images": src, "filename_prefix": prefix}}


def _decode(src):
    return {"class_type": "VAEDecode", "inputs": {"samples": src, "vae": ["1", 2]}}


def sdxl_graph() -> dict:
    g = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
        "2": {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": LORA,
                                                     "strength_model": 1.0, "strength_clip": 1.0}},
        "2z": {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": LORA,
                                                      "strength_model": 0.0, "strength_clip": 1.0}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 1], "text": "pixel art, a knight with a sword"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 1], "text": "blurry, photo"}},
        "L2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}},
        "L1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "a": _ks(["2", 0], ["L2", 0], 5), "b": _ks(["2", 0], ["L1", 0], 5), "c": _ks(["2", 0], ["L1", 0], 6),
        "d": _ks(["2z", 0], ["L1", 0], 5),
        "jL": {"class_type": "LatentFromBatch", "inputs": {"samples": ["L2", 0], "batch_index": 1, "length": 1}},
        "j": _ks(["2", 0], ["jL", 0], 5),
        "eN": {"class_type": "SpriteForgeNoise", "inputs": {"noise_seed": 5}},
        "eG": {"class_type": "CFGGuider", "inputs": {"model": ["2", 0], "positive": ["3", 0], "negative": ["4", 0], "cfg": 5.0}},
        "eS": {"class_type": "SpriteForgeSamplerSelect", "inputs": {"sampler": "euler_ancestral"}},
        "eT": {"class_type": "BasicScheduler", "inputs": {"model": ["2", 0], "scheduler": "karras", "steps": 2, "denoise": 1.0}},
        "e": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["eN", 0], "guider": ["eG", 0], "sampler": ["eS", 0],
                                                                "sigmas": ["eT", 0], "latent_image": ["L1", 0]}},
        "fS": {"class_type": "SpriteForgeSamplerSelect", "inputs": {"sampler": "dpmpp_2m_sde", "eta": 1.0,
                                                                    "solver_type": "heun"}},
        "f": {"class_type": "SamplerCustom", "inputs": {"model": ["2", 0], "add_noise": True, "noise_seed": 3, "cfg": 5.0,
                                                        "positive": ["3", 0], "negative": ["4", 0], "sampler": ["fS", 0],
                                                        "sigmas": ["eT", 0], "latent_image": ["L2", 0]}},
        "gI": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0x3366AA}},
        "gE": {"class_type": "VAEEncode", "inputs": {"pixels": ["gI", 0], "vae": ["1", 2]}},
        "gM": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 32, "height": 64}},
        "g": _ks(["2", 0], ["gE", 0], 9, sampler="dpmpp_2m_sde", schedule="normal", denoise=0.6, mask=["gM", 0], tile=True,
                 cfg_rescale=0.7, dynamic_threshold=0.995),
    }
    g.update({  # SD1.5 through the same nodes
        "h1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SD15}},
        "h3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["h1", 1], "text": "pixel art, a knight"}},
        "h4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["h1", 1], "text": "blurry"}},
        "h": {"class_type": "SpriteForgeKSampler", "inputs": {"model": ["h1", 0], "positive": ["h3", 0], "negative": ["h4", 0],
                                                              "latent_image": ["L2", 0], "seed": 5, "steps": 3, "cfg": 6.0,
                                                              "sampler": "dpmpp_2m_sde", "schedule": "normal", "denoise": 1.0}},
        "hT": {"class_type": "BasicScheduler", "inputs": {"model": ["h1", 0], "scheduler": "normal", "steps": 2, "denoise": 1.0}},
        "hS": {"class_type": "SpriteForgeSamplerSelect", "inputs": {"sampler": "heun"}},
        "i": {"class_type": "SamplerCustom", "inputs": {"model": ["h1", 0], "add_noise": True, "noise_seed": 3, "cfg": 5.0,
                                                        "positive": ["h3", 0], "negative": ["h4", 0], "sampler": ["hS", 0],
                                                        "sigmas": ["hT", 0], "latent_image": ["L1", 0]}},
    })
    g.update({  # seamless: a tiled latent placed twice side by side decodes into two equal halves
        "tK": _ks(["2", 0], ["L1", 0], 4, tile=True),
        "tW": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 64, "batch_size": 1}},
        "tC1": {"class_type": "LatentComposite", "inputs": {"samples_to": ["tW", 0], "samples_from": ["tK", 0], "x": 0, "y": 0,
                                                            "feather": 0}},
        "tC2": {"class_type": "LatentComposite", "inputs": {"samples_to": ["tC1", 0], "samples_from": ["tK", 0], "x": 64,
                                                            "y": 0, "feather": 0}},
        "Dtw": {"class_type": "SpriteForgeSeamlessVAEDecode", "inputs": {"samples": ["tC2", 0], "vae": ["1", 2]}},
        "Dt": {"class_type": "SpriteForgeSeamlessVAEDecode", "inputs": {"samples": ["tK", 0], "vae": ["1", 2]}},
        "Dtz": _decode(["tC2", 0]),
    })
    for k in ("tw", "t", "tz"):
        g["S" + k] = _save(["D" + k, 0], f"sf_{k}")
    for k in ("h", "i"):
        g["D" + k] = {"class_type": "VAEDecode", "inputs": {"samples": [k, 0], "vae": ["h1", 2]}}
        g["S" + k] = _save(["D" + k, 0], f"sf_{k}")
    for k in ("a", "b", "c", "d", "g", "j"):
        g["D" + k], g["S" + k] = _decode([k, 0]), _save(["D" + k, 0], f"sf_{k}")
    for k in ("e", "f"):  # SamplerCustom(Advanced): output 0 is the (denoised-at-last-step) sample
        g["D" + k], g["S" + k] = _decode([k, 0]), _save(["D" + k, 0], f"sf_{k}")
    return g


def _images(out, node_out):
    from PIL import Image

    return [np.asarray(Image.open(out / i.get("subfolder", "") / i["filename"])).astype(np.int16) for i in node_out["images"]]


def test_our_samplers_on_core_sdxl_graphs_in_real_comfyui(tmp_path):
    models = _models(tmp_path)
    cfg = tmp_path / "extra_model_paths.yaml"
    cfg.write_text(f"sf_test:\n    base_path: {models}\n    checkpoints: checkpoints\n    loras: loras\n"
                   "    birefnet: birefnet\n")
    out = tmp_path / "out"
    with server(tmp_path, cfg, out, ready="SpriteForgeKSampler") as (proc, base, info):
        assert info["SpriteForgeKSampler"]["output"] == ["LATENT"]
        r = _wait(base, _post(f"{base}/prompt", {"prompt": sdxl_graph()})["prompt_id"], proc, timeout=900)
        o = r["outputs"]
        a, (b,), (c,), (d,), (e,) = (_images(out, o["S" + k]) for k in "abcde")
        assert len(a) == 2 and a[0].shape == (64, 64, 3)
        assert np.abs(a[0] - b).max() <= 2 and np.abs(a[1] - c).max() <= 2  # batch item i == seed + i alone
        assert np.abs(b - d).max() > 10  # the LoRA changed the model
        (j,) = _images(out, o["Sj"])
        assert np.abs(j - a[1]).max() <= 2  # Latent From Batch index 1: that item's noise (initial and per step)
        assert np.abs(e - b).max() <= 2  # SamplerCustomAdvanced + our NOISE/SAMPLER == our KSampler
        assert len(_images(out, o["Sf"])) == 2 and len(_images(out, o["Sg"])) == 1
        assert len(_images(out, o["Sh"])) == 2 and len(_images(out, o["Si"])) == 1  # SD1.5
        (tw,), (t,), (tz,) = (_images(out, o[k]) for k in ("Stw", "St", "Stz"))
        assert tw.shape == (64, 128, 3)
        assert np.abs(tw[:, :64] - tw[:, 64:]).max() <= 2 and np.abs(tw[:, :64] - t).max() <= 2  # no seam
        assert np.abs(tz[:, :64] - tz[:, 64:]).max() > 2  # core VAE Decode pads with zeros: the halves differ
        logtext = (tmp_path / "comfy.log").read_text()
        assert "model_type EPS" in logtext and "Requested to load SDXL" in logtext
        assert "Requested to load BaseModel" in logtext  # SD1.5's model class
        assert "lora key not loaded" not in logtext

        # Cancel: a long run stops at the next step
        long = {k: v for k, v in sdxl_graph().items() if k in ("1", "2", "3", "4", "L1")}
        long["x"] = _ks(["2", 0], ["L1", 0], 1, steps=400)
        long["Dx"], long["Sx"] = _decode(["x", 0]), _save(["Dx", 0], "sf_long")
        pid = _post(f"{base}/prompt", {"prompt": long})["prompt_id"]
        time.sleep(8)
        urllib.request.urlopen(urllib.request.Request(f"{base}/interrupt", data=b"", method="POST"), timeout=30).read()
        t0 = time.time()
        while time.time() - t0 < 120:
            h = _get(f"{base}/history/{pid}")
            if pid in h and h[pid].get("status", {}).get("completed") is not None:
                break
            time.sleep(0.5)
        st = h[pid]["status"]
        assert any(m[0] == "execution_interrupted" for m in st["messages"]), st

        # the shipped SDXL pixel-art workflow, small
        wf = json.loads((Path(__file__).resolve().parents[1] / "example_workflows" / "api" / "sdxl_pixel_art.json").read_text())
        for node in wf.values():
            node.pop("_meta", None)
            ct, inp = node["class_type"], node["inputs"]
            if ct == "EmptyLatentImage":
                inp.update(width=64, height=64, batch_size=2)
            elif ct == "SpriteForgeKSampler":
                inp["steps"] = 2
            elif ct == "SpriteForgeRemoveBackground":
                inp["resolution"] = 64
            elif ct == "SpriteForgePixelDownscale":
                inp["factor"] = 4
        r = _wait(base, _post(f"{base}/prompt", {"prompt": wf})["prompt_id"], proc, timeout=900)
        from PIL import Image

        saved = [i for o in r["outputs"].values() for i in o.get("images", []) if i.get("type") == "output"]
        sprites = [i for i in saved if "sdxl_sprite" in i["filename"]]
        sheets = [i for i in saved if "sdxl_sheet" in i["filename"]]
        assert len(sprites) == 2 and len(sheets) == 1
        for i in sprites + sheets:
            with Image.open(out / i["subfolder"] / i["filename"]) as im:
                assert im.mode == "P" and im.info.get("transparency") == 0


def test_our_schedules_equal_comfyuis_on_its_model_samplings(tmp_path):
    """ComfyUI's own model_sampling objects (SD1.5, SDXL eps and v, SD3, Flux): the parametrisation read from them
    and our schedules built from them against ComfyUI's calculate_sigmas."""
    env = comfy_env(tmp_path, COMFY)
    script = Path(__file__).resolve().parent / "comfy_schedule_check.py"
    r = subprocess.run([comfy_python(), str(script)], cwd=COMFY, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert {k: v["flow"] for k, v in res.items()} == {"SD15": False, "SDXL": False, "SDXL_vpred": False, "SD3": True,
                                                      "Flux": True}
    for fam, v in res.items():
        for sched, err in v["max_err"].items():
            if sched == "ddim_uniform":  # ours follows diffusers' leading spacing; ComfyUI's has one more step
                continue
            assert err < 1e-5, (fam, sched, err)


def test_bad_values_are_refused_when_queued(tmp_path):
    # issue #22.9: ComfyUI answers POST /prompt with 400 and node_errors (our validate_inputs), before anything runs
    import math
    import urllib.error

    p = json.loads((Path(__file__).resolve().parents[1] / "example_workflows" / "api" / "sprite_demo.json").read_text())
    bad = {"3": ("sampler", "nope"), "8": ("dither", "sierra-9000"), "5": ("key_color", "#ff00zz"),
           "7": ("outline_color", "index:two"), "9": ("filename_prefix", "../outside/x")}
    for nid, (name, value) in bad.items():
        p[nid]["inputs"][name] = value
    p["3"]["inputs"]["cfg"] = math.nan
    cfg = tmp_path / "extra_model_paths.yaml"
    cfg.write_text(f"sf_empty:\n    base_path: {tmp_path}\n")
    with server(tmp_path, cfg, tmp_path / "out", "--database-url", "sqlite:///:memory:") as (_proc, base, _info):
        with pytest.raises(urllib.error.HTTPError) as e:
            _post(f"{base}/prompt", {"prompt": p})
        body = json.loads(e.value.read())
        assert e.value.code == 400 and set(body["node_errors"]) == set(bad), body
        for nid, (name, _v) in bad.items():
            assert any(f"{name}: " in x["details"] for x in body["node_errors"][nid]["errors"]), body["node_errors"][nid]
        assert any("cfg: nan is not a finite number" in x["details"] for x in body["node_errors"]["3"]["errors"])
        assert _get(f"{base}/history") == {}
