"""Grid recovery regressions: sprites with large flat regions and few edges (sparse edge profiles).

The old period estimator picked a multiple of the cell size when the few edges happened to be far
apart (edges at 32, 48, 72, 96 read as period 16 -> a 17x9 result for a 16x16 sprite), and the cut
snapping placed cuts at arbitrary places where the profile was flat.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from spriteforge.pixel import grid


def _bug_sprite(h=16, w=16):
    """The sprite from the bug report: a red block with a yellow spot on a transparent background."""
    s = np.zeros((h, w, 4), np.uint8)
    s[3:13, 4:12, :3] = [200, 40, 40]
    s[3:13, 4:12, 3] = 255
    s[5:8, 6:9, :3] = [250, 220, 60]
    return s


def _regions(h, w, boxes, background=(30, 30, 60)):
    """An RGB sprite: a background colour with filled boxes (y0, y1, x0, x1, colour)."""
    s = np.zeros((h, w, 3), np.uint8)
    s[:] = background
    for y0, y1, x0, x1, c in boxes:
        s[y0:y1, x0:x1] = c
    return s


def _degrade(big, blur=0.0, jpeg=0):
    im = Image.fromarray(big)
    if blur:
        im = im.filter(ImageFilter.GaussianBlur(blur))
    if jpeg:
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=jpeg, subsampling=0)
        im = Image.open(buf).convert(im.mode)
    return np.asarray(im)


def _snap(out, sprite):
    """Each recovered pixel replaced by the nearest of the sprite's own colours."""
    pal = np.unique(sprite.reshape(-1, sprite.shape[-1]), axis=0).astype(int)
    d = ((out.astype(int)[..., None, :] - pal) ** 2).sum(-1)
    return pal[d.argmin(-1)].astype(np.uint8)


def _check(sprite, fake, scale, exact=True):
    out, info = grid.recover_grid(fake)
    assert out.shape == sprite.shape
    assert info.scale_x == pytest.approx(scale, abs=0.05) and info.scale_y == pytest.approx(scale, abs=0.05)
    if exact:
        assert np.array_equal(out, sprite)
    else:
        assert np.array_equal(_snap(out, sprite), sprite)
        assert np.abs(out.astype(int) - sprite).max() <= 40
    return info


def test_bug_report_case_is_pixel_exact():
    s = _bug_sprite()
    big = np.kron(s, np.ones((8, 8, 1), np.uint8))
    info = _check(s, big, 8)
    assert info.cuts_x == list(range(0, 129, 8)) and info.cuts_y == list(range(0, 129, 8))


def test_bug_report_case_blurred_and_jpeg():
    s = _bug_sprite()[..., :3].copy()  # JPEG has no alpha: the transparent background is black
    fake = _degrade(np.kron(s, np.ones((8, 8, 1), np.uint8)), blur=1.0, jpeg=90)
    info = _check(s, fake, 8, exact=False)
    assert np.array_equal(np.diff(info.cuts_x), np.full(16, 8))


SPARSE = _regions(16, 16, [(2, 14, 3, 13, (200, 40, 40)), (5, 8, 6, 9, (250, 220, 60)), (10, 12, 9, 12, (40, 160, 70))])


@pytest.mark.parametrize("scale", [3, 4, 5, 6, 8, 12])
def test_sparse_sprite_at_many_scales_is_pixel_exact(scale):
    _check(SPARSE, np.kron(SPARSE, np.ones((scale, scale, 1), np.uint8)), scale)


@pytest.mark.parametrize("scale,blur", [(4, 0.7), (5, 0.8), (6, 1.0), (8, 1.0), (12, 1.5)])
def test_sparse_sprite_blurred_and_jpeg(scale, blur):
    fake = _degrade(np.kron(SPARSE, np.ones((scale, scale, 1), np.uint8)), blur=blur, jpeg=90)
    _check(SPARSE, fake, scale, exact=False)


@pytest.mark.parametrize("scale", [4, 8])
def test_non_square_art(scale):
    s = _regions(16, 24, [(3, 13, 4, 20, (200, 40, 40)), (6, 9, 9, 15, (250, 220, 60))])
    _check(s, np.kron(s, np.ones((scale, scale, 1), np.uint8)), scale)
    t = np.ascontiguousarray(s.transpose(1, 0, 2))  # 24x16
    _check(t, np.kron(t, np.ones((scale, scale, 1), np.uint8)), scale)


def test_one_colour_region_on_transparent():
    s = np.zeros((16, 16, 4), np.uint8)
    s[3:13, 5:12] = [90, 200, 255, 255]  # edges at 24/104 and 40/96: with the borders, only 8 fits all
    _check(s, np.kron(s, np.ones((8, 8, 1), np.uint8)), 8)


def test_two_colour_regions():
    s = _regions(16, 16, [(0, 16, 0, 5, (220, 200, 120))])  # left 5 columns one colour, the rest another
    s[11:, :, :] = (220, 200, 120)  # and the bottom 5 rows
    _check(s, np.kron(s, np.ones((6, 6, 1), np.uint8)), 6)


def test_edges_on_one_axis_only_borrow_its_scale():
    s = np.zeros((16, 16, 3), np.uint8)
    s[:, 3:7] = (200, 40, 40)
    s[:, 9:10] = (40, 200, 40)  # vertical stripes: no edges between rows at all
    _check(s, np.kron(s, np.ones((8, 8, 1), np.uint8)), 8)


def test_sparse_axis_takes_the_other_axis_scale():
    # columns change only every 4 art pixels (edges at 32, 64, 96 alone read as 32-pixel cells);
    # the rows say 8, and 8 explains the columns too: square cells
    s = np.zeros((16, 16, 3), np.uint8)
    s[:, 4:8] = (200, 40, 40)
    s[:, 8:12] = (40, 40, 200)
    s[3:4, :] = (250, 220, 60)
    s[9:14, :] = (40, 200, 40)
    _check(s, np.kron(s, np.ones((8, 8, 1), np.uint8)), 8)


def test_fractional_scale_nearest_resize():
    s = _bug_sprite()
    fake = np.asarray(Image.fromarray(s).resize((120, 120), Image.NEAREST))  # 7.5 pixels per art pixel
    info = _check(s, fake, 7.5)
    assert set(np.diff(info.cuts_x)) <= {7, 8}


def test_flat_and_native_images_are_returned_unchanged():
    flat = np.full((40, 40, 3), 77, np.uint8)
    out, info = grid.recover_grid(flat)
    assert info.scale == 1.0 and np.array_equal(out, flat)
    native = np.zeros((32, 32, 4), np.uint8)
    rng = np.random.default_rng(1)
    # native art with single-pixel detail (four colours at random in a body filling most of the image):
    # edges at every spacing, which no grid of 2+ pixels explains. (Known limit: native art whose strong
    # edges ALL fall on a k-pixel grid, e.g. a few large blocks with faint texture, is indistinguishable
    # from a k-times upscale and is reported as one.)
    pal = np.array([[200, 40, 40, 255], [250, 220, 60, 255], [40, 40, 120, 255], [90, 200, 255, 255]], np.uint8)
    native[2:30, 3:29] = pal[rng.integers(0, 4, (28, 26))]
    out, info = grid.recover_grid(native)
    assert info.scale == 1.0 and np.array_equal(out, native)
