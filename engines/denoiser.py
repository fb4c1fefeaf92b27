"""The engine-independent half of a denoiser ``model(x, sigma) -> x0``, shared by the torch and MLX engines.

:class:`Denoiser` holds what does not depend on the framework: classifier-free guidance in one
batch (uncond rows first) or one row at a time (attention slicing), with CFG-rescale and dynamic
thresholding from :mod:`spriteforge.samplers.guidance` (the code the ComfyUI-MODEL bridge uses too),
a class-conditional family's null class as the unconditional input, a native inpaint model's conditioning
(masked image latents and the packed mask), padding the two prompts' sequences to one length. Which keywords the
transformer takes is the family's (:meth:`spriteforge.models.families.Family.forward`, called with this object).
A subclass (``engines/torch_models/generation.py``, ``engines/mlx_models/generation.py``) supplies only the array
calls, as the hooks at the end of the class.
"""

from __future__ import annotations

import numpy as np

from ..errors import BAD_INPUT, SpriteForgeError
from ..models.families import registry
from ..samplers.guidance import cfg_rescale, check_guidance, dynamic_threshold
from .model_inputs import check_input_channels, is_fill_model, model_input, model_timestep, to_x0


class Denoiser:
    """``model(x, sigma) -> x0`` for one conditioning, with batched CFG.

    ``x`` may be an engine array or a numpy array; the result has the same type (and device).
    ``ops`` are the engine's array operations (the samplers use them for their default noise).
    ``cfg_rescale`` (0..1, 0 = off) and ``dynamic_threshold`` (a percentile, 0 = off): see
    :mod:`spriteforge.samplers.guidance`.
    """

    def __init__(self, engine, handle, cond, uncond=None, *, cfg: float = 1.0, model_schedule=None,
                 fill_image=None, fill_mask=None, attention_slicing: bool | None = None, cfg_rescale: float = 0.0,
                 dynamic_threshold: float = 0.0, **opts):
        self.engine = engine
        self.ops = engine.ops
        self.handle = handle
        self.cond = cond
        self.uncond = uncond
        self.cfg = float(cfg)
        self.rescale, self.threshold = check_guidance(cfg_rescale, dynamic_threshold)
        self._cond_cache: dict = {}  # what is the same on every step: conditioning per batch size, Flux image ids
        self.ms = model_schedule
        self.flow = handle.prediction == "flow"
        self.module = handle.transformer
        self.family = registry.rules(handle.family)
        self._setup()
        policy = getattr(engine, "policy", None)
        self.slice = bool(policy.attention_slicing) if attention_slicing is None and policy is not None else bool(attention_slicing)
        self.use_cfg = uncond is not None and abs(self.cfg - 1.0) > 1e-6
        if self.family.class_conditional and uncond is None and abs(self.cfg - 1.0) > 1e-6:
            from .base import Conditioning

            n = self.family.num_classes(handle)  # the null class
            self.uncond = Conditioning(family=handle.family, prompts=[""], class_labels=[n] * len(cond.class_labels or [0]))
            self.use_cfg = True
        self.config = self._model_config()
        self.fill = None
        check_input_channels(handle.family, self.config.get("in_channels"))
        # without an image: an all-repaint mask over a blank image (txt2img with a Fill model)
        self._fill_args = (fill_image, fill_mask) if is_fill_model(handle) else None
        self.calls = 0
        if self._fill_args is not None and fill_image is not None:
            f = int(handle.vae_scale_factor or 8)
            img = np.asarray(fill_image)
            self._fill_cond(img.shape[-3] // f, img.shape[-2] // f)

    # ------------------------------------------------------------------ shared steps
    def _timestep(self, sigma: float) -> float:
        return model_timestep(self.handle.family, self.flow, sigma, self.ms)

    def _expand(self, t, batch):
        """Repeat a batch-1 (or batch-n dividing ``batch``) array to ``batch`` rows (each row in place)."""
        if t is None:
            return None
        if t.shape[0] == batch:
            return t
        if batch % t.shape[0]:
            raise SpriteForgeError(BAD_INPUT, f"conditioning has {t.shape[0]} prompts but the batch is {batch}: use one prompt or one per image.")
        return self._repeat_rows(t, batch // t.shape[0])

    def pack(self, x, p: int = 2):
        """[B,C,h,w] -> tokens of p x p patches [B, h/p * w/p, p*p*C] (Flux: 2x2; FLUX.2: 1, a token a latent pixel)."""
        b, c, h, w = x.shape
        return self._permute(x.reshape(b, c, h // p, p, w // p, p), (0, 2, 4, 1, 3, 5)).reshape(b, (h // p) * (w // p), c * p * p)

    def unpack(self, x, h, w, p: int = 2):
        b, n, cp = x.shape
        c = cp // (p * p)
        return self._permute(x.reshape(b, h // p, w // p, c, p, p), (0, 3, 1, 4, 2, 5)).reshape(b, c, h, w)

    def _fill_cond(self, h, w):
        """Flux Fill's extra input tokens: the masked image's latents and the mask, packed (made once)."""
        if self.fill is not None:
            return self.fill
        img, mask = self._fill_args or (None, None)
        f = int(self.handle.vae_scale_factor or 8)
        H, W = h * f, w * f
        if img is None:
            img = np.zeros((1, H, W, 3), np.float32)
        if mask is None:
            mask = np.ones((1, H, W), np.float32)
        img = np.asarray(img, np.float32)
        mask = (np.asarray(mask, np.float32) > 0.5).astype(np.float32)
        # diffusers' FluxFill masks in [-1,1] space: masked pixels become 0 (grey) after normalising
        masked = np.where(mask[..., None] > 0.5, 0.5, img).astype(np.float32)
        lat = self._place(self.engine.vae_encode(self.handle, masked), self.F32)
        m = self._place(mask, self.F32)
        b = max(lat.shape[0], m.shape[0])
        lat, m = self._expand(lat, b), self._expand(m, b)
        m = self._permute(m.reshape(b, h, f, w, f), (0, 2, 4, 1, 3)).reshape(b, f * f, h, w)
        self.fill = self._done(self.ops.concat([self.pack(lat), self.pack(m)], 2))
        return self.fill

    def _forward(self, x, t, cond):
        """Model output (eps, v or flow velocity) for input ``x`` [N,C,h,w] at model timesteps ``t`` [N]: the family's call."""
        out = self.family.forward(self, x, t, cond)
        if out.shape[1] != x.shape[1]:  # learned sigma: the first C channels are the prediction
            out = out[:, :x.shape[1]]
        return out

    # ------------------------------------------------------------------ what a family's forward() calls
    # (models/families: written once for both engines over these; ``ops``, ``handle``, ``module``, ``cond`` (the
    # positive Conditioning), ``config`` (the transformer's config dict) and ``F32`` are read as attributes)
    def run(self, **kw):
        """The transformer's output array for keyword inputs."""
        return self._run(**kw)

    def full(self, n: int, value: float, dtype):
        """A ``[n]`` array of ``value`` on the model's device."""
        return self._full(n, value, dtype)

    def rows(self, rows, dtype):
        """An array of the nested list ``rows`` on the model's device."""
        return self._rows(rows, dtype)

    def zeros(self, shape, dtype):
        return self._zeros(shape, dtype)

    def cast(self, x, dtype):
        return self._cast(x, dtype)

    def cached(self, key, make):
        """``make()``, made once per denoiser (what is the same on every step: position ids, masks)."""
        if key not in self._cond_cache:
            self._cond_cache[key] = make()
        return self._cond_cache[key]

    def fill_tokens(self, h: int, w: int, batch: int):
        """A native inpaint model's extra input tokens (masked image latents and mask, packed) for ``batch`` rows of an
        ``h`` x ``w`` latent; None for other models."""
        if self._fill_args is None:
            return None
        fc = self._fill_cond(h, w)
        if fc.shape[0] != batch:
            fc = self.ops.concat([fc] * (batch // fc.shape[0]), 0) if batch % fc.shape[0] == 0 else self._repeat_rows(fc[:1], batch)
        return fc

    def references(self, cond: dict) -> list:
        """The reference latents of the conditioning arrays ``cond`` (what :meth:`forward` got): ``[N,C,h_i,w_i]``
        engine arrays in the model dtype, one per reference image, in order; [] without references."""
        out, i = [], 0
        while f"ref{i}" in cond:
            out.append(cond[f"ref{i}"])
            i += 1
        return out

    def _cond_arrays(self, cond, batch):
        """The conditioning's arrays on the model's device, ``batch`` rows each (embeds/pooled in the model dtype);
        the reference latents as ``ref0``, ``ref1``... (a negative without its own: the positive's)."""
        d = {}
        for key, value, dtype in (("embeds", cond.embeds, self.dtype), ("mask", cond.mask, None), ("pooled", cond.pooled, self.dtype)):
            if value is not None:
                d[key] = self._expand(self._place(value, dtype), batch)
        if cond.class_labels is not None:
            d["labels"] = self._expand(self._labels([int(v) for v in cond.class_labels]), batch)
        refs = cond.references if cond.references is not None else self.cond.references
        for i, r in enumerate(refs or ()):
            d[f"ref{i}"] = self._expand(self._place(r, self.dtype), batch)
        return d

    def _conditioning(self, batch):
        """(cond, cond and uncond in one batch or None) for ``batch`` rows, built once per batch size: the
        conditioning is the same on every step."""
        cache = self._cond_cache
        if batch not in cache:
            c = self._cond_arrays(self.cond, batch)
            both = self._cat(c, self._cond_arrays(self.uncond, batch)) if self.use_cfg else None
            if self.family.text_mask:
                c, both = self._unpadded(c, both)
            cache[batch] = (c, both)
        return cache[batch]

    def _unpadded(self, c, both):
        """``c`` and ``both`` without the trailing tokens that no prompt's mask keeps, for a transformer whose attention
        honours the mask: a masked token adds exactly nothing (its weight is exp(-10000) = 0), so the result is the same
        while every step attends to (and projects) the real tokens only, not T5's 300 padded ones. One host read of
        the masks a run; unchanged when some prompt keeps no token at all."""
        masks = [d["mask"] for d in (c, both) if d is not None and d.get("mask") is not None]
        if not masks:
            return c, both
        kept = [np.asarray(self.ops.to_numpy(m)).reshape(m.shape[0], -1) > 0 for m in masks]
        if any(not row.any() for k in kept for row in k):
            return c, both
        n = max(int(np.flatnonzero(k.any(axis=0))[-1]) + 1 for k in kept)

        def cut(d):
            return None if d is None else {k: v[:, :n] if k in ("embeds", "mask") and v.shape[1] > n else v for k, v in d.items()}

        return cut(c), cut(both)

    def _cat(self, a, b):
        """Conditioning ``a`` and negative ``b`` in one batch, uncond first; sequences padded to one length."""
        out = {}
        for k in a:
            x, y = a[k], b.get(k)
            if y is None:
                raise SpriteForgeError(BAD_INPUT, f"the negative conditioning lacks {k}: encode both prompts with the same model.")
            if x.ndim >= 2 and y.ndim >= 2 and x.shape[1] != y.shape[1] and k in ("embeds", "mask"):
                n = max(x.shape[1], y.shape[1])
                x, y = self._pad_seq(x, n), self._pad_seq(y, n)
            out[k] = self._cat_rows(y, x)
        return out

    def _x0(self, xt, pred, sigma):
        return to_x0(xt, pred, sigma, self.handle.prediction)

    def __call__(self, x, sigma, **_extra):
        xt, back = self._work(x)
        sigma = float(sigma)
        b = xt.shape[0]
        self.calls += 1
        with self._no_grad():
            inp = model_input(xt, self.handle.prediction, sigma)
            t = self._timestep(sigma)
            tdt = self.dtype if self.flow and not self.family.float32_timestep else self.F32
            c, allc = self._conditioning(b)
            if self.use_cfg:
                xin = self._cast(self.ops.concat([inp, inp], 0), self.dtype)
                tt = self._full(2 * b, t, tdt)
                if self.slice:
                    outs = [self._forward(xin[i:i + 1], tt[i:i + 1], {k: v[i:i + 1] for k, v in allc.items()}) for i in range(2 * b)]
                    out = self.ops.concat(outs, 0)
                else:
                    out = self._forward(xin, tt, allc)
                out = self.ops.f32(out)
                ou, oc = out[:b], out[b:]
                if self.rescale > 0.0:  # rescaled in v-space, from the two denoised estimates
                    x0 = cfg_rescale(self._x0(xt, oc, sigma), self._x0(xt, ou, sigma), self.cfg, self.rescale, x=xt,
                                     sigma=sigma, flow=self.flow, ops=self.ops)
                else:  # CFG on the network output, as the family combines it (plain CFG: the same as on x0, to_x0 is affine)
                    x0 = self._x0(xt, self.family.guide(self.ops, ou, oc, self.cfg), sigma)
            else:
                x0 = self._x0(xt, self.ops.f32(self._forward(self._cast(inp, self.dtype), self._full(b, t, tdt), c)), sigma)
            if self.threshold > 0.0:
                x0 = dynamic_threshold(x0, self.threshold, ops=self.ops)
        return back(x0)

    # ------------------------------------------------------------------ hooks (the framework's calls)
    F32 = None  # the framework's float32 dtype
    dtype = None  # the transformer's compute dtype

    def _setup(self) -> None:
        """Set ``self.dtype`` (and the device) from ``self.module``."""
        raise NotImplementedError

    def _model_config(self) -> dict:
        """The transformer's diffusers config (``guidance_embeds``, ``timestep_scale``, ``in_channels``...)."""
        raise NotImplementedError

    def _run(self, **kw):
        """The transformer's output array for keyword inputs."""
        raise NotImplementedError

    def _work(self, x):
        """``(x as float32 on the model's device, back)``: ``back(x0)`` gives x0 in ``x``'s type, device and dtype."""
        raise NotImplementedError

    def _no_grad(self):
        raise NotImplementedError

    def _place(self, a, dtype=None):
        """An engine array (from numpy or engine arrays) on the model's device, in ``dtype`` if given."""
        raise NotImplementedError

    def _labels(self, values):
        """Integer class labels as an engine array on the model's device."""
        raise NotImplementedError

    def _rows(self, rows, dtype):
        """A 2-D engine array from nested lists."""
        raise NotImplementedError

    def _full(self, n, value, dtype):
        raise NotImplementedError

    def _zeros(self, shape, dtype):
        raise NotImplementedError

    def _cast(self, x, dtype):
        raise NotImplementedError

    def _permute(self, x, axes):
        raise NotImplementedError

    def _repeat_rows(self, t, k):
        """Each row of ``t`` repeated ``k`` times in place (torch's repeat_interleave)."""
        raise NotImplementedError

    def _pad_seq(self, t, n):
        """``t`` zero-padded along axis 1 to length ``n``."""
        raise NotImplementedError

    def _cat_rows(self, first, second):
        """``first`` and ``second`` stacked along the batch axis."""
        raise NotImplementedError

    def _done(self, x):
        """``x`` materialised (MLX evaluates its lazy graph); as given elsewhere."""
        return x
