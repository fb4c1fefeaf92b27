"""Autotile layouts for two terrains: the corner Wang 16 set, the 47-tile blob set and the dual-grid 16 set.

A tile's *code* is eight terrain values in Tiled's wangid order: top, top-right, right, bottom-right, bottom,
bottom-left, left, top-left (edges at even positions, corners at odd ones). ``1`` is the first terrain (A),
``0`` the second (B, or transparency), ``None`` a position the layout does not use (the edges of the corner
sets). Blob tiles are all terrain A in the middle; their edges say whether the neighbour is A, their corners
are A only where both edges beside them and the diagonal neighbour are (the 47 codes left after that pruning);
the blob sheet's 48th slot holds the plain terrain-B tile (middle B), so B can be painted too.

The pieces here are numpy only:

* :func:`layout` - the tiles of a layout (code, place on the sheet) and which codes may touch (:func:`may_touch`);
* :func:`terrain_field` / :func:`masks` - where terrain A lies in each tile: the corner/edge values interpolated
  over the tile plus a noise that repeats with the tile, so the boundary is smooth, noisy and - because the
  values on a tile's border depend only on that border's code - continuous into every tile that may touch it;
  :func:`band` - the strip along that boundary that is redrawn, zero at the tile's border;
* :func:`composite` - the two seamless textures joined along the mask (same texture offset in every tile);
* :func:`continuity` / :func:`seam_ratio` - the measurements: the change across every edge two tiles may share
  (or a texture's wrap seam) against the pixel-to-pixel change inside the tiles;
* :func:`atlas`, :func:`tiled_tsx`, :func:`godot_tres` - the JSON atlas, Tiled's ``.tsx`` with a wangset and
  Godot 4's TileSet ``.tres`` with a terrain set and peering bits (written by
  :meth:`spriteforge.paths.OutputFolder.write_group`, like every file the pack writes).

Making the tiles (textures, inpainting along the band, the palette) is :mod:`spriteforge.generation.autotile`.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from itertools import product
from xml.sax.saxutils import quoteattr

import numpy as np

from ..errors import BAD_INPUT, SpriteForgeError

LAYOUTS = ("wang16", "blob47", "dualgrid")
POSITIONS = ("top", "top_right", "right", "bottom_right", "bottom", "bottom_left", "left", "top_left")
EDGES, CORNERS = (0, 2, 4, 6), (1, 3, 5, 7)
# The dual-grid sheet: terrain at the 4x4 grid points of a torus in which every 2x2 window differs, so the
# sheet holds each corner code once and, repeated, is itself a seamless picture (the usual dual-grid order).
DUALGRID_POINTS = ((0, 0, 1, 0), (1, 0, 1, 1), (0, 1, 1, 1), (0, 0, 0, 1))
# Godot's peering-bit names (TileSet.CellNeighbor) for the positions above.
GODOT_BITS = ("top_side", "top_right_corner", "right_side", "bottom_right_corner", "bottom_side",
              "bottom_left_corner", "left_side", "top_left_corner")


def _bad(msg: str) -> SpriteForgeError:
    return SpriteForgeError(BAD_INPUT, msg)


@dataclass(frozen=True)
class Tile:
    code: tuple          # 8 values in wangid order: 1 = terrain A, 0 = terrain B / transparent, None = unused
    column: int
    row: int
    centre: int | None = None   # the terrain in the middle (blob tiles: 1), None for corner tiles

    @property
    def corners(self) -> dict:
        return {POSITIONS[i]: self.code[i] for i in CORNERS}

    @property
    def edges(self) -> dict:
        return {POSITIONS[i]: self.code[i] for i in EDGES if self.code[i] is not None}


    @property
    def key(self) -> tuple:
        """What tells tiles apart: the middle terrain and the code."""
        return (self.centre, self.code)


@dataclass(frozen=True)
class Layout:
    name: str
    kind: str            # Tiled's wangset type: "corner" or "mixed"
    columns: int
    rows: int
    tiles: tuple

    @property
    def codes(self) -> list:
        return [t.key for t in self.tiles]


def _corner_code(tl: int, tr: int, br: int, bl: int) -> tuple:
    return (None, tr, None, br, None, bl, None, tl)


def _wang16() -> Layout:
    """Index = TL + 2 TR + 4 BL + 8 BR, four to a row: tile 0 is all B, tile 15 all A."""
    tiles = []
    for i in range(16):
        tl, tr, bl, br = i & 1, (i >> 1) & 1, (i >> 2) & 1, (i >> 3) & 1
        tiles.append(Tile(_corner_code(tl, tr, br, bl), i % 4, i // 4))
    return Layout("wang16", "corner", 4, 4, tuple(tiles))


def _dualgrid() -> Layout:
    p = DUALGRID_POINTS
    tiles = [Tile(_corner_code(p[r][c], p[r][(c + 1) % 4], p[(r + 1) % 4][(c + 1) % 4], p[(r + 1) % 4][c]), c, r)
             for r in range(4) for c in range(4)]
    return Layout("dualgrid", "corner", 4, 4, tuple(tiles))


def blob_codes() -> list:
    """The 47 blob codes, ordered by their 8-bit neighbour mask (bit i = position i of the code)."""
    out = []
    for bits in product((0, 1), repeat=8):
        code = list(bits)
        if any(code[c] and not (code[c - 1] and code[(c + 1) % 8]) for c in CORNERS):
            continue
        out.append(tuple(code))
    return sorted(out, key=lambda c: sum(v << i for i, v in enumerate(c)))


def _blob47() -> Layout:
    """The 47 blob tiles, then in the sheet's 48th slot the plain second-terrain tile (middle B, all around B):
    the fill that lets the engines paint the second terrain (fully transparent with transparency)."""
    tiles = [Tile(code, i % 8, i // 8, centre=1) for i, code in enumerate(blob_codes())]
    tiles.append(Tile((0,) * 8, 7, 5, centre=0))
    return Layout("blob47", "mixed", 8, 6, tuple(tiles))


_BUILDERS = {"wang16": _wang16, "blob47": _blob47, "dualgrid": _dualgrid}


def layout(name: str) -> Layout:
    """The layout called ``name`` (:data:`LAYOUTS`)."""
    key = str(name).strip().lower().replace("-", "").replace("_", "")
    key = {"wang": "wang16", "corner": "wang16", "blob": "blob47", "dual": "dualgrid", "dualgrid16": "dualgrid"}.get(key, key)
    if key not in _BUILDERS:
        raise _bad(f"unknown autotile layout {name!r}. Choose one of {', '.join(LAYOUTS)}.")
    return _BUILDERS[key]()


def may_touch(a: Tile, b: Tile, side: str) -> bool:
    """Whether ``b`` may sit to the ``side`` ("right" or "below") of ``a``: the two corners and (blob tiles) the
    edge they share have the same terrain in both codes - Tiled's rule for corner and mixed wangsets."""
    if side == "right":
        pairs = ((1, 7), (2, 6), (3, 5))
    elif side == "below":
        pairs = ((5, 7), (4, 0), (3, 1))
    else:
        raise ValueError(side)
    return all(a.code[i] == b.code[j] for i, j in pairs)


