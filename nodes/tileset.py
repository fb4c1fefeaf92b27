"""Autotile nodes: thin adapters over :mod:`spriteforge.generation.autotile` (making the set) and
:mod:`spriteforge.pixel.autotile` (layouts and the Godot / Tiled files).

``SF_AUTOTILE`` carries a :class:`spriteforge.generation.autotile.AutotileSet` (the tiles, their layout and
terrain codes, the palette) from Make Autotile Set to Save Autotile Set.
"""

from __future__ import annotations

from ..generation.autotile import FILE_EXTS, AutotileSet, AutotileSpec, make_autotiles, tileset_files
from ..pixel import autotile as T
from ..progress import Progress
from ._compat import io
from .comfy_types import np_to_image, np_to_mask
from .folders import confined_folder, output_dir
from .generate import MAX_SEED, _check_model
from .loaders import ModelType
from .pixel import PaletteType, _bad, _split_prefix
from .validation import ValidatedNode

CATEGORY = "SpriteForge/tileset"
AutotileType = io.Custom("SF_AUTOTILE")


class MakeAutotileSet(ValidatedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SpriteForgeMakeAutotileSet",
            display_name="SpriteForge Make Autotile Set",
            category=CATEGORY,
            description="Makes an autotile set for two terrains (or a terrain and transparency) on any model: each "
            "terrain as a seamless texture, then every transition tile of the layout (corner Wang 16, blob 47 or "
            "dual grid 16) with a noisy boundary redrawn by masked, wrapped inpainting, so tiles that may touch "
            "continue into each other; one palette for the whole set, alpha 0/1.",
            inputs=[
                ModelType.Input("model", tooltip="The model from SpriteForge Load Model (any family)."),
                io.String.Input("terrain_a", default="grass", tooltip="The first terrain's prompt (the blob terrain in blob47)."),
                io.String.Input("terrain_b", default="water",
                                tooltip="The second terrain's prompt; empty = transparency (islands, platforms)."),
                io.Combo.Input("layout", options=list(T.LAYOUTS), default="wang16",
                               tooltip="wang16: 16 corner tiles; blob47: 47 edge-and-corner tiles; dualgrid: the 16 "
                               "corner tiles in the dual-grid order."),
                io.Int.Input("tile_size", default=16, min=4, max=256, tooltip="Tile size in pixels."),
                io.Int.Input("scale", default=0, min=0, max=64,
                             tooltip="Generation pixels per tile pixel; 0 = about the model's native size."),
                io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=True,
                             tooltip="Seed of the textures, the boundary noise and the inpainting."),
                io.Int.Input("steps", default=0, min=0, max=1000, tooltip="Texture sampling steps; 0 = the family's."),
                io.Int.Input("inpaint_steps", default=0, min=0, max=1000,
                             tooltip="Boundary inpainting steps; 0 = the family's."),
                io.Float.Input("strength", default=0.75, min=0.01, max=1.0, step=0.01,
                               tooltip="How much of the boundary band is redrawn (denoise)."),
                io.Int.Input("colors", default=16, min=2, max=255, tooltip="Palette size fitted to the whole set."),
                io.Int.Input("batch", default=8, min=1, max=64, tooltip="Tiles inpainted per sampler run."),
                io.String.Input("transition", default="", optional=True,
                                tooltip="Prompt for the redrawn boundary band; empty = '<a> and <b>' (or 'edge of <a>')."),
                PaletteType.Input("palette", optional=True,
                                  tooltip="A fixed palette (from Palette Load / Extract) instead of fitting 'colors'."),
            ],
            outputs=[io.Image.Output(display_name="tiles", tooltip="The tiles as a batch [N,h,w,3], in sheet order."),
                     io.Mask.Output(display_name="masks", tooltip="Each tile's alpha [N,h,w]: 1 = opaque."),
                     AutotileType.Output(display_name="autotile", tooltip="The set, for SpriteForge Save Autotile Set.")],
        )

    @classmethod
    def execute(cls, model, terrain_a="grass", terrain_b="water", layout="wang16", tile_size=16, scale=0, seed=0,
                steps=0, inpaint_steps=0, strength=0.75, colors=16, batch=8, transition="", palette=None):
        h = _check_model(model)
        spec = AutotileSpec(terrain_a=str(terrain_a), terrain_b=str(terrain_b or "").strip() or None, layout=layout,
                            tile=int(tile_size), scale=int(scale) or None, seed=int(seed), steps=int(steps) or None,
                            inpaint_steps=int(inpaint_steps) or None, strength=float(strength), colors=int(colors),
                            batch=int(batch), transition=str(transition or "").strip() or None, palette=palette)
        aset = make_autotiles(h.engine, h, spec)
        return io.NodeOutput(np_to_image(aset.tiles), np_to_mask(aset.tiles[..., 3]), aset)


class SaveAutotileSet(ValidatedNode):
    CHECKS = {"filename_prefix": _split_prefix}

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SpriteForgeSaveAutotileSet",
            display_name="SpriteForge Save Autotile Set",
            category=CATEGORY,
            description="Saves the set as an indexed tile sheet PNG, a JSON atlas (each tile's rectangle and terrain "
            "code), a Tiled tileset (.tsx with a wangset) and a Godot 4 TileSet (.tres with a terrain set and "
            "peering bits), side by side in the output folder. Never overwrites.",
            inputs=[
                AutotileType.Input("autotile", tooltip="The set from SpriteForge Make Autotile Set."),
                io.String.Input("filename_prefix", default="spriteforge/autotile",
                                tooltip="File name stem; may include a subfolder of the output folder."),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, autotile, filename_prefix="spriteforge/autotile"):
        if not isinstance(autotile, AutotileSet):
            raise _bad("the autotile input is not a SpriteForge autotile set: connect SpriteForge Make Autotile Set.")
        sub, name = _split_prefix(filename_prefix)
        folder = confined_folder(output_dir(cls), sub)
        stem = T.free_stem(folder, name, FILE_EXTS)
        written = T.write_new(folder, tileset_files(autotile, stem))
        Progress(1, "save autotile set").update()
        return io.NodeOutput(ui={"images": [{"filename": written[0].name, "subfolder": sub, "type": "output"}]})


NODES = [MakeAutotileSet, SaveAutotileSet]
