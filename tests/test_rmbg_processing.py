"""rmbg/ numpy pre/post-processing: geometry (pad/unpad), refinement, foreground colours."""

from __future__ import annotations

import numpy as np
import pytest

from spriteforge import rmbg
from spriteforge.errors import BAD_INPUT, SpriteForgeError

ndimage = pytest.importorskip("scipy.ndimage")


# ----------------------------------------------------------------------------- geometry

SIZES = [(8, 8), (8, 1000), (1000, 8), (37, 53), (480, 641), (1080, 1920), (1920, 1080), (333, 1), (2001, 999), (63, 64)]


@pytest.mark.parametrize("h,w", [s for s in SIZES if min(s) >= rmbg.MIN_SIDE])
@pytest.mark.parametrize("res", [1024, 512, (2560, 1440)])
def test_pad_unpad_round_trip_odd_aspect(h, w, res):
    g = rmbg.plan(h, w, res)
    bw, bh = (res, res) if isinstance(res, int) else res
    assert g.model_h % 32 == 0 and g.model_w % 32 == 0
    assert g.model_h <= bh + 31 and g.model_w <= bw + 31
    assert max(g.model_h - bh, g.model_w - bw) < 32  # the long side fills the box
    assert g.padded_h >= h and g.padded_w >= w
    # Aspect kept: the padded original and the model canvas have the same shape up to rounding.
    sy, sx = g.model_h / g.padded_h, g.model_w / g.padded_w
    assert abs(sy / sx - 1) <= 1.0 / min(g.padded_h, g.padded_w) + 1e-9
    # Centred padding.
    assert abs(g.top - g.bottom) <= 1 and abs(g.left - g.right) <= 1
    rng = np.random.default_rng(h * 7919 + w)
    img = rng.random((2, h, w, 3)).astype(np.float32)
    for mode in ("edge", "reflect", "constant"):
        p = rmbg.pad(img, g, mode=mode)
        assert p.shape == (2, g.padded_h, g.padded_w, 3)
        assert np.array_equal(rmbg.unpad(p, g, batched=True), img)
        assert np.array_equal(rmbg.unpad(rmbg.pad(img[0], g, mode), g), img[0])
    m = rng.random((h, w)).astype(np.float32)
    assert np.array_equal(rmbg.unpad(rmbg.pad(m, g), g), m)


@pytest.mark.parametrize("h,w", [(1, 1), (1, 500), (7, 100)])
def test_tiny_images_are_coded_errors(h, w):
    with pytest.raises(SpriteForgeError) as e:
        rmbg.plan(h, w, 1024)
    assert e.value.code == BAD_INPUT and "at least" in e.value.message


@pytest.mark.parametrize("res", [0, 1000, 8192, (1024, 1000)])
def test_bad_resolution(res):
    with pytest.raises(SpriteForgeError) as e:
        rmbg.plan(100, 100, res)
    assert e.value.code == BAD_INPUT


def test_unpad_rejects_other_shapes():
    g = rmbg.plan(50, 70, 256)
    with pytest.raises(SpriteForgeError):
        rmbg.unpad(np.zeros((10, 10)), g)


# ----------------------------------------------------------------------------- refinement


def test_label_matches_scipy():
    rng = np.random.default_rng(3)
    for shape, p in (((64, 97), 0.55), ((200, 150), 0.4), ((1, 50), 0.5), ((50, 1), 0.5)):
        b = rng.random(shape) > p
        for conn, struct in ((8, np.ones((3, 3))), (4, None)):
            lab, n = rmbg.label(b, conn)
            ref, rn = ndimage.label(b, structure=struct)
            assert n == rn
            pairs = set(zip(lab.ravel().tolist(), ref.ravel().tolist()))
            assert len(pairs) == rn + 1  # a bijection between the two labelings
            assert ((lab == 0) == (ref == 0)).all()
    assert rmbg.label(np.zeros((5, 5), bool))[1] == 0


def test_grow_is_octagon_dilation_and_erosion_dual():
    a = np.zeros((41, 41), np.float32)
    a[20, 20] = 1
    cross = ndimage.generate_binary_structure(2, 1)
    square = np.ones((3, 3), bool)
    for r in (1, 2, 5):
        ref = a > 0
        for i in range(r):
            ref = ndimage.binary_dilation(ref, structure=square if i % 2 else cross)
        assert np.array_equal(rmbg.grow(a, r) > 0.5, ref)
    # Round-ish: radius 6 reaches 6 px along the axes and ~4-5 px along diagonals (not 6 like a square).
    g = rmbg.grow(a, 6)
    assert g[20, 26] == 1 and g[20, 27] == 0 and g[25, 25] == 0
    rng = np.random.default_rng(0)
    soft = rng.random((30, 30)).astype(np.float32)
    assert np.allclose(rmbg.grow(soft, -3), 1 - rmbg.grow(1 - soft, 3))
    big = np.zeros((30, 30), np.float32)
    big[5:25, 5:25] = 1
    er = rmbg.grow(big, -2)
    assert er[7:23, 7:23].all() and er[6, 6] == 0 and er.sum() < big.sum()
    assert np.array_equal(rmbg.grow(big, 0), big)


def test_threshold_and_feather():
    rng = np.random.default_rng(1)
    a = rng.random((60, 80)).astype(np.float32)
    t = rmbg.threshold(a, 0.5)
    assert set(np.unique(t)) <= {0.0, 1.0} and np.array_equal(t > 0, a >= 0.5)
    assert np.array_equal(rmbg.threshold(a, 0), a)
    f = rmbg.feather(a, 2.5)
    ref = np.clip(ndimage.gaussian_filter(a.astype(np.float64), 2.5, mode="reflect"), 0, 1)
    assert np.abs(f - ref).max() < 1e-5
    edge = np.zeros((40, 40), np.float32)
    edge[:, 20:] = 1
    fe = rmbg.feather(edge, 3)
    assert fe[:, 0].max() < 1e-3 and fe[:, -1].min() > 0.999 and 0.3 < fe[20, 19] < 0.7


