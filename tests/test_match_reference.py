"""Locking images to a reference sprite (``pixel/reference.py``, the Reference Sprite for Edit and Match Reference
Sprite nodes): size, palette and alpha of the reference, structure of the variant.

The "edit model" here is a plain function of the enlarged reference (a recolour that swaps the sprite's colours, a
darkened night version, a mirrored facing-left one), blurred, noised and JPEG-compressed as a generated picture
is (``sprites.degrade``); the real edit model runs in ``test_sprite_variants.py``.
"""

from __future__ import annotations

import io as _io

import numpy as np
import pytest
from PIL import Image

from spriteforge.errors import BAD_INPUT, SpriteForgeError
from spriteforge.pixel.color import srgb_to_oklab
from spriteforge.pixel import reference as R
from spriteforge.sprites import degrade as D
from spriteforge.sprites import generator as G


def _ref(seed=0, outline=True, kind="potion", color="red") -> np.ndarray:
    return G.render(G.SpriteSpec(kind, color, "", outline, seed), 32)


def _generated(big: np.ndarray, seed: int = 0) -> np.ndarray:
    """What comes back from a model: blurred, noised, JPEG-compressed."""
    return D.degrade(big, 1, blur=1.0, noise=4.0, jpeg=85, seed=seed)


def _recolour(img: np.ndarray, pal, shift: int = 1) -> np.ndarray:
    """Every palette colour of ``img`` replaced by another palette colour (the key and others untouched)."""
    out = img.copy()
    for i, c in enumerate(pal.colors):
        hit = (img[..., :3] == c).all(-1)
        out[..., :3][hit] = pal.colors[(i + shift) % len(pal)]
    return out


def _check_locked(out: np.ndarray, ref: np.ndarray) -> None:
    pal = R.reference_palette(ref)
    assert out.dtype == np.uint8 and out.shape == ref.shape[:2] + (4,)
    assert set(np.unique(out[..., 3]).tolist()) <= {0, 255}
    colours = {tuple(c) for c in out[..., :3].reshape(-1, 3).tolist()}
    assert colours <= {tuple(c) for c in pal.colors.tolist()}


@pytest.mark.parametrize("seed", range(4))
def test_a_recoloured_variant_keeps_its_structure_pixel_for_pixel(seed):
    spec = G.random_spec(seed)
    ref = G.render(spec, 32)
    pal = R.reference_palette(ref)
    assert len(pal) >= 3
    want = _recolour(ref, pal)  # the recolour an edit model was asked for, on the reference's grid
    big, f = R.edit_reference(want, size=512)
    assert f == 16 and big.shape == (512, 512, 3)
    out = R.match_reference(_generated(big, seed), ref)
    _check_locked(out, ref)
    assert np.array_equal(out[..., 3], ref[..., 3])
    opaque = ref[..., 3] == 255
    assert np.array_equal(out[..., :3][opaque], want[..., :3][opaque])
    # the colour structure is the reference's: pixels alike in the reference are alike in the variant
    assert len({tuple(c) for c in out[..., :3][opaque].tolist()}) == len(pal)


def test_night_variant_uses_only_the_references_colours():
    ref = _ref(1)
    big, _ = R.edit_reference(ref, size=256)
    night = big.astype(np.float64)
    keep = (big == (255, 0, 255)).all(-1)
    night[~keep] = night[~keep] * [0.45, 0.5, 0.8] + [0, 0, 30]  # darker and bluer: colours the sprite does not have
    out = R.match_reference(_generated(np.clip(night, 0, 255).astype(np.uint8)), ref)
    _check_locked(out, ref)
    assert np.array_equal(out[..., 3], ref[..., 3])
    opaque = ref[..., 3] == 255
    lightness = lambda x: srgb_to_oklab(x)[..., 0].mean()  # noqa: E731
    assert lightness(out[..., :3][opaque]) < lightness(ref[..., :3][opaque]) - 0.05  # darker, within the palette


