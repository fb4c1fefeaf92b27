"""Pixel nodes (schema rules, a LoadImage -> indexed sprite PNG chain) and the ``spriteforge pixel`` command."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

import spriteforge.pixel as px  # noqa: E402
from spriteforge.cli.main import main  # noqa: E402
from spriteforge.errors import BAD_INPUT, SpriteForgeError  # noqa: E402
from spriteforge.nodes import pixel as N  # noqa: E402
from spriteforge.nodes.folders import Folders  # noqa: E402
from spriteforge.nodes._standalone_io import _HiddenHolder  # noqa: E402

PICO = px.builtin("pico-8")


def _sprite(seed=0, h=16, w=16):
    rng = np.random.default_rng(seed)
    rgb = PICO.colors[rng.integers(1, 16, (h, w))]
    a = np.zeros((h, w), np.uint8)
    a[2:h - 2, 3:w - 3] = 255
    return np.concatenate([rgb, a[..., None]], -1)


def _load_image_like_comfyui(path):
    """What ComfyUI's LoadImage returns: IMAGE [1,H,W,3] and MASK = 1 - alpha."""
    im = Image.open(path).convert("RGBA")
    arr = np.asarray(im).astype(np.float32) / 255.0
    return torch.from_numpy(arr[None, ..., :3]), torch.from_numpy(1.0 - arr[None, ..., 3])


def test_schemas_follow_the_pack_rules():
    assert len(N.NODES) >= 10
    ids = set()
    for cls in N.NODES:
        s = cls.define_schema()
        assert s.node_id.startswith("SpriteForgePixel") and s.node_id not in ids
        ids.add(s.node_id)
        assert s.category == "SpriteForge/pixel"
        assert s.description and len(s.description) > 20
        for inp in s.inputs:
            assert inp.tooltip, (s.node_id, inp.id)
    from spriteforge.nodes import node_map

    assert ids <= set(node_map(strict=True))


def test_load_image_to_indexed_sprite_png(tmp_path, monkeypatch):
    monkeypatch.setattr(N.PixelSaveIndexed, "folders", Folders(output=tmp_path / "out"), raising=False)
    sprite = _sprite(1)
    fake = px.upscale(sprite, 8)
    Image.fromarray(fake).save(tmp_path / "in.png")
    image, loadmask = _load_image_like_comfyui(tmp_path / "in.png")
    alpha = 1.0 - loadmask  # InvertMask
    img, mask, scale, w, h = N.PixelGridRecover.execute(image, mask=alpha).args
    assert (w, h) == (16, 16) and scale == pytest.approx(8.0)
    pal, preview = N.PixelPaletteLoad.execute("pico-8").args
    assert preview.shape[-1] == 3
    img, mask = N.PixelQuantize.execute(img, pal, dither="fs", strength=0.5, mask=mask).args
    img, mask = N.PixelAlphaCleanup.execute(img, mask, min_island=2, max_hole=2).args
    monkeypatch.setattr(N.PixelSaveIndexed, "hidden",
                        _HiddenHolder(prompt={"1": {"class_type": "LoadImage"}}, extra_pnginfo={"workflow": {"nodes": []}}))
    res = N.PixelSaveIndexed.execute(img, filename_prefix="sprites/hero", palette=pal, mask=mask)
    entry = res.ui["images"][0]
    assert entry["subfolder"] == "sprites" and entry["type"] == "output"
    path = tmp_path / "out" / "sprites" / entry["filename"]
    with Image.open(path) as im:
        assert im.mode == "P" and im.info.get("transparency") == 0
        assert json.loads(im.text["prompt"]) == {"1": {"class_type": "LoadImage"}}
        assert json.loads(im.text["workflow"]) == {"nodes": []}
        rgba = np.asarray(im.convert("RGBA"))
    assert np.array_equal(rgba, np.where(sprite[..., 3:] > 0, sprite, 0))
    assert (tmp_path / "out" / "sprites" / "hero_palette_00001_.hex").is_file()
    # never overwrites: a second save gets the next counter
    res2 = N.PixelSaveIndexed.execute(img, filename_prefix="sprites/hero", palette=pal, mask=mask)
    assert res2.ui["images"][0]["filename"] != entry["filename"]


