"""Autotile layouts, masks and files without a model (issue #26 items 1, 3, 6): every code of a layout once,
masks that continue across every edge two tiles may share, Tiled .tsx and Godot .tres files whose structure
is checked by parsing them, and a writer that never replaces a file."""

from __future__ import annotations

import itertools
import os
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from spriteforge.errors import SpriteForgeError
from spriteforge.pixel import autotile as T

SIZES = {"wang16": 16, "blob47": 48, "dualgrid": 16}  # blob47: the 47 blob tiles and the plain second terrain


def _corner_set():
    return {(None, tr, None, br, None, bl, None, tl) for tl, tr, br, bl in itertools.product((0, 1), repeat=4)}


def _blob_set():
    """The blob codes by the rule as the blob literature states it: a corner counts only with both its edges."""
    out = set()
    for n, e, s, w in itertools.product((0, 1), repeat=4):
        for ne, se, sw, nw in itertools.product((0, 1), repeat=4):
            if (ne and not (n and e)) or (se and not (s and e)) or (sw and not (s and w)) or (nw and not (n and w)):
                continue
            out.add((n, ne, e, se, s, sw, w, nw))
    return out


@pytest.mark.parametrize("name", T.LAYOUTS)
def test_every_code_of_the_layout_is_present_exactly_once(name):
    lay = T.layout(name)
    codes = lay.codes
    assert len(codes) == SIZES[name] == len(set(codes))
    if name == "blob47":
        assert set(codes) == {(1, c) for c in _blob_set()} | {(0, (0,) * 8)}
    else:
        assert set(codes) == {(None, c) for c in _corner_set()}
    places = {(t.column, t.row) for t in lay.tiles}
    assert len(places) == len(codes) and all(0 <= c < lay.columns and 0 <= r < lay.rows for c, r in places)


def test_unknown_layout_is_a_coded_error():
    with pytest.raises(SpriteForgeError) as e:
        T.layout("wang99")
    assert e.value.code == "BAD_INPUT" and "wang16" in e.value.message


def test_the_dual_grid_sheet_repeats_as_one_seamless_picture():
    """Every neighbour on the 4x4 dual-grid sheet, wrapping around, is a pair that may touch."""
    lay = T.layout("dualgrid")
    at = {(t.column, t.row): t for t in lay.tiles}
    for (c, r), t in at.items():
        assert T.may_touch(t, at[((c + 1) % 4, r)], "right")
        assert T.may_touch(t, at[(c, (r + 1) % 4)], "below")


@pytest.mark.parametrize("name", T.LAYOUTS)
def test_masks_continue_across_every_edge_two_tiles_may_share(name):
    """Across a shared edge the terrain field changes no more than between neighbouring pixels inside a tile;
    across edges that may not be shared it jumps (so the check can fail)."""
    lay = T.layout(name)
    f = T.masks(lay, 16, seed=3)
    inner = max(np.abs(np.diff(f, axis=1)).max(), np.abs(np.diff(f, axis=2)).max())
    ok = set()
    for i, j, side in T.touching_pairs(lay):
        a, b = (f[i][:, -1], f[j][:, 0]) if side == "right" else (f[i][-1], f[j][0])
        assert np.abs(a - b).max() <= inner + 1e-9, (lay.tiles[i].code, lay.tiles[j].code, side)
        ok.add((i, j, side))
    jumps = [np.abs(f[i][:, -1] - f[j][:, 0]).max() for i in range(len(f)) for j in range(len(f))
             if (i, j, "right") not in ok]
    assert max(jumps) > 4 * inner


def test_the_band_never_reaches_the_tile_border():
    f = T.masks(T.layout("blob47"), 32, seed=1)
    w = T.band(f, radius=4, hold=2)
    assert w.max() > 0.9
    assert w[:, :2].max() == w[:, -2:].max() == w[:, :, :2].max() == w[:, :, -2:].max() == 0.0


def test_the_noise_repeats_with_the_tile_and_follows_the_seed():
    n = T.tile_noise(32, seed=5)
    assert np.array_equal(n, T.tile_noise(32, seed=5)) and not np.array_equal(n, T.tile_noise(32, seed=6))
    assert np.abs(n[:, -1] - n[:, 0]).max() <= np.abs(np.diff(n, axis=1)).max() + 1e-9


def test_continuity_measure_sees_a_seam():
    """A smooth periodic texture has wrap ratio ~1; the same texture shifted by half has a hard seam."""
    y, x = np.mgrid[0:16, 0:16] / 16.0
    tex = (127 + 100 * np.sin(2 * np.pi * x) * np.cos(2 * np.pi * y))[..., None].repeat(3, -1).astype(np.uint8)
    assert T.seam_ratio(tex) < 1.5
    assert T.seam_ratio(np.roll(tex, 8, axis=1)[:, :12]) > 1.5


