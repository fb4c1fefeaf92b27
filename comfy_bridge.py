"""SpriteForge's samplers in ComfyUI's calling convention, without importing ComfyUI.

ComfyUI hands a sampler function ``fn(model, x, sigmas, extra_args, callback, disable, **options)``
(what ``comfy.samplers.KSAMPLER`` wraps) a denoiser it calls as
``model(x, sigma * s_in, **extra_args)``: ``sigma`` a tensor of one noise level per batch item,
``extra_args`` ComfyUI's ``model_options``, ``seed`` and ``denoise_mask``, and the result the
denoised estimate x0.  Its ``callback`` takes ``{"x", "i", "sigma", "sigma_hat", "denoised"}``.
Our samplers (:mod:`spriteforge.samplers`) call ``model(x, sigma_float)``; this module is the
adapter between the two, plus the pieces a ComfyUI sampling node needs around it:

* :func:`sampler_function` - a ComfyUI sampler function running one of ``SAMPLERS`` with our
  maths and our CPU-seeded step noise (:class:`spriteforge.samplers.NoiseSampler`);
* :func:`initial_noise` - the starting noise, made on the CPU from the seed, item ``i`` from
  ``seed + batch_index[i]`` (the same on every device and at every batch size);
* :func:`is_flow` / :func:`find_model_sampling` / :func:`model_schedule` - read a ComfyUI
  ``model_sampling`` object (duck-typed) into our flag and schedule objects;
* :func:`rescale_cfg_function` - CFG-rescale (Lin et al. 2023) as a ``sampler_cfg_function``;
* :class:`SeamlessWrapper` - seamless tiles as a ``model_function_wrapper`` (seeded roll);
* :func:`circular_padding` - wrap-around padding on a module's convolutions for a while (seamless VAE decode).

Arrays are torch tensors inside ComfyUI; numpy works too (tests).  Nothing here imports torch
or ComfyUI at module level.
"""

from __future__ import annotations

import numpy as np

from .engines.ops import ops_for
from .errors import BAD_INPUT, SpriteForgeError
from .samplers import (SAMPLERS, DiscreteSchedule, FlowSchedule, NoiseSampler, cfg_rescale, check_guidance, dynamic_threshold,
                       make_noise)
from .samplers.schedules import SigmaTableBase

__all__ = ["sampler_function", "ComfyDenoiser", "initial_noise", "is_flow", "find_model_sampling", "model_schedule",
           "SigmaTable", "rescale_cfg_function", "SeamlessWrapper", "sigma_batch", "circular_padding"]


# --------------------------------------------------------------------------- arrays
def _is_torch(x) -> bool:
    return (type(x).__module__ or "").startswith("torch")


def sigma_batch(x, sigma: float):
    """``sigma * s_in``: one noise level per batch item, like ``x`` (dtype and device)."""
    b = int(x.shape[0])
    if _is_torch(x):
        return x.new_full((b,), float(sigma))
    return np.full((b,), float(sigma), dtype=np.asarray(x).dtype)


def _to_array_like(x):
    """A function turning float32 numpy noise into ``x``'s array type, device and dtype."""
    if _is_torch(x):
        import torch

        return lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device=x.device, dtype=x.dtype)
    dt = np.asarray(x).dtype
    return lambda a: np.asarray(a, dtype=dt)


def _to_numpy(v) -> np.ndarray:
    if hasattr(v, "detach"):
        v = v.detach().cpu().double().numpy()
    return np.asarray(v, dtype=np.float64)


# --------------------------------------------------------------------------- model sampling
def _class_names(obj) -> set[str]:
    return {c.__name__ for c in type(obj).__mro__}


def find_model_sampling(model):
    """ComfyUI's ``model_sampling`` behind ``model``: a ModelPatcher, a BaseModel, or the wrappers
    a sampler function receives (KSamplerX0Inpaint -> CFGGuider -> BaseModel); None if absent."""
    m = model
    for _ in range(8):
        if m is None:
            return None
        ms = getattr(m, "model_sampling", None)
        if ms is not None:
            return ms
        get = getattr(m, "get_model_object", None)
        if callable(get):
            try:
                return get("model_sampling")
            except Exception:
                pass
        m = getattr(m, "inner_model", None) or getattr(m, "model", None)
    return None


def is_flow(model_sampling) -> bool:
    """True for rectified-flow sampling (ComfyUI's CONST: x = (1 - t) x0 + t n: SD3, Flux, ...)."""
    return model_sampling is not None and "CONST" in _class_names(model_sampling)


