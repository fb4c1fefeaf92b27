"""Autotile sets made on the built-in demo model (issue #26 items 2-4, 6), through the real command line and
nodes: whatever the model draws, the tiles that may touch continue into each other (the change across every
edge they may share is no worse than 1.5x the change inside the tiles), each texture is seamless by the same
measure, every code is present once, one palette, alpha 0/255, the .tsx/.tres files carry the codes, nothing
is overwritten and Cancel stops the run. Tiny tiles and two sampling steps keep it fast."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from spriteforge.cli.main import main
from spriteforge.generation.autotile import AutotileSpec, make_autotiles
from spriteforge.pixel import autotile as T
from spriteforge.tests.test_autotile_layouts import check_tres, check_tsx

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FAST = ["--tile", "8", "--scale", "1", "--steps", "2", "--inpaint-steps", "2", "--colors", "12", "-q"]


@pytest.fixture(scope="module")
def demo():
    from spriteforge.resolve import DEMO, load_handle

    return load_handle(DEMO, engine="torch", device="cpu", dtype="float32")


def _tiles_from_files(out, stem):
    atlas = json.loads((out / f"{stem}.json").read_text())
    with Image.open(out / f"{stem}.png") as im:
        assert im.mode == "P"
        sheet = np.asarray(im.convert("RGBA"))
    tiles, codes = [], []
    for fr in atlas["frames"].values():
        r = fr["frame"]
        tiles.append(sheet[r["y"]:r["y"] + r["h"], r["x"]:r["x"] + r["w"]])
        codes.append(tuple(fr["terrain"]["wangid"]))
    return atlas, np.stack(tiles), codes


def test_cli_makes_a_wang16_set_that_drops_into_godot_and_tiled(tmp_path, capsys):
    out = tmp_path / "set"
    args = ["tileset", "--terrain", "grass", "--terrain", "water", "--layout", "wang16", "--out", str(out), *FAST]
    assert main([*args, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    stem = "grass_water_wang16"
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{stem}{e}" for e in (".json", ".png", ".tres", ".tsx"))
    lay = T.layout("wang16")
    atlas, tiles, codes = _tiles_from_files(out, stem)
    assert codes == [tuple(T._wangid(t, False)) for t in lay.tiles]
    assert len(set(codes)) == 16 and atlas["meta"]["autotile"]["layout"] == "wang16"
    c = T.continuity(tiles, lay)
    print("wang16 (demo model, 8 px):", c, "textures:", summary["texture_seam_ratios"])
    assert c["pairs"] == 128 and c["ratio"] <= 1.5 and c["worst_line"] <= 1.5
    assert summary["worst_edge_line_ratio"] == round(c["worst_line"], 3)
    for k in (0, 15):  # the all-B and all-A tiles are the textures themselves
        assert T.seam_ratio(tiles[k]) <= 1.5
    assert len(np.unique(tiles[..., :3].reshape(-1, 3), axis=0)) <= 12
    check_tsx((out / f"{stem}.tsx").read_text(), lay, ("grass", "water"), 8, f"{stem}.png")
    check_tres((out / f"{stem}.tres").read_text(), lay, ("grass", "water"), 8, f"{stem}.png")

    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(args) == 0  # the same names again: a new stem for the whole set, nothing replaced
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {k: after[k] for k in before} == before
    assert sorted(set(after) - set(before)) == sorted(f"{stem}_1{e}" for e in (".png", ".json", ".tsx", ".tres"))
    assert f'source="{stem}_1.png"' in after[f"{stem}_1.tsx"].decode()  # the files name each other by the new stem


def test_bad_arguments_are_refused_before_any_model_work(tmp_path, capsys):
    out = tmp_path / "x"
    assert main(["tileset", "--terrain", "grass", "--layout", "hex", "--out", str(out)]) != 0
    assert main(["tileset", "--terrain", "a", "--terrain", "b", "--terrain", "c", "--out", str(out)]) != 0
    assert main(["tileset", "--terrain", "a", "--tile", "2", "--out", str(out)]) != 0
    assert main(["tileset", "--terrain", "a", "--name", "../up", "--out", str(out)]) != 0
    assert capsys.readouterr().err.count("BAD_INPUT") == 4
    assert not out.exists()


@pytest.mark.parametrize("layout,b", [("blob47", "water"), ("dualgrid", None)])
def test_library_sets_continue_across_shared_edges(demo, layout, b):
    spec = AutotileSpec("grass", b, layout, tile=8, scale=1, seed=2, steps=2, inpaint_steps=2, colors=12, batch=24)
    s = make_autotiles(demo.engine, demo, spec)
    lay = T.layout(layout)
    assert s.tiles.shape == (len(lay.tiles), 8, 8, 4) and s.tiles.dtype == np.uint8
    c = T.continuity(s.tiles, lay)
    seams = [T.seam_ratio(t) for t in s.textures]
    print(f"{layout} (demo model, 8 px):", c, "textures:", seams)
    assert c["ratio"] <= 1.5 and c["worst_line"] <= 1.5 and all(r <= 1.5 for r in seams)
    assert set(np.unique(s.tiles[..., 3])) <= {0, 255}
    if b is None:
        assert np.array_equal(s.tiles[..., 3] == 255, T.masks(lay, 8, 2) > 0.5)
        assert s.tiles[..., 3].min() == 0 and len(s.textures) == 1
    else:
        assert (s.tiles[..., 3] == 255).all()
    assert len(s.palette) <= 12


def test_nodes_make_and_save_a_set(demo, tmp_path):
    from spriteforge.nodes.folders import Folders, with_folders
    from spriteforge.nodes.tileset import MakeAutotileSet, SaveAutotileSet

    from spriteforge.pixel.palette import builtin

    pico = builtin("pico-8")
    tiles, masks, aset = MakeAutotileSet.execute(demo, "rock", "", "dualgrid", 8, 1, 5, 2, 2, 0.75, 8, 16,
                                                 transition="rock edge", palette=pico).args
    assert tuple(tiles.shape) == (16, 8, 8, 3) and tuple(masks.shape) == (16, 8, 8)
    opaque = aset.tiles[aset.tiles[..., 3] == 255][:, :3]
    assert {tuple(c) for c in opaque.tolist()} <= {tuple(c) for c in pico.colors.tolist()}
    save = with_folders(SaveAutotileSet, Folders(tmp_path / "in", tmp_path / "out"))
    for _ in range(2):  # the second save gets new names, never the first one's
        save.execute(aset, "sets/rock")
    names = sorted(p.name for p in (tmp_path / "out" / "sets").iterdir())
    assert names == sorted(f"rock{s}{e}" for s in ("", "_1") for e in (".json", ".png", ".tres", ".tsx"))
    check_tsx((tmp_path / "out" / "sets" / "rock.tsx").read_text(), T.layout("dualgrid"), ("rock", None), 8, "rock.png")


def test_cancel_stops_the_run(demo):
    from spriteforge import progress

    progress.request_interrupt()
    try:
        with pytest.raises(progress.Interrupted):
            make_autotiles(demo.engine, demo, AutotileSpec("grass", "water", "wang16", tile=8, scale=1, steps=2))
    finally:
        progress.clear_interrupt()


def test_the_set_does_not_depend_on_the_batch_size(demo):
    """Tile i is inpainted from seed + 7 + i however many tiles share a sampler run."""
    def run(batch):
        spec = AutotileSpec("grass", "water", "dualgrid", tile=8, scale=1, seed=4, steps=2, inpaint_steps=2,
                            colors=8, batch=batch)
        return make_autotiles(demo.engine, demo, spec).tiles

    assert np.array_equal(run(3), run(16))
