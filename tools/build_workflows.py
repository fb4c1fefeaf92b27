"""Generates the shipped workflows: ``NAME.json`` (graph format, what the editor's Save writes),
``api/NAME.json`` (API format for POST /prompt, converted from the graph by
:func:`spriteforge.execution.graph.graph_to_api`, so the two agree by construction), ``NAME.jpg``
(a 256x256 diagram of the graph for the template browser) and the example images in ``input/``.

    python tools/build_workflows.py            # rewrite every file
    python tools/build_workflows.py txt2img    # just one workflow

A workflow is a list of nodes (``N``: id, type, column/row on a left-to-right grid, widget
values by input name), links (``L``: source node + output index -> target node + input name),
groups (titled boxes around node ids) and Note nodes that explain the knobs. ``widgets_values``
follow the node's widget inputs in the editor's order (``graph.widget_slots``), with the extra
``control_after_generate`` value after seed inputs, exactly as the editor saves them.
Model file names are the real release names (see the notes in each workflow).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parents[1] / "example_workflows"  # what this script writes

COL_W = 400          # horizontal pitch of the layout grid
ROW_GAP = 40         # vertical gap between stacked nodes
NODE_W = 340
X0, Y0 = 40, 140
# What the editor draws around and inside a node, so that nothing overlaps after a run (the layout
# pushes nodes down until their boxes, with these, are apart; tests/test_workflow_layout.py checks):
TITLE_H = 30         # the node's title bar, above its pos (LiteGraph.NODE_TITLE_HEIGHT)
BADGE_H = 19         # the SpriteForge engine badge above a model node's title bar (web/spriteforge.js)
GROUP_TITLE_H = 34   # a group's title bar at font_size 24
GROUP_PAD = 20       # group edge around its nodes (the title bar sits above this)
IMAGE_ROOM = 220     # the frontend's image preview under an image-output node's widgets (its min height)
SWATCH_ROOM = 24     # the extension's palette swatch strip (SWATCH_H 16 + margins)
IMAGE_UI_NODES = {"PreviewImage", "SaveImage", "LoadImage", "SpriteForgePixelSaveIndexed",
                  "SpriteForgePixelSpriteSheet", "SpriteForgeSaveAutotileSet"}
PALETTE_UI_NODES = {"SpriteForgePixelPaletteExtract", "SpriteForgePixelPaletteLoad", "SpriteForgePixelQuantize",
                    "SpriteForgePixelMatchReference"}
MODEL_NODES = {"SpriteForgeLoadModel"}
NOTE_COLOR, NOTE_BG = "#432", "#653"


@dataclass
class N:
    id: int
    type: str
    col: float
    row: float = 0          # in units of 120 px; nodes in a column are placed at this offset
    w: dict = field(default_factory=dict)      # widget values by input name (others: the node's defaults)
    title: str | None = None
    cag: str = "fixed"      # control_after_generate value saved after a seed widget
    width: int = NODE_W
    height: int | None = None  # default: from the node's sockets and widgets


@dataclass
class Note:
    id: int
    col: float
    row: float
    text: str
    width: int = NODE_W
    height: int = 200


@dataclass
class L:
    src: int
    out: int
    dst: int
    inp: str


@dataclass
class Group:
    title: str
    ids: list
    color: str = "#3f789e"


@dataclass
class Workflow:
    name: str
    nodes: list
    links: list
    groups: list
    notes: list
    inputs: list = field(default_factory=list)   # example images in input/ the workflow reads


# --------------------------------------------------------------------------- the workflows

FLUX = {"model": "flux1-schnell.safetensors", "vae": "ae.safetensors", "text_encoder_1": "clip_l.safetensors",
        "text_encoder_2": "t5xxl_fp16.safetensors"}
SD35 = {"model": "sd3.5_medium.safetensors", "text_encoder_1": "clip_l.safetensors",
        "text_encoder_2": "clip_g.safetensors", "text_encoder_3": "t5xxl_fp16.safetensors"}
FLUX2_KLEIN = {"model": "flux-2-klein-4b.safetensors", "vae": "flux2-vae.safetensors", "text_encoder_1": "qwen_3_4b.safetensors"}
PIXART = {"model": "PixArt-Sigma-XL-2-1024-MS"}
ZIMAGE = {"model": "z_image_turbo_bf16.safetensors", "vae": "ae.safetensors", "text_encoder_1": "qwen_3_4b.safetensors"}
DEMO = {"model": "spriteforge-demo (built-in)"}

NOTE_FLUX = """MODELS (Flux.1 [schnell], Apache-2.0)
models/diffusion_models/flux1-schnell.safetensors  (black-forest-labs/FLUX.1-schnell)
models/vae/ae.safetensors  (same repository)
models/text_encoders/clip_l.safetensors + t5xxl_fp16.safetensors  (comfyanonymous/flux_text_encoders)

text_encoder_1 = CLIP-L, text_encoder_2 = T5-XXL. Any other SpriteForge family works here too: pick a
PixArt / SD3 / Sana / DiT file or diffusers folder and set the VAE/encoders to (from model) where it has them.
device/dtype 'auto': the first GPU in bf16 (fp32 on the CPU)."""

NOTE_FLUX2 = """MODELS (FLUX.2 [klein] 4B, Apache-2.0)
models/diffusion_models/flux-2-klein-4b.safetensors  (black-forest-labs/FLUX.2-klein-4B, the BFL single file)
models/text_encoders/qwen_3_4b.safetensors  (Qwen3-4B; ComfyUI's qwen25_tokenizer or a qwen_3_4b_tokenizer/ folder
  beside it gives the tokenizer)
models/vae/flux2-vae.safetensors  (the FLUX.2 VAE; both published layouts load)

[klein] 9B: flux-2-klein-9b.safetensors with qwen_3_8b.safetensors. The distilled and base releases share one
layout: SpriteForge says which it cannot tell, so steps and cfg are set here for the distilled one."""

NOTE_SAMPLER_FLUX2 = """SAMPLER KNOBS
steps 4, cfg 1: the distilled [klein] (no CFG, the negative prompt is unused). The base model: about 50 steps, cfg 4.
schedule simple = the FLUX.2 pipelines' sigmas (shift from the image size and the step count).
width/height: multiples of 16."""

NOTE_SD35 = """MODELS (Stable Diffusion 3.5 Medium)
models/checkpoints/sd3.5_medium.safetensors  (stabilityai/stable-diffusion-3.5-medium; MMDiT-X + VAE)
models/text_encoders/clip_l.safetensors, clip_g.safetensors, t5xxl_fp16.safetensors
  (the text_encoders folder of that repository)