def test_facing_left_takes_its_silhouette_from_the_key_colour():
    ref = _ref(2, kind="sword", color="blue")
    left = ref[:, ::-1].copy()
    big, f = R.edit_reference(left, size=256)
    out = R.match_reference(_generated(big, 3), ref)  # locked to the (right-facing) reference
    _check_locked(out, ref)
    assert np.array_equal(out[..., 3], left[..., 3])
    assert not np.array_equal(out[..., 3], ref[..., 3])
    opaque = left[..., 3] == 255
    assert np.array_equal(out[..., :3][opaque], left[..., :3][opaque])
    # "reference" keeps the reference's silhouette whatever the image's background says
    same = R.match_reference(_generated(big, 3), ref, alpha="reference")
    assert np.array_equal(same[..., 3], ref[..., 3])
    _check_locked(same, ref)


def test_the_images_own_mask_gives_alpha_mask():
    ref = _ref(3)
    big, f = R.edit_reference(ref, size=128, key="#00ff00")
    a = np.kron(ref[..., 3], np.ones((f, f), np.uint8))
    out = R.match_reference(np.concatenate([big, a[..., None]], -1), ref, alpha="mask")
    _check_locked(out, ref)
    assert np.array_equal(out, np.where(ref[..., 3:] == 255, ref, out)) and np.array_equal(out[..., 3], ref[..., 3])
    with pytest.raises(SpriteForgeError) as e:
        R.match_reference(big, ref, alpha="mask")
    assert e.value.code == BAD_INPUT


def test_an_opaque_reference_gives_opaque_variants_key_colour_included():
    opaque = np.where(_ref(4)[..., 3:] == 255, _ref(4), np.array([255, 0, 255, 255], np.uint8))
    big, f = R.edit_reference(opaque, size=256)
    assert f == 8 and np.array_equal(big[::f, ::f], opaque[..., :3])
    out = R.match_reference(_generated(big), opaque)
    _check_locked(out, opaque)
    assert (out[..., 3] == 255).all() and np.array_equal(out, opaque)
    rgb = R.match_reference(_generated(big)[..., :3], opaque[..., :3])  # RGB in, RGB reference: the same
    assert np.array_equal(rgb, out)


def test_detected_grid_and_sizes_the_cells_do_not_divide():
    ref = _ref(5, kind="chest", color="orange")
    big, f = R.edit_reference(ref, size=256)
    out = R.match_reference(_generated(big), ref, grid="detect")
    _check_locked(out, ref)
    assert np.array_equal(out, np.where(ref[..., 3:] == 255, ref, out))
    # a model that draws at a size the cells do not divide (the sprite drawn at 250 or 262 px): resized to 256
    for size in (250, 262):
        img = np.asarray(Image.fromarray(big).resize((size, size), Image.BILINEAR))
        fitted = R.match_reference(_generated(img), ref)
        _check_locked(fitted, ref)
        assert (fitted == np.where(ref[..., 3:] == 255, ref, fitted)).all(-1).mean() > 0.97
    for fit in ("crop", "pad"):  # or cut to / padded out to whole cells
        _check_locked(R.match_reference(_generated(big)[3:-3, 3:-3], ref, fit=fit), ref)
    with pytest.raises(SpriteForgeError) as e:
        R.match_reference(_generated(big)[3:-3, 3:-3], ref, fit="exact")
    assert e.value.code == BAD_INPUT
    with pytest.raises(SpriteForgeError) as e:  # a grid that is not the reference's
        R.match_reference(_generated(R.edit_reference(ref[:16, :16], size=256)[0]), ref, grid="detect")
    assert e.value.code == BAD_INPUT and "16x16" in e.value.message


