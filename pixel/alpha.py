"""Alpha that stays clean through the chain.

Masks are ``H x W`` arrays: uint8 0..255, bool, or float 0..1; 255/True/1 = opaque sprite pixel.
Functions returning masks return uint8 0/255; functions taking an RGB image take ``H x W x 3`` uint8.

* :func:`threshold` - binary alpha;
* :func:`label` - connected components (4 or 8 neighbours), pure numpy (run-length union-find);
* :func:`remove_islands` - drop opaque components smaller than N pixels;
* :func:`fill_pinholes` - make enclosed transparent holes of at most N pixels opaque;
* :func:`bleed` - push edge colours into transparent pixels (no dark halos when scaled/filtered);
* :func:`outline` - a 1-pixel outline in a given colour around the silhouette;
* :func:`remove_strays` - single pixels that differ from four agreeing neighbours take their colour;
* :func:`clean` - the chain in one call;
* :func:`key_to_alpha` - a flat key-colour background to alpha, edge colours decontaminated;
* :func:`near_key_hue` - pixels with the key colour's hue (what fringe looks like).
"""

from __future__ import annotations

import numpy as np

from .color import bad, check_alpha, check_image, parse_hex_color


def _mask(alpha, shape=None) -> np.ndarray:
    a = np.asarray(alpha)
    if a.ndim != 2:
        raise bad(f"mask has shape {a.shape}; expected H x W. Pass a single-channel mask.")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise bad("mask is empty. Pass a mask with at least one pixel.")
    return check_alpha(a, shape if shape is not None else a.shape, "mask")


def threshold(alpha, level: int = 128) -> np.ndarray:
    """Binary alpha: 255 where ``alpha >= level`` (0..255 scale), else 0."""
    a = _mask(alpha)
    if not 0 <= int(level) <= 255:
        raise bad(f"alpha threshold {level} is outside 0..255. Give 0..255.")
    return np.where(a >= int(level), 255, 0).astype(np.uint8)


def label(mask, connectivity: int = 4) -> tuple[np.ndarray, int]:
    """Connected components of a boolean mask: (int32 labels 1..n, 0 = background, n)."""
    m = np.asarray(mask).astype(bool)
    if connectivity not in (4, 8):
        raise bad(f"connectivity {connectivity} is not 4 or 8.")
    h, w = m.shape
    pad = np.zeros((h, w + 2), bool)
    pad[:, 1:-1] = m
    d = np.diff(pad.astype(np.int8), axis=1)
    sr, sc = np.nonzero(d == 1)   # run starts (row, col)
    er, ec = np.nonzero(d == -1)  # run ends (exclusive col)
    nruns = len(sr)
    labels = np.zeros((h, w), np.int32)
    if nruns == 0:
        return labels, 0
    # runs are in row-major order; per row offsets
    row_first = np.searchsorted(sr, np.arange(h + 1))
    ext = 1 if connectivity == 8 else 0
    a_arr = b_arr = np.zeros(0, np.int64)
    if h > 1 and row_first[1] < nruns:
        # overlaps between each run (rows >= 1) and the runs of the row above; keys are increasing
        # row-major, so a searchsorted on (row, col) keys finds the overlapping range of upper runs
        idx = np.arange(row_first[1], nruns)
        r = sr[idx].astype(np.int64)
        up0, up1 = row_first[r - 1], row_first[r]
        s, e = sc[idx] - ext, ec[idx] + ext
        stride = w + 3
        lo = np.searchsorted(sr.astype(np.int64) * stride + ec, (r - 1) * stride + s, side="right")
        hi = np.searchsorted(sr.astype(np.int64) * stride + sc, (r - 1) * stride + e, side="left")
        lo = np.maximum(lo, up0)
        hi = np.minimum(hi, up1)
        cnt = np.maximum(hi - lo, 0)
        if cnt.sum():
            a_arr = np.repeat(idx, cnt)
            b_arr = np.repeat(lo - np.concatenate([[0], np.cumsum(cnt)[:-1]]), cnt) + np.arange(cnt.sum())
    parent = np.arange(nruns)
    if len(a_arr):
        while True:
            pa, pb = parent[a_arr], parent[b_arr]
            mn = np.minimum(pa, pb)
            changed = (pa != pb).any()
            np.minimum.at(parent, pa, mn)
            np.minimum.at(parent, pb, mn)
            while True:  # pointer jumping
                nxt = parent[parent]
                if np.array_equal(nxt, parent):
                    break
                parent = nxt
            if not changed:
                break
    roots, comp = np.unique(parent, return_inverse=True)
    comp = comp.reshape(-1).astype(np.int32) + 1
    lens = ec - sc
    rows = np.repeat(sr, lens)
    cols = np.repeat(sc - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens) + np.arange(lens.sum())
    labels[rows, cols] = np.repeat(comp, lens)
    return labels, len(roots)


