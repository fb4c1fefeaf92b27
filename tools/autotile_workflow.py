"""The shipped ``autotile`` workflow, for ``tools/build_workflows.py``: the built-in demo model -> Make Autotile
Set -> Save Autotile Set (sheet PNG + JSON atlas + Tiled .tsx + Godot .tres) and a preview of the tiles.

``autotile(b)`` takes the builder module ``b`` (its ``N``, ``L``, ``Note``, ``Group``, ``Workflow``, ``DEMO``)
so this file imports nothing from it and the builder stays the one place that assembles graphs.
"""

from __future__ import annotations

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


def autotile(b):
    nodes = [
        b.N(1, "SpriteForgeLoadModel", 0, 0, b.DEMO),
        b.N(2, "SpriteForgeMakeAutotileSet", 1, 0, {"terrain_a": "grass", "terrain_b": "water",
                                                     "layout": "wang16", "tile_size": 16, "scale": 0, "seed": 0,
                                                     "steps": 20, "inpaint_steps": 20, "strength": 0.75,
                                                     "colors": 16, "batch": 8}, cag="fixed"),
        b.N(3, "SpriteForgeSaveAutotileSet", 2, 0, {"filename_prefix": "spriteforge/autotile"}),
        b.N(4, "PreviewImage", 2, 1.5, height=300),
    ]
    links = [b.L(1, 0, 2, "model"), b.L(2, 2, 3, "autotile"), b.L(2, 0, 4, "images")]
    notes = [b.Note(20, 0, 2.7, b.NOTE_DEMO, width=740, height=260),
             b.Note(21, 2, 4.6, NOTE_AUTOTILE, width=740, height=300)]
    groups = [b.Group("Model (built-in)", [1, 20], "#3f789e"), b.Group("Autotile set", [2], "#8a8a3f"),
              b.Group("Save for Godot / Tiled", [3, 4], "#3f8a5a")]
    return b.Workflow("autotile", nodes, links, groups, notes)


__all__ = ["autotile", "NOTE_AUTOTILE"]