def test_edit_factor():
    assert R.edit_factor(32, 32, 1024) == 32
    assert R.edit_factor(64, 64, 1024) == 16
    assert R.edit_factor(40, 40, 1024, 16) == 24   # 960: both sides a multiple of 16 (25 would give 1000)
    assert R.edit_factor(40, 24, 1024, 16) == 24
    assert R.edit_factor(33, 33, 100, 16) == 3     # no multiple of 16 fits: the largest factor
    with pytest.raises(SpriteForgeError) as e:
        R.edit_factor(64, 64, 32)
    assert e.value.code == BAD_INPUT


@pytest.mark.parametrize("case", ["no opaque pixel", "too many colours", "image smaller", "key in the sprite",
                                  "unknown grid", "unknown alpha", "bad key", "sprite larger than size"])
def test_bad_input_is_refused(case):
    ref = _ref(6)
    big, _ = R.edit_reference(ref, size=128)
    rng = np.random.default_rng(0)
    calls = {
        "no opaque pixel": lambda: R.match_reference(big, np.zeros((32, 32, 4), np.uint8)),
        "too many colours": lambda: R.match_reference(big, rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)),
        "image smaller": lambda: R.match_reference(big[:16, :16], ref),
        "key in the sprite": lambda: R.match_reference(big, ref, key="#d62828"),
        "unknown grid": lambda: R.match_reference(big, ref, grid="auto"),
        "unknown alpha": lambda: R.match_reference(big, ref, alpha="none"),
        "bad key": lambda: R.edit_reference(ref, key="magenta"),
        "sprite larger than size": lambda: R.edit_reference(ref, size=16),
    }
    with pytest.raises(SpriteForgeError) as e:
        calls[case]()
    assert e.value.code == BAD_INPUT and e.value.message.endswith(".")


# --------------------------------------------------------------------------- the nodes

torch = pytest.importorskip("torch")

from spriteforge.nodes import pixel as N  # noqa: E402
from spriteforge.nodes.folders import Folders  # noqa: E402

NODES = (N.PixelEditReference, N.PixelMatchReference)


def _t(x: np.ndarray):
    return torch.from_numpy(x.astype(np.float32) / 255.0)


def test_node_schemas_and_queue_time_checks():
    from spriteforge.nodes import node_map

    for cls in NODES:
        s = cls.define_schema()
        assert s.node_id.startswith("SpriteForgePixel") and s.category == "SpriteForge/pixel"
        assert s.display_name.startswith("SpriteForge ") and len(s.description) > 40
        assert all(i.tooltip for i in s.inputs) and all(o.tooltip for o in s.outputs)
        assert s.node_id in node_map(strict=True)
        assert cls.validate_inputs(key_color="#00ff00") is True
        assert "key_color" in cls.validate_inputs(key_color="green")
    assert "grid" in N.PixelMatchReference.validate_inputs(grid="auto")
    assert "threshold" in N.PixelMatchReference.validate_inputs(threshold=2.0)
    assert "size" in N.PixelEditReference.validate_inputs(size=8)


