"""Making an autotile set on any engine and family: the terrains as seamless textures, every transition tile
from them, one palette for the set.

:func:`make_autotiles` runs it: each terrain prompt is generated as a seamless texture
(:func:`spriteforge.pipeline.generate` with ``tile=True``) at the work size (tile x ``scale``); each tile of
the layout is the two textures (their wrap seams mended by inpainting) joined along its terrain mask (:mod:`spriteforge.pixel.autotile`: the same
texture offset in every tile, so whatever two tiles may touch continue into each other), then the band along
the boundary is inpainted (masked generation with the tile wrapped, a few tiles a batch; the band stays clear
of the tile's border, which is what neighbours share); then the pixel chain (:mod:`spriteforge.pixel.sprite`)
downscales by ``scale`` and puts every tile and both textures on one palette; alpha is exactly 0/255 where the
second terrain is transparency. The layouts, masks, measurements and file formats are in
:mod:`spriteforge.pixel.autotile`; the prompts are only prompts, so a model that learns terrains needs no
change here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import BAD_INPUT, SpriteForgeError
from ..pixel import autotile as T
from ..progress import Progress
from .sizes import prepare_size


@dataclass(frozen=True)
class AutotileSpec:
    """What to make. ``terrain_b`` None (or "") = transparency. ``scale``: generation pixels per tile pixel
    (None: about the model's native size). ``colors``: the palette size fitted to the set (or ``palette``, a
    shipped name or file). ``steps``/``inpaint_steps``: sampling steps of the textures and of the band
    (None: the family's). ``strength``: how much of the band is redrawn (denoise)."""

    terrain_a: str
    terrain_b: str | None = None
    layout: str = "wang16"
    tile: int = 16
    scale: int | None = None
    seed: int = 0
    steps: int | None = None
    inpaint_steps: int | None = None
    strength: float = 0.75
    cfg: float | None = None
    transition: str | None = None      # the band's prompt (default "<a> and <b>" / "edge of <a>")
    colors: int = 16
    palette: object = None             # a Palette, shipped palette name or palette file
    batch: int = 8


@dataclass
class AutotileSet:
    layout: T.Layout
    terrains: tuple                # (A, B or None)
    tiles: np.ndarray              # [N, tile, tile, 4] uint8, alpha 0/255
    textures: list                 # the terrains' textures after the chain, [tile, tile, 4] uint8 (B absent if transparent)
    palette: object
    tile: int
    scale: int
    notes: list = field(default_factory=list)

    def colours(self) -> tuple:
        """One representative colour per terrain (its texture's mean), for the editors' terrain swatches."""
        return tuple(tuple(int(v) for v in t[..., :3].reshape(-1, 3).mean(0)) for t in self.textures)


def _bad(msg: str) -> SpriteForgeError:
    return SpriteForgeError(BAD_INPUT, msg)


def check_spec(spec: AutotileSpec) -> T.Layout:
    """The spec's layout; BAD_INPUT for anything out of range (before any model work)."""
    lay = T.layout(spec.layout)
    if not str(spec.terrain_a or "").strip():
        raise _bad("the first terrain is empty. Give a prompt, e.g. --terrain grass.")
    if not isinstance(spec.tile, (int, np.integer)) or not 4 <= int(spec.tile) <= 256:
        raise _bad(f"tile size {spec.tile!r} must be a whole number of pixels from 4 to 256.")
    if spec.scale is not None and not 1 <= int(spec.scale) <= 64:
        raise _bad(f"scale {spec.scale} must be from 1 to 64 (generation pixels per tile pixel).")
    if not 0.0 < float(spec.strength) <= 1.0:
        raise _bad(f"strength {spec.strength} must be above 0 and at most 1.")
    if spec.palette is None and not 2 <= int(spec.colors) <= 255:
        raise _bad(f"colors {spec.colors} must be from 2 to 255.")
    if not 1 <= int(spec.batch) <= 64:
        raise _bad(f"batch {spec.batch} must be from 1 to 64.")
    return lay


def native_side(handle) -> int:
    """The side a model draws best at: its position grid (``sample_size``) times the VAE factor, else 1024."""
    n = (getattr(handle, "config", None) or {}).get("sample_size")
    if isinstance(n, (list, tuple)):
        n = n[0]
    return int(n) * int(handle.vae_scale_factor or 8) if n else 1024


def work_scale(handle, tile: int, scale: int | None) -> int:
    """``scale``, or the factor that brings the tile nearest the model's native side (at most 1024 pixels),
    raised until tile x scale is a multiple of the model's size step."""
    mult = int(getattr(handle, "latent_multiple", 16) or 16)
    if scale is not None:
        k = int(scale)
        if (tile * k) % mult:
            raise _bad(f"a {tile}-pixel tile at scale {k} is {tile * k} pixels, not a multiple of {mult} "
                       f"({handle.family}). Choose a scale that makes tile x scale a multiple of {mult}.")
        return k
    k = max(1, min(round(native_side(handle) / tile), 1024 // tile))
    while (tile * k) % mult:
        k += 1
    return k


def _prompts(spec: AutotileSpec) -> tuple:
    a, b = str(spec.terrain_a).strip(), (str(spec.terrain_b).strip() if spec.terrain_b else None)
    band = spec.transition or (f"{a} and {b}" if b else f"edge of {a}")
    return a, b, band


def _generate(engine, handle, spec: AutotileSpec, **kw) -> np.ndarray:
    from ..pipeline import GenerateParams, generate

    return generate(engine, handle, GenerateParams(cfg=spec.cfg, **kw))


def textures(engine, handle, spec: AutotileSpec, side: int) -> list:
    """The terrains as seamless textures ``[side, side, 3]`` float 0..1 (B None for transparency): generated
    with ``tile=True``, then the wrap seam mended (:func:`mend_seam`)."""
    a, b, _ = _prompts(spec)
    out = []
    for k, prompt in enumerate((a, b)):
        if prompt is None:
            out.append(None)
            continue
        seed = int(spec.seed) + 1000 * k
        img = _generate(engine, handle, spec, prompt=prompt, seed=seed, steps=spec.steps, width=side, height=side,
                        tile=True)
        out.append(mend_seam(engine, handle, spec, img[0], prompt, seed + 500))
    return out


def mend_seam(engine, handle, spec: AutotileSpec, tex: np.ndarray, prompt: str, seed: int) -> np.ndarray:
    """``tex`` with its wrap seam redrawn: rolled by half its side (the seam becomes a cross through the
    middle, where the model sees both sides), the cross inpainted with the image wrapped, rolled back. The
    seamless sampling leaves a DiT's wrap seam only as good as its last steps; this makes it interior content."""
    side = tex.shape[0]
    half = side // 2
    rolled = np.roll(tex, (half, half), axis=(0, 1))
    w = T.seam_band(side).astype(np.float32)
    gen = _generate(engine, handle, spec, prompt=prompt, seed=seed, steps=spec.inpaint_steps, init_image=rolled[None],
                    mask=(w > 0.05)[None].astype(np.float32), mask_feather=0, denoise=float(spec.strength), tile=True)
    return np.roll(rolled * (1.0 - w[..., None]) + gen[0] * w[..., None], (-half, -half), axis=(0, 1))


def inpaint_band(engine, handle, spec: AutotileSpec, images: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``images`` [N,H,W,3] with the band (``weight`` [N,H,W], 0..1) redrawn by masked, wrapped generation,
    ``spec.batch`` tiles a run; outside the band (and at every tile border) the images stay exactly as given."""
    _, _, prompt = _prompts(spec)
    out = images.copy()
    n, step = len(images), int(spec.batch)
    chunks = [list(range(i, min(i + step, n))) for i in range(0, n, step)]  # tile i always gets seed + 7 + i
    bar = Progress(max(len(chunks), 1), "autotile band")
    for chunk in chunks:
        if weight[chunk].max() <= 0.05:  # nothing to redraw (single-terrain tiles)
            bar.update()
            continue
        gen = _generate(engine, handle, spec, prompt=prompt, seed=int(spec.seed) + 7 + chunk[0],
                        steps=spec.inpaint_steps, init_image=images[chunk], mask=(weight[chunk] > 0.05).astype(np.float32),
                        mask_feather=0, denoise=float(spec.strength), batch_size=len(chunk), tile=True)
        w = weight[chunk][..., None]
        out[chunk] = images[chunk] * (1.0 - w) + gen * w
        bar.update()
    return out


def _to_rgba(img: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    rgb = np.clip(np.rint(np.asarray(img) * 255.0), 0, 255).astype(np.uint8)
    a = np.full(rgb.shape[:-1], 255, np.uint8) if alpha is None else np.where(alpha, 255, 0).astype(np.uint8)
    return np.concatenate([rgb, a[..., None]], -1)


def finish(frames: list, spec: AutotileSpec, scale: int):
    """The pixel chain over every tile and texture at once: downscale by ``scale`` (k-centroid), one palette
    for all, quantize (no dithering: a pixel's colour depends on that pixel only, so shared edges stay equal)."""
    from ..pixel.sprite import SpriteSteps, clean_sprites

    steps = SpriteSteps(factor=scale if scale > 1 else None, method="kcentroid", bleed=False)
    if spec.palette:
        return clean_sprites(frames, steps, palette=spec.palette, seed=int(spec.seed))
    return clean_sprites(frames, steps, colors=int(spec.colors), seed=int(spec.seed))


def make_autotiles(engine, handle, spec: AutotileSpec) -> AutotileSet:
    """The whole set (see the module docstring). Progress per stage; Cancel stops within a sampling step."""
    lay = check_spec(spec)
    tile = int(spec.tile)
    k = work_scale(handle, tile, spec.scale)
    notes: list = []
    side, _ = prepare_size(handle, tile * k, tile * k, engine=engine, notes=notes)
    a, b, _ = _prompts(spec)
    bar = Progress(4, f"autotile {lay.name}")
    tex_a, tex_b = textures(engine, handle, spec, side)
    bar.update()
    field_work = T.masks(lay, side, int(spec.seed))
    weight = T.band(field_work, radius=max(1.5, side / 8), hold=max(1.0, float(k)))
    images = inpaint_band(engine, handle, spec, T.composite(field_work, tex_a, tex_b), weight)
    bar.update()
    inside = field_work > 0.5 if b is None else None
    frames = [_to_rgba(img, None if inside is None else inside[i]) for i, img in enumerate(images)]
    frames += [_to_rgba(t, None) for t in (tex_a, tex_b) if t is not None]
    done = finish(frames, spec, k)
    bar.update()
    out = np.stack(done.images[:len(lay.tiles)])
    if b is None:  # alpha exactly the terrain mask at the tile's own resolution
        out[..., 3] = np.where(T.masks(lay, tile, int(spec.seed)) > 0.5, 255, 0)
    bar.update()
    return AutotileSet(lay, (a, b), out, list(done.images[len(lay.tiles):]), done.palette, tile, k, notes)




def tileset_files(aset: AutotileSet, stem: str) -> dict:
    """The set's files by name: ``stem.png`` (indexed sheet, the layout's columns, no padding), ``stem.json``
    (atlas with each tile's rectangle and terrain code), ``stem.tsx`` (Tiled) and ``stem.tres`` (Godot 4)."""
    import json

    from ..pixel import export as X
    from ..pixel.sprite import indexed_palette

    lay = aset.layout
    png = f"{stem}.png"
    names = [f"{lay.name}_{i:02d}" for i in range(len(lay.tiles))]
    sheet, base = X.pack_sheet(list(aset.tiles), columns=lay.columns, names=names, image_name=png)
    pal = indexed_palette(sheet, aset.palette, add_missing=True)
    base["meta"]["format"] = "I8"
    doc = T.atlas(lay, aset.terrains, aset.tile, png, base)
    colours = aset.colours()
    return {png: T.png_bytes(X.to_indexed(sheet, pal), pal),
            f"{stem}.json": (json.dumps(doc, indent=2) + "\n").encode(),
            f"{stem}.tsx": T.tiled_tsx(lay, aset.terrains, aset.tile, png, colours).encode(),
            f"{stem}.tres": T.godot_tres(lay, aset.terrains, aset.tile, png, colours).encode()}


FILE_EXTS = (".png", ".json", ".tsx", ".tres")


__all__ = ["AutotileSpec", "AutotileSet", "FILE_EXTS", "check_spec", "native_side", "work_scale", "textures",
           "mend_seam", "inpaint_band", "finish", "make_autotiles", "tileset_files"]
