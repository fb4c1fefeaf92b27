"""Generation with the MLX ports: text encoding, the denoiser wrapper, VAE encode/decode.

The MLX twin of :mod:`spriteforge.engines.torch_models.generation`, step for step, so the
same inputs give the same numbers on both engines:

* :func:`encode_text` -> :class:`spriteforge.engines.base.Conditioning` holding mx arrays
  (T5 for PixArt, CLIP-L/G + T5 for SD3, CLIP-L pooled + T5 for Flux, Gemma for Sana,
  class labels for DiT; the same tokenizers, max lengths and padding);
* :class:`MLXDenoiser` -> ``model(x, sigma) -> x0`` in the samplers' convention, with
  classifier-free guidance as one batched uncond-first call;
* :func:`vae_encode` / :func:`vae_decode`: numpy images <-> VAE-scaled latents
  (``(z - shift) * scale``), per image, with seamless (circular) padding and the forced-fp32
  retry mode.

No torch here: tokenizers give numpy (``return_tensors="np"``).
"""

from __future__ import annotations

import contextlib

import numpy as np

from ...errors import BAD_INPUT, MODEL_NOT_FOUND, SpriteForgeError
from ...log import get_logger
from ..model_inputs import check_flux_channels, dit_labels, is_fill_model, model_input, model_timestep, num_classes, pixart_max_length, sana_texts, to_x0

log = get_logger("mlx")


def _mx():
    import mlx.core as mx

    return mx


# role -> names to look for, per family (as the torch engine)
_ROLE_NAMES = {
    "pixart": {"t5": ("t5", "t5xxl", "text_encoder")},
    "sd3": {"clip_l": ("clip_l", "text_encoder"), "clip_g": ("clip_g", "text_encoder_2"), "t5": ("t5", "t5xxl", "text_encoder_3")},
    "flux": {"clip_l": ("clip_l", "text_encoder"), "t5": ("t5", "t5xxl", "text_encoder_2")},
    "sana": {"gemma": ("gemma", "gemma2", "text_encoder")},
    "dit": {},
}


def _lookup(d: dict, names):
    for n in names:
        if d.get(n) is not None:
            return d[n]
    return None


def _role(handle, role, required=True):
    names = _ROLE_NAMES.get(handle.family, {}).get(role, (role,))
    enc = _lookup(handle.text_encoders or {}, names)
    tok = _lookup(handle.tokenizers or {}, names)
    if (enc is None or tok is None) and required:
        what = {"t5": "a T5 text encoder", "clip_l": "a CLIP-L text encoder", "clip_g": "a CLIP-G (bigG) text encoder",
                "gemma": "a Gemma-2 text encoder"}.get(role, role)
        raise SpriteForgeError(
            MODEL_NOT_FOUND,
            f"{handle.family} needs {what} (with its tokenizer) to encode prompts, and the loaded model has none. "
            "Choose it in the loader's text encoder inputs (or --text-encoder), or load a diffusers folder that contains it.",
            details={"family": handle.family, "role": role},
        )
    return enc, tok


def _module_dtype(module):
    from mlx.utils import tree_flatten

    mx = _mx()
    for _, p in tree_flatten(module.parameters()):
        if mx.issubdtype(p.dtype, mx.floating):
            return p.dtype
    return mx.float32


@contextlib.contextmanager
def _as_dtype(module, dtype):
    """Temporarily run ``module`` in ``dtype`` (the fp32 retries); its own arrays come back afterwards."""
    mx = _mx()
    orig = _module_dtype(module)
    if dtype is None or orig == dtype:
        yield orig
        return
    saved = module.parameters()
    from . import layers

    layers.cast_module(module, dtype)
    try:
        yield dtype
    finally:
        module.update(saved)
        mx.eval(module.parameters())


# --------------------------------------------------------------------------- text
def _tokenize(tok, prompts, max_length):
    mx = _mx()
    ti = tok(list(prompts), padding="max_length", max_length=int(max_length), truncation=True,
             add_special_tokens=True, return_tensors="np")
    return mx.array(np.asarray(ti["input_ids"]).astype(np.int32)), mx.array(np.asarray(ti["attention_mask"]).astype(np.int32))