text_encoder_1 = CLIP-L, 2 = CLIP-G, 3 = T5-XXL (T5 can be left at (from model) to save memory; prompts then
follow less closely). The VAE comes from the checkpoint."""

NOTE_SAMPLER_FLUX = """SAMPLER KNOBS
steps: schnell is distilled for 4 steps (1-8 work).
cfg 0 = the family's default (Flux: 1 = no CFG, so the negative prompt is unused; schnell ignores 'guidance').
shift 0 = the family's default (schnell: 1).
seed: 'randomize' after each queue; set it to 'fixed' to keep a result.
width/height: multiples of 16; Flux likes 0.5-2 megapixels.
max_side: guard against out-of-memory sizes."""

NOTE_SAMPLER_SD3 = """SAMPLER KNOBS
denoise: how much of the input is re-drawn (0.3 = keep the composition and colours, 0.6 = same layout,
new details, 1.0 = ignore the input). Only steps x denoise steps actually run.
cfg 0 = SD3's default 5 (4-5.5 suits 3.5 Medium); shift 0 = SD3's default 3.
The image size comes from the input image (rounded to a multiple of 16; VAE Encode's max_side caps it),
so width/height are not used here."""

NOTE_INPAINT = """INPAINTING
Open the image in the Load Image node's mask editor (right click > Open in MaskEditor) and paint over the part
to re-draw; Save. Painted = transparent in the saved PNG, and Load Image's MASK is 1 where the PNG is
transparent, which is what SpriteForge Sampler's mask means (1 = repaint). The shipped example has the
sky above the knight transparent.

denoise 1.0 re-draws the masked part from scratch (lower keeps some of what is there).
mask_feather: soft edge in pixels between repainted and kept pixels.
VAE Decode pastes the result over the original outside the mask, so unmasked pixels stay exact.
Flux Fill inpaints natively with the same graph: load flux1-fill-dev.safetensors with vae ae.safetensors,
text encoders clip_l + t5xxl_fp16 (text_encoder_3 back to (from model)), cfg 0 and guidance 30."""

NOTE_TILESET = """SEAMLESS TILESET
tile = true makes the sampler wrap the image around both edges (circular padding), so the texture repeats
without seams; VAE Decode then decodes it seamlessly as well (its own tile switch turns on automatically
for tiled latents).

Pixel Downscale: 1024 / factor 8 = a 128x128 pixel-art texture (kcentroid keeps each cell's dominant colour).
Palette: endesga-32 (any shipped Lospec palette, or a .hex/.gpl/.pal file in 'file').
Slice Tileset: 32x32 tiles = a 4x4 set; every tile continues into its neighbours, the outer ones wrap.
Save Sprite Sheet: the tiles with 1 px padding as an indexed PNG + JSON atlas (TexturePacker hash format)
+ the palette as .hex and .gpl, in output/spriteforge/."""

NOTE_SPRITE_MODEL = """MODEL (PixArt-Sigma)
models/diffusers/PixArt-Sigma-XL-2-1024-MS  (the whole PixArt-alpha/PixArt-Sigma-XL-2-1024-MS repository folder:
transformer, vae, text_encoder (T5), tokenizer, scheduler). Everything comes from the folder, so VAE and
text encoders stay at (from model).

batch_size 4 = four variations (seed, seed+1, ...), which become the frames of the sprite sheet.
cfg 0 = PixArt's default 4.5. Ask for a plain background: it makes background removal easy."""

NOTE_RMBG = """BACKGROUND REMOVAL (BiRefNet)
models/birefnet/BiRefNet_lite.safetensors = model.safetensors of ZhengPeng7/BiRefNet_lite, renamed so the variant
is recognised (BiRefNet-general.safetensors / BiRefNet_HR.safetensors work too: larger, slower, finer).

resolution 0 = the variant's own (1024). threshold 0.5 gives the hard alpha pixel art needs (0 = soft matte).
fill_holes / remove_islands clean the mask (pixels). The outputs: foreground colours + mask (1 = sprite),
and an RGBA composite (previewed here)."""

NOTE_PIXEL = """PIXEL ART
Pixel Downscale: factor 16 turns 1024 px into a 64x64 sprite (kcentroid = dominant colour per 16x16 cell,
'contrast' keeps thin dark outlines). The mask is downscaled with it.
Pixel Palette Extract: one 16-colour palette for all frames (so the sheet does not flicker); transparent
pixels are ignored. Swap in Pixel Palette Load for a fixed Lospec palette.
Pixel Alpha Cleanup: hard 0/1 alpha, removes specks (min_island) and pinholes (max_hole), stray pixels;
'outline' adds a 1 px outline (colour #rrggbb or index:N of the palette).
Pixel Quantize: every pixel onto the palette (dither none for crisp sprites; fs/bayer for gradients).

OUTPUT (output/spriteforge/)
sprite_00001_.png ... indexed PNGs (mode P, index 0 transparent) + sprite_palette .hex
sprite_sheet_00001_.png + .json atlas + .hex/.gpl palette."""


def txt2img() -> Workflow:
    nodes = [
        N(4, "SpriteForgeLoadModel", 0, 0, FLUX),
        N(6, "SpriteForgeEncodePrompt", 1, 0, {
            "positive": "pixel art sprite of a knight in silver armour with a red cape, full body, side view, "
                        "plain white background",
            "negative": "", "guidance": 3.5}),
        N(9, "SpriteForgeSampler", 2, 0, {"seed": 42, "steps": 4, "sampler": "euler", "schedule": "simple",
                                          "width": 1024, "height": 1024}, cag="randomize"),
        N(10, "SpriteForgeVAEDecode", 3, 0),
        N(11, "SaveImage", 4, 0, {"filename_prefix": "spriteforge/txt2img"}),
    ]
    links = [L(4, 0, 6, "model"), L(4, 0, 9, "model"), L(6, 0, 9, "conditioning"), L(4, 0, 10, "model"),
             L(9, 0, 10, "latent"), L(10, 0, 11, "images")]
    notes = [Note(20, 0, 2.7, NOTE_FLUX, height=260), Note(21, 3, 1.6, NOTE_SAMPLER_FLUX, width=740, height=200)]
    groups = [Group("Model", [4, 20], "#3f789e"), Group("Prompt and sampling", [6, 9], "#8a8a3f"),
              Group("Decode and save", [10, 11], "#3f8a5a")]
    return Workflow("txt2img", nodes, links, groups, notes)


def flux2_klein_txt2img() -> Workflow:
    nodes = [
        N(4, "SpriteForgeLoadModel", 0, 0, FLUX2_KLEIN),
        N(6, "SpriteForgeEncodePrompt", 1, 0, {
            "positive": "pixel art sprite of a knight in silver armour with a red cape, full body, side view, "
                        "plain white background",
            "negative": ""}),
        N(9, "SpriteForgeSampler", 2, 0, {"seed": 42, "steps": 4, "cfg": 1.0, "sampler": "euler", "schedule": "simple",
                                          "width": 1024, "height": 1024}, cag="randomize"),
        N(10, "SpriteForgeVAEDecode", 3, 0),
        N(11, "SaveImage", 4, 0, {"filename_prefix": "spriteforge/flux2_klein"}),
    ]
    links = [L(4, 0, 6, "model"), L(4, 0, 9, "model"), L(6, 0, 9, "conditioning"), L(4, 0, 10, "model"),
             L(9, 0, 10, "latent"), L(10, 0, 11, "images")]
    notes = [Note(20, 0, 2.7, NOTE_FLUX2, height=260), Note(21, 3, 1.6, NOTE_SAMPLER_FLUX2, width=740, height=160)]
    groups = [Group("Model", [4, 20], "#3f789e"), Group("Prompt and sampling", [6, 9], "#8a8a3f"),
              Group("Decode and save", [10, 11], "#3f8a5a")]
    return Workflow("flux2_klein_txt2img", nodes, links, groups, notes)


def img2img() -> Workflow:
    nodes = [
        N(1, "SpriteForgeLoadModel", 0, 0, SD35),
        N(2, "LoadImage", 0, 5.6, {"image": "spriteforge_knight.png"}, height=380),
        N(3, "SpriteForgeEncodePrompt", 1, 0, {
            "positive": "detailed pixel art of a knight in golden armour standing in a green meadow, blue sky, "
                        "16-bit game style",
            "negative": "blurry, photo, jpeg artifacts, text, watermark"}),
        N(4, "SpriteForgeVAEEncode", 1, 5.6, {"max_side": 2048}),
        N(5, "SpriteForgeSampler", 2, 0, {"seed": 7, "steps": 28, "sampler": "euler", "schedule": "normal",
                                          "cfg": 4.5, "denoise": 0.6, "width": 1024, "height": 1024},
          cag="randomize"),
        N(6, "SpriteForgeVAEDecode", 3, 0),
        N(7, "SaveImage", 4, 0, {"filename_prefix": "spriteforge/img2img"}),
    ]
    links = [L(1, 0, 3, "model"), L(1, 0, 4, "model"), L(2, 0, 4, "image"), L(1, 0, 5, "model"),
             L(3, 0, 5, "conditioning"), L(4, 0, 5, "latent"), L(1, 0, 6, "model"), L(5, 0, 6, "latent"),
             L(6, 0, 7, "images")]
    notes = [Note(20, 0, 2.7, NOTE_SD35, height=230), Note(21, 3, 1.6, NOTE_SAMPLER_SD3, width=740, height=200)]
    groups = [Group("Model", [1, 20], "#3f789e"), Group("Input image", [2, 4], "#a1309b"),
              Group("Prompt and sampling", [3, 5], "#8a8a3f"), Group("Decode and save", [6, 7], "#3f8a5a")]
    return Workflow("img2img", nodes, links, groups, notes, inputs=["spriteforge_knight.png"])


def inpainting() -> Workflow:
    nodes = [
        N(1, "SpriteForgeLoadModel", 0, 0, SD35),
        N(2, "LoadImage", 0, 5.6, {"image": "spriteforge_knight_inpaint.png"}, height=380),
        N(3, "SpriteForgeEncodePrompt", 1, 0, {
            "positive": "pixel art, a red dragon flying in a stormy sky, 16-bit game style",
            "negative": "blurry, photo, jpeg artifacts, text, watermark"}),
        N(4, "SpriteForgeVAEEncode", 1, 5.6, {"max_side": 2048}),
        N(5, "SpriteForgeSampler", 2, 0, {"seed": 11, "steps": 28, "sampler": "euler", "schedule": "normal",
                                          "cfg": 4.5, "denoise": 1.0, "width": 1024, "height": 1024,
                                          "mask_feather": 8}, cag="randomize"),
        N(6, "SpriteForgeVAEDecode", 3, 0),
        N(7, "SaveImage", 4, 0, {"filename_prefix": "spriteforge/inpaint"}),
    ]
    links = [L(1, 0, 3, "model"), L(1, 0, 4, "model"), L(2, 0, 4, "image"), L(1, 0, 5, "model"),
             L(3, 0, 5, "conditioning"), L(4, 0, 5, "latent"), L(2, 1, 5, "mask"), L(1, 0, 6, "model"),
             L(5, 0, 6, "latent"), L(6, 0, 7, "images")]
    notes = [Note(20, 0, 2.7, NOTE_SD35, height=230), Note(21, 3, 1.6, NOTE_INPAINT, width=740, height=260)]
    groups = [Group("Model", [1, 20], "#3f789e"), Group("Image and mask", [2, 4], "#a1309b"),
              Group("Prompt and inpainting", [3, 5], "#8a8a3f"), Group("Decode and save", [6, 7], "#3f8a5a")]
    return Workflow("inpainting", nodes, links, groups, notes, inputs=["spriteforge_knight_inpaint.png"])


def tileset() -> Workflow:
    nodes = [
        N(1, "SpriteForgeLoadModel", 0, 0, FLUX),
        N(2, "SpriteForgeEncodePrompt", 1, 0, {
            "positive": "seamless top-down texture of mossy cobblestones and grass, pixel art game tile, "
                        "flat lighting", "negative": ""}),
        N(3, "SpriteForgeSampler", 2, 0, {"seed": 3, "steps": 4, "sampler": "euler", "schedule": "simple",
                                          "width": 1024, "height": 1024, "tile": True}, cag="randomize"),
        N(4, "SpriteForgeVAEDecode", 3, 0, {"tile": True}),
        N(5, "PreviewImage", 3, 1.5, height=300),
        N(6, "SpriteForgePixelDownscale", 4, 0, {"method": "kcentroid", "mode": "factor", "factor": 8}),
        N(7, "SpriteForgePixelPaletteLoad", 4, 2.4, {"name": "endesga-32", "file": ""}),
        N(8, "SpriteForgePixelQuantize", 5, 0, {"dither": "none", "strength": 1.0, "protect_edges": True}),
        N(9, "SpriteForgePixelSaveIndexed", 6, 3.2, {"filename_prefix": "spriteforge/tileset_texture",
                                                      "upscale": 1}),
        N(10, "SpriteForgePixelSliceTiles", 6, 0, {"tile_width": 32, "tile_height": 32, "skip_empty": False}),
        N(11, "SpriteForgePixelSpriteSheet", 7, 0, {"filename_prefix": "spriteforge/tileset", "columns": 4,
                                                     "padding": 1, "indexed": True}),
    ]
    links = [L(1, 0, 2, "model"), L(1, 0, 3, "model"), L(2, 0, 3, "conditioning"), L(1, 0, 4, "model"),
             L(3, 0, 4, "latent"), L(4, 0, 5, "images"), L(4, 0, 6, "image"), L(6, 0, 8, "image"),
             L(7, 0, 8, "palette"), L(8, 0, 9, "images"), L(7, 0, 9, "palette"), L(8, 0, 10, "image"),
             L(10, 0, 11, "images"), L(7, 0, 11, "palette")]
    notes = [Note(20, 0, 2.7, NOTE_FLUX, height=260), Note(21, 4, 5.6, NOTE_TILESET, width=740, height=320)]
    groups = [Group("Model", [1, 20], "#3f789e"), Group("Seamless texture", [2, 3, 4, 5], "#8a8a3f"),
              Group("Pixel art", [6, 7, 8], "#a1309b"), Group("Tileset", [9, 10, 11], "#3f8a5a")]
    return Workflow("tileset", nodes, links, groups, notes)


def _rmbg_to_sheet(b: int, image: int, sprite: str, sheet: str) -> tuple[list, list]:
    """The shared tail of the sprite workflows, nodes ``b`` .. ``b + 8`` in columns 4-8: BiRefNet background
    removal of node ``image``'s IMAGE, a preview, downscale, palette, alpha clean-up, quantize, then the indexed
    sprites (``spriteforge/<sprite>``) and their sheet (``spriteforge/<sheet>``)."""
    nodes = [
        N(b, "SpriteForgeLoadBiRefNet", 4, 0, {"model_name": "BiRefNet_lite.safetensors", "variant": "auto"}),
        N(b + 1, "SpriteForgeRemoveBackground", 4, 2.3, {"resolution": 0, "threshold": 0.5, "fill_holes": 64,
                                                        "remove_islands": 256, "foreground": "ml",
                                                        "composite": "alpha"}),
        N(b + 2, "PreviewImage", 4, 6.0, height=300),
        N(b + 3, "SpriteForgePixelDownscale", 5, 0, {"method": "kcentroid", "mode": "factor", "factor": 16}),
        N(b + 4, "SpriteForgePixelPaletteExtract", 5, 2.6, {"colors": 16, "method": "kmeans", "seed": 0}),
        N(b + 5, "SpriteForgePixelAlphaCleanup", 6, 0, {"threshold": 0.5, "min_island": 4, "max_hole": 4,
                                                         "strays": True, "outline": False, "bleed": True}),
        N(b + 6, "SpriteForgePixelQuantize", 7, 0, {"dither": "none", "strength": 1.0, "protect_edges": True}),
        N(b + 7, "SpriteForgePixelSaveIndexed", 8, 0, {"filename_prefix": f"spriteforge/{sprite}", "upscale": 1}),
        N(b + 8, "SpriteForgePixelSpriteSheet", 8, 2.2, {"filename_prefix": f"spriteforge/{sheet}", "columns": 0,
                                                          "padding": 1, "indexed": True, "frame_duration_ms": 100}),
    ]
    rm, small, pal, clean, quant = b + 1, b + 3, b + 4, b + 5, b + 6
    links = [L(b, 0, rm, "birefnet"), L(image, 0, rm, "image"), L(rm, 2, b + 2, "images"),
             L(rm, 0, small, "image"), L(rm, 1, small, "mask"), L(small, 0, pal, "image"), L(small, 1, pal, "mask"),
             L(small, 0, clean, "image"), L(small, 1, clean, "mask"), L(pal, 0, clean, "palette"),
             L(clean, 0, quant, "image"), L(pal, 0, quant, "palette"), L(clean, 1, quant, "mask")]
    for save in (b + 7, b + 8):
        links += [L(quant, 0, save, "images"), L(pal, 0, save, "palette"), L(quant, 1, save, "mask")]
    return nodes, links


def sprite_pipeline() -> Workflow:
    rmbg_nodes, rmbg_links = _rmbg_to_sheet(5, 4, "sprite", "sprite_sheet")
    nodes = [
        N(1, "SpriteForgeLoadModel", 0, 0, PIXART),
        N(2, "SpriteForgeEncodePrompt", 1, 0, {
            "positive": "a pixel art sprite of a small red dragon, full body, centered, game asset, "
                        "plain white background",
            "negative": "text, watermark, blurry, cropped, frame, busy background"}),
        N(3, "SpriteForgeSampler", 2, 0, {"seed": 1, "steps": 20, "sampler": "dpmpp_2m", "schedule": "normal",
                                          "batch_size": 4, "width": 1024, "height": 1024}, cag="randomize"),
        N(4, "SpriteForgeVAEDecode", 3, 0),
        *rmbg_nodes,
    ]
    links = [L(1, 0, 2, "model"), L(1, 0, 3, "model"), L(2, 0, 3, "conditioning"), L(1, 0, 4, "model"),
             L(3, 0, 4, "latent"), *rmbg_links]
    notes = [Note(20, 0, 2.7, NOTE_SPRITE_MODEL, height=250), Note(21, 1, 5.5, NOTE_RMBG, width=740, height=250),
             Note(22, 5, 5.6, NOTE_PIXEL, width=1140, height=330)]
    groups = [Group("Generate", [1, 2, 3, 4, 20], "#3f789e"), Group("Remove background", [5, 6, 7], "#8a8a3f"),
              Group("Pixel art", [8, 9, 10, 11], "#a1309b"), Group("Save", [12, 13], "#3f8a5a")]
    return Workflow("sprite_pipeline", nodes, links, groups, notes)


NOTE_ZIMAGE = """MODEL (Z-Image-Turbo, Apache-2.0; ComfyUI's repackaged files, Comfy-Org/z_image_turbo)
models/diffusion_models/z_image_turbo_bf16.safetensors
models/text_encoders/qwen_3_4b.safetensors  (Qwen3-4B; its tokenizer: ComfyUI's own, or a folder beside the file)
models/vae/ae.safetensors  (the Flux.1 VAE)

Turbo is distilled for 8 steps without CFG: cfg 1, euler, shift 0 = its scheduler's 3.0. It reads long,
descriptive prompts well. batch_size 4 = four variations (seed, seed+1, ...), the frames of the sheet.
Ask for a plain background: it makes background removal easy."""


def z_image_turbo_sprite() -> Workflow:
    rmbg_nodes, rmbg_links = _rmbg_to_sheet(5, 4, "zimage_sprite", "zimage_sprite_sheet")
    nodes = [
        N(1, "SpriteForgeLoadModel", 0, 0, ZIMAGE),
        N(2, "SpriteForgeEncodePrompt", 1, 0, {
            "positive": "a pixel art game sprite of a small green slime monster with big eyes, full body, centered, "
                        "crisp outline, plain white background",
            "negative": ""}),
        N(3, "SpriteForgeSampler", 2, 0, {"seed": 1, "steps": 8, "sampler": "euler", "schedule": "normal", "cfg": 1.0,
                                          "batch_size": 4, "width": 1024, "height": 1024}, cag="randomize"),
        N(4, "SpriteForgeVAEDecode", 3, 0),
        *rmbg_nodes,
    ]
    links = [L(1, 0, 2, "model"), L(1, 0, 3, "model"), L(2, 0, 3, "conditioning"), L(1, 0, 4, "model"),
             L(3, 0, 4, "latent"), *rmbg_links]
    notes = [Note(20, 0, 2.7, NOTE_ZIMAGE, width=740, height=250), Note(21, 1, 5.5, NOTE_RMBG, width=740, height=250),
             Note(22, 5, 5.6, NOTE_PIXEL, width=1140, height=330)]
    groups = [Group("Generate (Z-Image-Turbo)", [1, 2, 3, 4, 20], "#3f789e"), Group("Remove background", [5, 6, 7], "#8a8a3f"),
              Group("Pixel art", [8, 9, 10, 11], "#a1309b"), Group("Save", [12, 13], "#3f8a5a")]
    return Workflow("z_image_turbo_sprite", nodes, links, groups, notes)


NOTE_DEMO = """BUILT-IN DEMO MODEL (no download needed)
'spriteforge-demo (built-in)' is the small PixArt-Sigma-style model that ships with SpriteForge
(demo_model/, Apache-2.0): 32x32 game sprites on a magenta key colour, trained on procedural sprites.
Prompts use its vocabulary: [small|large] <colour> <object> [with outline], e.g. 'red potion',
'small blue gem with outline'. Objects: potion, sword, shield, gem, coin, heart, key, tree, slime, chest,
mushroom, star. Colours: red, orange, yellow, green, cyan, blue, purple, pink, white, gray, brown, gold.

batch_size 8 = eight variations (seed, seed+1, ...), the frames of the sheet. Keep 32x32."""

NOTE_DEMO_PIXEL = """FROM SPRITE TO GAME ASSET
Key Colour to Alpha: the magenta background becomes exact 0/1 alpha (nothing else is removed: the
sprite's own pixels keep alpha 1); decontaminate takes the magenta out of the edge pixels (no fringe).
Palette Extract: one palette for all frames (no flicker). Alpha Cleanup + Quantize: hard alpha, specks
under min_island (8) pixels removed, every pixel on the palette.
OUTPUT (output/spriteforge/): demo_sprite_*.png (indexed, index 0 transparent) and
demo_sheet_*.png + .json atlas + .hex/.gpl palette."""


def sprite_demo() -> Workflow:
    nodes = [
        N(1, "SpriteForgeLoadModel", 0, 0, DEMO),
        N(2, "SpriteForgeEncodePrompt", 1, 0, {"positive": "red potion", "negative": ""}),
        N(3, "SpriteForgeSampler", 2, 0, {"seed": 0, "steps": 20, "sampler": "dpmpp_2m", "schedule": "normal",
                                          "cfg": 4.5, "batch_size": 8, "width": 32, "height": 32}, cag="fixed"),
        N(4, "SpriteForgeVAEDecode", 3, 0),
        N(5, "SpriteForgePixelKeyToAlpha", 4, 0, {"key_color": "#ff00ff", "threshold": 0.3, "decontaminate": True}),
        N(6, "SpriteForgePixelPaletteExtract", 5, 0, {"colors": 16, "method": "kmeans", "seed": 0}),
        N(7, "SpriteForgePixelAlphaCleanup", 6, 0, {"threshold": 0.5, "min_island": 8, "max_hole": 2,
                                                     "strays": False, "outline": False, "bleed": True}),
        N(8, "SpriteForgePixelQuantize", 7, 0, {"dither": "none", "strength": 1.0, "protect_edges": True}),
        N(9, "SpriteForgePixelSaveIndexed", 8, 0, {"filename_prefix": "spriteforge/demo_sprite", "upscale": 1}),
        N(10, "SpriteForgePixelSpriteSheet", 8, 2.2, {"filename_prefix": "spriteforge/demo_sheet", "columns": 0,
                                                      "padding": 1, "indexed": True, "frame_duration_ms": 100}),
    ]
    links = [L(1, 0, 2, "model"), L(1, 0, 3, "model"), L(2, 0, 3, "conditioning"), L(1, 0, 4, "model"),
             L(3, 0, 4, "latent"), L(4, 0, 5, "image"), L(5, 0, 6, "image"), L(5, 1, 6, "mask"),
             L(5, 0, 7, "image"), L(5, 1, 7, "mask"), L(6, 0, 7, "palette"), L(7, 0, 8, "image"),
             L(6, 0, 8, "palette"), L(7, 1, 8, "mask"), L(8, 0, 9, "images"), L(6, 0, 9, "palette"),
             L(8, 1, 9, "mask"), L(8, 0, 10, "images"), L(6, 0, 10, "palette"), L(8, 1, 10, "mask")]
    notes = [Note(20, 0, 2.7, NOTE_DEMO, width=740, height=260), Note(21, 4, 2.7, NOTE_DEMO_PIXEL, width=740, height=200)]
    groups = [Group("Generate (built-in model)", [1, 2, 3, 4, 20], "#3f789e"),
              Group("Pixel art", [5, 6, 7, 8, 21], "#a1309b"), Group("Save", [9, 10], "#3f8a5a")]
    return Workflow("sprite_demo", nodes, links, groups, notes)


SDXL = {"ckpt_name": "sd_xl_base_1.0.safetensors"}
NOTE_SDXL_MODEL = """MODELS (core ComfyUI loaders: any SD1.x / SDXL checkpoint and LoRA works)
models/checkpoints/sd_xl_base_1.0.safetensors  (stabilityai/stable-diffusion-xl-base-1.0)
models/loras/pixel-art-xl.safetensors  (nerijs/pixel-art-xl, a kohya SDXL LoRA; any SDXL LoRA works)
Load Checkpoint gives MODEL, CLIP and VAE; Load LoRA patches MODEL and CLIP (strength 0-1.2).
Put 'pixel art' in the prompt (the LoRA's trigger) and ask for a plain background."""
NOTE_SDXL_SAMPLER = """SPRITEFORGE KSAMPLER on ComfyUI's MODEL
Same knobs as KSampler, with SpriteForge's samplers and schedules: the starting noise is made on the
CPU from the seed, batch item i = seed + i, so a frame looks the same on every GPU and at any batch size.
cfg 5-8 suits SDXL; cfg_rescale 0.3-0.7 tames over-saturated colours at high cfg.
dynamic_threshold (e.g. 0.995) clamps extreme latents; tile makes seamless textures.
Empty Latent Image: 1024x1024 (SDXL's size), batch 4 = four frames for the sheet."""


def sdxl_pixel_art() -> Workflow:
    rmbg_nodes, rmbg_links = _rmbg_to_sheet(8, 7, "sdxl_sprite", "sdxl_sheet")
    nodes = [
        N(1, "CheckpointLoaderSimple", 0, 0, SDXL),
        N(2, "LoraLoader", 0, 1.6, {"lora_name": "pixel-art-xl.safetensors", "strength_model": 1.0,
                                    "strength_clip": 1.0}),
        N(3, "CLIPTextEncode", 1, 0, {"text": "pixel art, a small red dragon, full body, centered, game asset, "
                                              "plain white background"}, height=160),
        N(4, "CLIPTextEncode", 1, 2.2, {"text": "text, watermark, blurry, 3d render, photo, busy background"},
          height=160),
        N(5, "EmptyLatentImage", 1, 4.4, {"width": 1024, "height": 1024, "batch_size": 4}),
        N(6, "SpriteForgeKSampler", 2, 0, {"seed": 1, "steps": 20, "cfg": 7.0, "sampler": "dpmpp_2m",
                                           "schedule": "karras", "denoise": 1.0}, cag="randomize"),
        N(7, "VAEDecode", 3, 0),
        *rmbg_nodes,
    ]
    links = [L(1, 0, 2, "model"), L(1, 1, 2, "clip"), L(2, 1, 3, "clip"), L(2, 1, 4, "clip"),
             L(2, 0, 6, "model"), L(3, 0, 6, "positive"), L(4, 0, 6, "negative"), L(5, 0, 6, "latent_image"),
             L(6, 0, 7, "samples"), L(1, 2, 7, "vae"), *rmbg_links]
    notes = [Note(20, 0, 6.4, NOTE_SDXL_MODEL, width=740, height=230),
             Note(21, 2, 3.2, NOTE_SDXL_SAMPLER, width=740, height=250),
             Note(22, 4, 8.8, NOTE_RMBG, width=740, height=250),
             Note(23, 6, 3.0, NOTE_PIXEL, width=1140, height=330)]
    groups = [Group("SDXL + pixel-art LoRA (core loaders)", [1, 2, 3, 4, 5, 20], "#3f789e"),
              Group("Sample (SpriteForge)", [6, 7, 21], "#3f789e"),
              Group("Remove background", [8, 9, 10], "#8a8a3f"),
              Group("Pixel art", [11, 12, 13, 14], "#a1309b"), Group("Save", [15, 16], "#3f8a5a")]
    return Workflow("sdxl_pixel_art", nodes, links, groups, notes)


NOTE_AUTOTILE = """AUTOTILE SET (Godot and Tiled)
terrain_a / terrain_b: prompts of the two terrains; terrain_b empty = terrain and transparency (islands, platforms).
layout: wang16 (16 corner tiles, Tiled 'corner' wangset, Godot 'match corners'), blob47 (47 edge+corner tiles,
Tiled 'mixed', Godot 'match corners and sides'), dualgrid (the 16 corner tiles in the dual-grid order).
Each terrain is made as a seamless texture, each tile joins them along a noisy boundary that is then redrawn by
masked, wrapped inpainting; tiles that may touch continue into each other. One palette (colors) for the set.
scale 0 = generate near the model's own size, then downscale to tile_size.
Any model works: load another family in Load Model and write its kind of prompt.

OUTPUT (output/spriteforge/): autotile.png (indexed sheet), autotile.json (atlas: rectangle + terrain code per
tile), autotile.tsx (Tiled tileset with a wangset), autotile.tres (Godot 4 TileSet with terrain peering bits)."""


def autotile() -> Workflow:
    nodes = [
        N(1, "SpriteForgeLoadModel", 0, 0, DEMO),
        N(2, "SpriteForgeMakeAutotileSet", 1, 0, {"terrain_a": "grass", "terrain_b": "water",
                                                     "layout": "wang16", "tile_size": 16, "scale": 0, "seed": 0,
                                                     "steps": 20, "inpaint_steps": 20, "strength": 0.75,
                                                     "colors": 16, "batch": 8}, cag="fixed"),
        N(3, "SpriteForgeSaveAutotileSet", 2, 0, {"filename_prefix": "spriteforge/autotile"}),
        N(4, "PreviewImage", 2, 1.5, height=300),
    ]
    links = [L(1, 0, 2, "model"), L(2, 2, 3, "autotile"), L(2, 0, 4, "images")]
    notes = [Note(20, 0, 2.7, NOTE_DEMO, width=740, height=260),
             Note(21, 2, 4.6, NOTE_AUTOTILE, width=740, height=300)]
    groups = [Group("Model (built-in)", [1, 20], "#3f789e"), Group("Autotile set", [2], "#8a8a3f"),
              Group("Save for Godot / Tiled", [3, 4], "#3f8a5a")]
    return Workflow("autotile", nodes, links, groups, notes)


NOTE_VARIANTS_MODEL = """MODELS (FLUX.2 [klein] 4B, Apache-2.0: it edits from reference images)
models/diffusion_models/flux-2-klein-4b.safetensors  (black-forest-labs/FLUX.2-klein-4B, the BFL single file)
models/text_encoders/qwen_3_4b.safetensors  (Qwen3-4B; ComfyUI's qwen25_tokenizer or a qwen_3_4b_tokenizer/ folder
  beside it gives the tokenizer)
models/vae/flux2-vae.safetensors  (the FLUX.2 VAE)

THE REFERENCE: input/spriteforge_knight_sprite.png, a 32x32 indexed sprite with a transparent background. Load
your own sprite at its native size (what the sprite chain's Save Indexed writes at upscale 1). Reference Sprite
for Edit enlarges it by a whole factor (32 -> 1024) onto the flat magenta key colour, the picture every Edit sees."""

NOTE_VARIANTS = """VARIANTS
Each Edit node asks for one variant of the same sprite (steps 4, cfg 1: the distilled [klein]; width/height 0 =
the reference's size). Keep 'flat magenta background' in the instructions: Match Reference Sprite keys it out.

MATCH REFERENCE SPRITE locks every variant to the reference: the reference's size (1024 / 32 = 32x32 cells,
kcentroid = each cell's dominant colour), only the reference's colours (its palette output), alpha exactly 0/1
(alpha 'key': the magenta background becomes transparent, so a variant may change its silhouette; 'reference'
keeps the reference's silhouette pixel for pixel, for pure recolours). An opaque reference gives opaque variants.

OUTPUT (output/spriteforge/variants/): knight_recolour_*.png, knight_damaged_*.png, knight_night_*.png,
knight_left_*.png, knight_back_*.png: indexed PNGs with the reference's palette (and .hex), and knight_sheet_*.png:
the reference and the five variants in one indexed sheet + JSON atlas + .hex/.gpl palette."""

VARIANTS = [
    ("recolour", "Recolour the knight: golden armour and a blue cape. Keep the same pose, the same pixel-art style "
                 "and the flat magenta background."),
    ("damaged", "The same knight after a hard battle: dented, scratched armour and a torn cape. Keep the same pose, "
                "the same pixel-art style and the flat magenta background."),
    ("night", "The same knight at night: darker, moonlit shading. Keep the same pose, the same pixel-art style and "
              "the flat magenta background."),
    ("left", "The same knight facing left. Keep the same pixel-art style and the flat magenta background."),
    ("back", "The same knight seen from behind, facing away from the viewer. Keep the same pixel-art style and the "
             "flat magenta background."),
]


def sprite_variants() -> Workflow:
    ref = {"reference": (2, 0), "reference_mask": (2, 1)}
    match_w = {"grid": "reference size", "method": "kcentroid", "fit": "scale", "alpha": "key",
               "key_color": "#ff00ff", "threshold": 0.3, "dither": "none", "invert_reference_mask": True}
    nodes = [
        N(1, "SpriteForgeLoadModel", 0, 0, FLUX2_KLEIN),
        N(2, "LoadImage", 0, 4.2, {"image": "spriteforge_knight_sprite.png"}, height=380),
        N(3, "SpriteForgePixelEditReference", 1, 0, {"size": 1024, "multiple": 16, "key_color": "#ff00ff",
                                                     "invert_mask": True}),
        N(20, "SpriteForgePixelMatchReference", 3, 0, match_w, title="Match Reference Sprite (the reference)"),
    ]
    links = [L(2, 0, 3, "image"), L(2, 1, 3, "mask"), L(3, 0, 20, "image")]
    links += [L(src, out, 20, inp) for inp, (src, out) in ref.items()]
    for k, (name, text) in enumerate(VARIANTS):
        edit, match, save = 10 + k, 21 + k, 30 + k
        nodes += [
            N(edit, "SpriteForgeEdit", 2, 2.4 + 5.4 * k, {"prompt": text, "negative": "", "seed": 100 + k, "steps": 4,
                                                         "cfg": 1.0, "width": 0, "height": 0, "batch_size": 1},
              title=f"Edit: {name}"),
            N(match, "SpriteForgePixelMatchReference", 3, 2.4 + 5.4 * k, match_w, title=f"Match Reference Sprite: {name}"),
            N(save, "SpriteForgePixelSaveIndexed", 4, 2.4 + 5.4 * k,
              {"filename_prefix": f"spriteforge/variants/knight_{name}", "upscale": 1}),
        ]
        links += [L(1, 0, edit, "model"), L(3, 0, edit, "reference_1"), L(edit, 0, match, "image"),
                  L(match, 0, save, "images"), L(match, 2, save, "palette"), L(match, 1, save, "mask")]
        links += [L(src, out, match, inp) for inp, (src, out) in ref.items()]
    nodes += [
        N(40, "SpriteForgePixelBatch", 5, 0),
        N(41, "SpriteForgePixelSpriteSheet", 6, 0, {"filename_prefix": "spriteforge/variants/knight_sheet",
                                                    "columns": 6, "padding": 1, "indexed": True,
                                                    "frame_duration_ms": 100}),
    ]
    links += [L(20, 0, 40, "image_1"), L(20, 1, 40, "mask_1")]
    links += [L(21 + k, j, 40, f"{('image', 'mask')[j]}_{k + 2}") for k in range(len(VARIANTS)) for j in (0, 1)]
    links += [L(40, 0, 41, "images"), L(40, 1, 41, "mask"), L(20, 2, 41, "palette")]
    notes = [Note(50, 0, 8.0, NOTE_VARIANTS_MODEL, width=740, height=300),
             Note(51, 5, 4.0, NOTE_VARIANTS, width=740, height=400)]
    groups = [Group("Model and reference sprite", [1, 2, 3, 50], "#3f789e"),
              Group("Edit into variants (FLUX.2 [klein])", [10 + k for k in range(len(VARIANTS))], "#8a8a3f"),
              Group("Lock to the reference's grid and palette", [20] + [21 + k for k in range(len(VARIANTS))], "#a1309b"),
              Group("Save", [30 + k for k in range(len(VARIANTS))] + [40, 41], "#3f8a5a")]
    return Workflow("sprite_variants", nodes, links, groups, notes, inputs=["spriteforge_knight_sprite.png"])



WORKFLOWS = {"txt2img": txt2img, "img2img": img2img, "tileset": tileset, "inpainting": inpainting,
             "sprite_pipeline": sprite_pipeline, "sprite_demo": sprite_demo, "sdxl_pixel_art": sdxl_pixel_art, "autotile": autotile,
             "z_image_turbo_sprite": z_image_turbo_sprite, "flux2_klein_txt2img": flux2_klein_txt2img,
             "sprite_variants": sprite_variants}


# --------------------------------------------------------------------------- graph assembly

def _widget_values(desc: dict, values: dict, cag: str) -> list:
    from spriteforge.execution import graph as G

    unknown = set(values) - {n for n, *_ in G.ordered_inputs(desc)}
    if unknown:
        raise KeyError(f"{desc['name']}: no inputs {sorted(unknown)}")
    out = []
    slots = G.widget_slots(desc)
    for i, name in enumerate(slots):
        if name is None:
            prev = slots[i - 1]
            _c, _t, opts = G.input_spec(desc, prev)
            out.append("image" if any(opts.get(k) for k in G.UPLOAD_KEYS) else cag)
            continue
        _c, typ, opts = G.input_spec(desc, name)
        if name in values:
            out.append(values[name])
        elif "default" in opts:
            out.append(opts["default"])
        else:
            options = G.combo_options(typ, opts)
            out.append(options[0] if options else None)
    return out


def _height(desc: dict, n_sockets: int, n_outputs: int, slots: list) -> int:
    from spriteforge.execution import graph as G

    h = 30 + 22 * max(n_sockets, n_outputs)
    for name in slots:
        if name is None:
            continue
        _c, typ, opts = G.input_spec(desc, name)
        h += 90 if (typ == "STRING" and opts.get("multiline")) else 26
    return h + 10 + ui_room(desc.get("name", ""))


def ui_room(node_type: str) -> int:
    """Height a node needs below its widgets for what it shows after a run (image previews, swatches)."""
    if node_type in IMAGE_UI_NODES:
        return IMAGE_ROOM
    if node_type in PALETTE_UI_NODES:
        return SWATCH_ROOM
    return 0


def node_box(nd: dict) -> tuple:
    """``(x0, y0, x1, y1)`` the editor draws for a graph node: title bar (and engine badge) included."""
    x, y = nd["pos"]
    w, h = nd["size"]
    # the engine badge (model nodes) and the frontend's node-source badge (every custom node) sit above the title
    top = y - TITLE_H - (BADGE_H if nd["type"] in MODEL_NODES or nd["type"].startswith("SpriteForge") else 0)
    return (x, top, x + w, y + h)


def _overlaps(a, b, gap_x: float = 0.0, gap_y: float = 0.0) -> bool:
    return a[0] < b[2] + gap_x and b[0] < a[2] + gap_x and a[1] < b[3] + gap_y and b[1] < a[3] + gap_y


def place(nodes: list, group_of: dict) -> None:
    """Push nodes down (in place) until no two boxes come closer than ROW_GAP; between nodes of
    different groups also leave room for the lower group's title bar."""
    placed: list = []
    for nd in sorted(nodes, key=lambda d: (d["pos"][1], d["pos"][0])):
        while True:
            box = node_box(nd)
            hit = None
            for other in placed:
                gap_x, gap = 20, ROW_GAP
                if group_of.get(other["id"]) != group_of.get(nd["id"]):
                    gap_x, gap = 2 * GROUP_PAD + 10, ROW_GAP + GROUP_TITLE_H + 2 * GROUP_PAD
                ob = node_box(other)
                if _overlaps(box, ob, gap_x, gap):
                    hit = (ob, gap) if hit is None or ob[3] + gap > hit[0][3] + hit[1] else hit
            if hit is None:
                break
            nd["pos"][1] += int(hit[0][3] + hit[1] - box[1])
        placed.append(nd)


def group_bounds(members: list) -> tuple:
    """``(x0, y0, x1, y1)`` of a group around its member nodes: padding, and the title bar on top."""
    boxes = [node_box(nd) for nd in members]
    return (min(b[0] for b in boxes) - GROUP_PAD, min(b[1] for b in boxes) - GROUP_PAD - GROUP_TITLE_H,
            max(b[2] for b in boxes) + GROUP_PAD, max(b[3] for b in boxes) + GROUP_PAD)


def settle(nodes: list, groups: list) -> None:
    """:func:`place`, then move groups (or stray nodes) down until no group's box touches a node
    that is not in it, and groups apart from each other; repeated until nothing moves (everything only
    ever moves down)."""
    by_id = {nd["id"]: nd for nd in nodes}
    group_of = {i: gi for gi, g in enumerate(groups) for i in g.ids}
    for _ in range(50):
        place(nodes, group_of)
        moved = False
        for gi, g in enumerate(groups):
            members = [by_id[i] for i in g.ids]
            gb = group_bounds(members)
            for nd in nodes:
                if group_of.get(nd["id"]) == gi:
                    continue
                b = node_box(nd)
                if not _overlaps(gb, b, 10, 10):
                    continue
                if b[1] < gb[1]:  # the node is above: the whole group moves down
                    dy = int(b[3] + 10 - gb[1]) + 1
                    for m in members:
                        m["pos"][1] += dy
                else:  # the node reaches into the group from below: it moves down
                    nd["pos"][1] += int(gb[3] + 10 - b[1]) + 1
                moved = True
                break
            if moved:
                break
        if not moved:
            moved = _separate_groups(groups, by_id)
        if not moved:
            return
    raise RuntimeError("the layout did not settle")


def _separate_groups(groups: list, by_id: dict) -> bool:
    """Move the lower of two groups whose boxes touch (one group's body over the other's title bar) down
    below the upper one; True when something moved."""
    bounds = [group_bounds([by_id[i] for i in g.ids]) for g in groups]
    for a, ga in enumerate(bounds):
        for b, gb in enumerate(bounds):
            if a != b and ga[1] <= gb[1] and _overlaps(ga, gb, 10, 10):
                dy = int(ga[3] + 10 - gb[1]) + 1
                for i in groups[b].ids:
                    by_id[i]["pos"][1] += dy
                return True
    return False


def build_graph(wf: Workflow, info: dict) -> dict:
    from spriteforge.execution import graph as G

    by_id = {n.id: n for n in wf.nodes}
    link_rows = []
    in_link: dict = {}
    out_links: dict = {}
    for k, l in enumerate(wf.links, 1):
        src_desc = info[by_id[l.src].type]
        typ = G.output_types(src_desc)[l.out]
        link_rows.append([k, l.src, l.out, l.dst, None, typ])   # target slot filled below
        in_link[(l.dst, l.inp)] = k
        out_links.setdefault((l.src, l.out), []).append(k)
    nodes = []
    rows_by_id = {r[0]: r for r in link_rows}
    for order, n in enumerate(wf.nodes):
        desc = info[n.type]
        inputs = []
        for name, cat, typ, opts in G.ordered_inputs(desc):
            tname = "COMBO" if isinstance(typ, (list, tuple)) else typ
            lid = in_link.pop((n.id, name), None)
            widget = G.is_widget(typ, opts)
            if not widget and lid is None and cat == "optional":
                slot = {"name": name, "localized_name": name, "type": tname, "shape": 7, "link": None}
            else:
                slot = {"name": name, "localized_name": name, "type": tname, "link": lid}
                if cat == "optional":
                    slot["shape"] = 7
            if widget:
                slot["widget"] = {"name": name}
            if lid is not None:
                rows_by_id[lid][4] = len(inputs)
            inputs.append(slot)
        outputs = []
        names = desc.get("output_name") or []
        for s, t in enumerate(G.output_types(desc)):
            outputs.append({"name": names[s] if s < len(names) else t, "localized_name": names[s] if s < len(names) else t,
                            "type": t, "links": out_links.get((n.id, s), []), "slot_index": s})
        wv = _widget_values(desc, n.w, n.cag)
        slots = G.widget_slots(desc)
        n_sockets = sum(1 for name, _c, typ, opts in G.ordered_inputs(desc) if not G.is_widget(typ, opts))
        node = {
            "id": n.id, "type": n.type,
            "pos": [X0 + int(n.col * COL_W), Y0 + int(n.row * 120)],
            "size": [n.width, max(n.height or 0, _height(desc, n_sockets, len(outputs), slots))],
            "flags": {}, "order": order, "mode": 0, "inputs": inputs, "outputs": outputs,
            "properties": {"Node name for S&R": n.type}, "widgets_values": wv,
        }
        if n.title:
            node["title"] = n.title
        nodes.append(node)
    if in_link:
        raise KeyError(f"{wf.name}: links to unknown inputs {sorted(in_link)}")
    for note in wf.notes:
        nodes.append({"id": note.id, "type": "Note", "pos": [X0 + int(note.col * COL_W), Y0 + int(note.row * 120)],
                      "size": [note.width, note.height], "flags": {}, "order": len(nodes), "mode": 0,
                      "inputs": [], "outputs": [], "properties": {}, "widgets_values": [note.text],
                      "color": NOTE_COLOR, "bgcolor": NOTE_BG})
    groups = []
    by_node = {nd["id"]: nd for nd in nodes}
    settle(nodes, wf.groups)
    for gi, g in enumerate(wf.groups, 1):
        xs0, ys0, xs1, ys1 = group_bounds([by_node[i] for i in g.ids])
        groups.append({"id": gi, "title": g.title, "bounding": [xs0, ys0, xs1 - xs0, ys1 - ys0], "color": g.color,
                       "font_size": 24, "flags": {}})
    return {
        "id": _uuid(wf.name),
        "revision": 0,
        "last_node_id": max(nd["id"] for nd in nodes),
        "last_link_id": len(link_rows),
        "nodes": nodes,
        "links": link_rows,
        "groups": groups,
        "config": {},
        "extra": {"ds": {"scale": 0.75, "offset": [0, 0]}, "spriteforge_workflow": wf.name},
        "version": 0.4,
    }


def _uuid(name: str) -> str:
    import uuid

    return str(uuid.uuid5(uuid.NAMESPACE_URL, "spriteforge/workflows/" + name))


# --------------------------------------------------------------------------- thumbnail

CAT_COLORS = {"SpriteForge/generate": (63, 120, 158), "SpriteForge/background": (138, 138, 63),
              "SpriteForge/pixel": (161, 48, 155), "image": (63, 138, 90), "loaders": (63, 120, 158),
              "conditioning": (63, 120, 158), "latent": (63, 120, 158)}
SHORT = {
    "SpriteForgeLoadModel": "Load Model", "SpriteForgeEncodePrompt": "Prompt", "SpriteForgeSampler": "Sampler",
    "SpriteForgeVAEDecode": "VAE Decode", "SpriteForgeVAEEncode": "VAE Encode", "SaveImage": "Save Image",
    "PreviewImage": "Preview", "LoadImage": "Load Image", "SpriteForgeLoadBiRefNet": "BiRefNet",
    "SpriteForgeRemoveBackground": "Remove BG", "SpriteForgePixelDownscale": "Downscale",
    "SpriteForgePixelPaletteExtract": "Palette", "SpriteForgePixelPaletteLoad": "Palette",
    "SpriteForgePixelQuantize": "Quantize", "SpriteForgePixelAlphaCleanup": "Alpha Clean",
    "SpriteForgePixelSaveIndexed": "Save Indexed", "SpriteForgePixelSpriteSheet": "Sprite Sheet",
    "SpriteForgePixelSliceTiles": "Slice Tiles", "SpriteForgePixelKeyToAlpha": "Key to Alpha",
    "CheckpointLoaderSimple": "Load Checkpoint", "LoraLoader": "Load LoRA", "CLIPTextEncode": "Text Encode",
    "EmptyLatentImage": "Empty Latent", "VAEDecode": "VAE Decode", "SpriteForgeKSampler": "KSampler",
    "SpriteForgeMakeAutotileSet": "Make Autotile", "SpriteForgeSaveAutotileSet": "Save Autotile",
    "SpriteForgeEdit": "Edit", "SpriteForgePixelEditReference": "Edit Reference",
    "SpriteForgePixelMatchReference": "Match Reference", "SpriteForgePixelBatch": "Sprite Batch",
}
TITLES = {"txt2img": "Text to image", "img2img": "Image to image", "tileset": "Seamless tileset",
          "inpainting": "Inpainting", "sprite_pipeline": "Sprite pipeline", "sprite_demo": "Demo sprites",
          "sdxl_pixel_art": "SDXL pixel art", "autotile": "Autotile set",
          "sprite_variants": "Sprite variants"}


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def render_thumbnail(graph: dict, info: dict, name: str, size: int = 256):
    """A diagram of the graph: one box per node (category colour, short title), links as elbow arrows.

    Nodes keep their columns and order from the graph; a graph wider than 5 columns is drawn in
    two bands (the second band continues the first), so the titles stay legible at 256 px.
    """
    import math

    from PIL import Image, ImageDraw

    ss = 3  # draw at 3x, then downsample (smooth lines and text)
    S = size * ss
    img = Image.new("RGB", (S, S), (32, 34, 40))
    d = ImageDraw.Draw(img)
    d.text((10 * ss, 6 * ss), TITLES.get(name, name), fill=(235, 235, 235), font=_font(20 * ss))
    d.text((10 * ss, 30 * ss), "SpriteForge workflow", fill=(150, 155, 165), font=_font(11 * ss))
    nodes = [n for n in graph["nodes"] if n["type"] in info]
    cols = {n["id"]: round((n["pos"][0] - X0) / COL_W) for n in nodes}
    ncols = max(cols.values()) + 1
    per_band = math.ceil(ncols / 2) if ncols > 5 else ncols
    bands = math.ceil(ncols / per_band)
    # rows within a column, in the graph's vertical order
    slot = {}
    for c in range(ncols):
        ids = sorted((n for n in nodes if cols[n["id"]] == c), key=lambda n: n["pos"][1])
        for r, n in enumerate(ids):
            slot[n["id"]] = (c % per_band, c // per_band, r)
    rows_per_band = [1 + max([r for (_c, band, r) in slot.values() if band == b] or [0]) for b in range(bands)]
    top, margin, gap = 52 * ss, 8 * ss, 10 * ss
    cw = (S - 2 * margin) / per_band
    total_rows = sum(rows_per_band)
    rh = min(46 * ss, (S - top - margin - gap * (bands - 1)) / total_rows)
    bw, bh = cw * 0.78, rh * 0.72
    used = total_rows * rh + gap * (bands - 1)
    top += max(0.0, (S - top - margin - used) / 2)
    band_y = [top + sum(rows_per_band[:b]) * rh + b * gap for b in range(bands)]
    boxes = {}
    for nid, (c, band, r) in slot.items():
        boxes[nid] = (margin + c * cw + (cw - bw) / 2, band_y[band] + r * rh + (rh - bh) / 2, bw, bh)
    line = (170, 175, 185)
    for _lid, src, _so, dst, _ts, _t in graph["links"]:
        if src not in boxes or dst not in boxes:
            continue
        sx, sy, sw, sh = boxes[src]
        tx, ty, _tw, th = boxes[dst]
        a, b = (sx + sw, sy + sh / 2), (tx, ty + th / 2)
        if b[0] > a[0]:
            mid = a[0] + (cw - bw) / 2
            pts = [a, (mid, a[1]), (mid, b[1]), b]
        else:  # into the next band: down the right edge, across, into the target's left
            right, low = a[0] + (cw - bw) / 3, ty - (rh - bh) / 2 + 1 * ss
            left = tx - (cw - bw) / 3
            pts = [a, (right, a[1]), (right, low), (left, low), (left, b[1]), b]
        d.line(pts, fill=line, width=ss + 1, joint="curve")
        d.polygon([b, (b[0] - 5 * ss, b[1] - 3 * ss), (b[0] - 5 * ss, b[1] + 3 * ss)], fill=line)
    for n in nodes:
        bx, by, w, h = boxes[n["id"]]
        col = CAT_COLORS.get(info[n["type"]].get("category", ""), (90, 90, 100))
        d.rounded_rectangle([bx, by, bx + w, by + h], radius=4 * ss, fill=col, outline=(230, 230, 230), width=ss)
        words = SHORT.get(n["type"], n["type"]).split(" ")
        lines = [" ".join(words)] if len(words) == 1 else [" ".join(words[:-1]), words[-1]]
        fs = 10 * ss
        while fs > 6 * ss:
            f = _font(fs)
            widths = [d.textlength(t, font=f) for t in lines]
            if max(widths) <= w - 4 * ss and len(lines) * fs * 1.1 <= h - 2 * ss:
                break
            fs -= ss
        f = _font(fs)
        y = by + (h - len(lines) * fs * 1.1) / 2
        for t in lines:
            d.text((bx + (w - d.textlength(t, font=f)) / 2, y), t, fill=(255, 255, 255), font=f)
            y += fs * 1.1
    return img.resize((size, size), Image.LANCZOS)


# --------------------------------------------------------------------------- example input images

def _knight_scene(size: int = 1024):
    """A flat-shaded scene (sky, hills, a blocky knight) for img2img / inpainting, drawn on a 64x64 grid."""
    from PIL import Image, ImageDraw

    g = 64
    im = Image.new("RGB", (g, g), (104, 168, 232))
    d = ImageDraw.Draw(im)
    for y in range(0, 26):
        d.line([(0, y), (g, y)], fill=(80 + y, 140 + y, 220))
    d.ellipse([-20, 36, 40, 80], fill=(72, 156, 72))
    d.ellipse([24, 40, 90, 90], fill=(56, 132, 60))
    d.rectangle([0, 52, g, g], fill=(64, 144, 64))
    d.ellipse([46, 6, 56, 16], fill=(250, 220, 90))
    # the knight
    d.rectangle([26, 22, 37, 31], fill=(190, 195, 205))      # helmet
    d.rectangle([29, 25, 36, 27], fill=(40, 40, 50))          # visor slit
    d.rectangle([24, 32, 39, 45], fill=(170, 175, 190))      # body
    d.rectangle([20, 33, 23, 44], fill=(150, 40, 40))         # cape
    d.rectangle([26, 46, 30, 55], fill=(120, 125, 140))      # legs
    d.rectangle([33, 46, 37, 55], fill=(120, 125, 140))
    d.rectangle([40, 20, 41, 42], fill=(220, 220, 230))      # sword
    d.rectangle([38, 40, 43, 41], fill=(120, 80, 40))
    return im.resize((size, size), Image.NEAREST)


def _knight_sprite():
    """A 32x32 pixel-art knight facing right, transparent background, 1-px outline: RGBA uint8 (8 colours)."""
    import numpy as np
    from PIL import Image, ImageDraw

    from spriteforge.pixel import alpha as A

    im = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    light, mid, dark = (196, 206, 222, 255), (136, 150, 178, 255), (88, 100, 130, 255)
    cape, cape_dark = (186, 36, 44, 255), (120, 24, 46, 255)
    gold, brown, slit = (232, 184, 56, 255), (122, 78, 42, 255), (28, 24, 40, 255)
    d.rectangle([7, 11, 11, 24], fill=cape)            # cape behind the back
    d.rectangle([7, 20, 10, 25], fill=cape_dark)
    d.rectangle([11, 4, 19, 11], fill=mid)             # helmet
    d.rectangle([12, 4, 18, 6], fill=light)
    d.rectangle([15, 7, 19, 8], fill=slit)             # visor slit
    d.rectangle([14, 2, 16, 3], fill=cape)             # plume
    d.rectangle([11, 12, 20, 21], fill=mid)            # body
    d.rectangle([12, 12, 16, 15], fill=light)
    d.rectangle([11, 19, 20, 20], fill=brown)          # belt
    d.point((16, 19), fill=gold)
    d.rectangle([12, 22, 14, 27], fill=dark)           # legs
    d.rectangle([17, 22, 19, 27], fill=dark)
    d.rectangle([11, 28, 14, 29], fill=brown)          # boots
    d.rectangle([17, 28, 20, 29], fill=brown)
    d.rectangle([20, 14, 22, 17], fill=dark)           # arm
    d.rectangle([21, 16, 23, 17], fill=brown)          # hilt
    d.rectangle([22, 15, 22, 18], fill=gold)           # guard
    d.rectangle([23, 6, 24, 15], fill=light)           # blade
    d.point((23, 5), fill=light)
    a = np.asarray(im)
    rgb, al = A.outline(a[..., :3], a[..., 3], slit[:3])
    return np.concatenate([rgb, al[..., None]], -1)


def write_inputs(names: list[str]) -> None:
    import numpy as np
    from PIL import Image

    folder = HERE / "input"
    folder.mkdir(exist_ok=True)
    for name in names:
        if name.endswith("_sprite.png"):  # an indexed sprite PNG, as Save Indexed writes it
            from spriteforge.pixel import export as X
            from spriteforge.pixel.sprite import indexed_palette

            sprite = _knight_sprite()
            pal = indexed_palette(sprite)
            with open(folder / name, "wb") as fp:
                X.save_indexed_png(fp, X.to_indexed(sprite, pal), pal)
            continue
        im = _knight_scene()
        if "inpaint" in name:  # the sky above the knight is transparent: the part to repaint
            a = np.full((im.height, im.width), 255, np.uint8)
            a[: im.height * 22 // 64, :] = 0
            im = im.convert("RGBA")
            im.putalpha(Image.fromarray(a))
        im.save(folder / name, optimize=True)


# --------------------------------------------------------------------------- main

def _with_core(info: dict) -> dict:
    """Our nodes' descriptions plus ComfyUI's for the core nodes a workflow uses (CheckpointLoaderSimple, ...)."""
    from spriteforge.execution.core_info import with_core

    return with_core(info)


def build(name: str, info: dict | None = None) -> tuple[dict, dict]:
    from spriteforge.execution import graph as G

    info = _with_core(G.object_info() if info is None else info)
    wf = WORKFLOWS[name]()
    graph = build_graph(wf, info)
    api = G.graph_to_api(graph, info)
    return graph, api


def main(argv: list[str]) -> int:
    from spriteforge.execution import graph as G

    info = _with_core(G.object_info())
    for name in argv or list(WORKFLOWS):
        wf = WORKFLOWS[name]()
        graph = build_graph(wf, info)
        api = G.graph_to_api(graph, info)
        (HERE / f"{name}.json").write_text(json.dumps(graph, indent=2) + "\n", encoding="utf-8")
        (HERE / "api").mkdir(exist_ok=True)
        (HERE / "api" / f"{name}.json").write_text(json.dumps(api, indent=2) + "\n", encoding="utf-8")
        render_thumbnail(graph, info, name).save(HERE / f"{name}.jpg", quality=88)
        if wf.inputs:
            write_inputs(wf.inputs)
        print(f"wrote {name}.json, api/{name}.json, {name}.jpg")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