def remove_islands(alpha, min_size: int, connectivity: int = 8) -> np.ndarray:
    """Binary alpha with opaque components smaller than ``min_size`` pixels made transparent."""
    a = _mask(alpha) >= 128
    if int(min_size) <= 1:
        return np.where(a, 255, 0).astype(np.uint8)
    lab, n = label(a, connectivity)
    sizes = np.bincount(lab.reshape(-1), minlength=n + 1)
    keep = sizes >= int(min_size)
    keep[0] = False
    return np.where(keep[lab], 255, 0).astype(np.uint8)


def fill_pinholes(alpha, max_size: int, connectivity: int = 4) -> np.ndarray:
    """Binary alpha with enclosed transparent holes of at most ``max_size`` pixels made opaque."""
    a = _mask(alpha) >= 128
    if int(max_size) <= 0:
        return np.where(a, 255, 0).astype(np.uint8)
    lab, n = label(~a, connectivity)
    sizes = np.bincount(lab.reshape(-1), minlength=n + 1)
    border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    fill = sizes <= int(max_size)
    fill[0] = False
    fill[border] = False
    return np.where(a | fill[lab], 255, 0).astype(np.uint8)


def _neighbour_sum(x: np.ndarray, w8: bool = True) -> np.ndarray:
    p = np.pad(x, [(1, 1), (1, 1)] + [(0, 0)] * (x.ndim - 2))
    s = p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:]
    if w8:
        s = s + p[:-2, :-2] + p[:-2, 2:] + p[2:, :-2] + p[2:, 2:]
    return s