def test_nodes_from_load_image_to_indexed_variants_with_the_references_palette(tmp_path, monkeypatch):
    """LoadImage (indexed reference PNG) -> Reference Sprite for Edit -> (edit) -> Match Reference Sprite ->
    Save Indexed with its palette: the variant's PNG has the reference PNG's palette, size and transparency."""
    from spriteforge.pixel import export as X
    from spriteforge.pixel.sprite import indexed_palette

    monkeypatch.setattr(N.PixelSaveIndexed, "folders", Folders(output=tmp_path), raising=False)
    ref = _ref(7)
    with open(tmp_path / "ref.png", "wb") as fp:
        X.save_indexed_png(fp, X.to_indexed(ref, indexed_palette(ref)), indexed_palette(ref))
    rgba = np.asarray(Image.open(tmp_path / "ref.png").convert("RGBA"))
    image, load_mask = _t(rgba[None, ..., :3]), 1.0 - _t(rgba[None, ..., 3])  # what LoadImage gives
    big, factor, w, h = N.PixelEditReference.execute(image, size=256, mask=load_mask, invert_mask=True).args
    assert factor == 8 and (w, h) == (256, 256) and tuple(big.shape) == (1, 256, 256, 3)
    pal0 = R.reference_palette(ref)
    edited = (big[0].numpy() * 255).round().astype(np.uint8)
    variants = np.stack([_generated(_recolour(edited, pal0, s), s) for s in (1, 2)])
    matched = N.PixelMatchReference.execute(_t(variants), image, reference_mask=load_mask, invert_reference_mask=True)
    img, mask, pal = matched.args
    # the editor's swatch strip: the reference colours the variants use, in the palette's order
    assert matched.ui["palette"] == ["#" + c for c in pal0.hex()]
    assert tuple(img.shape) == (2, 32, 32, 3) and tuple(mask.shape) == (2, 32, 32)
    assert pal == pal0
    assert torch.equal(mask[0], _t(ref[..., 3])) and torch.equal(mask[1], _t(ref[..., 3]))
    res = N.PixelSaveIndexed.execute(img, filename_prefix="variant", palette=pal, mask=mask)
    with Image.open(tmp_path / "ref.png") as a:
        ref_palette, ref_trns = a.getpalette(), a.info.get("transparency")
    for entry, s in zip(res.ui["images"], (1, 2)):
        with Image.open(tmp_path / entry["filename"]) as b:
            assert b.mode == "P" and b.size == (32, 32)
            assert b.getpalette() == ref_palette and b.info.get("transparency") == ref_trns
            got = np.asarray(b.convert("RGBA"))
        want = _recolour(ref, pal0, s)
        assert np.array_equal(got, np.where(ref[..., 3:] == 255, want, 0))
    with pytest.raises(SpriteForgeError) as e:  # one reference sprite, not a batch
        N.PixelMatchReference.execute(_t(variants), torch.cat([image, image]))
    assert e.value.code == BAD_INPUT


def test_png_round_trip_keeps_the_lock():
    """A variant saved as PNG and read back (as a user's file would be) matches again to itself."""
    ref = _ref(8)
    out = R.match_reference(_generated(R.edit_reference(ref, size=128)[0]), ref)
    buf = _io.BytesIO()
    Image.fromarray(out).save(buf, "PNG")
    again = np.asarray(Image.open(buf).convert("RGBA"))
    back = R.match_reference(again, ref, alpha="mask")
    assert np.array_equal(back[..., 3], out[..., 3])
    assert np.array_equal(back[..., :3][out[..., 3] == 255], out[..., :3][out[..., 3] == 255])


def test_sprite_batch_joins_variants_in_order_and_refuses_other_sizes():
    s = N.PixelBatch.define_schema()
    assert s.category == "SpriteForge/pixel" and all(i.tooltip for i in s.inputs)
    a, b = _ref(9), _ref(10)[:, ::-1]
    images, masks = N.PixelBatch.execute(_t(a[None, ..., :3]), _t(a[None, ..., 3]), image_3=_t(np.stack([b, a])[..., :3]),
                                         mask_3=_t(np.stack([b, a])[..., 3])).args
    assert tuple(images.shape) == (3, 32, 32, 3)
    assert torch.equal(masks, _t(np.stack([a, b, a])[..., 3]))
    assert torch.equal(images, _t(np.stack([a, b, a])[..., :3]))
    only, opaque = N.PixelBatch.execute(_t(a[None, ..., :3])).args
    assert tuple(only.shape) == (1, 32, 32, 3) and bool((opaque == 1).all())
    for kw in ({"image_2": _t(a[None, :16, :16, :3])}, {"mask_2": _t(a[None, ..., 3])}):
        with pytest.raises(SpriteForgeError) as e:
            N.PixelBatch.execute(_t(a[None, ..., :3]), **kw)
        assert e.value.code == BAD_INPUT