@pytest.mark.parametrize("terrain", ["grass", "water", "sand", "stone"])
def test_the_per_pair_measure_holds_for_exactly_periodic_textures(terrain):
    """Calibration of the per-pair figure on the demo model's own training textures (exactly periodic by
    construction): a set of copies of one texture, every shared edge its wrap seam. Against the mean change
    inside, single edges reach 2x and more (``worst``: one line against an average of many), so that is no
    per-pair test; against the largest change between the tiles' own neighbouring lines (``worst_line``) a
    seamless edge is about 1 (a periodic texture's seam is one more of its lines), and a terrain meeting another where the codes say they continue is far above 1.5."""
    from spriteforge.sprites.terrain import render_terrain

    lay = T.layout("wang16")
    worst, worst_line = [], []
    for seed in range(12):
        tex = render_terrain(terrain, seed)
        c = T.continuity(np.stack([tex] * len(lay.tiles)), lay)
        worst.append(c["worst"])
        worst_line.append(c["worst_line"])
        other = render_terrain("sand" if terrain != "sand" else "grass", seed)
        mixed = np.stack([tex if k % 2 else other for k in range(len(lay.tiles))])
        assert T.continuity(mixed, lay)["worst_line"] > 1.5
    assert max(worst_line) <= 1.1  # the seam is one more line of the texture: about as large as its largest inner one
    assert max(worst) > 1.5 or terrain == "sand"


# --------------------------------------------------------------------------- files

def _parse_tres(text: str) -> list:
    """Godot's text resource as ``[(section, attrs, {key: value})]``: ``[name k=v ...]`` headers, then
    ``key = value`` lines (values kept as text)."""
    sections = []
    for line in text.splitlines():
        if not line.strip():
            continue
        m = re.fullmatch(r"\[(\w+)((?:\s+\w+=(?:\"[^\"]*\"|\S+))*)\]", line)
        if m:
            attrs = dict(re.findall(r"(\w+)=(\"[^\"]*\"|[^\s\]]+)", m.group(2)))
            sections.append((m.group(1), {k: v.strip('"') for k, v in attrs.items()}, {}))
            continue
        k, sep, v = line.partition(" = ")
        assert sep and sections, f"not a Godot resource line: {line!r}"
        assert k not in sections[-1][2], f"{k} set twice"
        sections[-1][2][k] = v
    return sections


def check_tres(text: str, lay: T.Layout, terrains: tuple, tile: int, image: str) -> None:
    """The structure Godot 4 loads: a TileSet with the sheet as an atlas source, one terrain set of the
    layout's mode, and every tile's terrain and peering bits matching its code."""
    secs = _parse_tres(text)
    (h, ha, _), (e, ea, _), (s, sa, src), (r, _, res) = secs
    assert (h, ha["type"], ha["format"]) == ("gd_resource", "TileSet", "3")
    assert (e, ea["type"], ea["path"]) == ("ext_resource", "Texture2D", image)
    assert (s, sa["type"], r) == ("sub_resource", "TileSetAtlasSource", "resource")
    assert src["texture"] == f'ExtResource("{ea["id"]}")' and res["sources/0"] == f'SubResource("{sa["id"]}")'
    assert src["texture_region_size"] == res["tile_size"] == f"Vector2i({tile}, {tile})"
    mode = int(res["terrain_set_0/mode"])
    assert mode == (0 if lay.kind == "mixed" else 1)
    names = [v for k, v in res.items() if re.fullmatch(r"terrain_set_0/terrain_\d+/name", k)]
    transparent = terrains[1] is None
    assert names == [f'"{t}"' for t in terrains if t is not None]
    allowed = {"top_left_corner", "top_right_corner", "bottom_left_corner", "bottom_right_corner"}
    if mode == 0:
        allowed |= {"top_side", "right_side", "bottom_side", "left_side"}
    for t in lay.tiles:
        pre = f"{t.column}:{t.row}/0"
        assert src[pre] == "0"
        bits = {k[len(pre) + len("/terrains_peering_bit/"):]: int(v) for k, v in src.items()
                if k.startswith(pre + "/terrains_peering_bit/")}
        assert set(bits) <= allowed
        for i, name in enumerate(T.GODOT_BITS):
            if t.code[i] is None:
                assert name not in bits
            elif t.code[i] == 1:
                assert bits[name] == 0
            else:
                assert bits.get(name, -1) == (-1 if transparent else 1)
        if bits:
            assert src[pre + "/terrain_set"] == "0" and int(src[pre + "/terrain"]) in range(-1, len(names))
    keys = {k.split("/")[0] for k in src if re.match(r"\d+:\d+/", k)}
    assert keys == {f"{t.column}:{t.row}" for t in lay.tiles}