def _hidden(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _t5(handle, prompts, max_length, required=True):
    mx = _mx()
    enc, tok = _role(handle, "t5", required=required)
    if enc is None:
        return None, None
    ids, mask = _tokenize(tok, prompts, max_length)
    emb = _hidden(enc(ids, attention_mask=mask))
    mx.eval(emb)
    if not bool(mx.all(mx.isfinite(emb)).item()):
        # T5 overflows in fp16 on some inputs: run it again in fp32 (restored afterwards)
        log.warning("the T5 text encoder gave NaN/inf in %s: encoding again in float32", _module_dtype(enc))
        with _as_dtype(enc, mx.float32):
            emb = _hidden(enc(ids, attention_mask=mask))
            mx.eval(emb)
    return emb.astype(mx.float32), mask


def _clip(handle, role, prompts):
    mx = _mx()
    enc, tok = _role(handle, role)
    ml = min(int(getattr(tok, "model_max_length", 77) or 77), 77)
    ids, _ = _tokenize(tok, prompts, ml)
    hidden, pooled = enc(ids)
    return hidden[-2].astype(mx.float32), pooled.astype(mx.float32)


def encode_text(engine, handle, prompts, *, max_length: int | None = None, guidance: float | None = None,
                complex_human_instruction=False, class_labels=None, negative: bool = False, **_opts):
    """Conditioning for ``prompts`` with the family's text encoders, as mx arrays (see the torch twin)."""
    from ..base import Conditioning

    mx = _mx()
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = [str(p) for p in prompts]
    fam = handle.family
    cond = Conditioning(family=fam, prompts=list(prompts), guidance=guidance)
    if fam == "dit":
        cond.class_labels = dit_labels(handle, prompts, negative=negative, given=class_labels)
        return cond
    if fam == "pixart":
        cond.embeds, cond.mask = _t5(handle, prompts, pixart_max_length(handle, max_length))
    elif fam == "sana":
        enc, tok = _role(handle, "gemma")
        ml = max_length or 300
        texts, total, keep = sana_texts(tok, prompts, ml, complex_human_instruction, negative)
        if hasattr(tok, "padding_side"):
            tok.padding_side = "right"
        ids, mask = _tokenize(tok, texts, total)
        emb = _hidden(enc(ids, attention_mask=mask)).astype(mx.float32)
        if keep is not None:
            sel = mx.array(keep)
            emb, mask = emb[:, sel], mask[:, sel]
        cond.embeds, cond.mask = emb, mask
    elif fam == "sd3":
        joint = int((handle.config or {}).get("joint_attention_dim") or 4096)
        l_h, l_p = _clip(handle, "clip_l", prompts)
        g_h, g_p = _clip(handle, "clip_g", prompts)
        clip_h = mx.concatenate([l_h, g_h], axis=-1)
        t5, _ = _t5(handle, prompts, max_length or 256, required=False)
        if t5 is None:
            t5 = mx.zeros((len(prompts), max_length or 256, joint), dtype=mx.float32)
        clip_h = mx.pad(clip_h, [(0, 0), (0, 0), (0, t5.shape[-1] - clip_h.shape[-1])])
        cond.embeds = mx.concatenate([clip_h, t5], axis=-2)
        cond.pooled = mx.concatenate([l_p, g_p], axis=-1)
    elif fam == "flux":
        _, pooled = _clip(handle, "clip_l", prompts)
        schnell = "schnell" in (handle.variant or "").lower()
        t5, _ = _t5(handle, prompts, max_length or (256 if schnell else 512))
        cond.embeds, cond.pooled = t5, pooled
        if cond.guidance is None:
            cond.guidance = 3.5
    else:
        raise SpriteForgeError(BAD_INPUT, f"family {fam!r} has no text encoding in the MLX engine.")
    mx.eval([a for a in (cond.embeds, cond.mask, cond.pooled) if a is not None])
    return cond


# --------------------------------------------------------------------------- denoiser
def _as_mx(a):
    mx = _mx()
    if a is None or isinstance(a, mx.array):
        return a
    if hasattr(a, "detach"):  # a torch tensor from a conditioning made elsewhere
        a = a.detach().float().cpu().numpy()
    return mx.array(np.asarray(a))


def _expand(t, batch):
    """Repeat a batch-1 (or batch-n dividing ``batch``) array to ``batch`` rows (each row in place, as torch's repeat_interleave)."""
    mx = _mx()
    if t is None:
        return None
    if t.shape[0] == batch:
        return t
    if batch % t.shape[0]:
        raise SpriteForgeError(BAD_INPUT, f"conditioning has {t.shape[0]} prompts but the batch is {batch}: use one prompt or one per image.")
    return mx.repeat(t, batch // t.shape[0], axis=0)


def _pack(x):
    b, c, h, w = x.shape
    return x.reshape(b, c, h // 2, 2, w // 2, 2).transpose(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def _unpack(x, h, w):
    b, n, c4 = x.shape
    c = c4 // 4
    return x.reshape(b, h // 2, w // 2, c, 2, 2).transpose(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def _flux_img_ids(h, w, dtype):
    mx = _mx()
    ids = np.zeros((h // 2, w // 2, 3), np.float32)
    ids[..., 1] += np.arange(h // 2)[:, None]
    ids[..., 2] += np.arange(w // 2)[None, :]
    return mx.array(ids.reshape(-1, 3)).astype(dtype)


class MLXDenoiser:
    """``model(x, sigma) -> x0`` for one conditioning, with batched CFG (the MLX twin of TorchDenoiser).

    ``x`` may be an mx array or a numpy array; the result has the same type.
    """

    def __init__(self, engine, handle, cond, uncond=None, *, cfg: float = 1.0, model_schedule=None,
                 fill_image=None, fill_mask=None, attention_slicing: bool | None = None, **opts):
        mx = _mx()
        self.engine = engine
        self.ops = engine.ops  # the samplers' array ops (default step noise)
        self.handle = handle
        self.cond = cond
        self.uncond = uncond
        self.cfg = float(cfg)
        self.ms = model_schedule
        self.flow = handle.prediction == "flow"
        self.module = handle.transformer
        self.dtype = _module_dtype(self.module)
        policy = getattr(engine, "policy", None)
        self.slice = bool(policy.attention_slicing) if attention_slicing is None and policy is not None else bool(attention_slicing)
        self.use_cfg = uncond is not None and abs(self.cfg - 1.0) > 1e-6
        if handle.family == "dit" and uncond is None and abs(self.cfg - 1.0) > 1e-6:
            from ..base import Conditioning

            n = num_classes(handle)
            self.uncond = Conditioning(family="dit", prompts=[""], class_labels=[n] * len(cond.class_labels or [0]))
            self.use_cfg = True
        self.fill = None
        cfgd = handle.config or {}
        check_flux_channels(handle.family, cfgd.get("in_channels"))
        self._fill_args = (fill_image, fill_mask) if is_fill_model(handle) else None
        self.calls = 0
        self._pixart_extra = bool(getattr(self.module, "use_additional_conditions", False))
        self._guidance_embeds = bool(cfgd.get("guidance_embeds", False))
        self._timestep_scale = float(cfgd.get("timestep_scale", 1.0) or 1.0)
        gs = cfgd.get("guidance_embeds_scale", 0.1)
        self._guidance_scale = float(0.1 if gs is None else gs)  # SanaTransformer2DModel's default
        self._mx = mx
        if self._fill_args is not None and fill_image is not None:
            f = int(handle.vae_scale_factor or 8)
            img = np.asarray(fill_image)
            self._fill_cond(img.shape[-3] // f, img.shape[-2] // f)

    # ------------------------------------------------------------------
    def _timestep(self, sigma: float) -> float:
        return model_timestep(self.handle.family, self.flow, sigma, self.ms)

    def _fill_cond(self, h, w):
        mx = self._mx
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
        lat = vae_encode(self.engine, self.handle, masked).astype(mx.float32)
        m = mx.array(mask)
        b = max(lat.shape[0], m.shape[0])
        lat, m = _expand(lat, b), _expand(m, b)
        m = m.reshape(b, h, f, w, f).transpose(0, 2, 4, 1, 3).reshape(b, f * f, h, w)
        self.fill = mx.concatenate([_pack(lat), _pack(m)], axis=2)
        mx.eval(self.fill)
        return self.fill

    def _forward(self, x, t, cond):
        """Model output (eps, v or flow velocity) for input ``x`` [N,C,h,w] at model timesteps ``t`` [N]."""
        mx = self._mx
        fam = self.handle.family
        m = self.module
        b, c, h, w = x.shape
        if fam == "pixart":
            add = None
            if self._pixart_extra:
                f = self.handle.vae_scale_factor or 8
                add = {"resolution": mx.broadcast_to(mx.array([[h * f, w * f]], dtype=x.dtype), (b, 2)),
                       "aspect_ratio": mx.broadcast_to(mx.array([[h / w]], dtype=x.dtype), (b, 1))}
            out = m(x, encoder_hidden_states=cond["embeds"], encoder_attention_mask=cond.get("mask"), timestep=t,
                    added_cond_kwargs=add)
        elif fam == "dit":
            out = m(x, timestep=t, class_labels=cond["labels"])
        elif fam == "sd3":
            out = m(hidden_states=x, encoder_hidden_states=cond["embeds"], pooled_projections=cond["pooled"], timestep=t)
        elif fam == "sana":
            kw = {}
            if self._guidance_embeds:
                # as diffusers' SanaSprintPipeline: guidance (float32, in the embeds' dtype) times config.guidance_embeds_scale
                kw["guidance"] = mx.full((b,), float(self.cond.guidance or 4.5), dtype=mx.float32).astype(x.dtype) * self._guidance_scale
            out = m(x, encoder_hidden_states=cond["embeds"], encoder_attention_mask=cond.get("mask"),
                    timestep=t * self._timestep_scale, **kw)
        elif fam == "flux":
            hs = _pack(x)
            if self._fill_args is not None:
                fc = self._fill_cond(h, w)
                if fc.shape[0] != b:
                    fc = mx.concatenate([fc] * (b // fc.shape[0]), axis=0) if b % fc.shape[0] == 0 else mx.repeat(fc[:1], b, axis=0)
                hs = mx.concatenate([hs, fc.astype(hs.dtype)], axis=2)
            g = None
            if self._guidance_embeds:
                g = mx.full((b,), float(self.cond.guidance if self.cond.guidance is not None else 3.5), dtype=x.dtype)
            txt = cond["embeds"]
            out = m(hidden_states=hs, encoder_hidden_states=txt, pooled_projections=cond["pooled"], timestep=t, guidance=g,
                    img_ids=_flux_img_ids(h, w, x.dtype), txt_ids=mx.zeros((txt.shape[1], 3), dtype=x.dtype))
            out = _unpack(out, h, w)
        else:
            raise SpriteForgeError(BAD_INPUT, f"unknown family {fam!r}.")
        if out.shape[1] != c:  # learned sigma: the first C channels are the prediction
            out = out[:, :c]
        return out

    def _cond_arrays(self, cond, batch):
        mx = self._mx
        d = {}
        dt = self.dtype
        if cond.embeds is not None:
            d["embeds"] = _expand(_as_mx(cond.embeds), batch).astype(dt)
        if cond.mask is not None:
            d["mask"] = _expand(_as_mx(cond.mask), batch)
        if cond.pooled is not None:
            d["pooled"] = _expand(_as_mx(cond.pooled), batch).astype(dt)
        if cond.class_labels is not None:
            d["labels"] = _expand(mx.array([int(v) for v in cond.class_labels], dtype=mx.int32), batch)
        return d

    def _cat(self, a, b):
        mx = self._mx
        out = {}
        for k in a:
            x, y = a[k], b.get(k)
            if y is None:
                raise SpriteForgeError(BAD_INPUT, f"the negative conditioning lacks {k}: encode both prompts with the same model.")
            if x.ndim >= 2 and y.ndim >= 2 and x.shape[1] != y.shape[1] and k in ("embeds", "mask"):
                n = max(x.shape[1], y.shape[1])

                def pad(t):
                    widths = [(0, 0), (0, n - t.shape[1])] + [(0, 0)] * (t.ndim - 2)
                    return mx.pad(t, widths)

                x, y = pad(x), pad(y)
            out[k] = mx.concatenate([y, x.astype(y.dtype)], axis=0)  # uncond first
        return out

    def __call__(self, x, sigma, **_extra):
        mx = self._mx
        as_numpy = isinstance(x, np.ndarray)
        xt = mx.array(np.ascontiguousarray(x)) if as_numpy else x
        out_dtype = xt.dtype
        xt = xt.astype(mx.float32)
        sigma = float(sigma)
        b = xt.shape[0]
        self.calls += 1
        inp = model_input(xt, self.handle.prediction, sigma)
        t = self._timestep(sigma)
        tdt = self.dtype if self.flow else mx.float32
        c = self._cond_arrays(self.cond, b)
        if self.use_cfg:
            u = self._cond_arrays(self.uncond, b)
            allc = self._cat(c, u)
            xin = mx.concatenate([inp, inp], axis=0).astype(self.dtype)
            tt = mx.full((2 * b,), t, dtype=tdt)
            if self.slice:
                outs = [self._forward(xin[i:i + 1], tt[i:i + 1], {k: v[i:i + 1] for k, v in allc.items()}) for i in range(2 * b)]
                out = mx.concatenate(outs, axis=0)
            else:
                out = self._forward(xin, tt, allc)
            out = out.astype(mx.float32)
            ou, oc = out[:b], out[b:]
            pred = ou + (oc - ou) * self.cfg
        else:
            tt = mx.full((b,), t, dtype=tdt)
            pred = self._forward(inp.astype(self.dtype), tt, c).astype(mx.float32)
        x0 = to_x0(xt, pred, sigma, self.handle.prediction)
        mx.eval(x0)  # one graph per model call: memory stays flat over the steps
        if as_numpy:
            return np.array(x0).astype(x.dtype, copy=False)
        return x0.astype(out_dtype)


def make_denoiser(engine, handle, cond, uncond=None, *, cfg: float = 1.0, **opts):
    return MLXDenoiser(engine, handle, cond, uncond, cfg=cfg, **opts)


# --------------------------------------------------------------------------- VAE
def _need_vae(handle):
    if handle.vae is None:
        raise SpriteForgeError(MODEL_NOT_FOUND, f"the {handle.family} model has no VAE. Choose one in the loader's vae input (or --vae).")
    return handle.vae


@contextlib.contextmanager
def _circular(module, on: bool):
    from . import layers

    if not on or module is None:
        yield
        return
    layers.set_circular(module, True)
    try:
        yield
    finally:
        layers.set_circular(module, False)


def vae_encode(engine, handle, images):
    """VAE-scaled latents (mx float32, NCHW) for numpy images [B,H,W,3] in 0..1, one image at a time."""
    from ...progress import Progress

    mx = _mx()
    vae = _need_vae(handle)
    img = np.asarray(images, dtype=np.float32)
    if img.ndim == 3:
        img = img[None]
    if img.ndim != 4 or img.shape[-1] not in (3, 4):
        raise SpriteForgeError(BAD_INPUT, f"an image must be [B,H,W,3], got shape {tuple(img.shape)}.")
    img = img[..., :3]
    f = int(handle.vae_scale_factor or 8)
    if img.shape[1] % f or img.shape[2] % f:
        raise SpriteForgeError(BAD_INPUT, f"image size {img.shape[2]}x{img.shape[1]} is not a multiple of {f}: resize or crop it first.")
    force32 = bool((handle.extras or {}).get("vae_force_fp32"))
    outs = []
    with _as_dtype(vae, mx.float32 if force32 else None) as dt, Progress(img.shape[0], "VAE encode") as bar:
        for i in range(img.shape[0]):
            x = mx.array(np.ascontiguousarray(img[i:i + 1].transpose(0, 3, 1, 2))).astype(dt) * 2.0 - 1.0
            z = vae.encode(x).astype(mx.float32)
            mx.eval(z)
            outs.append(z)
            bar.update()  # also the interrupt point
    z = mx.concatenate(outs, axis=0)
    return (z - float(handle.shift_factor or 0.0)) * float(handle.scaling_factor or 1.0)


def vae_decode(engine, handle, latents):
    """Numpy float32 images [B,H,W,3] in 0..1 for VAE-scaled latents (mx or numpy), one image at a time."""
    from ...progress import Progress

    mx = _mx()
    vae = _need_vae(handle)
    z = _as_mx(latents)
    if z.ndim != 4:
        raise SpriteForgeError(BAD_INPUT, f"a latent must be [B,C,h,w], got shape {tuple(z.shape)}.")
    lc = int(handle.latent_channels or z.shape[1])
    if z.shape[1] != lc:
        raise SpriteForgeError(BAD_INPUT, f"the latent has {z.shape[1]} channels but the {handle.family} VAE takes {lc}: "
                               "decode it with the model it was made with.")
    extras = handle.extras or {}
    force32 = bool(extras.get("vae_force_fp32"))
    seamless = bool(extras.get("vae_seamless"))
    outs = []
    target = vae["decoder"] if "decoder" in vae else vae
    with _as_dtype(vae, mx.float32 if force32 else None) as dt, _circular(target, seamless), \
            Progress(z.shape[0], "VAE decode") as bar:
        z = z.astype(mx.float32) / float(handle.scaling_factor or 1.0) + float(handle.shift_factor or 0.0)
        for i in range(z.shape[0]):
            dec = vae.decode(z[i:i + 1].astype(dt)).astype(mx.float32)
            dec = mx.clip(dec / 2.0 + 0.5, 0.0, 1.0).transpose(0, 2, 3, 1)
            mx.eval(dec)
            outs.append(np.array(dec))
            bar.update()  # also the interrupt point
    return np.concatenate(outs, axis=0).astype(np.float32)


__all__ = ["encode_text", "make_denoiser", "vae_encode", "vae_decode", "MLXDenoiser", "is_fill_model"]