def test_remove_islands_and_fill_holes():
    a = np.zeros((80, 80), np.float32)
    a[10:50, 10:50] = 1.0  # the object (1600 px)
    a[30:35, 30:35] = 0.0  # a 25 px hole inside it
    a[0:20, 60:70] = 0.0
    a[60:63, 60:63] = 1.0  # a 9 px speck
    a[59, 60:63] = 0.3  # its soft rim
    a[70, 5] = 1.0  # a 1 px speck
    r = rmbg.remove_islands(a, 20)
    assert r[60:63, 60:63].max() == 0 and r[59, 60:63].max() == 0 and r[70, 5] == 0
    assert np.array_equal(r[10:50, 10:50], a[10:50, 10:50])
    assert np.array_equal(rmbg.remove_islands(a, 0), a)
    f = rmbg.fill_holes(a, 100)
    assert f[30:35, 30:35].min() == 1.0
    assert np.array_equal(rmbg.fill_holes(a, 10), a)  # hole larger than the limit stays
    assert rmbg.fill_holes(a, -1)[30:35, 30:35].min() == 1.0
    # Background that touches the border is never a hole.
    c = np.ones((20, 20), np.float32)
    c[0:5, 8:12] = 0
    assert np.array_equal(rmbg.fill_holes(c, -1), c)
    opts = rmbg.RefineOptions(threshold=0.5, fill_holes=100, remove_islands=20, grow=1, feather=1.0)
    out = rmbg.refine(a, opts)
    assert out.dtype == np.float32 and out.shape == a.shape
    assert out[30:35, 30:35].min() > 0.99 and out[61, 61] < 0.01
    assert not rmbg.RefineOptions().active and np.array_equal(rmbg.refine(a, rmbg.RefineOptions()), a)


def test_refine_rejects_non_2d():
    with pytest.raises(SpriteForgeError) as e:
        rmbg.refine(np.zeros((2, 3, 4)), rmbg.RefineOptions(grow=1))
    assert e.value.code == BAD_INPUT


# ----------------------------------------------------------------------------- foreground colours


def _synthetic(h=96, w=96):
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot(yy - h / 2, xx - w / 2)
    alpha = np.clip((30 - r) / 8, 0, 1).astype(np.float32)  # a disk with an 8 px soft edge
    F = np.zeros((h, w, 3), np.float32)
    F[..., 0] = 0.9
    F[..., 1] = 0.6 + 0.2 * (xx / w)  # a little texture
    F[..., 2] = 0.1
    B = np.zeros((h, w, 3), np.float32)
    B[..., 2] = 0.9  # blue background
    B[..., 1] = 0.2 * (yy / h)
    I = alpha[..., None] * F + (1 - alpha[..., None]) * B
    return I, alpha, F, B


@pytest.mark.parametrize("method", ["ml", "blur_fusion"])
def test_foreground_estimation_removes_fringe(method):
    I, alpha, F, B = _synthetic()
    est = rmbg.estimate_foreground(I, alpha, method)
    edge = (alpha > 0.05) & (alpha < 0.95)
    naive_err = np.abs(I - F)[edge].mean()
    err = np.abs(est - F)[edge].mean()
    assert naive_err > 0.25
    assert err < 0.35 * naive_err, (err, naive_err)
    # Over white, the edge should carry no blue tint from the old background.
    comp = rmbg.composite(est, alpha, "white")
    ideal = rmbg.composite(F, alpha, "white")
    naive = rmbg.composite(I, alpha, "white")
    assert np.abs(comp - ideal)[edge].mean() < 0.5 * np.abs(naive - ideal)[edge].mean()
    # The compositing equation still holds where alpha is large.
    core = alpha > 0.95
    assert np.abs(est - F)[core].mean() < 0.05


def test_foreground_ml_returns_background_too():
    I, alpha, F, B = _synthetic(40, 50)
    est_f, est_b = rmbg.estimate_foreground_ml(I, alpha, return_background=True)
    recon = alpha[..., None] * est_f + (1 - alpha[..., None]) * est_b
    assert np.abs(recon - I).mean() < 0.02


def test_composite_modes():
    F = np.full((2, 4, 5, 3), 0.5, np.float32)
    a = np.zeros((2, 4, 5), np.float32)
    a[:, :, :2] = 1
    rgba = rmbg.composite(F, a, "alpha")
    assert rgba.shape == (2, 4, 5, 4) and np.array_equal(rgba[..., 3], a)
    w = rmbg.composite(F, a, "white")
    assert w.shape == (2, 4, 5, 3) and w[0, 0, 4, 0] == 1.0 and w[0, 0, 0, 0] == 0.5
    assert rmbg.composite(F, a, "black")[0, 0, 4].max() == 0
    c = rmbg.composite(F, a, "color", "#ff8000")
    assert np.allclose(c[0, 0, 4], [1.0, 128 / 255, 0.0])
    assert rmbg.parse_color("0f0") == (0.0, 1.0, 0.0)
    for bad in ("#12345", "green", "#gg0000"):
        with pytest.raises(SpriteForgeError) as e:
            rmbg.parse_color(bad)
        assert e.value.code == BAD_INPUT
    with pytest.raises(SpriteForgeError):
        rmbg.composite(F, a, "checkerboard")