def check_tsx(text: str, lay: T.Layout, terrains: tuple, tile: int, image: str) -> None:
    """Tiled's tileset format: the image and grid, one wangset of the layout's type, and every wangid
    (top, top-right, ..., top-left; 0 = none, colours from 1) matching its tile's code."""
    root = ET.fromstring(text)
    assert root.tag == "tileset" and int(root.get("tilewidth")) == int(root.get("tileheight")) == tile
    assert int(root.get("columns")) == lay.columns and int(root.get("tilecount")) == lay.columns * lay.rows
    img = root.find("image")
    assert img.get("source") == image and int(img.get("width")) == lay.columns * tile
    assert int(img.get("height")) == lay.rows * tile
    (ws,) = root.find("wangsets").findall("wangset")
    assert ws.get("type") == lay.kind
    colours = ws.findall("wangcolor")
    assert [c.get("name") for c in colours] == [t for t in terrains if t is not None]
    assert all(re.fullmatch(r"#[0-9a-f]{6}", c.get("color")) for c in colours)
    by_id = {t.row * lay.columns + t.column: t for t in lay.tiles}
    seen = set()
    for wt in ws.findall("wangtile"):
        tid = int(wt.get("tileid"))
        wid = [int(v) for v in wt.get("wangid").split(",")]
        assert len(wid) == 8 and all(0 <= v <= len(colours) for v in wid)
        code = by_id[tid].code
        for v, c in zip(wid, code):
            assert v == (0 if c is None else (1 if c == 1 else (0 if terrains[1] is None else 2)))
        seen.add(tid)
    # Tiled's wangid cannot say that a tile's middle differs from everything around it: the one-cell blob
    # island (middle A, all around B) stays out, or it would stand in for the plain B tile.
    expect = {i for i, t in by_id.items() if 1 in t.code or (terrains[1] is not None and t.centre != 1)}
    assert seen == expect


@pytest.mark.parametrize("name,terrains", [("wang16", ("grass", "water")), ("blob47", ("grass", "water")),
                                           ("dualgrid", ("rock", None)), ("blob47", ("sand & stone", None))])
def test_tiled_and_godot_files_have_the_layout_and_every_code(name, terrains):
    lay = T.layout(name)
    colours = ((10, 200, 30), (20, 40, 220))
    check_tsx(T.tiled_tsx(lay, terrains, 16, "set.png", colours), lay, terrains, 16, "set.png")
    check_tres(T.godot_tres(lay, terrains, 16, "set.png", colours), lay, terrains, 16, "set.png")


def test_the_file_checks_catch_a_wrong_code():
    lay = T.layout("wang16")
    tsx = T.tiled_tsx(lay, ("a", "b"), 16, "s.png", ((0, 0, 0), (1, 1, 1)))
    bad = tsx.replace('wangid="0,1,0,1,0,1,0,1"', 'wangid="0,1,0,1,0,2,0,1"')
    assert bad != tsx
    with pytest.raises(AssertionError):
        check_tsx(bad, lay, ("a", "b"), 16, "s.png")
    tres = T.godot_tres(lay, ("a", "b"), 16, "s.png", ((0, 0, 0), (1, 1, 1)))
    bad = tres.replace("3:3/0/terrains_peering_bit/top_left_corner = 0", "3:3/0/terrains_peering_bit/top_left_corner = 1")
    assert bad != tres
    with pytest.raises(AssertionError):
        check_tres(bad, lay, ("a", "b"), 16, "s.png")


def test_a_set_is_written_under_one_free_stem_never_replacing_nor_following_a_link(tmp_path):
    from spriteforge.paths import OutputFolder

    exts = (".png", ".json", ".tsx")
    make = lambda stem: {f"{stem}.png": b"x", f"{stem}.json": stem.encode(), f"{stem}.tsx": b"z"}  # noqa: E731
    (tmp_path / "a.json").write_text("mine")
    target = tmp_path / "elsewhere.txt"
    os.symlink(target, tmp_path / "a_1.tsx")  # a dangling link at a name of the next stem
    written = OutputFolder(tmp_path).write_group("a", exts, make)
    assert [p.name for p in written] == ["a_2.png", "a_2.json", "a_2.tsx"]
    assert (tmp_path / "a.json").read_text() == "mine" and (tmp_path / "a_2.json").read_text() == "a_2"
    assert not target.exists() and not (tmp_path / "a.png").exists()