def touching_pairs(lay: Layout) -> list:
    """Every ordered ``(i, j, side)`` of tile indices where tile j may sit right of / below tile i."""
    return [(i, j, side) for side in ("right", "below") for i, a in enumerate(lay.tiles)
            for j, b in enumerate(lay.tiles) if may_touch(a, b, side)]


# --------------------------------------------------------------------------- where terrain A lies

def _control(tile: Tile) -> np.ndarray:
    """The 3x3 grid of terrain values at the tile's corners, edge middles and centre (1 = A)."""
    c = tile.code
    tl, tr, br, bl = c[7], c[1], c[3], c[5]

    def edge(i, p, q):
        return float(c[i]) if c[i] is not None else (p + q) / 2.0

    top, right, bottom, left = edge(0, tl, tr), edge(2, tr, br), edge(4, br, bl), edge(6, bl, tl)
    centre = float(tile.centre) if tile.centre is not None else (tl + tr + br + bl) / 4.0
    return np.array([[tl, top, tr], [left, centre, right], [bl, bottom, br]], np.float64)


def _coords(size: int) -> np.ndarray:
    return (np.arange(size, dtype=np.float64) + 0.5) / size


def tile_noise(size: int, seed: int, amplitude: float = 0.1, waves: int = 5) -> np.ndarray:
    """A smooth noise ``size x size`` that repeats with the tile (whole waves per tile), the same in every tile,
    so it agrees across every tile edge. Deterministic from ``seed``."""
    rng = np.random.Generator(np.random.PCG64(int(seed) % 2**64 + 26))
    y, x = np.meshgrid(_coords(size), _coords(size), indexing="ij")
    out = np.zeros((size, size))
    for _ in range(waves):
        fx, fy = rng.integers(-2, 3, size=2)
        if fx == 0 and fy == 0:
            fx = 1
        out += np.sin(2 * np.pi * (fx * x + fy * y) + rng.uniform(0, 2 * np.pi)) / np.hypot(fx, fy)
    return (amplitude * out / max(np.abs(out).max(), 1e-9)).astype(np.float64)