def test_cli_and_node_write_the_same_indexed_png(tmp_path, monkeypatch):
    """No palette given: the image's own colours, in one order for `spriteforge pixel --indexed` and the nodes
    (Load Image -> Alpha Cleanup -> Save Indexed): OKLab lightness, then a, then b. Same palette, same indices."""
    sprite = _sprite(7)
    Image.fromarray(sprite).save(tmp_path / "in.png")
    assert main(["-q", "pixel", str(tmp_path / "in.png"), "--out", str(tmp_path / "cli"), "--indexed"]) == 0
    image, loadmask = _load_image_like_comfyui(tmp_path / "in.png")
    img, mask = N.PixelAlphaCleanup.execute(image, 1.0 - loadmask, threshold=0.5, min_island=0, max_hole=0).args
    monkeypatch.setattr(N.PixelSaveIndexed, "folders", Folders(output=tmp_path / "node"), raising=False)
    res = N.PixelSaveIndexed.execute(img, filename_prefix="in", mask=mask)
    with Image.open(tmp_path / "cli" / "in.png") as a, Image.open(tmp_path / "node" / res.ui["images"][0]["filename"]) as b:
        assert a.mode == b.mode == "P" and a.info.get("transparency") == b.info.get("transparency") == 0
        assert a.getpalette() == b.getpalette()
        idx_cli, idx_node = np.asarray(a), np.asarray(b)
        colours = np.array(a.getpalette(), np.uint8).reshape(-1, 3)
    assert np.array_equal(idx_cli, idx_node)
    used = colours[1:len(np.unique(sprite[sprite[..., 3] > 0][:, :3], axis=0)) + 1]  # index 0 is transparent
    lab = px.srgb_to_oklab(used)
    assert np.all(np.diff(lab[:, 0]) >= 0), "the image's own palette runs dark to light"
    assert np.array_equal(np.asarray(a.convert("RGBA")), np.where(sprite[..., 3:] > 0, sprite, 0))


def test_batch_nodes_sheet_and_tiles(tmp_path, monkeypatch):
    for cls in N.NODES:  # the output folder, as the runner hands it to the nodes of a run
        monkeypatch.setattr(cls, "folders", Folders(output=tmp_path), raising=False)
    frames = np.stack([_sprite(i) for i in range(4)])
    image = torch.from_numpy(px.upscale(frames.reshape(-1, 16, 4), 4).reshape(4, 64, 64, 4)[..., :3] / 255.0).float()
    alpha = torch.from_numpy(px.upscale(frames.reshape(-1, 16, 4), 4).reshape(4, 64, 64, 4)[..., 3] / 255.0).float()
    small, smask = N.PixelDownscale.execute(image, method="kcentroid", mode="size", width=16, height=16, mask=alpha).args
    assert small.shape == (4, 16, 16, 3) and smask.shape == (4, 16, 16)
    pal, _ = N.PixelPaletteExtract.execute(small, colors=8, seed=3, mask=smask).args
    pal2, _ = N.PixelPaletteExtract.execute(small, colors=8, seed=3, mask=smask).args
    assert pal == pal2 and len(pal) <= 8
    q, qmask = N.PixelQuantize.execute(small, pal, dither="bayer4", mask=smask).args
    colours = {tuple(c) for c in np.rint(q.numpy().reshape(-1, 3) * 255).astype(int).tolist()}
    assert colours <= {tuple(c) for c in pal.colors.tolist()}
    res = N.PixelSpriteSheet.execute(q, filename_prefix="anim", columns=2, mask=qmask, palette=pal)
    sheet, sheet_mask = res.args
    assert sheet.shape == (1, 32, 32, 3)
    name = res.ui["images"][0]["filename"]
    atlas = json.loads((tmp_path / name.replace(".png", ".json")).read_text())
    assert atlas["meta"]["image"] == name and len(atlas["frames"]) == 4
    assert (tmp_path / name.replace(".png", ".gpl")).is_file()
    with Image.open(tmp_path / name) as im:
        assert im.mode == "P"
    tiles, tmask, count = N.PixelSliceTiles.execute(sheet, 16, 16, mask=sheet_mask).args
    assert count == 4 and tiles.shape == (4, 16, 16, 3)
    assert torch.equal(tiles, q)
    up, _ = N.PixelUpscale.execute(q, 3).args
    assert up.shape == (4, 48, 48, 3)


def test_node_bad_input():
    image = torch.zeros(1, 10, 10, 3)
    with pytest.raises(SpriteForgeError) as e:
        N.PixelDownscale.execute(image, factor=3)
    assert e.value.code == BAD_INPUT
    with pytest.raises(SpriteForgeError):
        N.PixelDownscale.execute(image, factor=2, mask=torch.zeros(1, 5, 5))
    with pytest.raises(SpriteForgeError):
        N.PixelPaletteLoad.execute("pico-8", file="/nonexistent/palette.gpl")
    with pytest.raises(SpriteForgeError):
        N.PixelSaveIndexed.execute(image, filename_prefix="../escape")


# ------------------------------------------------------------------ command line

def _write_sprites(folder, n=3, scale=6):
    folder.mkdir(parents=True, exist_ok=True)
    sprites = []
    for i in range(n):
        s = _sprite(10 + i)
        Image.fromarray(px.upscale(s, scale)).save(folder / f"s{i}.png")
        sprites.append(s)
    return sprites


