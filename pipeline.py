"""Framework-free generation: txt2img, img2img, inpainting and seamless tiles for every DiT family.

``generate(engine, handle, GenerateParams(...))`` returns numpy images ``[B,H,W,3]`` in 0..1.
The pieces are usable on their own (the nodes do): :func:`prepare_size` (the dimension
guard), :func:`encode` (prompts -> :class:`Conditioning`), :func:`sample` (the sampling loop
from :mod:`spriteforge.samplers` over the engine's denoiser -> VAE-scaled latents) and
:func:`decode` (VAE decode with NaN/black detection and an automatic fp32 retry).
:func:`sample` runs in steps: check and size the sources (:func:`_sources`), the conditioning,
the sigmas and starting sample, the wrapped denoiser (:func:`_model`), the sampler loop.
Sizes and schedules live in :mod:`spriteforge.generation.sizes`, image/mask arrays (resize,
feathered masks, the inpaint composite) in :mod:`spriteforge.generation.masks`, the inpaint
and seamless-tile denoiser wrappers in :mod:`spriteforge.generation.wrappers`.

Everything framework specific goes through the engine (``engine.encode_text``,
``engine.denoiser``, ``engine.vae_encode``/``vae_decode``, ``from_numpy``/``to_numpy``);
the loop itself only adds and multiplies engine arrays. Noise is made on the CPU with
numpy (:func:`spriteforge.samplers.make_noise`), batch item ``i`` from ``seed + i``, so a
seed gives the same image whatever the batch size and device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .engines.base import Conditioning
from .engines.model_inputs import is_fill_model
from .engines.ops import to_numpy
from .errors import BAD_INPUT, DIMENSION_LIMIT, ENGINE_INTERNAL, SpriteForgeError, classify
from .generation.masks import composite_inpaint, feather_mask, is_bad_image, latent_mask, resize, to_batch
from .generation.references import check_count, check_references, editing_families
from .generation.references import prepare as prepare_references
from .generation.references import reference_size as _reference_size
from .generation.sizes import DEFAULT_MAX_SIDE, MAX_BATCH_PIXELS, model_schedule, prepare_size
from .generation.wrappers import Inpaint, Seamless
from .log import get_logger
from .models.families import registry
from .progress import Interrupted, Progress

log = get_logger("pipeline")

# Per-family defaults: CFG scale, steps, sampler, schedule (declared by each family, :mod:`.models.families`).
FAMILY_DEFAULTS: dict[str, dict] = {f.name: dict(f.defaults) for f in registry.families()}


@dataclass
class GenerateParams:
    """Everything one generation needs; only ``prompt`` (or ``cond``) is required.

    Sizes: ``width``/``height`` (rounded to the family's latent grid, with a note), ignored
    when ``init_image``/``init_latent`` give the size. ``cfg``/``steps``/``sampler``/``schedule``
    default to the family's (:data:`FAMILY_DEFAULTS`); ``shift`` overrides the flow shift
    (SD3/Sana: 3.0, Flux: resolution dependent). ``guidance`` is Flux's distilled guidance.
    img2img: ``init_image`` ([B,H,W,3] 0..1) or ``init_latent`` (VAE-scaled [B,C,h,w]) with
    ``denoise`` < 1. Inpainting: ``mask`` ([B,H,W], 1 = repaint) with an init image,
    ``mask_feather`` pixels of soft edge. ``tile``: seamless in both axes. ``cfg_rescale`` (0..1, 0 = off):
    CFG-rescale (Lin et al. 2023); ``dynamic_threshold`` (a percentile such as 0.995, 0 = off): Imagen's
    dynamic thresholding of each step's denoised estimate (:mod:`spriteforge.samplers.guidance`).
    Editing: ``references`` (a list of RGB images, numpy ``[H,W,3]`` in 0..1) for a family that takes them
    (``Family.max_references``): VAE-encoded once at the family's reference size (``reference_resize`` False: the
    size as given, rounded down to the latent grid) and seen by the model beside the image it draws; the
    family's edit defaults apply (Kontext: guidance 2.5, 28 steps). The output size is ``width``/``height`` as
    always (:func:`reference_size` gives the first reference's, the edit node's and CLI's default).
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
    cfg_rescale: float = 0.0
    dynamic_threshold: float = 0.0
    class_labels: list | None = None
    max_side: int = DEFAULT_MAX_SIDE
    cond: Conditioning | None = None
    preview: Any = False  # True: ComfyUI's preview setting; or a previewer (spriteforge.preview); False/None: none
    callback: Callable | None = None
    sampler_options: dict = field(default_factory=dict)
    references: list | None = None
    reference_resize: bool = True


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


def _edits(params: GenerateParams) -> bool:
    return bool(params.references) or bool(params.cond is not None and getattr(params.cond, "references", None))


def _defaults(handle, params: GenerateParams) -> dict:
    fam = registry.rules(handle.family)
    d = fam.edit_sampling_defaults(handle.variant) if _edits(params) else fam.sampling_defaults(handle.variant)
    cfg = params.cfg if params.cfg not in (None, 0) else d["cfg"]
    steps = params.steps if params.steps is not None else d["steps"]
    return {"cfg": float(cfg), "steps": int(steps), "sampler": params.sampler or d["sampler"],
            "schedule": params.schedule or d["schedule"]}


# --------------------------------------------------------------------------- helpers
def _np(x, engine=None) -> np.ndarray | None:
    return to_numpy(x, engine)


def _with_extras(handle, **extras):
    """A shallow copy of the handle with extra run-time flags (handles are never mutated)."""
    return dataclasses.replace(handle, extras={**(handle.extras or {}), **extras})


def _samplers():
    from . import samplers

    return samplers


# --------------------------------------------------------------------------- encode
def encode_references(engine, handle, references, *, resize: bool = True) -> list:
    """The reference images' VAE-scaled latents (engine arrays ``[1,C,h,w]``, one per image), each encoded once at
    the family's reference size (``resize`` False: as given, rounded down to the latent grid). BAD_INPUT when the
    model takes no (or fewer) references."""
    images = check_references(handle, references)
    with _coded_errors("encoding the reference images"):
        return [engine.vae_encode(handle, img) for img in prepare_references(handle, images, auto=resize)]


def encode(engine, handle, prompt: str | list, negative: str | list = "", *, guidance=None, class_labels=None,
           with_negative: bool = True, references=None, reference_resize: bool = True, **opts) -> Conditioning:
    """Positive conditioning with ``.negative`` set (DiT: the null class) when ``with_negative``. ``references``:
    an edit's reference images (RGB ``[H,W,3]`` in 0..1): their latents go into the conditioning
    (``Conditioning.references``, :func:`encode_references`), and the images as given to the family's text
    encoding (``Family.encode(images=)``); Kontext's edit guidance (2.5) unless ``guidance`` is given."""
    fam = registry.rules(handle.family)
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not fam.class_conditional and not any(str(p).strip() for p in prompts):
        log.info("empty prompt: generating unconditioned")
    images = check_references(handle, references) if references is not None else []
    refs = encode_references(engine, handle, images, resize=reference_resize) if images else None
    if images:
        opts["images"] = images
        if guidance is None:
            guidance = fam.edit_defaults.get("guidance")
    cond = engine.encode_text(handle, prompts, guidance=guidance, class_labels=class_labels, **opts)
    cond.references = refs
    if with_negative:
        negs = [negative] if isinstance(negative, str) else list(negative)
        if len(negs) == 1 and len(prompts) > 1:
            negs = negs * len(prompts)
        cond.negative = engine.encode_text(handle, negs, negative=True, **opts)
        cond.negative.references = refs
    return cond


def with_references(engine, handle, cond: Conditioning, references, *, resize: bool = True) -> Conditioning:
    """``cond`` (and its negative) with the reference images' latents (:func:`encode_references`), as ComfyUI's
    ReferenceLatent; for a family whose text encoder reads the images (``Family.encode_sees_references``) its prompts
    are encoded again with them. ``cond`` is not changed."""
    _check_cond(handle, cond)
    if registry.rules(handle.family).encode_sees_references:
        neg = cond.negative
        return encode(engine, handle, list(cond.prompts), list(neg.prompts) if neg is not None else "",
                      guidance=cond.guidance, with_negative=neg is not None, references=references, reference_resize=resize)
    refs = encode_references(engine, handle, references, resize=resize)
    neg = dataclasses.replace(cond.negative, references=refs) if cond.negative is not None else None
    return dataclasses.replace(cond, references=refs, negative=neg)


def reference_size(handle, image, *, resize: bool = True) -> tuple[int, int]:
    """``(width, height)`` of reference ``image`` ([H,W,3] or [1,H,W,3]) at the family's reference size for
    ``handle`` (``resize`` False: as given, rounded down to the latent grid): an edit's default output size."""
    img = check_references(handle, [image])[0]
    return _reference_size(handle, img, auto=resize)


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


@contextlib.contextmanager
def _coded_errors(context: str):
    """Framework errors as coded SpriteForgeErrors (:func:`spriteforge.errors.classify`); ours and interrupts pass."""
    try:
        yield
    except (SpriteForgeError, Interrupted):
        raise
    except Exception as exc:
        if "Interrupt" in type(exc).__name__:
            raise
        raise classify(exc, context=context) from exc


# --------------------------------------------------------------------------- sample
def sample(engine, handle, params: GenerateParams) -> SampleResult:
    """Run the sampling loop; VAE-scaled latents ``[B,C,h,w]`` (numpy float32)."""
    with _coded_errors("running the sampler"):
        return _sample(engine, handle, params)


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
    if _edits(params) and is_fill_model(handle):
        raise SpriteForgeError(BAD_INPUT, "a Fill (inpainting) model takes no reference images. Load a model that edits "
                               f"({editing_families()}), or inpaint without reference images.")
    S.check_guidance(params.cfg_rescale, params.dynamic_threshold)


@dataclass
class _Sources:
    """One run's inputs, checked and sized: the pixel size, the batch, and the numpy source latent, image
    and mask (None where not given; a latent of another size is kept for its size only)."""

    width: int
    height: int
    batch: int
    init_lat: np.ndarray | None
    init_img: np.ndarray | None
    mask: np.ndarray | None


def _sources(engine, handle, params: GenerateParams, notes: list) -> _Sources:
    """The run's size, batch and sources (BAD_INPUT / DIMENSION_LIMIT before any model work)."""
    batch = int(params.batch_size)
    f = int(handle.vae_scale_factor or 8)
    C = int(handle.latent_channels)
    denoise = float(params.denoise)
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
        init_img = resize(init_img, width, height)
        if params.batch_size == 1:
            batch = max(batch, init_img.shape[0])
        init_img = to_batch(init_img, batch, "init image")
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
            init_lat = to_batch(init_lat, batch, "latent")
    if batch * width * height > MAX_BATCH_PIXELS:
        raise SpriteForgeError(DIMENSION_LIMIT, f"a batch of {batch} images of {width}x{height} is over the limit of "
                               f"{MAX_BATCH_PIXELS // (2048 * 2048)} images of 2048x2048 per run. Lower the batch size or the size.",
                               details={"batch": batch, "width": width, "height": height})
    if mask is not None:
        if mask.ndim == 4 and mask.shape[-1] == 1:
            mask = mask[..., 0]
        if mask.ndim == 2:
            mask = mask[None]
        if mask.ndim != 3:
            raise SpriteForgeError(BAD_INPUT, f"the mask must be [B,H,W] (1 = repaint), got shape {tuple(mask.shape)}.")
        mask = np.clip(resize(mask, width, height), 0.0, 1.0)
        mask = to_batch(mask, batch, "mask")
    return _Sources(width, height, batch, init_lat, init_img, mask)


def _conditioning(engine, handle, params: GenerateParams, cfg: float, notes: list):
    """``(cond, uncond)``: the given conditioning (checked) or the prompts encoded; uncond None when CFG is off."""
    if params.cond is not None:
        cond = params.cond
        _check_cond(handle, cond)
        if params.guidance is not None:
            cond = dataclasses.replace(cond, guidance=float(params.guidance))
        if params.references:
            cond = with_references(engine, handle, cond, params.references, resize=params.reference_resize)
        elif cond.references:
            check_count(handle, len(cond.references))
    else:
        want_neg = not registry.rules(handle.family).distilled_guidance or cfg > 1.0
        cond = encode(engine, handle, params.prompt, params.negative, guidance=params.guidance,
                      class_labels=params.class_labels, with_negative=want_neg and cfg != 1.0,
                      references=params.references, reference_resize=params.reference_resize)
    uncond = cond.negative if cfg != 1.0 else None
    if uncond is None and cfg != 1.0 and not registry.rules(handle.family).class_conditional:
        notes.append("no negative conditioning: CFG off")
    return cond, uncond


def _model(engine, handle, params: GenerateParams, cond, uncond, cfg, ms, src: _Sources, fill: bool, noise, to_eng):
    """The denoiser the sampler calls: the engine's, rolled for seamless tiles, held to the source outside the mask."""
    fill_kw = {"fill_image": src.init_img, "fill_mask": src.mask} if fill else {}
    model = engine.denoiser(handle, cond, uncond, cfg=cfg, model_schedule=ms, cfg_rescale=params.cfg_rescale,
                            dynamic_threshold=params.dynamic_threshold, **fill_kw)
    if params.tile:
        model = Seamless(model, engine, int(params.seed), int(handle.patch_size or 1))
    if src.mask is not None and not fill and src.init_lat is not None:
        f = int(handle.vae_scale_factor or 8)
        lm = to_eng(latent_mask(feather_mask(src.mask, params.mask_feather), f))
        model = Inpaint(model, to_eng(src.init_lat), noise, lm, handle.prediction == "flow")
    return model


def _step_callback(engine, handle, params: GenerateParams, progress):
    """The samplers' per-step callback: the user's callback, then progress (with a preview where one is made)."""
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

    return callback


def _sample(engine, handle, params: GenerateParams) -> SampleResult:
    d = _defaults(handle, params) if handle is not None and hasattr(handle, "family") else {}
    _validate(handle, params, d)
    S = _samplers()
    notes: list[str] = []
    denoise = float(params.denoise)
    src = _sources(engine, handle, params, notes)
    width, height, batch = src.width, src.height, src.batch
    f = int(handle.vae_scale_factor or 8)
    shape = (batch, int(handle.latent_channels), height // f, width // f)
    fill = src.mask is not None and is_fill_model(handle)
    if src.init_img is not None and src.init_lat is None and (denoise < 1.0 or (src.mask is not None and not fill)):
        src.init_lat = _np(engine.vae_encode(handle, src.init_img), engine)

    cfg = d["cfg"]
    cond, uncond = _conditioning(engine, handle, params, cfg, notes)

    # --- schedule, sigmas and the starting sample
    ms = model_schedule(handle, width, height, params.shift, steps=d["steps"])
    start_from_source = src.init_lat is not None and denoise < 0.9999 and not fill
    sigmas = S.get_sigmas(d["schedule"], d["steps"], ms, denoise=denoise if start_from_source else 1.0)
    flow = handle.prediction == "flow"
    info = {"family": handle.family, "variant": handle.variant, "seed": int(params.seed), "steps": d["steps"],
            "cfg": cfg, "sampler": d["sampler"], "schedule": d["schedule"], "width": width, "height": height,
            "batch_size": batch, "denoise": denoise, "shift": params.shift, "guidance": cond.guidance,
            "tile": bool(params.tile), "cfg_rescale": float(params.cfg_rescale), "dynamic_threshold": float(params.dynamic_threshold),
            "inpaint": src.mask is not None, "fill_model": fill, "sigmas": len(sigmas)}
    info["references"] = len(cond.references or ())
    if len(sigmas) < 2 and src.init_lat is not None:  # denoise 0: the source as it is
        return SampleResult(src.init_lat.astype(np.float32), width, height, handle.family, notes, info)

    def to_eng(a):
        return engine.from_numpy(np.ascontiguousarray(a, dtype=np.float32), "float32")

    noise = to_eng(S.make_noise(int(params.seed), shape))
    s0 = float(sigmas[0])
    if start_from_source:
        start = to_eng(src.init_lat)
        x = start * (1.0 - s0) + noise * s0 if flow else start + noise * s0
    else:
        x = noise * s0  # VE: noise at sigma_max; flow: t = 1 is pure noise
    model = _model(engine, handle, params, cond, uncond, cfg, ms, src, fill, noise, to_eng)

    # --- the sampling loop
    progress = Progress(len(sigmas) - 1, desc=f"{handle.family} {d['sampler']}")
    callback = _step_callback(engine, handle, params, progress)
    opts = dict(params.sampler_options or {})
    opts.setdefault("flow", flow)
    # Every sampler gets the seeded noise source: DDIM with eta > 0 draws noise too.
    ns = S.NoiseSampler(int(params.seed), shape, to_array=to_eng)
    with progress:
        x = S.SAMPLERS[d["sampler"]](model, x, sigmas, callback=callback, noise_sampler=ns, **opts)
    lat = _np(x, engine)
    if isinstance(model, Inpaint):
        m = _np(model.mask, engine)
        lat = lat * m + src.init_lat * (1.0 - m)
    return SampleResult(lat.astype(np.float32), width, height, handle.family, notes, info)


# --------------------------------------------------------------------------- decode
def decode(engine, handle, latents, *, tile: bool = False) -> np.ndarray:
    """Images for VAE-scaled latents, with NaN/black detection and one automatic fp32 VAE retry."""
    lat = _np(latents, engine)
    if lat is None or lat.ndim != 4:
        raise SpriteForgeError(BAD_INPUT, "the latent must be a [B,C,h,w] array.")
    h2 = _with_extras(handle, vae_seamless=True) if tile else handle
    with _coded_errors("decoding the latent"):
        images = np.asarray(engine.vae_decode(h2, lat), dtype=np.float32)
    bad = is_bad_image(images)
    vae_dtype = str(getattr(getattr(engine, "policy", None), "vae_dtype", "float32"))
    if bad and bad != "empty" and not np.isfinite(lat).all():
        loras = [getattr(a, "name", str(a)) for a in getattr(handle, "loras", ()) or ()]
        if loras:  # a LoRA with NaN/inf weights poisons every step: name it first
            raise SpriteForgeError(BAD_INPUT, f"the sampler produced NaN latents with the LoRA {', '.join(loras)} applied. "
                                   "A LoRA whose weights hold NaN or inf values does this: run without it (or at a lower "
                                   "strength) to check; if the model alone works, the LoRA file is broken.",
                                   details={"loras": loras})
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


def edit(engine, handle, params: GenerateParams, *, width: int | None = None, height: int | None = None) -> GenerateResult:
    """An edit (the Edit node's and ``spriteforge edit``'s run): :func:`generate_full` with ``params.references`` (at
    least one), drawn at ``width`` x ``height``, or where 0/None at the first reference's size for this family
    (:func:`reference_size`)."""
    if not params.references:
        raise SpriteForgeError(BAD_INPUT, "an edit needs at least one reference image. Give the image to edit.")
    rw, rh = reference_size(handle, params.references[0], resize=params.reference_resize)
    params = dataclasses.replace(params, width=int(width or rw), height=int(height or rh))
    return generate_full(engine, handle, params)


def generate(engine, handle, params: GenerateParams) -> np.ndarray:
    """Images ``[B,H,W,3]`` float32 in 0..1 for ``params`` (see :class:`GenerateParams`)."""
    return generate_full(engine, handle, params).images


# prepare_size and model_schedule (spriteforge.generation.sizes) are part of this module's API: the nodes, the CLI
# and the tests size and schedule runs with them.
__all__ = ["GenerateParams", "GenerateResult", "SampleResult", "FAMILY_DEFAULTS", "generate", "generate_full", "sample", "decode",
           "edit", "encode", "encode_references", "with_references", "reference_size", "prepare_size", "model_schedule"]
