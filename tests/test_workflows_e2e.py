"""The shipped workflows (``example_workflows/api/NAME.json``) run end to end on tiny real-format models.

:func:`build_models_root` lays out a models root like ComfyUI's ``models/`` in which every file
name the workflows pick is the real release name, holding a TINY model of that family in the
release's format (``tests/tiny_models.py`` writers, plus a BiRefNet-lite with the real Swin-T
backbone and random weights):

    diffusion_models/flux1-schnell.safetensors      Flux.1-schnell, BFL layout
    vae/ae.safetensors                               16-channel KL VAE, LDM layout
    checkpoints/sd3.5_medium.safetensors             SD3.5-medium MMDiT-X + VAE (no text encoders, like the release)
    text_encoders/clip_l.safetensors, clip_g.safetensors, t5xxl_fp16.safetensors (+ <stem>_tokenizer/ beside each)
    diffusers/PixArt-Sigma-XL-2-1024-MS/            PixArt-Sigma diffusers pipeline folder
    diffusion_models/z_image_turbo_bf16.safetensors  Z-Image-Turbo, ComfyUI's layout (fused qkv), bf16
    diffusion_models/flux-2-klein-4b.safetensors     FLUX.2 [klein], BFL layout; vae/flux2-vae.safetensors (BFL layout)
    text_encoders/qwen_3_4b.safetensors              Qwen3 (model.* names, tied head absent) + qwen_3_4b_tokenizer/: one
                                                     file for Z-Image and FLUX.2 [klein], with the 28 layers FLUX.2 reads
    birefnet/BiRefNet_lite.safetensors               BiRefNet lite (Swin-T), random weights

One ``t5xxl_fp16.safetensors`` serves Flux and SD3.5 (as in a real ComfyUI install), so the tiny
Flux here reads a 64-wide T5 (``joint_attention_dim=64``), the width the tiny SD3 needs.

Each workflow runs once per session (:func:`run_small`, shared with ``test_graph_workflows``)
with small sizes (64x64, 2 steps, BiRefNet working at 64) and the shipped input images shrunk to 64x64.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[1]
WF = REPO / "example_workflows"
NAMES = ("txt2img", "img2img", "tileset", "inpainting", "sprite_pipeline", "z_image_turbo_sprite", "flux2_klein_txt2img",
         "sprite_variants")
SMALL = 64

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_models as tm  # noqa: E402
import tiny_flux2  # noqa: E402

sys.path.pop(0)

# every model file / folder name the shipped workflows use (checked below against the workflows)
RELEASE_FILES = {
    "diffusion_models": ["flux1-schnell.safetensors", "z_image_turbo_bf16.safetensors", "flux-2-klein-4b.safetensors"],
    "checkpoints": ["sd3.5_medium.safetensors"],
    "vae": ["ae.safetensors", "flux2-vae.safetensors"],
    "text_encoders": ["clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors", "qwen_3_4b.safetensors"],
    "diffusers": ["PixArt-Sigma-XL-2-1024-MS"],
    "birefnet": ["BiRefNet_lite.safetensors"],
}


# --------------------------------------------------------------------------- the models root

def _flux_schnell_64(path: Path) -> Path:
    """Tiny Flux.1-schnell (BFL keys) reading a 64-wide T5, so it shares t5xxl_fp16 with SD3.5."""
    from diffusers import FluxTransformer2DModel

    m = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=32, num_attention_heads=2,
        joint_attention_dim=2 * tm.CLIP_DIM, pooled_projection_dim=tm.CLIP_DIM, guidance_embeds=False,
        axes_dims_rope=(4, 14, 14),
    )
    tm._randomize(m, 0)
    return tm._save_file(tm.flux_to_original(m.state_dict()), path)


def _sd35_medium(scratch: Path, path: Path) -> Path:
    """SD3.5-medium as released: ``model.diffusion_model.`` + ``first_stage_model.`` (VAE), no text encoders."""
    from safetensors.torch import load_file

    sd = load_file(str(tm.make_sd3(scratch, layout="checkpoint", variant="sd3.5-medium")))
    return tm._save_file({k: v for k, v in sd.items() if not k.startswith("text_encoders.")}, path)


def _birefnet_lite(path: Path) -> Path:
    """BiRefNet_lite's architecture (Swin-T backbone, the release's decoder sizes) with small random weights."""
    from safetensors.torch import save_file

    from spriteforge.engines.torch_models import birefnet as bn

    torch.manual_seed(0)
    m = bn.BiRefNet(bn.SWIN_T).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(0.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().half().contiguous() if v.is_floating_point() else v.contiguous()
               for k, v in m.state_dict().items()}, str(path))
    return path


def _flux2_klein(scratch: Path, root: Path) -> None:
    """FLUX.2 [klein] as ComfyUI users hold it: the BFL single file and flux2-vae.safetensors (BFL layout); its
    qwen_3_4b.safetensors is the one Z-Image reads (built in :func:`build_models_root`)."""
    (root / "diffusion_models").mkdir(parents=True, exist_ok=True)
    shutil.copy(tiny_flux2.make_flux2(scratch, layout="original"), root / "diffusion_models" / "flux-2-klein-4b.safetensors")
    tiny_flux2.make_flux2_vae(root / "vae", layout="original", name="flux2-vae.safetensors")


def build_models_root(root: Path) -> Path:
    """Build (once; a marker file makes later calls free) the tiny models root described above."""
    root = Path(root)
    if (root / ".complete").exists():
        return root
    scratch = root / ".scratch"
    te = root / "text_encoders"
    tm.make_clip(te, "clip_l")
    tm.make_clip(te, "clip_g")
    tm.make_t5(te, d_model=2 * tm.CLIP_DIM, name="t5xxl_fp16")
    tiny_flux2.make_flux2_text_encoder(te)  # Qwen3-4B's layout (tied head absent), deep enough for FLUX.2's layers 9/18/27
    shutil.rmtree(te / "qwen_tokenizer")  # only the tokenizer beside the file, as a user would have it
    for raw in te.glob(".*_raw"):
        shutil.rmtree(raw)
    _flux_schnell_64(root / "diffusion_models" / "flux1-schnell.safetensors")
    tm.make_vae(root / "vae", 16, layout="original", name="ae.safetensors")
    tm.make_zimage(root / "diffusion_models", layout="original", bf16=True)
    _sd35_medium(scratch, root / "checkpoints" / "sd3.5_medium.safetensors")
    pix = tm.make_pixart(scratch, layout="folder", variant="sigma")
    (root / "diffusers").mkdir(parents=True, exist_ok=True)
    shutil.move(str(pix), str(root / "diffusers" / "PixArt-Sigma-XL-2-1024-MS"))
    _birefnet_lite(root / "birefnet" / "BiRefNet_lite.safetensors")
    _flux2_klein(scratch, root)
    shutil.rmtree(scratch)
    (root / ".complete").write_text("ok")
    return root


@pytest.fixture(scope="session")
def tiny_models_root(tmp_path_factory) -> Path:
    """A models root with the workflows' release file names holding tiny real-format models (built once)."""
    return build_models_root(tmp_path_factory.getbasetemp() / "workflow_models")


