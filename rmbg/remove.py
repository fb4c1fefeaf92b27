"""Background removal for a batch: validate, pad, predict in chunks, unpad, refine, estimate colours
(:func:`remove_background`, float batches as the nodes hold them); and for one large uint8 image with memory
that follows the model's resolution, not the canvas (:func:`cutout`, the command line's path).

Framework-free: the model is a ``predict(batch, (H, W)) -> alpha`` callable (the torch engine's
:meth:`BiRefNetHandle.predict`), taking float32 [b, h, w, 3] images already padded to the
model's aspect and returning float32 [b, h, w] foreground probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import BAD_INPUT, OUT_OF_MEMORY, SpriteForgeError, classify
from ..oom import note_oom
from ..progress import Interrupted, Progress, check_interrupt
from . import foreground as fg
from .geometry import Geometry, pad, plan, unpad
from .refine import RefineOptions, refine

Predict = Callable[[np.ndarray, tuple], np.ndarray]


def to_rgb_batch(images) -> tuple[np.ndarray, np.ndarray | None]:
    """Normalise an input to float32 [B, H, W, 3] in 0..1, plus its alpha [B, H, W] if it had one.

    Accepts [H, W] (grayscale), [H, W, C] and [B, H, W, C] with C = 1 (gray), 2 (gray+alpha),
    3 (RGB) or 4 (RGBA); uint8/uint16 or float. Anything else is a BAD_INPUT.
    """
    a = np.asarray(images)
    if a.dtype == object or a.size == 0:
        raise SpriteForgeError(BAD_INPUT, f"the image input is empty or not numeric (shape {a.shape}).")
    if a.ndim == 2:
        a = a[None, :, :, None]
    elif a.ndim == 3:
        if a.shape[-1] not in (1, 2, 3, 4):
            raise SpriteForgeError(
                BAD_INPUT,
                f"an image of shape {a.shape} is ambiguous: give [H, W, C] with C in 1..4 or a batch [B, H, W, C]. "
                "(A ComfyUI MASK cannot be used as an IMAGE here; convert it with 'Convert Mask to Image'.)",
            )
        a = a[None]
    elif a.ndim != 4:
        raise SpriteForgeError(BAD_INPUT, f"images must be [B, H, W, C]; got shape {a.shape}.")
    C = a.shape[-1]
    if C not in (1, 2, 3, 4):
        raise SpriteForgeError(BAD_INPUT, f"images must have 1 to 4 channels (gray, gray+alpha, RGB, RGBA); got {C}.")
    if np.issubdtype(a.dtype, np.integer):
        scale = 255.0 if a.dtype == np.uint8 or a.max(initial=0) <= 255 else 65535.0
        a = a.astype(np.float32) / scale
    elif np.issubdtype(a.dtype, np.floating) or a.dtype == bool:
        a = a.astype(np.float32)
        if not np.isfinite(a).all():
            raise SpriteForgeError(BAD_INPUT, "the image contains NaN or infinite values; check the node that made it.")
        a = np.clip(a, 0.0, 1.0)
    else:
        raise SpriteForgeError(BAD_INPUT, f"unsupported image dtype {a.dtype}.")
    alpha = None
    if C in (2, 4):
        alpha = a[..., -1].copy()
        a = a[..., :-1]
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return np.ascontiguousarray(a), alpha


@dataclass
class RMBGResult:
    foreground: np.ndarray  # [B, H, W, 3] estimated foreground colours
    alpha: np.ndarray  # [B, H, W] 1 = foreground
    composite: np.ndarray  # [B, H, W, 4] (alpha) or [B, H, W, 3]
    geometry: Geometry | None = None
    chunks: list = field(default_factory=list)


def predict_alpha(
    images: np.ndarray,
    predict: Predict,
    *,
    resolution=1024,
    chunk_size: int = 1,
    pad_mode: str = "edge",
    progress: Progress | None = None,
    on_oom: Callable[[], None] | None = None,
    chunks_log: list | None = None,
    auto_chunk: Callable[[tuple, int], int] | None = None,
    stages: int = 1,
) -> tuple[np.ndarray, Geometry]:
    """Raw foreground probabilities [B, H, W] for RGB images [B, H, W, 3], ``chunk_size`` images per model call.

    ``chunk_size <= 0`` means automatic: ``auto_chunk(model_size, B)`` (the handle's memory-based choice), or 1.
    With ``stages > 1`` the predictor is called with ``on_stage=`` and reports that many steps per chunk, each
    advancing ``progress`` by the chunk's image count (``stages * B`` in all); otherwise ``progress`` advances once
    per chunk by its image count. A chunk that runs out of memory is retried in halves (down to one image)
    after ``on_oom()``.
    """
    B, H, W, _ = images.shape
    g = plan(H, W, resolution)
    out = np.empty((B, H, W), dtype=np.float32)
    size = int(chunk_size)
    if size <= 0:
        size = int(auto_chunk(g.model_size, B)) if auto_chunk is not None else 1
    size = max(1, size)
    stages = max(1, int(stages))
    i = 0
    while i < B:
        n = min(size, B - i)
        on_stage, done = _stage_counter(n, stages, progress)
        try:
            prob = _predict_chunk(predict, pad(images[i : i + n], g, mode=pad_mode), g.model_size, stages, on_stage)
        except Exception as exc:  # noqa: BLE001 - classified below
            if isinstance(exc, Interrupted) or type(exc).__name__ == "InterruptProcessingException":
                raise  # Cancel (ours or ComfyUI's) passes through as it is
            size = _smaller_chunk(exc, n, done[0], stages, progress, on_oom)
            continue
        if prob.shape != (n, g.padded_h, g.padded_w):
            raise SpriteForgeError(BAD_INPUT, f"the model returned {prob.shape}; expected {(n, g.padded_h, g.padded_w)}.")
        out[i : i + n] = unpad(prob, g, batched=True)
        if chunks_log is not None:
            chunks_log.append(n)
        i += n
        if progress is not None and done[0] < stages:
            progress.update(n * (stages - done[0]))
    return out, g


def _stage_counter(n: int, stages: int, progress: Progress | None):
    """``(on_stage, done)`` for a chunk of ``n`` images: the predictor's per-stage callback (progress by ``n``
    for each of the ``stages``, an interrupt check after) and ``done[0]``, the stages it has reported."""
    done = [0]

    def on_stage():
        done[0] += 1
        if progress is not None and done[0] <= stages:
            progress.update(n)
        else:
            check_interrupt()

    return on_stage, done


def _predict_chunk(predict: Predict, batch: np.ndarray, model_size, stages: int, on_stage) -> np.ndarray:
    """One model call on a padded chunk: float32 probabilities (``on_stage`` given where the predictor has stages)."""
    if stages > 1:
        prob = predict(batch, model_size, on_stage=on_stage)
    else:
        check_interrupt()
        prob = predict(batch, model_size)
    return np.asarray(prob, dtype=np.float32)


def _smaller_chunk(exc: Exception, n: int, reported: int, stages: int, progress: Progress | None, on_oom) -> int:
    """The chunk size to retry with after a chunk of ``n`` images failed: half, after ``on_oom()``, when it ran out
    of memory and can shrink (the stages it reported are taken back from ``progress``); else the coded error."""
    err = classify(exc, context="running BiRefNet")
    if err.code != OUT_OF_MEMORY or n <= 1:
        raise err from exc
    note_oom("BiRefNet", n, max(1, n // 2), exc)
    if on_oom is not None:
        on_oom()
    if progress is not None:  # the stages this chunk reported are redone by its halves
        progress.n = max(0, progress.n - n * min(reported, stages))
    return max(1, n // 2)


def remove_background(
    images,
    predict: Predict,
    *,
    resolution=1024,
    chunk_size: int = 1,
    refine_opts: RefineOptions | None = None,
    foreground: str = "ml",
    composite: str = "alpha",
    color: str = "#00ff00",
    respect_input_alpha: bool = True,
    pad_mode: str = "edge",
    desc: str = "rmbg",
    on_oom: Callable[[], None] | None = None,
    auto_chunk: Callable[[tuple, int], int] | None = None,
    stages: int = 1,
) -> RMBGResult:
    """The whole job for a batch: see the module docstring and :func:`predict_alpha` (``chunk_size``, ``stages``).

    Progress (and the interrupt point) per network stage of each chunk and once per image after it."""
    rgb, in_alpha = to_rgb_batch(images)
    if foreground not in fg.METHODS:
        raise SpriteForgeError(BAD_INPUT, f"foreground method {foreground!r} is not one of {', '.join(fg.METHODS)}.")
    if composite not in fg.COMPOSITES:
        raise SpriteForgeError(BAD_INPUT, f"composite {composite!r} is not one of {', '.join(fg.COMPOSITES)}.")
    if composite == "color":
        fg.parse_color(color)
    B = rgb.shape[0]
    opts = refine_opts or RefineOptions()
    chunks: list = []
    stages = max(1, int(stages))
    with Progress((stages + 1) * B, desc) as prog:
        alpha, g = predict_alpha(
            rgb, predict, resolution=resolution, chunk_size=chunk_size, pad_mode=pad_mode,
            progress=prog, on_oom=on_oom, chunks_log=chunks, auto_chunk=auto_chunk, stages=stages,
        )
        fgs = np.empty_like(rgb)
        for b in range(B):
            a = refine(alpha[b], opts)
            if respect_input_alpha and in_alpha is not None:
                a = a * in_alpha[b]
            alpha[b] = a
            fgs[b] = fg.estimate_foreground(rgb[b], a, foreground)
            prog.update()
    comp = fg.composite(fgs, alpha, composite, color)
    return RMBGResult(foreground=fgs, alpha=alpha, composite=comp, geometry=g, chunks=chunks)


def cutout(
    image: np.ndarray,
    predict: Predict,
    *,
    resolution=1024,
    refine_opts: RefineOptions | None = None,
    foreground: str = "ml",
    composite: str = "alpha",
    color: str = "#00ff00",
    mask_only: bool = False,
    stages: int = 1,
    desc: str = "rmbg",
    band: int = 512,
) -> np.ndarray:
    """The background removal of one large image, uint8 in and out, with memory that follows the model's
    resolution rather than the canvas (the command line's path; :func:`remove_background` keeps float batches).

    The image is resized to the model's size first; the model and the foreground-colour estimate run there. The
    full-size result is made ``band`` rows at a time: the alpha resized up (the one full-size float plane,
    refined there so that pixel options keep their meaning), and the colours as the original pixels plus the
    foreground correction (estimate minus image) resized up. ``image``: uint8 [H, W] or [H, W, C], C = 1..4.
    Returns uint8 [H, W] (``mask_only``, white = foreground), [H, W, 4] (``composite='alpha'``) or [H, W, 3].
    """
    img = np.asarray(image)
    img = img[..., None] if img.ndim == 2 else img
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] not in (1, 2, 3, 4):
        raise SpriteForgeError(BAD_INPUT, f"cutout needs a uint8 [H, W, C] image with C in 1..4; got {img.dtype} "
                               f"{img.shape}.")
    if foreground not in fg.METHODS or composite not in fg.COMPOSITES:
        raise SpriteForgeError(BAD_INPUT, f"foreground {foreground!r} / composite {composite!r}: use one of "
                               f"{', '.join(fg.METHODS)} / {', '.join(fg.COMPOSITES)}.")
    bg = np.asarray(fg.parse_color(color) if composite == "color" else (1.0,) * 3 if composite == "white"
                    else (0.0,) * 3, np.float32)
    H, W = img.shape[:2]
    g = plan(H, W, resolution)
    small, box = _to_model_size(img, g)
    with Progress(max(1, int(stages)) + 1, desc) as prog:
        prob = _predict_one(predict, small, g, max(1, int(stages)), prog)
        sh, sw = box[3] - box[1], box[2] - box[0]
        alpha = _resize_plane(prob, box, W, H)
        alpha = refine(alpha, refine_opts or RefineOptions())
        if img.shape[-1] in (2, 4):
            alpha = alpha * (img[..., -1] * np.float32(1 / 255))  # the input's own transparency stays
        if mask_only:
            return _to_u8(alpha)
        low = small[box[1]:box[3], box[0]:box[2]]
        correction = None
        if foreground != "none":
            correction = fg.estimate_foreground(low, prob[box[1]:box[3], box[0]:box[2]], foreground) - low
        out = np.empty((H, W, 4 if composite == "alpha" else 3), np.uint8)
        for y0 in range(0, H, band):
            check_interrupt()
            y1 = min(H, y0 + band)
            F = _rgb(img[y0:y1])
            if correction is not None:
                F += _resize_bands(correction, (0, y0 * sh / H, sw, y1 * sh / H), W, y1 - y0)
                np.clip(F, 0.0, 1.0, out=F)
            a = alpha[y0:y1, :, None]
            if composite == "alpha":
                out[y0:y1, :, :3] = _to_u8(F)
                out[y0:y1, :, 3] = _to_u8(a[..., 0])
            else:
                out[y0:y1] = _to_u8(F * a + bg * (1.0 - a))
        prog.update()
    return out


def _rgb(rows: np.ndarray) -> np.ndarray:
    """uint8 rows [h, W, C] as float32 RGB in 0..1 (gray repeated, alpha dropped)."""
    c = rows[..., :3] if rows.shape[-1] >= 3 else np.repeat(rows[..., :1], 3, axis=-1)
    return c.astype(np.float32) * np.float32(1 / 255)


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def _to_model_size(img: np.ndarray, g: Geometry) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The image resized (antialiased) into the model's canvas, padded with its edge colours, as float32 RGB;
    and the box (x0, y0, x1, y1) the image covers on that canvas."""
    from PIL import Image

    H, W = img.shape[:2]
    s = g.scale
    sw, sh = min(g.model_w, max(1, round(W * s))), min(g.model_h, max(1, round(H * s)))
    c = img.shape[-1]
    rgb = img[..., :3] if c >= 3 else img[..., 0]
    im = Image.fromarray(np.ascontiguousarray(rgb)).resize((sw, sh), Image.BILINEAR)
    small = _rgb(np.asarray(im).reshape(sh, sw, -1))
    top, left = (g.model_h - sh) // 2, (g.model_w - sw) // 2
    small = np.pad(small, ((top, g.model_h - sh - top), (left, g.model_w - sw - left), (0, 0)), mode="edge")
    return small, (left, top, left + sw, top + sh)


def _predict_one(predict: Predict, small: np.ndarray, g: Geometry, stages: int, prog: Progress) -> np.ndarray:
    """The model's foreground probability [h, w] for one canvas-sized image (a coded error when it fails)."""
    on_stage, done = _stage_counter(1, stages, prog)
    try:
        prob = _predict_chunk(predict, small[None], g.model_size, stages, on_stage)
    except Exception as exc:  # noqa: BLE001 - classified here
        if isinstance(exc, Interrupted) or type(exc).__name__ == "InterruptProcessingException":
            raise
        raise classify(exc, context="running BiRefNet") from exc
    if prob.shape != (1, g.model_h, g.model_w):
        raise SpriteForgeError(BAD_INPUT, f"the model returned {prob.shape}; expected {(1, g.model_h, g.model_w)}.")
    if done[0] < stages:
        prog.update(stages - done[0])
    return prob[0]


def _resize_plane(plane: np.ndarray, box, w: int, h: int) -> np.ndarray:
    """The ``box`` (x0, y0, x1, y1, may be fractional) of a float32 plane resized (bilinear) to ``w x h``."""
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(plane, np.float32), mode="F")
    return np.asarray(im.resize((w, h), Image.BILINEAR, box=tuple(float(v) for v in box)), np.float32)


def _resize_bands(x: np.ndarray, box, w: int, h: int) -> np.ndarray:
    """:func:`_resize_plane` for every channel of [h, w, C]: [h, w, C] float32."""
    return np.stack([_resize_plane(x[..., c], box, w, h) for c in range(x.shape[-1])], axis=-1)