class SigmaTable(SigmaTableBase):
    """A model schedule from any ascending table of sigmas: timesteps are table positions,
    interpolated in log-sigma (how ComfyUI's discrete model samplings map them)."""

    def __init__(self, sigmas):
        s = np.sort(_to_numpy(sigmas).reshape(-1))
        self.sigmas = s
        self.log_sigmas = np.log(np.maximum(s, 1e-300))

    def timestep(self, sigma):
        ls = np.log(np.maximum(np.asarray(sigma, dtype=np.float64), 1e-300))
        t = np.interp(ls, self.log_sigmas, np.arange(len(self.sigmas), dtype=np.float64))
        return float(t) if t.ndim == 0 else t

    def sigma(self, timestep):
        t = np.clip(np.asarray(timestep, dtype=np.float64), 0, len(self.sigmas) - 1)
        s = np.exp(np.interp(t, np.arange(len(self.sigmas), dtype=np.float64), self.log_sigmas))
        return float(s) if s.ndim == 0 else s


def model_schedule(model_sampling):
    """Our model schedule for a ComfyUI ``model_sampling``: the DDPM table of discrete models
    (SD1.x, SDXL, ...), the shifted flow schedule of SD3-style and Flux models, or the table itself."""
    if model_sampling is None:
        raise SpriteForgeError(BAD_INPUT, "the model has no sampling schedule (model_sampling): connect a MODEL from a "
                               "ComfyUI loader.")
    names = _class_names(model_sampling)
    table = getattr(model_sampling, "sigmas", None)
    n = len(table) if table is not None else 1000
    if "ModelSamplingDiscreteFlow" in names:
        return FlowSchedule(float(model_sampling.shift), multiplier=float(model_sampling.multiplier), num_timesteps=n)
    if "ModelSamplingFlux" in names:
        return FlowSchedule(mu=float(model_sampling.shift), multiplier=1.0, num_timesteps=n)
    if table is None:
        raise SpriteForgeError(BAD_INPUT, f"the model's sampling ({type(model_sampling).__name__}) has no sigma table.")
    if "ModelSamplingDiscrete" in names and not ({"ModelSamplingDiscreteEDM", "StableCascadeSampling"} & names):
        s = _to_numpy(table)
        return DiscreteSchedule(alphas_cumprod=1.0 / (1.0 + s * s))
    return SigmaTable(table)


# --------------------------------------------------------------------------- noise
def initial_noise(seed: int, shape, batch_index=None) -> np.ndarray:
    """Float32 standard-normal starting noise of ``shape``; item ``i`` is :func:`make_noise`'s
    ``seed + batch_index[i]`` (``batch_index`` defaults to 0..B-1), so it does not depend on the
    batch size and matches SpriteForge's own Sampler for the same seed."""
    shape = tuple(int(s) for s in shape)
    if batch_index is None:
        return make_noise(int(seed), shape)
    idx = [int(i) for i in batch_index]
    if len(idx) != shape[0]:
        raise SpriteForgeError(BAD_INPUT, f"the latent's batch_index has {len(idx)} entries for a batch of {shape[0]}.")
    out = np.empty(shape, dtype=np.float32)
    for k, i in enumerate(idx):
        out[k] = make_noise(int(seed), (1,) + shape[1:], batch_index_offset=i)[0]
    return out


# --------------------------------------------------------------------------- the sampler function
class ComfyDenoiser:
    """Presents ComfyUI's ``model(x, sigma * s_in, **extra_args)`` as our ``model(x, sigma_float)``,
    with optional dynamic thresholding of the denoised estimate."""

    def __init__(self, model, extra_args=None, *, threshold: float = 0.0):
        self.model = model
        self.extra_args = dict(extra_args or {})
        self.threshold = float(threshold or 0.0)
        self.calls = 0

    def __call__(self, x, sigma, **kw):
        self.calls += 1
        x0 = self.model(x, sigma_batch(x, sigma), **{**self.extra_args, **kw})
        if self.threshold > 0.0:
            x0 = dynamic_threshold(x0, self.threshold, ops=ops_for(x0))
        return x0