# --------------------------------------------------------------------------- running a workflow small

def small_overrides(prompt: dict) -> list[str]:
    """``--set`` overrides that make a workflow cheap on tiny models: 64x64, 2 steps, batch <= 2,
    BiRefNet at 64 (the image size), pixel-art sizes that divide 64, references for an edit enlarged to 64."""
    sets = []
    for nid, node in prompt.items():
        ct, inp = node["class_type"], node["inputs"]
        if ct == "SpriteForgeSampler":
            sets += [f"{nid}.width={SMALL}", f"{nid}.height={SMALL}", f"{nid}.steps=2",
                     f"{nid}.batch_size={min(2, int(inp.get('batch_size', 1)))}"]
        elif ct == "SpriteForgeRemoveBackground":
            sets.append(f"{nid}.resolution={SMALL}")  # the image size: fast on a CPU
        elif ct == "SpriteForgePixelDownscale":
            sets.append(f"{nid}.factor=4")
        elif ct == "SpriteForgePixelSliceTiles":
            sets += [f"{nid}.tile_width=8", f"{nid}.tile_height=8"]
        elif ct == "SpriteForgePixelEditReference":
            sets.append(f"{nid}.size={SMALL}")
        elif ct == "SpriteForgeEdit":
            sets.append(f"{nid}.steps=2")
    return sets


