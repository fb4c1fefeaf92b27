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

from ...errors import MODEL_NOT_FOUND, SpriteForgeError
from ...log import get_logger
from ..denoiser import Denoiser
from ..model_inputs import check_latents, is_fill_model, vae_images
from ..text_encoding import TextEncoding, text_encoder

log = get_logger("mlx")


def _mx():
    import mlx.core as mx

    return mx


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


class MLXTextEncoding(TextEncoding):
    """Prompt encoding with the MLX text encoder ports (the family logic is :class:`~spriteforge.engines.text_encoding.TextEncoding`)."""

    engine_name = "MLX"

    def _t5(self, prompts, max_length, required=True):
        mx = _mx()
        enc, tok = text_encoder(self.handle, "t5", required=required)
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

    def _clip(self, role, prompts):
        mx = _mx()
        enc, tok = text_encoder(self.handle, role)
        ml = min(int(getattr(tok, "model_max_length", 77) or 77), 77)
        ids, _ = _tokenize(tok, prompts, ml)
        hidden, pooled = enc(ids)
        return hidden[-2].astype(mx.float32), pooled.astype(mx.float32)

    def _gemma(self, enc, tok, texts, total, keep):
        mx = _mx()
        ids, mask = _tokenize(tok, texts, total)
        emb = _hidden(enc(ids, attention_mask=mask)).astype(mx.float32)
        if keep is not None:
            sel = mx.array(keep)
            emb, mask = emb[:, sel], mask[:, sel]
        return emb, mask

    def _decoder(self, enc, ids, mask, layers, prenorm=False):
        mx = _mx()
        ids, mask = mx.array(ids.astype(np.int32)), mx.array(mask.astype(np.int32))
        kw = {"prenorm": True} if prenorm else {}
        states = enc(ids, attention_mask=mask, layers=layers, **kw)
        if not all(bool(mx.all(mx.isfinite(h)).item()) for h in states):  # fp16 overflow, as T5's: again in fp32
            log.warning("the text encoder gave NaN/inf in %s: encoding again in float32", _module_dtype(enc))
            with _as_dtype(enc, mx.float32):
                states = enc(ids, attention_mask=mask, layers=layers, **kw)
                mx.eval(states)
        return [h.astype(mx.float32) for h in states], mask

    def _vision_tower(self, enc):
        tower = getattr(enc, "_sf_visual", None)
        if tower is None:
            raise SpriteForgeError(MODEL_NOT_FOUND, "the Qwen2.5-VL text encoder was loaded without its vision tower (no "
                                   "visual.* tensors), which reads the reference images. Load the full qwen_2.5_vl_7b.safetensors.")
        return tower

    def _vision_config(self, enc):
        from dataclasses import asdict

        return asdict(self._vision_tower(enc).config)

    def _vision(self, enc, patches, grids):
        return self._vision_tower(enc)(patches, grids)

    def _decoder_images(self, enc, ids, mask, positions, feats, image_token, layers):
        mx = _mx()
        emb = enc.embed_tokens(mx.array(ids.astype(np.int32)))
        sel = np.flatnonzero((ids == image_token).ravel())
        b, n, d = emb.shape
        flat = emb.reshape(b * n, d)
        flat[mx.array(sel)] = mx.tile(feats.astype(emb.dtype), (b, 1))
        mask = mx.array(mask.astype(np.int32))
        states = enc(None, attention_mask=mask, layers=layers, inputs_embeds=flat.reshape(b, n, d), positions=positions)
        mx.eval(states)
        return [h.astype(mx.float32) for h in states], mask

    def _pad_last(self, x, n):
        return _mx().pad(x, [(0, 0)] * (x.ndim - 1) + [(0, n - x.shape[-1])])

    def _done(self, cond):
        _mx().eval([a for a in (cond.embeds, cond.mask, cond.pooled) if a is not None])
        return cond


def encode_text(engine, handle, prompts, **options):
    """Conditioning for ``prompts`` with the family's text encoders, as mx arrays (see :meth:`TextEncoding.encode`)."""
    return MLXTextEncoding(engine, handle).encode(prompts, **options)


# --------------------------------------------------------------------------- denoiser
def _as_mx(a):
    mx = _mx()
    if a is None or isinstance(a, mx.array):
        return a
    if hasattr(a, "detach"):  # a torch tensor from a conditioning made elsewhere
        a = a.detach().float().cpu().numpy()
    return mx.array(np.asarray(a))


class MLXDenoiser(Denoiser):
    """``model(x, sigma) -> x0`` on an MLX transformer (the shared logic is :class:`~spriteforge.engines.denoiser.Denoiser`).

    ``x`` may be an mx array or a numpy array; the result has the same type.
    """

    def _setup(self):
        mx = _mx()
        self._mx = mx
        self.F32 = mx.float32
        self.dtype = _module_dtype(self.module)

    def _model_config(self):
        return dict(self.handle.config or {})

    def _run(self, **kw):
        return self.module(**kw)

    def _work(self, x):
        mx = self._mx
        as_numpy = isinstance(x, np.ndarray)
        xt = mx.array(np.ascontiguousarray(x)) if as_numpy else x
        out_dtype = xt.dtype

        def back(x0):
            mx.eval(x0)  # one graph per model call: memory stays flat over the steps
            return np.array(x0).astype(x.dtype, copy=False) if as_numpy else x0.astype(out_dtype)

        return xt.astype(mx.float32), back

    def _no_grad(self):
        return contextlib.nullcontext()

    def _place(self, a, dtype=None):
        a = _as_mx(a)
        return a.astype(dtype) if dtype is not None else a

    def _labels(self, values):
        return self._mx.array(values, dtype=self._mx.int32)

    def _rows(self, rows, dtype):
        return self._mx.array(rows, dtype=dtype)

    def _full(self, n, value, dtype):
        return self._mx.full((n,), value, dtype=dtype)

    def _zeros(self, shape, dtype):
        return self._mx.zeros(shape, dtype=dtype)

    def _cast(self, x, dtype):
        return x.astype(dtype)

    def _permute(self, x, axes):
        return x.transpose(*axes)

    def _repeat_rows(self, t, k):
        return self._mx.repeat(t, k, axis=0)

    def _pad_seq(self, t, n):
        return self._mx.pad(t, [(0, 0), (0, n - t.shape[1])] + [(0, 0)] * (t.ndim - 2))

    def _cat_rows(self, first, second):
        return self._mx.concatenate([first, second.astype(first.dtype)], axis=0)

    def _done(self, x):
        self._mx.eval(x)
        return x


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
    img = vae_images(handle, images)
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
    check_latents(handle, z)
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
