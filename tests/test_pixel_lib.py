"""The pixel library on images the tests make: grid recovery, downscale, palettes, dithering, alpha, export."""

from __future__ import annotations


import numpy as np
import pytest
from PIL import Image

import spriteforge.pixel as px
from spriteforge.errors import BAD_INPUT, SpriteForgeError
from spriteforge.pixel import alpha as A
from spriteforge.pixel import grid as G
from spriteforge.pixel import scale as S
from spriteforge.tests.test_pixel_grid_regress import _degrade

SWEETIE = px.builtin("sweetie-16")


def _sprite(rng, h, w, pal=SWEETIE):
    """A sprite-like index image: 2x2 blobs with single-pixel details, mapped to a palette."""
    idx = rng.integers(0, len(pal), (h // 2 + 1, w // 2 + 1)).repeat(2, 0).repeat(2, 1)[:h, :w]
    detail = rng.integers(0, len(pal), (h, w))
    idx = np.where(rng.random((h, w)) < 0.3, detail, idx)
    return pal.colors[idx]


def _fake(sprite, scale, blur=0.0, jpeg=0, noise=0.0, rng=None, cells=None):
    """Upscale (uniformly, by a float scale, or with explicit cell sizes), blur, add noise/JPEG."""
    h, w = sprite.shape[:2]
    if cells is not None:
        cy, cx = cells
        big = sprite.repeat(cy, 0).repeat(cx, 1)
    else:
        big = np.asarray(Image.fromarray(sprite).resize((int(round(w * scale)), int(round(h * scale))), Image.NEAREST))
    out = _degrade(big, blur, jpeg).astype(np.float64)
    if noise:
        out = out + rng.normal(0, noise, out.shape)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------ grid recovery

@pytest.mark.parametrize("h,w,scale,blur,jpeg,noise", [
    (32, 32, 8, 0.0, 0, 0.0),
    (32, 40, 8, 1.0, 85, 0.0),
    (24, 24, 7.5, 1.0, 90, 0.0),   # non-integer scale: cells of 7 and 8 pixels
    (48, 32, 5, 0.8, 80, 0.0),
    (16, 16, 12, 1.5, 75, 2.0),
    (64, 64, 4, 0.7, 90, 0.0),
    (20, 28, 6, 1.0, 0, 4.0),
    (32, 32, 3, 0.0, 90, 2.0),     # small cells, sharp
    (32, 24, 2.5, 0.0, 92, 1.0),   # cells of 2 and 3 pixels
    (24, 24, 16, 3.0, 80, 2.0),    # heavy blur on big cells
])
def test_grid_recovery_is_pixel_exact(h, w, scale, blur, jpeg, noise):
    rng = np.random.default_rng(h * 1000 + w)
    sprite = _sprite(rng, h, w)
    fake = _fake(sprite, scale, blur, jpeg, noise, rng)
    out, info = px.recover_grid(fake)
    assert out.shape == sprite.shape
    assert info.scale == pytest.approx(scale, abs=0.05)
    # the recovered colours are the art's colours up to compression noise: snapping to the art's
    # palette gives the sprite back pixel for pixel
    assert np.array_equal(SWEETIE.colors[px.match(out, SWEETIE)], sprite)
    assert np.abs(out.astype(int) - sprite).max() <= 40


def test_grid_recovery_follows_a_non_uniform_grid():
    rng = np.random.default_rng(7)
    sprite = _sprite(rng, 24, 24)
    cy = rng.integers(7, 10, 24)  # cells of 7, 8 or 9 pixels, at random
    cx = rng.integers(7, 10, 24)
    fake = _fake(sprite, None, blur=0.8, noise=2.0, rng=rng, cells=(cy, cx))
    out, info = px.recover_grid(fake)
    assert out.shape == sprite.shape
    assert np.array_equal(SWEETIE.colors[px.match(out, SWEETIE)], sprite)
    assert np.array_equal(np.diff(info.cuts_x), cx)


def test_grid_recovery_exact_without_degradation_and_rgba():
    rng = np.random.default_rng(3)
    sprite = _sprite(rng, 16, 16)
    a = np.zeros((16, 16), np.uint8)
    a[3:13, 2:14] = 255
    rgba = np.concatenate([sprite, a[..., None]], -1)
    out, info = px.recover_grid(px.upscale(rgba, 6))
    assert np.array_equal(out, rgba)
    assert info.width == 16 and info.height == 16


def test_grid_snap_to_multiple():
    rng = np.random.default_rng(5)
    sprite = _sprite(rng, 32, 32)
    fake = _fake(sprite, 6, blur=0.8)[:, :-8]  # the last column is cut away: 31 + a bit
    out, info = px.recover_grid(fake, snap_multiple=8)
    assert out.shape[0] % 8 == 0 and out.shape[1] % 8 == 0
    assert out.shape[:2] == (32, 32)


def test_grid_recovery_on_native_art_returns_it_unchanged():
    rng = np.random.default_rng(9)
    noise = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
    out, info = px.recover_grid(noise)
    assert info.scale == 1.0 and np.array_equal(out, noise)


# ------------------------------------------------------------------ downscale

def _kcentroid_loop(img, f):
    """A plain per-cell loop doing the same steps as the vectorised k-centroid."""
    h, w, c = img.shape[0] // f, img.shape[1] // f, img.shape[2]
    out = np.zeros((h, w, c), np.uint8)
    for y in range(h):
        for x in range(w):
            cell = img[y * f:(y + 1) * f, x * f:(x + 1) * f].reshape(1, f * f, c)
            out[y, x] = np.clip(np.rint(S.kcentroid_cells(cell)[0]), 0, 255)
    return out


@pytest.mark.parametrize("method", px.DOWNSCALE_METHODS)
def test_downscale_of_an_upscale_is_identity(method):
    rng = np.random.default_rng(1)
    sprite = _sprite(rng, 12, 10)
    assert np.array_equal(px.downscale(px.upscale(sprite, 5), factor=5, method=method), sprite)
    assert np.array_equal(px.downscale(px.upscale(sprite, 4), size=(10, 12), method=method), sprite)


def test_kcentroid_matches_the_per_cell_loop_and_picks_the_dominant_colour():
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    assert np.array_equal(px.downscale(img, factor=8, method="kcentroid"), _kcentroid_loop(img, 8))
    cell = np.zeros((4, 4, 3), np.uint8)
    cell[:] = (200, 40, 40)
    cell[0, :3] = (10, 10, 10)  # minority
    assert tuple(px.downscale(cell, factor=4, method="kcentroid")[0, 0]) == (200, 40, 40)


def test_contrast_downscale_keeps_thin_dark_outlines():
    img = np.full((32, 32, 3), 220, np.uint8)
    img[:, 13] = 10  # a 1-pixel dark vertical line
    img[21, :] = 10  # and a horizontal one
    for m in ("contrast",):
        out = px.downscale(img, factor=8, method=m)
        assert (out[:, 1] < 50).all() and (out[2, :] < 50).all()
    assert (px.downscale(img, factor=8, method="median") > 200).all()  # the median loses them


@pytest.mark.parametrize("kw", [dict(factor=3), dict(size=(7, 7)), dict(factor=0), dict(size=(0, 4)), dict(),
                                dict(factor=2, size=(4, 4)), dict(factor=2, method="lanczos")])
def test_downscale_bad_input(kw):
    with pytest.raises(SpriteForgeError) as e:
        px.downscale(np.zeros((16, 16, 3), np.uint8), **kw)
    assert e.value.code == BAD_INPUT


@pytest.mark.parametrize("bad", [np.zeros((0, 4, 3), np.uint8), np.zeros((4, 4), np.uint8), np.zeros((4, 4, 2), np.uint8)])
def test_bad_shapes(bad):
    for fn in (lambda a: px.downscale(a, factor=1), lambda a: px.recover_grid(a), lambda a: px.extract(a, 4),
               lambda a: px.quantize(a, "pico-8")):
        with pytest.raises(SpriteForgeError) as e:
            fn(bad)
        assert e.value.code == BAD_INPUT


# ------------------------------------------------------------------ palettes and quantization

def test_shipped_palettes():
    names = px.builtin_names()
    for slug, n in {"pico-8": 16, "sweetie-16": 16, "endesga-32": 32, "nintendo-gameboy-bgb": 4, "gameboy-dmg": 4,
                    "nintendo-entertainment-system": 55, "color-graphics-adapter": 16, "c64-pepto": 16,
                    "c64-colodore": 16}.items():
        assert slug in names
        pal = px.builtin(slug)
        assert len(pal) == n and len(np.unique(pal.colors, axis=0)) == n
        assert pal.comments and pal.comments[0].startswith("source:")
    assert px.builtin("pico-8").hex()[:2] == ["000000", "1d2b53"]
    assert px.builtin("PICO8") == px.builtin("pico-8")
    with pytest.raises(SpriteForgeError) as e:
        px.builtin("no-such-palette")
    assert e.value.code == BAD_INPUT and "pico-8" in e.value.message


@pytest.mark.parametrize("method", ["kmeans", "median_cut", "octree"])
def test_extraction_is_deterministic_and_shared_across_frames(method):
    rng = np.random.default_rng(4)
    frames = [rng.integers(0, 256, (24, 24, 3), dtype=np.uint8) for _ in range(3)]
    p1 = px.extract(frames, 12, method, seed=7)
    p2 = px.extract(frames, 12, method, seed=7)
    assert p1 == p2 and 1 <= len(p1) <= 12
    # pooled: one palette for the batch, every frame maps onto it
    for f in frames:
        q = px.quantize(f, p1)
        assert set(map(tuple, q.reshape(-1, 3))) <= set(map(tuple, p1.colors))


def test_extraction_recovers_exact_colours_of_pixel_art():
    rng = np.random.default_rng(6)
    img = SWEETIE.colors[rng.integers(0, 8, (32, 32))]
    used = np.unique(img.reshape(-1, 3), axis=0)
    for method in ("kmeans", "median_cut", "octree"):
        pal = px.extract(img, len(used), method)
        assert np.array_equal(np.unique(pal.colors, axis=0), used), method


def test_kmeans_seed_changes_nothing_for_the_same_seed_and_mask_is_ignored():
    rng = np.random.default_rng(8)
    img = rng.integers(0, 256, (32, 32, 4), dtype=np.uint8)
    img[..., 3] = 255
    img[:16, :, 3] = 0
    img[:16, :, :3] = (255, 0, 255)  # transparent magenta must not enter the palette
    pal = px.kmeans(img, 6, seed=1)
    assert pal == px.kmeans(img, 6, seed=1)
    assert not (pal.colors == (255, 0, 255)).all(1).any()


@pytest.mark.parametrize("method", px.DITHERS)
def test_dither_methods_use_only_palette_colours(method):
    rng = np.random.default_rng(10)
    y, x = np.mgrid[0:40, 0:48]
    img = np.stack([x * 5, y * 6, (x + y) * 2], -1).clip(0, 255).astype(np.uint8)
    pal = px.builtin("pico-8")
    out = px.quantize(img, pal, method, strength=0.8)
    assert out.shape == img.shape
    assert set(map(tuple, out.reshape(-1, 3))) <= set(map(tuple, pal.colors))
    if method != "none":
        assert px.mean_delta_e(img, out) < 0.2
    del rng


def test_dithering_approximates_a_grey_with_two_colours():
    grey = np.full((32, 32, 3), 119, np.uint8)  # roughly half-way in lightness between black and white
    bw = px.Palette(np.array([[0, 0, 0], [255, 255, 255]]))
    for m in ("fs", "atkinson", "bayer4", "bayer8"):
        idx = px.dither(grey, bw, m)
        assert 0.2 < idx.mean() < 0.8, m
    assert len(np.unique(px.dither(grey, bw, "none"))) == 1


def test_matching_is_perceptual():
    # a saturated blue is perceptually closer to dark navy than to mid grey, even when RGB distance says grey
    pal = px.Palette(np.array([[128, 128, 128], [20, 20, 120]]))
    assert px.match(np.array([[[0, 0, 255]]], np.uint8), pal)[0, 0] == 1


def test_protect_edges_leaves_outlines_undithered():
    img = np.full((24, 24, 3), 119, np.uint8)
    img[:, 12] = 0
    a = np.zeros((24, 24), np.uint8)
    a[2:22, 2:22] = 255
    bw = px.Palette(np.array([[0, 0, 0], [255, 255, 255], [119, 119, 119]]))
    idx = px.dither(img, px.Palette(np.array([[0, 0, 0], [255, 255, 255]])), "fs", protect_edges=True, alpha=a)
    em = px.edge_mask(img, alpha=a)
    assert em[5, 12] and em[2, 5] and not em[5, 5]
    assert (idx[2:22, 12] == 0).all()
    del bw


@pytest.mark.parametrize("method", ["fs", "atkinson"])
def test_transparent_pixels_do_not_leak_error_into_the_sprite(method):
    y, x = np.mgrid[0:24, 0:24]
    rgb = np.stack([x * 10, y * 10, (x + y) * 5], -1).clip(0, 255).astype(np.uint8)
    a = np.zeros((24, 24), np.uint8)
    a[4:20, 4:20] = 255
    other = rgb.copy()
    other[a == 0] = (255, 0, 255)
    i1 = px.dither(rgb, "pico-8", method, alpha=a)
    i2 = px.dither(np.concatenate([other, a[..., None]], -1), "pico-8", method)
    assert np.array_equal(i1[a > 0], i2[a > 0])


def test_dither_bad_input():
    img = np.zeros((4, 4, 3), np.uint8)
    for kw in (dict(method="blue-noise"), dict(strength=2.0), dict(strength="x")):
        with pytest.raises(SpriteForgeError) as e:
            px.dither(img, "pico-8", **kw)
        assert e.value.code == BAD_INPUT


# ------------------------------------------------------------------ alpha

def _soft_blob(rng):
    y, x = np.mgrid[0:48, 0:48]
    a = np.clip(255 * (1.2 - np.hypot(y - 24, x - 24) / 16), 0, 255)
    a = (a + rng.normal(0, 20, a.shape)).clip(0, 255).astype(np.uint8)
    a[2, 2] = 255  # a speck
    a[24, 24] = 0  # a pinhole
    return a


def test_alpha_chain_stays_binary_and_clean():
    rng = np.random.default_rng(11)
    a = _soft_blob(rng)
    rgb = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    out_rgb, out_a = px.clean(rgb, a, min_island=4, max_hole=4, strays=True, outline_color="#ff0000")
    assert set(np.unique(out_a)) <= {0, 255}
    assert out_a[2, 2] == 0 and out_a[24, 24] == 255
    # chain through downscale + quantize + clean again: still binary
    rgba = np.concatenate([out_rgb, out_a[..., None]], -1)
    small = px.downscale(rgba, factor=2, method="kcentroid")
    q = px.quantize(small, "pico-8", "fs")
    _, a2 = px.clean(q[..., :3], q[..., 3])
    assert set(np.unique(a2)) <= {0, 255}


def test_islands_holes_outline_bleed_strays():
    a = np.zeros((20, 20), np.uint8)
    a[5:15, 5:15] = 255
    a[9, 9] = 0          # pinhole (1 px)
    a[1, 1] = 255        # island (1 px)
    a[1, 17:19] = 255    # island (2 px)
    assert A.remove_islands(a, 3)[1, 1] == 0 and A.remove_islands(a, 3)[1, 17] == 0
    assert A.remove_islands(a, 2)[1, 17] == 255
    assert A.fill_pinholes(a, 1)[9, 9] == 255 and A.fill_pinholes(a, 1)[0, 0] == 0
    rgb = np.zeros((20, 20, 3), np.uint8)
    rgb[a > 0] = (10, 200, 30)
    o_rgb, o_a = A.outline(rgb, A.remove_islands(a, 3), "#0000ff")
    assert o_a[4, 8] == 255 and tuple(o_rgb[4, 8]) == (0, 0, 255) and o_a[4, 4] == 0
    bled = A.bleed(rgb, a)
    assert tuple(bled[4, 8]) == (10, 200, 30) and tuple(bled[5, 5]) == (10, 200, 30)
    spot = rgb.copy()
    spot[10, 10] = (255, 255, 255)
    fixed, _ = A.remove_strays(spot, A.fill_pinholes(a, 1))
    assert tuple(fixed[10, 10]) == (10, 200, 30)
    lab, n = A.label(a > 0, 8)
    assert n == 3


def test_label_matches_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(12)
    for conn in (4, 8):
        for _ in range(30):
            m = rng.random(tuple(rng.integers(1, 25, 2))) < rng.random()
            lab, n = A.label(m, conn)
            ref, rn = ndimage.label(m, ndimage.generate_binary_structure(2, 1 if conn == 4 else 2))
            assert n == rn
            assert len(set(zip(lab[m].tolist(), ref[m].tolist()))) == n


# ------------------------------------------------------------------ export

def test_indexed_png_reopens_as_mode_p_with_transparency(tmp_path):
    rng = np.random.default_rng(13)
    pal = px.builtin("pico-8")
    rgb = pal.colors[rng.integers(0, 16, (16, 16))]
    a = np.zeros((16, 16), np.uint8)
    a[4:12, 4:12] = 255
    idx = px.to_indexed(np.concatenate([rgb, a[..., None]], -1), pal)
    path = px.save_indexed_png(tmp_path / "s.png", idx, pal, text={"prompt": {"1": {}}})
    with Image.open(path) as im:
        assert im.mode == "P"
        assert im.info.get("transparency") in (0, b"\x00" + b"\xff" * 16)
        assert im.text["prompt"] == '{"1": {}}'
        back = np.asarray(im)
        plte = np.array(im.getpalette()[: 3 * 17]).reshape(17, 3)
        rgba = np.asarray(im.convert("RGBA"))
    assert np.array_equal(back, idx)
    assert np.array_equal(plte[1:], pal.colors)  # stable colour order: the palette's own
    assert (rgba[..., 3][a == 0] == 0).all() and (rgba[..., 3][a > 0] == 255).all()
    assert np.array_equal(rgba[..., :3][a > 0], rgb[a > 0])
    raw = path.read_bytes()
    assert b"tRNS" in raw and b"PLTE" in raw


def test_sprite_sheet_and_tiles_round_trip():
    rng = np.random.default_rng(14)
    frames = [rng.integers(0, 256, (8, 12, 4), dtype=np.uint8) for _ in range(5)]
    sheet, atlas = px.pack_sheet(frames, columns=2, padding=1, image_name="hero.png")
    assert sheet.shape == (3 * 8 + 2, 2 * 12 + 1, 4)
    assert atlas["meta"]["image"] == "hero.png" and atlas["meta"]["size"] == {"w": 25, "h": 26}
    for i, (name, fr) in enumerate(atlas["frames"].items()):
        r = fr["frame"]
        assert np.array_equal(sheet[r["y"]:r["y"] + r["h"], r["x"]:r["x"] + r["w"]], frames[i])
    tiles, pos = px.slice_tiles(sheet, 12, 8, spacing=1)
    assert len(tiles) == 6 and pos[2] == (0, 1)
    assert np.array_equal(tiles[3], frames[3])
    tiles, _ = px.slice_tiles(sheet, 12, 8, spacing=1, skip_empty=True)
    assert len(tiles) == 5
    with pytest.raises(SpriteForgeError):
        px.slice_tiles(sheet, 100, 100)
    with pytest.raises(SpriteForgeError):
        px.pack_sheet([frames[0], frames[0][:4]])


def test_oklab_round_trip_and_delta_e():
    rng = np.random.default_rng(15)
    c = rng.integers(0, 256, (1000, 3), dtype=np.uint8)
    assert np.abs(px.oklab_to_srgb(px.srgb_to_oklab(c)).astype(int) - c).max() <= 1
    white = px.srgb_to_oklab(np.array([255, 255, 255], np.uint8))
    assert white[0] == pytest.approx(1.0, abs=1e-3) and abs(white[1]) < 1e-3
    assert px.mean_delta_e(c[None], c[None]) == 0.0
    assert G.GridInfo