# the random-weight BiRefNet's matte stays just under 0.5 on the tiny Z-Image's pictures (on PixArt's it crosses it):
# a lower hard threshold keeps a sprite to run the pixel chain on (the real model's matte is near 0 or 1)
TINY_MATTE = {"z_image_turbo_sprite": 0.3}


def matte_overrides(name: str, prompt: dict) -> list[str]:
    if name not in TINY_MATTE:
        return []
    return [f"{nid}.threshold={TINY_MATTE[name]}" for nid, node in prompt.items()
            if node["class_type"] == "SpriteForgeRemoveBackground"]


def engine_overrides(prompt: dict, engine: str | None) -> list[str]:
    """``--set`` overrides giving every Load Model node ``engine`` (none for the workflow's own choice)."""
    if engine is None:
        return []
    return [f"{nid}.engine={engine}" for nid, node in prompt.items() if node["class_type"] == "SpriteForgeLoadModel"]


def small_inputs(folder: Path) -> Path:
    """The shipped example images (example_workflows/input) shrunk to 64x64, alpha kept; a sprite no larger
    (the 32x32 reference sprite) is copied as it is."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for p in sorted((WF / "input").glob("*.png")):
        if not (folder / p.name).exists():
            with Image.open(p) as im:
                if max(im.size) <= SMALL:
                    shutil.copy(p, folder / p.name)
                else:
                    im.resize((SMALL, SMALL), Image.NEAREST).save(folder / p.name)
    return folder


def run_small(name: str, models_root: Path, base: Path, engine: str | None = None) -> dict:
    """Run ``example_workflows/api/NAME.json`` small (once per session: the result is kept under ``base``).

    Returns ``{"outputs": {node_id: ui}, "files": [paths], "out": dir, "inputs": dir, "seconds": s}``.
    """
    from spriteforge import paths
    from spriteforge.execution import graph as G
    from spriteforge.execution.runner import run_workflow

    tag = name if engine is None else f"{name}-{engine}"
    done = base / tag / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    out = base / tag / "out"
    inputs = small_inputs(base / "inputs")
    prompt = G.read_workflow(str(WF / "api" / f"{name}.json"))
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: per-op overhead dominates; one thread avoids spin-waits on shared cores
    saved_root = list(paths._models_root)  # run_workflow sets the models root for good: restore it for other tests
    t0 = time.monotonic()
    try:
        res = run_workflow(str(WF / "api" / f"{name}.json"), models_dir=models_root, out_dir=out, input_dir=inputs,
                           overrides=small_overrides(prompt) + engine_overrides(prompt, engine) + matte_overrides(name, prompt))
    finally:
        torch.set_num_threads(n)
        paths._models_root[:] = saved_root
    result = {"outputs": res.outputs, "files": [str(f) for f in res.files], "out": str(out), "inputs": str(inputs),
              "seconds": time.monotonic() - t0}
    done.write_text(json.dumps(result, default=str))
    return result


@pytest.fixture(scope="session")
def workflow_runs(tiny_models_root, tmp_path_factory):
    """``run(name)`` -> the result of :func:`run_small` (each workflow runs once per session)."""
    base = tmp_path_factory.getbasetemp() / "workflow_runs"
    return lambda name: run_small(name, tiny_models_root, base)


# --------------------------------------------------------------------------- tests

def _png(path):
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return im.copy()


def _files(res, suffix=".png") -> list[Path]:
    return [Path(f) for f in res["files"] if str(f).endswith(suffix)]


def test_workflows_use_the_models_the_fixture_provides():
    """Every model name in the shipped workflows is one the tiny root provides (and so a real release name)."""
    model_inputs = {"model": ("diffusion_models", "checkpoints", "diffusers"), "vae": ("vae",),
                    "text_encoder_1": ("text_encoders",), "text_encoder_2": ("text_encoders",),
                    "text_encoder_3": ("text_encoders",), "model_name": ("birefnet",)}
    for name in NAMES:
        api = json.loads((WF / "api" / f"{name}.json").read_text())
        for node in api.values():
            if node["class_type"] not in ("SpriteForgeLoadModel", "SpriteForgeLoadBiRefNet"):
                continue
            for key, kinds in model_inputs.items():
                v = node["inputs"].get(key)
                if v is None or str(v).startswith("("):
                    continue
                assert any(v in RELEASE_FILES[k] for k in kinds), f"{name}: {key}={v!r} is not built by the fixture"


@pytest.mark.parametrize("name", NAMES)
def test_files_are_what_build_py_writes(name):
    """tools/build_workflows.py is the source: the shipped graph and API files are its output, unedited."""
    import importlib.util

    from spriteforge.execution import graph as G

    spec = importlib.util.spec_from_file_location("_sf_workflows_build", WF.parent / "tools" / "build_workflows.py")
    build = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = build  # dataclasses look their module up
    try:
        spec.loader.exec_module(build)
    finally:
        sys.modules.pop(spec.name, None)
    graph, api = build.build(name, G.object_info())
    assert json.loads((WF / f"{name}.json").read_text()) == json.loads(json.dumps(graph)), \
        f"{name}.json differs from what tools/build_workflows.py writes: run python tools/build_workflows.py {name}"
    assert json.loads((WF / "api" / f"{name}.json").read_text()) == json.loads(json.dumps(api))


@pytest.mark.parametrize("name", NAMES)
def test_workflow_validates_with_models_installed(name, tiny_models_root):
    """With the models installed every combo has its real choices: every value must be one of them."""
    from spriteforge import paths
    from spriteforge.execution import graph as G

    from spriteforge.nodes.folders import Folders

    with paths.models_root(tiny_models_root):
        info = G.object_info(folders=Folders(input=WF / "input"))
        graph = json.loads((WF / f"{name}.json").read_text())
        issues = G.validate_prompt(G.graph_to_api(graph, info), info)
        assert not issues, "\n".join(map(str, issues))
        issues = G.validate_prompt(json.loads((WF / "api" / f"{name}.json").read_text()), info)
        assert not issues, "\n".join(map(str, issues))


@pytest.mark.slow
def test_txt2img(workflow_runs):
    res = workflow_runs("txt2img")
    (png,) = _files(res)
    im = _png(png)
    assert png.name.startswith("txt2img_") and png.parent.name == "spriteforge"
    assert im.size == (SMALL, SMALL) and im.mode == "RGB"
    assert np.asarray(im).std() > 1  # an image, not a constant
    assert "workflow" not in im.info and "prompt" in im.info  # API file: the prompt is embedded


@pytest.mark.slow
def test_flux2_klein_txt2img(workflow_runs):
    res = workflow_runs("flux2_klein_txt2img")
    (png,) = _files(res)
    im = _png(png)
    assert png.name.startswith("flux2_klein_") and im.size == (SMALL, SMALL) and np.asarray(im).std() > 1


@pytest.mark.slow
def test_img2img(workflow_runs):
    res = workflow_runs("img2img")
    (png,) = _files(res)
    assert _png(png).size == (SMALL, SMALL)


@pytest.mark.slow
def test_inpainting_repaints_only_the_transparent_part(workflow_runs):
    res = workflow_runs("inpainting")
    (png,) = _files(res)
    out = np.asarray(_png(png).convert("RGB"), np.int16)
    src_im = _png(Path(res["inputs"]) / "spriteforge_knight_inpaint.png")
    src = np.asarray(src_im.convert("RGB"), np.int16)
    alpha = np.asarray(src_im.getchannel("A"))
    assert out.shape == src.shape
    keep = alpha == 255
    keep[: int(np.argmax(alpha[:, 0] == 255)) + 12] = False  # leave the feathered band out
    assert keep.any() and np.abs(out[keep] - src[keep]).max() <= 2      # kept pixels are the source's
    assert np.abs(out[alpha == 0] - src[alpha == 0]).mean() > 5       # the transparent part was re-drawn


@pytest.mark.slow
def test_tileset_makes_an_indexed_sheet_of_tiles(workflow_runs):
    res = workflow_runs("tileset")
    out = Path(res["out"]) / "spriteforge"
    (sheet,) = sorted(out.glob("tileset_0*.png"))
    atlas = json.loads(sheet.with_suffix(".json").read_text())
    assert len(atlas["frames"]) == (SMALL // 4 // 8) ** 2  # 64 px / downscale 4 = 16 px, 8 px tiles: 2x2
    im = _png(sheet)
    assert im.mode == "P" and len(im.getpalette()) // 3 <= 33  # endesga-32 (+ the transparent index)
    assert sheet.with_suffix(".hex").exists() and sheet.with_suffix(".gpl").exists()
    (texture,) = sorted(out.glob("tileset_texture_*.png"))
    assert _png(texture).mode == "P" and _png(texture).size == (SMALL // 4, SMALL // 4)
    assert _files(res) and any("previews" in str(f) for f in res["files"])


@pytest.mark.slow
def test_sprite_pipeline_writes_indexed_sprites_and_a_sheet(workflow_runs):
    res = workflow_runs("sprite_pipeline")
    out = Path(res["out"]) / "spriteforge"
    sprites = sorted(out.glob("sprite_0*.png"))
    assert len(sprites) == 2  # batch 2 -> two indexed PNGs
    for p in sprites:
        im = _png(p)
        assert im.mode == "P" and im.size == (SMALL // 4, SMALL // 4)
        assert "transparency" in im.info  # index 0 is transparent
    assert sorted(out.glob("sprite_palette*.hex"))
    (sheet,) = sorted(out.glob("sprite_sheet_*.png"))
    assert _png(sheet).mode == "P"
    atlas = json.loads(sheet.with_suffix(".json").read_text())
    assert len(atlas["frames"]) == 2
    previews = [f for f in res["files"] if "previews" in f]
    assert previews and _png(previews[0]).mode == "RGBA"  # the background-removal composite keeps alpha


@pytest.mark.slow
def test_z_image_turbo_sprite_writes_indexed_sprites_and_a_sheet(workflow_runs):
    """Z-Image-Turbo from ComfyUI's files (z_image_turbo_bf16 + qwen_3_4b + ae) -> BiRefNet -> pixel chain."""
    res = workflow_runs("z_image_turbo_sprite")
    out = Path(res["out"]) / "spriteforge"
    sprites = sorted(out.glob("zimage_sprite_0*.png"))
    assert len(sprites) == 2  # batch 2 -> two indexed PNGs
    for p in sprites:
        im = _png(p)
        assert im.mode == "P" and im.size == (SMALL // 4, SMALL // 4) and "transparency" in im.info
    (sheet,) = sorted(out.glob("zimage_sprite_sheet_*.png"))
    assert _png(sheet).mode == "P" and len(json.loads(sheet.with_suffix(".json").read_text())["frames"]) == 2


# --------------------------------------------------------------------------- the same workflows on MLX

MLX_RGB = ["txt2img", "img2img", "inpainting", "flux2_klein_txt2img"]


@pytest.mark.slow
@pytest.mark.parametrize("name", MLX_RGB + ["tileset", "sprite_pipeline", "z_image_turbo_sprite"])
def test_shipped_workflow_on_mlx(workflow_runs, tiny_models_root, tmp_path_factory, name):
    """Every shipped workflow runs with its Load Model engine set to mlx; the pictures of the RGB
    workflows are those of the torch run within 2/255 (same seed), the sprite workflows give the same
    files (their palette k-means is not continuous in its input, so only shapes and transparency are compared)."""
    pytest.importorskip("mlx.core")
    ref = workflow_runs(name)
    res = run_small(name, tiny_models_root, tmp_path_factory.getbasetemp() / "workflow_runs", engine="mlx")
    a, b = sorted(_files(ref), key=lambda p: p.name), sorted(_files(res), key=lambda p: p.name)
    assert [p.name for p in a] == [p.name for p in b] and a
    for pa, pb in zip(a, b):
        ia, ib = _png(pa), _png(pb)
        assert ia.size == ib.size and ia.mode == ib.mode
        if name in MLX_RGB:
            d = np.abs(np.asarray(ia.convert("RGB"), np.int16) - np.asarray(ib.convert("RGB"), np.int16)).max()
            assert d <= 2, f"{pa.name}: max |torch - mlx| = {d}/255"
        elif "A" in ia.getbands() or "transparency" in ia.info:
            ta = np.asarray(ia.convert("RGBA"))[..., 3] > 0
            tb = np.asarray(ib.convert("RGBA"))[..., 3] > 0
            assert (ta != tb).mean() <= 0.02