def terrain_field(tile: Tile, size: int, noise: np.ndarray | None = None) -> np.ndarray:
    """``size x size`` values around 0..1; terrain A where > 0.5. The control grid (:func:`_control`)
    interpolated bilinearly in each quarter, plus ``noise``. On the tile's border it depends only on that
    border's code, so it continues into every tile that may touch it."""
    g = _control(tile)
    u = _coords(size) * 2.0                       # 0..2 across the three control points
    i = np.minimum(u.astype(int), 1)
    f = u - i
    rows = g[i] * (1 - f)[:, None] + g[i + 1] * f[:, None]          # along y: [size, 3]
    field = rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]
    return field + (noise if noise is not None else 0.0)


def masks(lay: Layout, size: int, seed: int) -> np.ndarray:
    """Every tile's terrain-A field ``[N, size, size]`` (A where > 0.5)."""
    noise = tile_noise(size, seed)
    return np.stack([terrain_field(t, size, noise) for t in lay.tiles])


def band(field: np.ndarray, radius: float, hold: float) -> np.ndarray:
    """Weight 0..1 of the strip within ``radius`` pixels of the boundary (field = 0.5), falling to 0 within
    ``hold`` pixels of the tile's border so what tiles share at their edges is never redrawn."""
    gy, gx = np.gradient(field, axis=(-2, -1))
    dist = np.abs(field - 0.5) / np.maximum(np.hypot(gx, gy), 1e-6)
    w = np.clip(1.0 - dist / max(radius, 1e-6), 0.0, 1.0)
    size = field.shape[-1]
    edge = np.minimum(np.arange(size), np.arange(size)[::-1]) + 0.5
    ramp = np.clip((edge - hold) / max(radius, 1.0), 0.0, 1.0)
    return w * np.minimum(ramp[:, None], ramp[None, :])


