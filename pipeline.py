"""Framework-free generation: txt2img, img2img, inpainting and seamless tiles for every DiT family.

``generate(engine, handle, GenerateParams(...))`` returns numpy images ``[B,H,W,3]`` in 0..1.
The pieces are usable on their own (the nodes do): :func:`prepare_size` (the dimension
guard), :func:`encode` (prompts -> :class:`Conditioning`), :func:`sample` (the sampling loop
from :mod:`spriteforge.samplers` over the engine's denoiser -> VAE-scaled latents) and
:func:`decode` (VAE decode with NaN/black detection and an automatic fp32 retry).

Everything framework specific goes through the engine (``engine.encode_text``,
``engine.denoiser``, ``engine.vae_encode``/``vae_decode``, ``from_numpy``/``to_numpy``);
the loop itself only adds and multiplies engine arrays. Noise is made on the CPU with
numpy (:func:`spriteforge.samplers.make_noise`), batch item ``i`` from ``seed + i``, so a
seed gives the same image whatever the batch size and device.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .engines.base import Conditioning
from .engines.model_inputs import is_fill_model
from .engines.ops import ops_for, to_numpy
from .errors import BAD_INPUT, DIMENSION_LIMIT, ENGINE_INTERNAL, SpriteForgeError, classify
from .log import get_logger
from .progress import Interrupted, Progress

log = get_logger("pipeline")

DEFAULT_MAX_SIDE = 2048
# batch x width x height above this is refused (DIMENSION_LIMIT) before any memory is touched
MAX_BATCH_PIXELS = 16 * 2048 * 2048

# Per-family defaults: CFG scale, steps, sampler, schedule.
FAMILY_DEFAULTS: dict[str, dict] = {
    "pixart": {"cfg": 4.5, "steps": 20, "sampler": "dpmpp_2m", "schedule": "normal"},
    "dit": {"cfg": 4.0, "steps": 25, "sampler": "dpmpp_2m", "schedule": "normal"},
    "sd3": {"cfg": 5.0, "steps": 28, "sampler": "euler", "schedule": "normal"},
    "flux": {"cfg": 1.0, "steps": 20, "sampler": "euler", "schedule": "normal"},
    "sana": {"cfg": 4.5, "steps": 20, "sampler": "euler", "schedule": "normal"},
}


@dataclass
class GenerateParams:
    """Everything one generation needs; only ``prompt`` (or ``cond``) is required.

    Sizes: ``width``/``height`` (rounded to the family's latent grid, with a note), ignored
    when ``init_image``/``init_latent`` give the size. ``cfg``/``steps``/``sampler``/``schedule``
    default to the family's (:data:`FAMILY_DEFAULTS`); ``shift`` overrides the flow shift
    (SD3/Sana: 3.0, Flux: resolution dependent). ``guidance`` is Flux's distilled guidance.
    img2img: ``init_image`` ([B,H,W,3] 0..1) or ``init_latent`` (VAE-scaled [B,C,h,w]) with
    ``denoise`` < 1. Inpainting: ``mask`` ([B,H,W], 1 = repaint) with an init image,
    ``mask_feather`` pixels of soft edge. ``tile``: seamless in both axes.
    """

    prompt: str = ""
    negative: str = ""
    seed: int = 0
    steps: int | None = None
    cfg: float | None = None
    sampler: str | None = None
    schedule: str | None = None
    shift: float | None = None
    guidance: float | None = None
    width: int = 512
    height: int = 512
    batch_size: int = 1
    init_image: Any = None
    init_latent: Any = None
    denoise: float = 1.0
    mask: Any = None
    mask_feather: int = 8
    tile: bool = False
    class_labels: list | None = None
    max_side: int = DEFAULT_MAX_SIDE
    cond: Conditioning | None = None
    preview: Any = False  # True: ComfyUI's preview setting; or a previewer (spriteforge.preview); False/None: none
    callback: Callable | None = None
    sampler_options: dict = field(default_factory=dict)


@dataclass
class SampleResult:
    latents: np.ndarray  # VAE-scaled, [B,C,h,w] float32
    width: int
    height: int
    family: str
    notes: list = field(default_factory=list)
    info: dict = field(default_factory=dict)


@dataclass
class GenerateResult:
    images: np.ndarray  # [B,H,W,3] float32 0..1
    latents: np.ndarray
    notes: list = field(default_factory=list)
    info: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- dimension guard
def prepare_size(handle, width, height, *, max_side: int | None = DEFAULT_MAX_SIDE, engine=None, notes=None):
    """Validated ``(width, height)`` rounded to the family's latent grid.

    Non-numbers or sizes below one grid cell: BAD_INPUT; above ``max_side`` (or the
    engine's maximum): DIMENSION_LIMIT. A rounding is recorded in ``notes`` and logged.
    """
    notes = notes if notes is not None else []
    mult = int(getattr(handle, "latent_multiple", 16) or 16)
    limit = int(max_side or DEFAULT_MAX_SIDE)
    cap = getattr(getattr(engine, "capabilities", None), "max_resolution", None) if engine is not None else None
    model_cap = model_max_side(handle)
    out = []
    for name, v in (("width", width), ("height", height)):
        try:
            fv = float(v)
        except (TypeError, ValueError):
            raise SpriteForgeError(BAD_INPUT, f"{name} must be a number of pixels, not {v!r}.") from None
        if not math.isfinite(fv) or fv < mult:
            raise SpriteForgeError(BAD_INPUT, f"{name} {v} is too small: the {handle.family} model needs at least {mult} pixels.",
                                   details={name: v, "multiple": mult})
        if fv > limit:
            raise SpriteForgeError(DIMENSION_LIMIT, f"{name} {int(fv)} is over the limit of {limit} pixels per side.",
                                   details={name: int(fv), "limit": limit})
        if cap and fv > cap:
            raise SpriteForgeError(DIMENSION_LIMIT, f"{name} {int(fv)} is over this engine's maximum of {cap} pixels.",
                                   details={name: int(fv), "limit": cap})
        if model_cap and fv > model_cap:
            raise SpriteForgeError(
                DIMENSION_LIMIT,
                f"{name} {int(fv)} is over what this {handle.family} model can draw ({model_cap} pixels per side: "
                f"its position table covers {model_cap // mult} patches). Use {model_cap} or less.",
                details={name: int(fv), "limit": model_cap})
        r = max(mult, int(round(fv / mult)) * mult)
        if r > limit:
            r = (limit // mult) * mult
        if r != fv:
            msg = f"{name} {v} rounded to {r} (a multiple of {mult} for {handle.family})"
            notes.append(msg)
            log.info(msg)
        out.append(r)
    if getattr(handle, "family", "") == "dit" and out[0] != out[1]:
        raise SpriteForgeError(BAD_INPUT, f"DiT makes square images only; {out[0]}x{out[1]} was asked for. Use equal width and height.")
    return out[0], out[1]


def model_max_side(handle) -> int | None:
    """The largest side a model's fixed position table allows (SD3's ``pos_embed_max_size``), or None."""
    cfg = getattr(handle, "config", None) or {}
    n = cfg.get("pos_embed_max_size")
    if not n:
        return None
    return int(n) * int(getattr(handle, "latent_multiple", 16) or 16)


# --------------------------------------------------------------------------- schedules
def model_schedule(handle, width: int, height: int, shift: float | None = None):
    """The samplers' model schedule for ``handle`` at this size."""
    from .samplers import DiscreteSchedule, FlowSchedule

    if handle.prediction == "flow":
        if handle.family == "flux":
            if shift is not None:
                return FlowSchedule(float(shift), multiplier=1.0)
            if "schnell" in (handle.variant or "").lower():
                return FlowSchedule(1.0, multiplier=1.0)
            return FlowSchedule.flux(width, height)
        s = shift if shift is not None else (handle.flow_shift if handle.flow_shift is not None else 3.0)
        return FlowSchedule(float(s))
    sch = dict((handle.extras or {}).get("scheduler") or {})
    kind = sch.get("beta_schedule", "linear")
    return DiscreteSchedule(kind, float(sch.get("beta_start", 0.0001 if kind == "linear" else 0.00085)),
                            float(sch.get("beta_end", 0.02 if kind == "linear" else 0.012)),
                            int(sch.get("num_train_timesteps", 1000)))


def _defaults(handle, params: GenerateParams) -> dict:
    d = dict(FAMILY_DEFAULTS.get(handle.family, FAMILY_DEFAULTS["pixart"]))
    if handle.family == "flux" and "schnell" in (handle.variant or "").lower():
        d["steps"] = 4
    cfg = params.cfg if params.cfg not in (None, 0) else d["cfg"]
    steps = params.steps if params.steps is not None else d["steps"]
    return {"cfg": float(cfg), "steps": int(steps), "sampler": params.sampler or d["sampler"],
            "schedule": params.schedule or d["schedule"]}


# --------------------------------------------------------------------------- helpers
def _np(x, engine=None) -> np.ndarray | None:
    return to_numpy(x, engine)


def _to_batch(a: np.ndarray, batch: int, what: str) -> np.ndarray:
    if a.shape[0] == batch:
        return a
    if a.shape[0] == 1:
        return np.repeat(a, batch, axis=0)
    if batch % a.shape[0] == 0:
        return np.concatenate([a] * (batch // a.shape[0]), axis=0)
    raise SpriteForgeError(BAD_INPUT, f"the {what} has {a.shape[0]} items but the batch size is {batch}: give 1 or {batch}.")


def _resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    """Bilinear resize of [B,H,W,C] or [B,H,W] float arrays (PIL per channel)."""
    from PIL import Image

    if img.shape[1] == h and img.shape[2] == w:
        return img
    squeeze = img.ndim == 3
    a = img[..., None] if squeeze else img
    out = np.empty((a.shape[0], h, w, a.shape[3]), np.float32)
    for b in range(a.shape[0]):
        for c in range(a.shape[3]):
            out[b, :, :, c] = np.asarray(Image.fromarray(a[b, :, :, c].astype(np.float32), mode="F").resize((w, h), Image.BILINEAR))
    return out[..., 0] if squeeze else out


def _box_blur(m: np.ndarray, radius: int, passes: int = 1) -> np.ndarray:
    """Separable box blur of [B,H,W], edge-clamped (two passes: a tent)."""
    if radius <= 0:
        return m
    out = m.astype(np.float32)
    for _ in range(passes):
        for axis in (1, 2):
            pad = [(0, 0)] * 3
            pad[axis] = (radius, radius)
            p = np.pad(out, pad, mode="edge")
            c = np.cumsum(p, axis=axis, dtype=np.float64)
            zero = np.zeros_like(np.take(c, [0], axis=axis))
            c = np.concatenate([zero, c], axis=axis)
            n = out.shape[axis]
            hi = np.take(c, np.arange(2 * radius + 1, 2 * radius + 1 + n), axis=axis)
            lo = np.take(c, np.arange(0, n), axis=axis)
            out = ((hi - lo) / (2 * radius + 1)).astype(np.float32)
    return out


def feather_mask(mask: np.ndarray, feather: int) -> np.ndarray:
    """A soft-edged version of a [B,H,W] 0..1 mask that never shrinks the repaint area (dilate, then blur)."""
    m = np.clip(mask.astype(np.float32), 0.0, 1.0)
    if feather <= 0:
        return m
    r = max(int(feather) // 2, 1)
    # dilate by r so that the blurred mask is 1 over the whole original repaint area
    hard = (m > 0.5).astype(np.float32)
    dil = (_box_blur(hard, r) > 1e-6).astype(np.float32) if r > 0 else hard
    soft = _box_blur(dil, r)
    return np.maximum(m, np.clip(soft, 0.0, 1.0))


def _latent_mask(mask: np.ndarray, f: int) -> np.ndarray:
    """[B,H,W] pixel mask -> [B,1,h,w] latent mask (area average)."""
    b, H, W = mask.shape
    return mask.reshape(b, H // f, f, W // f, f).mean(axis=(2, 4))[:, None].astype(np.float32)


def is_bad_image(images: np.ndarray) -> str | None:
    """'nan' when the images hold NaN/Inf, 'black' when every pixel is (near) zero, else None."""
    if images is None or images.size == 0:
        return "empty"
    if not np.isfinite(images).all():
        return "nan"
    if float(np.max(images)) < 1.0 / 255.0:
        return "black"
    return None


def _with_extras(handle, **extras):
    """A shallow copy of the handle with extra run-time flags (handles are never mutated)."""
    return dataclasses.replace(handle, extras={**(handle.extras or {}), **extras})


def _samplers():
    from . import samplers

    return samplers


# --------------------------------------------------------------------------- encode
def encode(engine, handle, prompt: str | list, negative: str | list = "", *, guidance=None, class_labels=None,
           with_negative: bool = True, **opts) -> Conditioning:
    """Positive conditioning with ``.negative`` set (DiT: the null class) when ``with_negative``."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if handle.family != "dit" and not any(str(p).strip() for p in prompts):
        log.info("empty prompt: generating unconditioned")
    cond = engine.encode_text(handle, prompts, guidance=guidance, class_labels=class_labels, **opts)
    if with_negative:
        negs = [negative] if isinstance(negative, str) else list(negative)
        if len(negs) == 1 and len(prompts) > 1:
            negs = negs * len(prompts)
        cond.negative = engine.encode_text(handle, negs, negative=True, **opts)
    return cond


def _check_cond(handle, cond):
    if not isinstance(cond, Conditioning):
        raise SpriteForgeError(BAD_INPUT, "the conditioning input is not SpriteForge conditioning: connect SpriteForge Encode Prompt.")
    if cond.family != handle.family:
        raise SpriteForgeError(BAD_INPUT, f"the conditioning was encoded for {cond.family} but the model is {handle.family}: "
                               "encode the prompt with the same model.")


# --------------------------------------------------------------------------- preview
def _previewer(engine, handle, preview):
    """The previewer for ``GenerateParams.preview``: a previewer callable as given, True = ComfyUI's setting
    (:func:`spriteforge.preview.make_previewer`, None when ComfyUI's preview method is ``none``), else None."""
    if preview is None or preview is False:
        return None
    if preview is True:
        from .preview import make_previewer

        return make_previewer(engine, handle)
    return preview


# --------------------------------------------------------------------------- sample
def sample(engine, handle, params: GenerateParams) -> SampleResult:
    """Run the sampling loop; VAE-scaled latents ``[B,C,h,w]`` (numpy float32)."""
    try:
        return _sample(engine, handle, params)
    except (SpriteForgeError, Interrupted):
        raise
    except Exception as exc:
        if "Interrupt" in type(exc).__name__:
            raise
        raise classify(exc, context="running the sampler") from exc


def _validate(handle, params, d):
    if handle is None or not hasattr(handle, "family"):
        raise SpriteForgeError(BAD_INPUT, "no model was given: connect SpriteForge Load Model.")
    S = _samplers()
    if d["sampler"] not in S.SAMPLERS:
        raise SpriteForgeError(BAD_INPUT, f"unknown sampler {d['sampler']!r}; choose one of {', '.join(S.SAMPLERS)}.")
    if d["schedule"] not in S.SCHEDULES:
        raise SpriteForgeError(BAD_INPUT, f"unknown schedule {d['schedule']!r}; choose one of {', '.join(S.SCHEDULES)}.")
    if not 1 <= d["steps"] <= 1000:
        raise SpriteForgeError(BAD_INPUT, f"steps must be between 1 and 1000, not {d['steps']}.")
    if not (math.isfinite(d["cfg"]) and 0 <= d["cfg"] <= 100):
        raise SpriteForgeError(BAD_INPUT, f"cfg must be between 0 and 100, not {d['cfg']}.")
    if not isinstance(params.batch_size, (int, np.integer)) or not 1 <= int(params.batch_size) <= 64:
        raise SpriteForgeError(BAD_INPUT, f"batch size must be between 1 and 64, not {params.batch_size!r}.")
    if not (params.denoise is not None and 0.0 <= float(params.denoise) <= 1.0):
        raise SpriteForgeError(BAD_INPUT, f"denoise must be between 0 and 1, not {params.denoise!r}.")
    if params.mask is not None and params.init_image is None and params.init_latent is None:
        raise SpriteForgeError(BAD_INPUT, "a mask needs a source image to inpaint: give an init image too.")


def _sample(engine, handle, params: GenerateParams) -> SampleResult:
    d = _defaults(handle, params) if handle is not None and hasattr(handle, "family") else {}
    _validate(handle, params, d)
    S = _samplers()
    notes: list[str] = []
    batch = int(params.batch_size)
    f = int(handle.vae_scale_factor or 8)
    C = int(handle.latent_channels)
    denoise = float(params.denoise)

    # --- sources and size
    init_lat = _np(params.init_latent, engine)
    init_img = _np(params.init_image, engine)
    mask = _np(params.mask, engine)
    if init_lat is not None and init_lat.ndim != 4:
        raise SpriteForgeError(BAD_INPUT, f"the latent must be [B,C,h,w], got shape {tuple(init_lat.shape)}.")
    if init_img is not None:
        if init_img.ndim == 3:
            init_img = init_img[None]
        if init_img.ndim != 4 or init_img.shape[-1] not in (3, 4):
            raise SpriteForgeError(BAD_INPUT, f"the init image must be [B,H,W,3], got shape {tuple(init_img.shape)}.")
        init_img = np.clip(init_img[..., :3], 0.0, 1.0)
        width, height = prepare_size(handle, init_img.shape[2], init_img.shape[1], max_side=params.max_side, engine=engine, notes=notes)
        init_img = _resize(init_img, width, height)
        if params.batch_size == 1:
            batch = max(batch, init_img.shape[0])
        init_img = _to_batch(init_img, batch, "init image")
    elif init_lat is not None:
        width, height = prepare_size(handle, init_lat.shape[3] * f, init_lat.shape[2] * f, max_side=params.max_side,
                                     engine=engine, notes=notes)
    else:
        width, height = prepare_size(handle, params.width, params.height, max_side=params.max_side, engine=engine, notes=notes)
    if init_lat is not None:
        if init_lat.shape[1] != C or (init_lat.shape[2] * f, init_lat.shape[3] * f) != (height, width):
            if denoise < 1.0 or (mask is not None and init_img is None):
                raise SpriteForgeError(BAD_INPUT, f"the input latent ({init_lat.shape[1]} channels, {init_lat.shape[3]}x{init_lat.shape[2]}) "
                                       f"does not fit the {handle.family} model ({C} channels, {width // f}x{height // f}): "
                                       "use a latent made with this model, or denoise 1.")
            if params.batch_size == 1 and init_img is None:
                batch = max(batch, init_lat.shape[0])
            init_lat = None  # only its size (and batch) is used
            notes.append("the input latent was used for its size only")
        else:
            if params.batch_size == 1 and init_img is None:
                batch = max(batch, init_lat.shape[0])
            init_lat = _to_batch(init_lat, batch, "latent")
    if batch * width * height > MAX_BATCH_PIXELS:
        raise SpriteForgeError(DIMENSION_LIMIT, f"a batch of {batch} images of {width}x{height} is over the limit of "
                               f"{MAX_BATCH_PIXELS // (2048 * 2048)} images of 2048x2048 per run. Lower the batch size or the size.",
                               details={"batch": batch, "width": width, "height": height})
    h, w = height // f, width // f
    shape = (batch, C, h, w)

    if mask is not None:
        if mask.ndim == 4 and mask.shape[-1] == 1:
            mask = mask[..., 0]
        if mask.ndim == 2:
            mask = mask[None]
        if mask.ndim != 3:
            raise SpriteForgeError(BAD_INPUT, f"the mask must be [B,H,W] (1 = repaint), got shape {tuple(mask.shape)}.")
        mask = np.clip(_resize(mask, width, height), 0.0, 1.0)
        mask = _to_batch(mask, batch, "mask")

    fill = mask is not None and is_fill_model(handle)
    if init_img is not None and init_lat is None and (denoise < 1.0 or (mask is not None and not fill)):
        init_lat = _np(engine.vae_encode(handle, init_img), engine)

    # --- conditioning
    cfg = d["cfg"]
    if params.cond is not None:
        cond = params.cond
        _check_cond(handle, cond)
        if params.guidance is not None:
            cond = dataclasses.replace(cond, guidance=float(params.guidance))
    else:
        want_neg = handle.family != "flux" or cfg > 1.0
        cond = encode(engine, handle, params.prompt, params.negative, guidance=params.guidance,
                      class_labels=params.class_labels, with_negative=want_neg and cfg != 1.0)
    uncond = cond.negative if cfg != 1.0 else None
    if uncond is None and cfg != 1.0 and handle.family not in ("dit",):
        notes.append("no negative conditioning: CFG off")

    # --- schedule and sigmas
    ms = model_schedule(handle, width, height, params.shift)
    start_from_source = init_lat is not None and denoise < 0.9999 and not fill
    sigmas = S.get_sigmas(d["schedule"], d["steps"], ms, denoise=denoise if start_from_source else 1.0)
    flow = handle.prediction == "flow"
    noise_np = S.make_noise(int(params.seed), shape)
    info = {"family": handle.family, "variant": handle.variant, "seed": int(params.seed), "steps": d["steps"],
            "cfg": cfg, "sampler": d["sampler"], "schedule": d["schedule"], "width": width, "height": height,
            "batch_size": batch, "denoise": denoise, "shift": params.shift, "guidance": cond.guidance,
            "tile": bool(params.tile), "inpaint": mask is not None, "fill_model": fill, "sigmas": len(sigmas)}

    if len(sigmas) < 2 and init_lat is not None:  # denoise 0: the source as it is
        lat = init_lat if init_lat is not None else np.zeros(shape, np.float32)
        return SampleResult(lat.astype(np.float32), width, height, handle.family, notes, info)

    dt = "float32"
    to_eng = lambda a: engine.from_numpy(np.ascontiguousarray(a, dtype=np.float32), dt)  # noqa: E731
    noise = to_eng(noise_np)
    s0 = float(sigmas[0])
    if start_from_source:
        src = to_eng(init_lat)
        x = src * (1.0 - s0) + noise * s0 if flow else src + noise * s0
    else:
        x = noise * s0  # VE: noise at sigma_max; flow: t = 1 is pure noise

    fill_kw = {}
    if fill:
        fill_kw = {"fill_image": init_img, "fill_mask": mask}
    dn_opts = dict(model_schedule=ms, **fill_kw)
    model = engine.denoiser(handle, cond, uncond, cfg=cfg, **dn_opts)

    if params.tile:
        model = _Seamless(model, engine, int(params.seed), int(handle.patch_size or 1))

    if mask is not None and not fill and init_lat is not None:
        lm = to_eng(_latent_mask(feather_mask(mask, params.mask_feather), f))
        src = to_eng(init_lat)
        model = _Inpaint(model, src, noise, lm, flow)

    total = len(sigmas) - 1
    progress = Progress(total, desc=f"{handle.family} {d['sampler']}")
    user_cb = params.callback

    previewer = _previewer(engine, handle, params.preview)

    def callback(state):
        if user_cb is not None:
            user_cb(state)
        if previewer is None:
            progress.update(1)
            return
        try:
            prev = previewer(state.get("denoised"))
        except Exception as exc:  # previews are best effort
            log.debug("preview failed: %s", exc)
            prev = None
        progress.update(1, preview=prev) if prev is not None else progress.update(1)

    opts = dict(params.sampler_options or {})
    opts.setdefault("flow", flow)
    # Every sampler gets the seeded noise source: DDIM with eta > 0 draws noise too.
    ns = S.NoiseSampler(int(params.seed), shape, to_array=to_eng)
    with progress:
        x = S.SAMPLERS[d["sampler"]](model, x, sigmas, callback=callback, noise_sampler=ns, **opts)
    lat = _np(x, engine)
    if isinstance(model, _Inpaint):
        m = _np(model.mask, engine)
        lat = lat * m + init_lat * (1.0 - m)
    return SampleResult(lat.astype(np.float32), width, height, handle.family, notes, info)


class _Inpaint:
    """Keeps the unmasked area on the source at every step (the source noised to the step's level)."""

    def __init__(self, model, src, noise, mask, flow):
        self.model, self.src, self.noise, self.mask, self.flow = model, src, noise, mask, flow
        self.ops = getattr(model, "ops", None)  # the samplers' array ops, passed on

    def __call__(self, x, sigma, **kw):
        s = float(sigma)
        noised = self.src * (1.0 - s) + self.noise * s if self.flow else self.src + self.noise * s
        keep = 1.0 - self.mask
        x = x * self.mask + noised * keep
        x0 = self.model(x, s, **kw)
        return x0 * self.mask + self.src * keep


class _Seamless:
    """Roll-and-blend: each call shifts the latent by a seeded random offset (whole patches),
    denoises, and shifts back, so no fixed seam survives; the VAE decodes with circular padding."""

    def __init__(self, model, engine, seed, patch):
        self.model, self.engine, self.patch = model, engine, max(int(patch), 1)
        self.ops = getattr(model, "ops", None)
        self.rng = np.random.Generator(np.random.PCG64(int(seed) % 2**64 + 7919))
        self.calls = 0

    def __call__(self, x, sigma, **kw):
        h, w = int(x.shape[-2]), int(x.shape[-1])
        dy = int(self.rng.integers(0, max(h // self.patch, 1))) * self.patch
        dx = int(self.rng.integers(0, max(w // self.patch, 1))) * self.patch
        self.calls += 1
        xr = _roll(x, dy, dx)
        x0 = self.model(xr, sigma, **kw)
        return _roll(x0, -dy, -dx)


def _roll(x, dy, dx):
    """``x`` rolled by (dy, dx) over its last two axes, with the ops of its framework."""
    return ops_for(x).roll2d(x, dy, dx)


# --------------------------------------------------------------------------- decode
def decode(engine, handle, latents, *, tile: bool = False) -> np.ndarray:
    """Images for VAE-scaled latents, with NaN/black detection and one automatic fp32 VAE retry."""
    lat = _np(latents, engine)
    if lat is None or lat.ndim != 4:
        raise SpriteForgeError(BAD_INPUT, "the latent must be a [B,C,h,w] array.")
    h2 = _with_extras(handle, vae_seamless=True) if tile else handle
    try:
        images = np.asarray(engine.vae_decode(h2, lat), dtype=np.float32)
    except (SpriteForgeError, Interrupted):
        raise
    except Exception as exc:
        if "Interrupt" in type(exc).__name__:
            raise
        raise classify(exc, context="decoding the latent") from exc
    bad = is_bad_image(images)
    vae_dtype = str(getattr(getattr(engine, "policy", None), "vae_dtype", "float32"))
    if bad and bad != "empty" and not np.isfinite(lat).all():
        raise SpriteForgeError(ENGINE_INTERNAL, "the sampler produced NaN latents (the model overflowed). "
                               "Load the model in float32 or bfloat16, or lower cfg.")
    if bad in ("nan", "black"):
        log.warning("VAE decode gave a %s image (VAE dtype %s): retrying the VAE in float32", bad, vae_dtype)
        images = np.asarray(engine.vae_decode(_with_extras(h2, vae_force_fp32=True), lat), dtype=np.float32)
        bad2 = is_bad_image(images)
        if bad2 == "nan":
            raise SpriteForgeError(ENGINE_INTERNAL, "the VAE produced NaN even in float32. Check the VAE file matches the model.")
        if bad2 is None:
            log.warning("fp32 VAE retry fixed the %s image", bad)
        else:
            log.warning("the image is still %s after the fp32 VAE retry", bad2)
    return images


# --------------------------------------------------------------------------- generate
def generate_full(engine, handle, params: GenerateParams) -> GenerateResult:
    """:func:`sample` + :func:`decode`, with the inpaint composite; images, latents, notes and info."""
    res = sample(engine, handle, params)
    images = decode(engine, handle, res.latents, tile=params.tile)
    if params.mask is not None and params.init_image is not None:
        images = composite_inpaint(images, params.init_image, params.mask, params.mask_feather)
    return GenerateResult(images.astype(np.float32), res.latents, res.notes, res.info)


def composite_inpaint(images: np.ndarray, source, mask, feather: int = 8) -> np.ndarray:
    """Generated ``images`` where ``mask`` (1 = repaint, feathered by ``feather`` px) and ``source`` elsewhere."""
    b, H, W = images.shape[:3]
    src = _np(source)
    if src.ndim == 3:
        src = src[None]
    src = _to_batch(_resize(np.clip(src[..., :3], 0, 1), W, H), b, "init image")
    m = _np(mask)
    if m.ndim == 4 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.ndim == 2:
        m = m[None]
    m = _to_batch(feather_mask(np.clip(_resize(m, W, H), 0, 1), feather), b, "mask")
    return (src * (1.0 - m[..., None]) + images * m[..., None]).astype(np.float32)


def generate(engine, handle, params: GenerateParams) -> np.ndarray:
    """Images ``[B,H,W,3]`` float32 in 0..1 for ``params`` (see :class:`GenerateParams`)."""
    return generate_full(engine, handle, params).images


__all__ = ["GenerateParams", "GenerateResult", "SampleResult", "FAMILY_DEFAULTS", "DEFAULT_MAX_SIDE",
           "generate", "generate_full", "sample", "decode", "composite_inpaint", "encode", "prepare_size", "model_schedule", "feather_mask", "is_fill_model",
           "is_bad_image"]