def test_cli_folder_to_indexed_pngs(tmp_path, capsys):
    sprites = _write_sprites(tmp_path / "in")
    out = tmp_path / "out"
    rc = main(["-q", "pixel", str(tmp_path / "in"), "--out", str(out), "--detect-grid", "--palette", "pico-8",
               "--indexed", "--min-island", "2", "--sheet", "sheet"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "3 image(s)" in text
    for i, s in enumerate(sprites):
        with Image.open(out / f"s{i}.png") as im:
            assert im.mode == "P" and im.size == (16, 16)
            rgba = np.asarray(im.convert("RGBA"))
        assert np.array_equal(rgba, np.where(s[..., 3:] > 0, s, 0))
    assert px.read_palette(out / "palette.hex") == PICO
    atlas = json.loads((out / "sheet.json").read_text())
    assert set(atlas["frames"]) == {"s0", "s1", "s2"}


def test_cli_fit_dither_factor_and_errors(tmp_path, capsys):
    _write_sprites(tmp_path / "in", n=2, scale=4)
    out = tmp_path / "o"
    rc = main(["-q", "pixel", str(tmp_path / "in" / "s0.png"), str(tmp_path / "in" / "s1.png"), "--out", str(out),
               "--factor", "4", "--method", "box", "--palette", "6", "--dither", "atkinson", "--outline", "#000000",
               "--upscale", "2"])
    assert rc == 0
    pal = px.read_palette(out / "palette.hex")
    assert len(pal) <= 6
    with Image.open(out / "s0.png") as im:
        assert im.size == (32, 32) and im.mode == "RGBA"
    # bad inputs: coded errors, non-zero exit, no traceback
    assert main(["-q", "pixel", str(tmp_path / "in"), "--out", str(out), "--palette", "no-such"]) == 19
    assert main(["-q", "pixel", str(tmp_path / "in"), "--out", str(out), "--factor", "7"]) == 19
    assert main(["-q", "pixel", str(tmp_path / "missing"), "--out", str(out)]) == 19
    # never overwrite an input
    assert main(["-q", "pixel", str(tmp_path / "in" / "s0.png"), "--out", str(tmp_path / "in")]) == 19
    err = capsys.readouterr().err
    assert "BAD_INPUT" in err and "Traceback" not in err


def test_cli_subprocess(tmp_path):
    _write_sprites(tmp_path / "in", n=1, scale=5)
    exe = shutil.which("spriteforge")
    cmd = [exe] if exe else [sys.executable, "-m", "spriteforge.cli.main"]
    r = subprocess.run(cmd + ["-q", "pixel", str(tmp_path / "in"), "--out",
                        str(tmp_path / "out"), "--detect-grid", "--palette", "8", "--dither", "bayer4", "--indexed"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "1 image(s)" in r.stdout
    with Image.open(tmp_path / "out" / "s0.png") as im:
        assert im.mode == "P" and im.size == (16, 16)


def test_workflow_load_image_to_indexed_png_through_the_runner(tmp_path):
    """An API-format prompt as ComfyUI would queue it: LoadImage -> grid recovery -> palette -> quantize -> save."""
    from spriteforge.execution import runner

    sprite = _sprite(4)
    (tmp_path / "in").mkdir()
    Image.fromarray(px.upscale(sprite, 8)).save(tmp_path / "in" / "hero.png")
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "hero.png"}},
        "2": {"class_type": "SpriteForgePixelGridRecover",
              "inputs": {"image": ["1", 0], "mask": ["1", 1], "invert_mask": True, "snap_to_multiple": "8",
                         "max_scale": 0.0}},
        "3": {"class_type": "SpriteForgePixelPaletteLoad", "inputs": {"name": "pico-8", "file": ""}},
        "4": {"class_type": "SpriteForgePixelQuantize",
              "inputs": {"image": ["2", 0], "mask": ["2", 1], "palette": ["3", 0], "dither": "fs", "strength": 0.5,
                         "protect_edges": True}},
        "5": {"class_type": "SpriteForgePixelAlphaCleanup",
              "inputs": {"image": ["4", 0], "mask": ["4", 1], "threshold": 0.5, "min_island": 2, "max_hole": 2,
                         "strays": False, "outline": False, "outline_color": "#000000", "bleed": True,
                         "invert_mask": False}},
        "6": {"class_type": "SpriteForgePixelSaveIndexed",
              "inputs": {"images": ["5", 0], "mask": ["5", 1], "palette": ["3", 0], "filename_prefix": "sprites/hero",
                         "upscale": 1}},
    }
    res = runner.run_workflow(prompt, out_dir=tmp_path / "out", input_dir=tmp_path / "in")
    entry = res.outputs["6"]["images"][0]
    path = tmp_path / "out" / entry["subfolder"] / entry["filename"]
    with Image.open(path) as im:
        assert im.mode == "P" and im.size == (16, 16) and im.info.get("transparency") == 0
        assert "prompt" in im.text
        rgba = np.asarray(im.convert("RGBA"))
    assert np.array_equal(rgba, np.where(sprite[..., 3:] > 0, sprite, 0))