def sampler_function(name: str, *, seed: int | None = None, flow: bool | None = None, dynamic_threshold: float = 0.0,
                     batch_index_offset: int = 0, **defaults):
    """A ComfyUI sampler function for our sampler ``name``.

    ``seed``: the step-noise seed (default: ComfyUI's ``extra_args["seed"]``, the noise seed of
    KSampler / SamplerCustom); ``flow``: the noise parametrisation (default: read from the model's
    ``model_sampling``); ``dynamic_threshold``: Imagen's percentile (0 = off); ``defaults``: the
    sampler's own options (``eta``, ``s_noise``, ``solver_type``).
    """
    if name not in SAMPLERS:
        raise SpriteForgeError(BAD_INPUT, f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}.")
    fn = SAMPLERS[name]
    _, dynamic_threshold = check_guidance(dynamic_threshold=dynamic_threshold)

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        extra = dict(extra_args or {})
        opts = {**defaults, **options}
        use_flow = flow if flow is not None else is_flow(find_model_sampling(model))
        opts["flow"] = bool(opts.get("flow", use_flow))
        s = seed if seed is not None else extra.get("seed")
        noise = NoiseSampler(int(s or 0), tuple(x.shape), to_array=_to_array_like(x), batch_index_offset=batch_index_offset)
        denoiser = ComfyDenoiser(model, extra, threshold=dynamic_threshold)
        given = sigmas

        def cb(state):
            if callback is not None:
                i = state["i"]
                sig = given[i] if hasattr(given, "__getitem__") else state["sigma"]
                callback({"x": state["x"], "i": i, "sigma": sig, "sigma_hat": sig, "denoised": state["denoised"]})

        return fn(denoiser, x, sigmas, callback=cb, noise_sampler=noise, **opts)

    sample.__name__ = f"spriteforge_{name}"
    sample.__qualname__ = sample.__name__
    return sample


# --------------------------------------------------------------------------- guidance and tiling
def rescale_cfg_function(phi: float, flow: bool):
    """A ComfyUI ``sampler_cfg_function`` doing our CFG-rescale (Lin et al. 2023, in v-space).

    ComfyUI passes ``cond_denoised``/``uncond_denoised``/``input``/``sigma``/``cond_scale`` and
    takes back ``input - x0`` (the "noise" form)."""
    phi, _ = check_guidance(cfg_rescale=phi)

    def fn(args):
        x = args["input"]
        sig = args["sigma"]
        s = float(sig.reshape(-1)[0]) if hasattr(sig, "reshape") else float(sig)
        x0 = cfg_rescale(args["cond_denoised"], args["uncond_denoised"], float(args["cond_scale"]), phi, x=x, sigma=s,
                         flow=flow, ops=ops_for(x))
        return x - x0

    return fn


def _roll(x, dy, dx):
    if _is_torch(x):
        return x.roll(shifts=(dy, dx), dims=(-2, -1))
    return np.roll(x, (dy, dx), axis=(-2, -1))


class SeamlessWrapper:
    """Seamless tiles for a ComfyUI ``model_function_wrapper``: each network call sees the latent
    rolled by a seeded random offset (whole ``patch`` cells) on both axes and is rolled back, so
    no fixed border survives (as SpriteForge's own Sampler does).  A spatial ``c_concat``
    (inpainting models) is rolled with it; an earlier wrapper is chained."""

    def __init__(self, seed: int, patch: int = 1, previous=None):
        self.rng = np.random.Generator(np.random.PCG64(int(seed) % 2 ** 64 + 7919))
        self.patch = max(int(patch), 1)
        self.previous = previous
        self.calls = 0

    def __call__(self, apply_model, args):
        x = args["input"]
        h, w = int(x.shape[-2]), int(x.shape[-1])
        dy = int(self.rng.integers(0, max(h // self.patch, 1))) * self.patch
        dx = int(self.rng.integers(0, max(w // self.patch, 1))) * self.patch
        self.calls += 1
        c = dict(args.get("c") or {})
        cc = c.get("c_concat")
        if cc is not None and tuple(cc.shape[-2:]) == (h, w):
            c["c_concat"] = _roll(cc, dy, dx)
        rolled = dict(args, input=_roll(x, dy, dx), c=c)
        if self.previous is not None:
            out = self.previous(apply_model, rolled)
        else:
            out = apply_model(rolled["input"], rolled["timestep"], **rolled["c"])
        return _roll(out, -dy, -dx)


class circular_padding:
    """Context manager: every padded 2-D convolution of ``module`` pads circularly (wraps around) inside the
    block and is restored after, so a periodic latent decodes into an image without seams."""

    def __init__(self, module):
        self.module = module
        self._saved = []

    def __enter__(self):
        for m in self.module.modules():
            pad = getattr(m, "padding", None)
            if getattr(m, "padding_mode", None) is None or not isinstance(pad, tuple) or len(pad) != 2 or pad == (0, 0):
                continue
            self._saved.append((m, m.padding_mode))
            m.padding_mode = "circular"
        return self

    def __exit__(self, *exc):
        for m, mode in self._saved:
            m.padding_mode = mode
        self._saved.clear()
        return False