def seam_band(size: int) -> np.ndarray:
    """Weight 0..1 of a cross through the middle of a ``size x size`` image (a sixth of the side either way):
    where a texture rolled by half its side has its wrap seam, redrawn to mend it."""
    c = np.abs(np.arange(size) + 0.5 - size // 2)
    return np.clip(1.0 - np.minimum(c[:, None], c[None, :]) / (size / 6.0), 0.0, 1.0)


def composite(field: np.ndarray, tex_a: np.ndarray, tex_b: np.ndarray | None, soft: float = 0.04) -> np.ndarray:
    """Float RGB ``[N, H, W, 3]``: texture A where the field says A, texture B elsewhere (soft across ``soft``
    of field value); without B (transparency) texture A everywhere (the alpha comes from the field)."""
    a = np.asarray(tex_a, np.float32)[None]
    if tex_b is None:
        return np.repeat(a, field.shape[0], axis=0)
    m = np.clip((field - 0.5) / (2 * soft) + 0.5, 0.0, 1.0)[..., None].astype(np.float32)
    return a * m + np.asarray(tex_b, np.float32)[None] * (1.0 - m)


def upsample(field: np.ndarray, factor: int) -> np.ndarray:
    return np.repeat(np.repeat(field, factor, axis=-2), factor, axis=-1) if factor > 1 else field


# --------------------------------------------------------------------------- measurements

def _premul(img) -> np.ndarray:
    a = np.asarray(img, np.float64) / 255.0
    if a.shape[-1] == 4:
        return np.concatenate([a[..., :3] * a[..., 3:], a[..., 3:]], -1)
    return a


def inner_change(tiles) -> float:
    """The mean absolute pixel-to-pixel change inside the tiles (right and down neighbours, premultiplied RGBA)."""
    t = np.stack([_premul(x) for x in tiles])
    return float((np.abs(np.diff(t, axis=2)).mean() + np.abs(np.diff(t, axis=1)).mean()) / 2)


def _line_changes(t: np.ndarray, axis: int) -> np.ndarray:
    """The mean change between each pair of neighbouring inner lines (columns for ``axis=1``, rows for 0)."""
    return np.abs(np.diff(t, axis=axis)).mean(axis=tuple(a for a in range(t.ndim) if a != axis))


def continuity(tiles, lay: Layout) -> dict:
    """The change across every edge two tiles may share, against the change inside the tiles.

    ``ratio``: the mean change across the shared edges over the mean inside (the set's figure; goal <= 1.5);
    ``worst``: the largest pair's over the mean inside; ``worst_line``: the largest over the pairs of a pair's
    change against the largest change between neighbouring lines (columns for a side-by-side pair, rows for a
    stacked one) inside its two tiles. ``worst`` compares one line with an average of many and is above 1.5 even
    for exactly periodic textures (see ``tests/test_autotile_layouts.py``); ``worst_line`` asks whether any seam
    is a jump the tiles themselves never make (goal <= 1.5 per pair). ``pairs``: how many ordered pairs may touch."""
    t = [_premul(x) for x in tiles]
    inside = inner_change(tiles)
    lines = {side: [_line_changes(x, 1 if side == "right" else 0).max(initial=0.0) for x in t] for side in ("right", "below")}
    across, per_line = [], []
    eps = 1.0 / 255.0
    for i, j, side in touching_pairs(lay):
        a, b = (t[i][:, -1], t[j][:, 0]) if side == "right" else (t[i][-1], t[j][0])
        d = float(np.abs(a - b).mean())
        across.append(d)
        per_line.append((d + eps) / (max(lines[side][i], lines[side][j]) + eps))
    mean = float(np.mean(across)) if across else 0.0
    return {"ratio": (mean + eps) / (inside + eps), "worst": (max(across, default=0.0) + eps) / (inside + eps),
            "worst_line": max(per_line, default=0.0), "across": mean, "inside": inside, "pairs": len(across)}


def seam_ratio(texture) -> float:
    """A texture's change across its own wrap seam (last column to first, last row to first) against its
    pixel-to-pixel change inside: about 1 for a seamless texture."""
    t = _premul(texture)
    across = (np.abs(t[:, -1] - t[:, 0]).mean() + np.abs(t[-1] - t[0]).mean()) / 2
    inside = inner_change([texture])
    eps = 1.0 / 255.0
    return float((across + eps) / (inside + eps))


# --------------------------------------------------------------------------- files

def _wangid(tile: Tile, transparent: bool) -> list:
    """Tiled's wangid: 0 = unset/empty, 1 = terrain A, 2 = terrain B."""
    return [0 if v is None else (1 if v == 1 else (0 if transparent else 2)) for v in tile.code]


def in_wangset(tile: Tile, transparent: bool) -> bool:
    """Whether the tile goes into Tiled's wangset: not when its wangid is all empty, and not the one-cell blob
    island, whose wangid (the second terrain all around) cannot say that its middle is the first terrain - it
    would stand in for the plain second-terrain tile. Both stay on the sheet and in Godot's terrain set."""
    wid = _wangid(tile, transparent)
    return any(wid) and not (tile.centre == 1 and 1 not in wid)


def atlas(lay: Layout, terrains: tuple, tile: int, image_name: str, base: dict) -> dict:
    """The sheet's JSON atlas (``base``: :func:`spriteforge.pixel.export.pack_sheet`'s) with each tile's
    terrain code and the layout."""
    transparent = terrains[1] is None
    frames = base["frames"]
    for name, t in zip(list(frames), lay.tiles):
        frames[name]["terrain"] = {"corners": t.corners, "edges": t.edges, "centre": t.centre,
                                   "wangid": _wangid(t, transparent)}
    base["meta"]["image"] = image_name
    base["meta"]["autotile"] = {"layout": lay.name, "type": lay.kind, "tile": tile, "columns": lay.columns,
                                "terrains": [terrains[0], terrains[1] if not transparent else "transparent"],
                                "code": "1 = first terrain, 0 = second (or transparent); wangid order " + ", ".join(POSITIONS)}
    return base


def _colour(rgb) -> str:
    return "#%02x%02x%02x" % tuple(int(v) for v in rgb[:3])


def tiled_tsx(lay: Layout, terrains: tuple, tile: int, image_name: str, colours: tuple) -> str:
    """A Tiled tileset (``.tsx``) for the sheet, with one wangset (type corner or mixed) of the layout."""
    transparent = terrains[1] is None
    w, h = lay.columns * tile, lay.rows * tile
    names = [terrains[0]] if transparent else list(terrains)
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             f'<tileset version="1.10" tiledversion="1.10.2" name={quoteattr(f"{names[0]} {lay.name}")} '
             f'tilewidth="{tile}" tileheight="{tile}" tilecount="{lay.columns * lay.rows}" columns="{lay.columns}">',
             f' <image source={quoteattr(image_name)} width="{w}" height="{h}"/>',
             " <wangsets>",
             f'  <wangset name={quoteattr(" / ".join(str(n) for n in names))} type="{lay.kind}" tile="-1">']
    for name, col in zip(names, colours):
        lines.append(f'   <wangcolor name={quoteattr(str(name))} color="{_colour(col)}" tile="-1" probability="1"/>')
    for t in lay.tiles:
        wid = _wangid(t, transparent)
        if in_wangset(t, transparent):
            lines.append(f'   <wangtile tileid="{t.row * lay.columns + t.column}" wangid="{",".join(map(str, wid))}"/>')
    lines += ["  </wangset>", " </wangsets>", "</tileset>", ""]
    return "\n".join(lines)


