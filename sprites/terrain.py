"""Procedural seamless terrain textures (grass, water, sand, stone) with captions, for the demo model.

Every texture is exactly periodic: all of it is made of whole periods over the frame (integer-frequency
cosines, cells placed on a torus, strokes drawn with wrapped indices), so the last column continues into the
first and the last row into the first exactly as any two inner neighbours do. That is what the autotile
sets (:mod:`spriteforge.generation.autotile`) need from the model: textures whose wrap seam is invisible.

Deterministic by seed: :func:`render_terrain` is a pure function of (terrain, seed); :func:`terrain_dataset`
draws its seeds from ``numpy.random.default_rng(seed)``. Opaque (alpha 255) ``H x W x 4`` uint8 like the
sprites of :mod:`.generator`, so the same training code takes both.
"""

from __future__ import annotations

import colorsys

import numpy as np

from .generator import SIZE

TERRAINS = ("grass", "water", "sand", "stone")

# each terrain's colour ramp, dark to light (RGB), before the per-texture hue/value jitter
_RAMPS = {
    "grass": ((34, 92, 38), (58, 138, 52), (92, 176, 70), (150, 208, 96)),
    "water": ((22, 48, 120), (36, 84, 170), (64, 130, 210), (170, 212, 240)),
    "sand": ((176, 140, 86), (214, 182, 118), (232, 206, 146), (246, 230, 184)),
    "stone": ((58, 58, 64), (102, 102, 110), (138, 136, 142), (176, 174, 178)),
}


def periodic_noise(rng: np.random.Generator, size: int, modes: int = 4, falloff: float = 1.2) -> np.ndarray:
    """Smooth noise that repeats with the frame: a sum of cosines with integer frequencies up to ``modes``,
    amplitudes falling as ``1/|k|**falloff``, random phases; scaled to -1..1."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) / size
    out = np.zeros((size, size))
    for kx in range(-modes, modes + 1):
        for ky in range(0, modes + 1):
            if ky == 0 and kx <= 0:
                continue
            amp = rng.normal() / (kx * kx + ky * ky) ** (falloff / 2)
            out += amp * np.cos(2 * np.pi * (kx * x + ky * y) + rng.uniform(0, 2 * np.pi))
    return out / (np.abs(out).max() + 1e-9)


def _torus_cells(rng: np.random.Generator, size: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nearest and second-nearest distance (in pixels, wrapped) to ``n`` random points, and the nearest's index."""
    pts = rng.uniform(0, size, (n, 2))
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    dy = np.abs(y[None] - pts[:, 0, None, None])
    dx = np.abs(x[None] - pts[:, 1, None, None])
    d = np.hypot(np.minimum(dy, size - dy), np.minimum(dx, size - dx))
    order = np.argsort(d, axis=0)
    d_sorted = np.take_along_axis(d, order[:2], axis=0)
    return d_sorted[1] - d_sorted[0], order[0]


def _ramp(terrain: str, rng: np.random.Generator) -> np.ndarray:
    """The terrain's 4-step ramp with a small hue and value jitter (one per texture)."""
    dh, dv = rng.uniform(-0.025, 0.025), rng.uniform(0.9, 1.08)
    out = []
    for rgb in _RAMPS[terrain]:
        h, s, v = colorsys.rgb_to_hsv(*(c / 255.0 for c in rgb))
        out.append(colorsys.hsv_to_rgb((h + dh) % 1.0, s, min(1.0, v * dv)))
    return np.array(out) * 255.0


def _levels(field: np.ndarray, ramp: np.ndarray, cuts) -> np.ndarray:
    """Pixel-art shading: ``field`` cut into the ramp's steps at ``cuts`` (hard edges, no gradients)."""
    return ramp[np.digitize(field, cuts)]


def render_terrain(terrain: str, seed: int, size: int = SIZE) -> np.ndarray:
    """One ``size x size`` opaque RGBA texture of ``terrain``, seamless under wrap, deterministic by ``seed``."""
    if terrain not in TERRAINS:
        raise ValueError(f"unknown terrain {terrain!r}; choose one of {', '.join(TERRAINS)}")
    rng = np.random.default_rng(seed)
    ramp = _ramp(terrain, rng)
    n = periodic_noise(rng, size)
    if terrain == "grass":  # mottled green with short light and dark blades
        rgb = _levels(n, ramp, (-0.45, 0.1, 0.75))
        for _ in range(size * size // 14):
            y, x = rng.integers(0, size, 2)
            tone = ramp[3] if rng.random() < 0.55 else ramp[0]
            for dy in range(int(rng.integers(2, 4))):  # a blade: a short vertical stroke, wrapped
                rgb[(y - dy) % size, x] = tone
    elif terrain == "water":  # deep blue with bands of ripples and a few glints
        y, x = np.mgrid[0:size, 0:size] / size
        k = int(rng.integers(3, 6))
        waves = np.sin(2 * np.pi * (k * y + int(rng.integers(-1, 2)) * x) + 2.2 * n)
        rgb = _levels(0.6 * n + waves, ramp[:3], (-0.5, 0.6))
        rgb[waves > 0.93] = ramp[3]
    elif terrain == "sand":  # pale, low-contrast, fine grains and soft dunes
        grains = rng.random((size, size))
        rgb = _levels(0.8 * n + 0.5 * (grains - 0.5), ramp[1:], (-0.3, 0.45))
        rgb[grains < 0.05] = ramp[0]
    else:  # stone: cobbles (cells on the torus) with dark mortar, each stone its own shade
        gap, idx = _torus_cells(rng, size, int(rng.integers(7, 12)))
        shade = rng.uniform(-0.6, 0.6, idx.max() + 1)[idx] + 0.35 * n
        rgb = _levels(shade, ramp[1:], (-0.25, 0.35))
        rgb[gap < 1.1] = ramp[0]
    out = np.empty((size, size, 4), np.uint8)
    out[..., :3] = np.clip(np.rint(rgb), 0, 255)
    out[..., 3] = 255
    return out


def terrain_dataset(n: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """``n`` textures (``n x 32 x 32 x 4`` uint8), the terrains in turn, and their captions (the terrain's name)."""
    rng = np.random.default_rng(seed)
    names = [TERRAINS[i % len(TERRAINS)] for i in range(n)]
    return np.stack([render_terrain(t, int(rng.integers(2**31 - 1))) for t in names]), names


__all__ = ["TERRAINS", "periodic_noise", "render_terrain", "terrain_dataset"]