def bleed(rgb, alpha, iterations: int = 8) -> np.ndarray:
    """RGB with transparent pixels coloured from their nearest opaque neighbours (``iterations`` rings;
    anything further gets the mean opaque colour). Alpha itself is not changed."""
    rgb = check_image(rgb, "image", channels=(3, 4))[..., :3]
    a = check_alpha(alpha, rgb.shape) >= 128
    if a.all() or not a.any():
        return rgb.copy()
    col = rgb.astype(np.float64) * a[..., None]
    known = a.astype(np.float64)
    out = col.copy()
    for _ in range(int(iterations)):
        if known.all():
            break
        s = _neighbour_sum(out * known[..., None])
        k = _neighbour_sum(known)
        new = (k > 0) & (known == 0)
        out[new] = s[new] / k[new, None]
        known = np.where(new, 1.0, known)
    rest = known == 0
    if rest.any():
        out[rest] = rgb[a].mean(0)
    out[a] = rgb[a]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def outline(rgb, alpha, color="#000000", *, connectivity: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Add a 1-pixel outline of ``color`` (hex string or RGB triple) around the silhouette: (rgb, alpha)."""
    rgb = check_image(rgb, "image")[..., :3]
    a = check_alpha(alpha, rgb.shape) >= 128
    if isinstance(color, str):
        c = np.array(parse_hex_color(color), np.uint8)
    else:
        c = np.asarray(color)
        if c.shape != (3,) or c.min() < 0 or c.max() > 255:
            raise bad(f"outline colour {color!r} is not an RGB triple. Give e.g. '#000000' or (0, 0, 0).")
        c = c.astype(np.uint8)
    ring = (_neighbour_sum(a.astype(np.int32), connectivity == 8) > 0) & ~a
    out = rgb.copy()
    out[ring] = c
    return out, np.where(a | ring, 255, 0).astype(np.uint8)


def remove_strays(rgb, alpha=None) -> tuple[np.ndarray, np.ndarray | None]:
    """Stray-pixel clean-up: an opaque pixel with no opaque 8-neighbour becomes transparent, and a pixel whose
    four neighbours all share one colour different from its own takes that colour. Returns (rgb, alpha)."""
    rgb = check_image(rgb, "image")[..., :3]
    h, w = rgb.shape[:2]
    a = np.ones((h, w), bool) if alpha is None else check_alpha(alpha, rgb.shape) >= 128
    if alpha is not None:
        lonely = a & (_neighbour_sum(a.astype(np.int32)) == 0)
        a = a & ~lonely
    key = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    key = np.where(a, key, -1)
    p = np.pad(key, 1, constant_values=-2)
    up, dn, lf, rt = p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]
    agree = (up == dn) & (up == lf) & (up == rt) & (up >= 0) & (up != key) & a
    out = rgb.copy()
    ys, xs = np.nonzero(agree)
    out[ys, xs] = rgb[ys - 1, xs]
    return out, (None if alpha is None else np.where(a, 255, 0).astype(np.uint8))


def clean(rgb, alpha, *, level: int = 128, min_island: int = 0, max_hole: int = 0, strays: bool = False,
          bleed_edges: bool = True, outline_color=None) -> tuple[np.ndarray, np.ndarray]:
    """Threshold -> remove islands -> fill pinholes -> stray clean-up -> outline -> bleed. Returns (rgb, alpha 0/255)."""
    rgb = check_image(rgb, "image")[..., :3]
    a = threshold(check_alpha(alpha, rgb.shape), level)
    if min_island and int(min_island) > 1:
        a = remove_islands(a, int(min_island))
    if max_hole and int(max_hole) > 0:
        filled = fill_pinholes(a, int(max_hole))
        if (filled != a).any():
            rgb = bleed(rgb, a, iterations=4)  # filled holes take their surroundings' colour
        a = filled
    if strays:
        rgb, a = remove_strays(rgb, a)
    if outline_color is not None:
        rgb, a = outline(rgb, a, outline_color)
    if bleed_edges:
        rgb = bleed(rgb, a)
    return rgb, a


def _hue_sat(f: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hue in degrees, HSV saturation, value) of float RGB 0..1, shape (..., 3)."""
    mx, mn = f.max(-1), f.min(-1)
    d = mx - mn
    safe = np.maximum(d, 1e-9)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    h = np.where(mx == r, ((g - b) / safe) % 6.0, np.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    return np.where(d > 0, h * 60.0, 0.0), np.where(mx > 0, d / np.maximum(mx, 1e-9), 0.0), mx


def near_key_hue(rgb, key=(255, 0, 255), *, hue: float = 25.0, saturation: float = 0.5,
                 value: float = 0.2) -> np.ndarray:
    """Pixels whose hue is within ``hue`` degrees of the key colour's, saturated and not dark (bool ``H x W``):
    what key-colour fringe looks like. All False for an unsaturated key (white, gray, black)."""
    x = np.asarray(rgb)
    f = x[..., :3].astype(np.float64) / 255.0 if x.dtype == np.uint8 else np.clip(x[..., :3].astype(np.float64), 0, 1)
    kh, ks, kv = _hue_sat(np.asarray(key, np.float64)[:3] / 255.0)
    if ks < 0.5 or kv < 0.3:
        return np.zeros(f.shape[:-1], bool)
    h, s, v = _hue_sat(f)
    dh = np.abs(h - kh)
    dh = np.minimum(dh, 360.0 - dh)
    return (dh <= hue) & (s >= saturation) & (v >= value)


def _dilate(m: np.ndarray, steps: int) -> np.ndarray:
    for _ in range(steps):
        m = m | (_neighbour_sum(m.astype(np.int32)) > 0)
    return m


def _best_blend(f: np.ndarray, ys, xs, cand: np.ndarray, k: np.ndarray, reach: int):
    """For pixels ``(ys, xs)``: the colour ``F`` among ``cand`` pixels within ``reach`` that best explains each
    as ``a F + (1 - a) K``: (a, relative residual, F, distance to the nearest candidate colour); residual and
    distance inf where no candidate is in reach."""
    c = f[ys, xs]
    ck = c - k
    best_a = np.ones(len(ys))
    best_r = np.full(len(ys), np.inf)
    best_f = c.copy()
    nearest = np.full(len(ys), np.inf)
    fp = np.pad(f, [(reach, reach), (reach, reach), (0, 0)])
    cp = np.pad(cand, reach)
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            ok = cp[ys + dy + reach, xs + dx + reach]
            if not ok.any():
                continue
            fc = fp[ys + dy + reach, xs + dx + reach]
            fk = fc - k
            den = (fk * fk).sum(-1)
            a = np.clip((ck * fk).sum(-1) / np.maximum(den, 1e-9), 0.0, 1.0)
            r = np.sqrt(((ck - a[:, None] * fk) ** 2).sum(-1)) / np.sqrt(3.0)
            nearest = np.where(ok, np.minimum(nearest, np.sqrt(((c - fc) ** 2).sum(-1)) / np.sqrt(3.0)), nearest)
            better = ok & (den > 1e-6) & (r < best_r)
            best_r = np.where(better, r, best_r)
            best_a = np.where(better, a, best_a)
            best_f = np.where(better[:, None], fc, best_f)
    return best_a, best_r, best_f, nearest


def _hue_nearby(f: np.ndarray, ys, xs, cand: np.ndarray, reach: int, hue: float = 12.0) -> np.ndarray:
    """Whether some ``cand`` pixel within ``reach`` has about the hue (and saturation) of pixel ``(ys, xs)``."""
    h, s, _ = _hue_sat(f)
    cand = cand & (s >= 0.2)
    hp, sp, cp = np.pad(h, reach), np.pad(s, reach), np.pad(cand, reach)
    found = np.zeros(len(ys), bool)
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            yy, xx = ys + dy + reach, xs + dx + reach
            dh = np.abs(hp[yy, xx] - h[ys, xs])
            found |= cp[yy, xx] & (np.minimum(dh, 360.0 - dh) <= hue) & (np.abs(sp[yy, xx] - s[ys, xs]) <= 0.3)
    return found


def _decontaminate(f: np.ndarray, bg: np.ndarray, k: np.ndarray, band: int, reach: int,
                   tol: float, hue: float = 25.0) -> tuple[np.ndarray, np.ndarray]:
    """One image: (colours, opaque mask) with the key colour's contribution taken out of the edge band.

    An opaque pixel within ``band`` pixels of the background is a blend ``c = a F + (1 - a) K`` when some
    sprite colour ``F`` from the interior within ``reach`` pixels puts it on the line from the key ``K``
    (residual under ``tol``) clearly short of ``F`` (``a`` < 0.9): below ``a`` = 0.5 it becomes
    transparent, above it takes the un-premultiplied colour ``(c - (1 - a) K) / a``. Edge pixels nothing
    inside explains keep their colour, unless they are fringe: a hue within ``hue`` degrees of the key's
    (:func:`near_key_hue`, loosely: saturation 0.35) that no interior colour within ``reach`` matches, in
    colour or in hue (a purple sprite's shaded edge has its inside's hue; violet specks around a red
    potion match nothing). Fringe that a nearby opaque colour of another hue explains loosely (residual
    under ``2 tol``, ``a`` >= 0.5) takes that colour; the rest becomes transparent.
    """
    opaque = ~bg
    edge = opaque & _dilate(bg, band)
    out = f.copy()
    keep = opaque.copy()
    ys, xs = np.nonzero(edge)
    if len(ys) == 0:
        return out, keep
    c = f[ys, xs]
    a, r, _, own = _best_blend(f, ys, xs, opaque & ~edge, k, reach)
    blend = (r < tol) & (a < 0.9)
    col = np.clip((c - (1.0 - a[:, None]) * k) / np.maximum(a[:, None], 1e-9), 0.0, 1.0)
    out[ys[blend], xs[blend]] = col[blend]
    keep[ys[blend & (a < 0.5)], xs[blend & (a < 0.5)]] = False
    # key-hued band pixels left (unexplained, or still key-hued once un-premultiplied): fringe
    key8 = np.round(k * 255.0)

    def fringe_hue(x):
        return near_key_hue(x, key8, hue=hue, saturation=0.35, value=0.15)

    hued = keep[ys, xs] & fringe_hue(out[ys, xs][None])[0] & ~(own < 0.1)
    if hued.any():  # a hue the inside has nearby is the sprite's own colour family (its edge shading)
        hued[hued] &= ~_hue_nearby(f, ys[hued], xs[hued], opaque & ~edge, reach)
    if hued.any():
        hy, hx = ys[hued], xs[hued]
        other = keep & ~fringe_hue(out)
        a2, r2, f2, _ = _best_blend(out, hy, hx, other, k, reach)
        take = (r2 < 2.0 * tol) & (a2 >= 0.5)
        out[hy[take], hx[take]] = f2[take]
        keep[hy[~take], hx[~take]] = False
    return out, keep


def key_to_alpha(rgb, key=(255, 0, 255), *, threshold: float = 0.3, decontaminate: bool = True,
                 band: int = 2) -> np.ndarray:
    """RGB image(s) on the key colour -> RGBA uint8 with alpha exactly 0 or 255.

    ``rgb`` is uint8 0..255 or float 0..1, shape ``(..., H, W, 3)``. A pixel is background when its RGB
    distance to the key colour, relative to the largest possible distance, is below ``threshold``, or
    when it is magenta-like (red and blue both well above green, as key pixels blended with an edge
    are; only for a magenta key). Background pixels get alpha 0 and RGB 0; sprite pixels keep their colour
    with alpha 255, except, with ``decontaminate``, in the ``band`` pixels next to the background: there a
    pixel that is a sprite colour blended with the key gets the key taken out (un-premultiplied; mostly
    key: transparent), and pixels that keep the key's hue (:func:`near_key_hue`) are dropped, so no
    key-colour fringe is left around the silhouette (see :func:`_decontaminate`).
    """
    x = np.asarray(rgb)
    f = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else np.clip(x.astype(np.float32), 0.0, 1.0)
    k = np.asarray(key, np.float32) / 255.0
    d = np.sqrt(((f - k) ** 2).sum(-1)) / np.sqrt(3.0)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    magenta = (np.minimum(r, b) - g > 0.45) & (np.abs(r - b) < 0.3)
    if not (k[0] > 0.8 and k[2] > 0.8 and k[1] < 0.2):
        magenta = np.zeros_like(magenta)
    bg = (d < threshold) | magenta
    if decontaminate and f.ndim >= 3 and int(band) > 0:
        flat_f = f.reshape((-1,) + f.shape[-3:]).astype(np.float64)
        flat_bg = bg.reshape((-1,) + bg.shape[-2:])
        cols, keeps = [], []
        for fi, bi in zip(flat_f, flat_bg):
            ci, ki = _decontaminate(fi, bi, k.astype(np.float64), int(band), reach=3, tol=0.035)
            cols.append(ci)
            keeps.append(ki)
        f = np.stack(cols).reshape(f.shape)
        bg = ~np.stack(keeps).reshape(bg.shape)
    out = np.zeros(f.shape[:-1] + (4,), np.uint8)
    rgb8 = np.clip(np.round(f * 255.0), 0, 255).astype(np.uint8)
    out[..., :3] = np.where(bg[..., None], 0, rgb8)
    out[..., 3] = np.where(bg, 0, 255)
    return out