def _godot_string(s: str) -> str:
    return json.dumps(str(s))


def _godot_tile(t: Tile, transparent: bool) -> list:
    """``(property, value)`` lines of one atlas tile: terrain 0 = A, 1 = B; transparency is no terrain."""
    pre = f"{t.column}:{t.row}/0"
    out = [(pre, "0")]
    used = [i for i, v in enumerate(t.code) if v is not None]
    values = {i: (0 if t.code[i] == 1 else (-1 if transparent else 1)) for i in used}
    if t.centre is not None:
        centre = 0 if t.centre == 1 else (-1 if transparent else 1)
    else:
        a = sum(t.code[i] == 1 for i in CORNERS)
        centre = 0 if a >= 2 else (-1 if transparent else 1)
    if centre == -1 and all(v == -1 for v in values.values()):
        return out  # the empty tile of a terrain-and-transparency set: no terrain
    out.append((f"{pre}/terrain_set", "0"))
    out.append((f"{pre}/terrain", str(centre)))
    out += [(f"{pre}/terrains_peering_bit/{GODOT_BITS[i]}", str(v)) for i, v in values.items() if v != -1]
    return out


def godot_tres(lay: Layout, terrains: tuple, tile: int, image_name: str, colours: tuple) -> str:
    """A Godot 4 TileSet resource (``.tres``, text format 3): the sheet as an atlas source (the image path
    relative to the ``.tres``, as Godot resolves it), one terrain set (match corners and sides for blob47,
    match corners otherwise) and each tile's terrain and peering bits."""
    transparent = terrains[1] is None
    names = [terrains[0]] if transparent else list(terrains)
    lines = ['[gd_resource type="TileSet" load_steps=3 format=3]', "",
             f'[ext_resource type="Texture2D" path={_godot_string(image_name)} id="1_sheet"]', "",
             '[sub_resource type="TileSetAtlasSource" id="TileSetAtlasSource_1"]',
             'texture = ExtResource("1_sheet")', f"texture_region_size = Vector2i({tile}, {tile})"]
    for t in lay.tiles:
        lines += [f"{k} = {v}" for k, v in _godot_tile(t, transparent)]
    lines += ["", "[resource]", f"tile_size = Vector2i({tile}, {tile})",
              f"terrain_set_0/mode = {0 if lay.kind == 'mixed' else 1}"]
    for k, (name, col) in enumerate(zip(names, colours)):
        r, g, b = (float(v) / 255.0 for v in col[:3])
        lines.append(f"terrain_set_0/terrain_{k}/name = {_godot_string(name)}")
        lines.append(f"terrain_set_0/terrain_{k}/color = Color({r:.4g}, {g:.4g}, {b:.4g}, 1)")
    lines += ['sources/0 = SubResource("TileSetAtlasSource_1")', ""]
    return "\n".join(lines)


def png_bytes(indices: np.ndarray, palette) -> bytes:
    """An indexed PNG (:func:`spriteforge.pixel.export.indexed_image`: index 0 transparent) as bytes."""
    from .export import indexed_image

    im = indexed_image(indices, palette)
    buf = io.BytesIO()
    im.save(buf, format="PNG", transparency=im.info["transparency"], optimize=False)
    return buf.getvalue()


__all__ = ["LAYOUTS", "POSITIONS", "Tile", "Layout", "layout", "blob_codes", "in_wangset", "may_touch", "touching_pairs",
           "tile_noise", "terrain_field", "masks", "band", "seam_band", "composite", "upsample", "inner_change", "continuity",
           "seam_ratio", "atlas", "tiled_tsx", "godot_tres", "png_bytes"]
