"""Generation with torch models: text encoding, the denoiser wrapper, VAE encode/decode.

The sampling loop is not here: it is :mod:`spriteforge.samplers`, driven by
:mod:`spriteforge.pipeline`. This module turns a family's torch modules (diffusers
transformers, transformers text encoders, diffusers VAEs) into

* :func:`encode_text` -> :class:`spriteforge.engines.base.Conditioning`;
* :func:`make_denoiser` -> ``model(x, sigma) -> x0`` in the samplers' convention
  (k-diffusion VE space for eps/v models, x_t = (1-t) x0 + t n for flow models), with
  classifier-free guidance as one batched cond/uncond call;
* :func:`vae_encode` / :func:`vae_decode`: numpy images <-> VAE-scaled latents
  (``(z - shift) * scale``), with the device policy's tiling/slicing, seamless
  (circular) padding and a forced-fp32 mode used by the pipeline's NaN/black retry.

Text encoders and tokenizers are looked up in ``handle.text_encoders`` /
``handle.tokenizers`` by role (``t5``, ``clip_l``, ``clip_g``, ``gemma``) or by the
diffusers component name (``text_encoder``, ``text_encoder_2``, ``text_encoder_3``).
"""

from __future__ import annotations

import contextlib
import weakref

import numpy as np

from ...errors import MODEL_NOT_FOUND, SpriteForgeError
from ...log import get_logger
from ...models.families.sana import SANA_CHI
from ...oom import empty_device_cache, run_in_chunks
from ...progress import Progress
from ..denoiser import Denoiser
from ..model_inputs import check_latents, is_fill_model, vae_images
from ..text_encoding import TextEncoding, text_encoder
from .interrupt import before_each, block_steps, blocks, conv_count, conv_steps, kl_tiles
from .text_encoders import decoder_hidden_states

log = get_logger("torch")

def _torch():
    import torch

    return torch


def _module_device_dtype(module, fallback_device=None):
    torch = _torch()
    try:
        p = next(module.parameters())
        return p.device, p.dtype
    except (StopIteration, AttributeError):
        return fallback_device or torch.device("cpu"), torch.float32


# --------------------------------------------------------------------------- ComfyUI memory manager
_PATCHERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _holder(module):
    """A plain container for a diffusers/transformers module: ModelPatcher sets ``.device`` on the model it
    manages, which those classes expose as a read-only property."""
    import torch

    class SpriteForgeModule(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.device, self.dtype = _module_device_dtype(inner)

    return SpriteForgeModule(module)


def comfy_load(modules) -> None:
    """Inside ComfyUI, wrap torch modules in ModelPatchers and let the memory manager load them (before use)."""
    try:
        import comfy.model_management as mm  # type: ignore
        import comfy.model_patcher as mp  # type: ignore
    except Exception:
        return
    patchers = []
    for m in modules:
        if m is None:
            continue
        try:
            p = _PATCHERS.get(m)
            if p is None:
                p = mp.ModelPatcher(_holder(m), load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())
                _PATCHERS[m] = p
            patchers.append(p)
        except Exception as exc:  # pragma: no cover - only inside ComfyUI
            log.warning("could not wrap %s for ComfyUI's memory manager: %s", type(m).__name__, exc)
    if patchers:
        try:
            mm.load_models_gpu(patchers)
        except Exception as exc:  # pragma: no cover - only inside ComfyUI
            log.warning("ComfyUI's memory manager could not load the models: %s", exc)


# --------------------------------------------------------------------------- text
def _tokenize(tok, prompts, max_length):
    return tok(list(prompts), padding="max_length", max_length=int(max_length), truncation=True,
               add_special_tokens=True, return_tensors="pt")


def _hidden(out):
    return out[0] if isinstance(out, (tuple, list)) else out.last_hidden_state


class TorchTextEncoding(TextEncoding):
    """Prompt encoding with torch text encoders (the family logic is :class:`~spriteforge.engines.text_encoding.TextEncoding`)."""

    engine_name = "torch"

    @contextlib.contextmanager
    def _context(self):
        torch = _torch()
        encoders = [m for m in (self.handle.text_encoders or {}).values() if m is not None]
        with torch.no_grad(), contextlib.ExitStack() as stack:
            comfy_load(encoders)
            for m in encoders:  # Cancel is checked before every encoder layer
                stack.enter_context(block_steps(m))
            yield

    def _t5(self, prompts, max_length, required=True):
        enc, tok = text_encoder(self.handle, "t5", required=required)
        if enc is None:
            return None, None
        torch = _torch()
        dev, _ = _module_device_dtype(enc)
        ti = _tokenize(tok, prompts, max_length)
        mask = ti["attention_mask"].to(dev)
        emb = _hidden(enc(ti["input_ids"].to(dev), attention_mask=mask))
        if not torch.isfinite(emb).all():
            # T5 overflows in fp16 on some inputs: run it again in fp32 (restored afterwards)
            log.warning("the T5 text encoder gave NaN/inf in %s: encoding again in float32", _module_device_dtype(enc)[1])
            with _vae_dtype(enc, torch.float32):
                emb = _hidden(enc(ti["input_ids"].to(dev), attention_mask=mask))
        return emb.to(torch.float32), mask

    def _clip(self, role, prompts):
        enc, tok = text_encoder(self.handle, role)
        torch = _torch()
        dev, _ = _module_device_dtype(enc)
        ml = min(int(getattr(tok, "model_max_length", 77) or 77), 77)
        ti = _tokenize(tok, prompts, ml)
        out = enc(ti["input_ids"].to(dev), output_hidden_states=True)
        hidden = out.hidden_states[-2]
        pooled = getattr(out, "text_embeds", None)
        if pooled is None:
            pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            pooled = out[0] if out[0].ndim == 2 else out[0][:, -1]
        return hidden.to(torch.float32), pooled.to(torch.float32)

    def _gemma(self, enc, tok, texts, total, keep):
        torch = _torch()
        dev, _ = _module_device_dtype(enc)
        ti = _tokenize(tok, texts, total)
        mask = ti["attention_mask"].to(dev)
        emb = _hidden(enc(ti["input_ids"].to(dev), attention_mask=mask)).to(torch.float32)
        if keep is not None:
            emb, mask = emb[:, keep], mask[:, keep]
        return emb, mask

    def _decoder(self, enc, ids, mask, layers, prenorm=False):
        torch = _torch()
        dev, dt = _module_device_dtype(enc)
        ids, mask = torch.from_numpy(ids).to(dev), torch.from_numpy(mask).to(dev)
        states = decoder_hidden_states(enc, ids, mask, layers, prenorm)
        if not all(torch.isfinite(h).all() for h in states):  # fp16 overflow, as T5's: again in fp32 (restored after)
            log.warning("the text encoder gave NaN/inf in %s: encoding again in float32", dt)
            with _vae_dtype(enc, torch.float32):
                states = decoder_hidden_states(enc, ids, mask, layers, prenorm)
        return [h.to(torch.float32) for h in states], mask

    def _vision_config(self, enc):
        from .qwen_vision import vision_config

        return vision_config(enc)

    def _vision(self, enc, patches, grids):
        from .qwen_vision import vision_features

        return vision_features(enc, patches, grids)

    def _decoder_images(self, enc, ids, mask, positions, feats, image_token, layers):
        from .qwen_vision import decoder_with_images

        torch = _torch()
        dev, _ = _module_device_dtype(enc)
        ids, mask = torch.from_numpy(ids).to(dev), torch.from_numpy(mask).to(dev)
        states = decoder_with_images(enc, ids, mask, torch.from_numpy(positions).to(dev), feats, image_token, layers)
        return [h.to(torch.float32) for h in states], mask

    def _pad_last(self, x, n):
        return _torch().nn.functional.pad(x, (0, n - x.shape[-1]))

    def _like(self, x, ref):
        return x.to(ref.device)


def encode_text(engine, handle, prompts, **options):
    """Conditioning for ``prompts`` (a list of strings) with the family's text encoders (see :meth:`TextEncoding.encode`)."""
    return TorchTextEncoding(engine, handle).encode(prompts, **options)


# --------------------------------------------------------------------------- denoiser
class TorchDenoiser(Denoiser):
    """``model(x, sigma) -> x0`` on a torch transformer (the shared logic is :class:`~spriteforge.engines.denoiser.Denoiser`).

    ``x`` may be a torch tensor (any device) or a numpy array; the result has the same type.
    """

    def _setup(self):
        torch = _torch()
        self._torch = torch
        self.F32 = torch.float32
        comfy_load([self.module])  # inside ComfyUI: onto the GPU before its device is read
        self._blocks = blocks(self.module)  # found once a run; Cancel is checked before each of them every step
        self.device, self.dtype = _module_device_dtype(self.module, getattr(self.engine, "torch_device", None))
        compute = getattr(torch, self.handle.dtype) if self.handle.dtype else None
        if self.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):  # fp8 storage: compute in the dtype it is upcast to
            self.dtype = compute or torch.float32
        elif compute is not None and self.dtype.itemsize < compute.itemsize:  # bf16 kept on a CPU: upcast per layer
            self.dtype = compute

    def _model_config(self):
        cfg = getattr(self.module, "config", None)
        return dict(cfg) if cfg is not None else {}

    def _fill_cond(self, h, w):
        fresh = self.fill is None
        fill = super()._fill_cond(h, w)
        if fresh:
            comfy_load([self.module])  # the VAE ran: back onto the GPU inside ComfyUI
        return fill

    def _run(self, **kw):
        with before_each(self._blocks):  # Cancel is checked before every transformer block
            return self.module(return_dict=False, **kw)[0]

    def _work(self, x):
        torch = self._torch
        as_numpy = isinstance(x, np.ndarray)
        xt = torch.from_numpy(np.ascontiguousarray(x)) if as_numpy else x
        out_device, out_dtype = xt.device, xt.dtype

        def back(x0):
            return x0.cpu().numpy().astype(x.dtype, copy=False) if as_numpy else x0.to(out_device, out_dtype)

        return xt.to(self.device, torch.float32), back

    def _no_grad(self):
        return self._torch.no_grad()

    def _place(self, a, dtype=None):
        t = a if self._torch.is_tensor(a) else self._torch.from_numpy(np.ascontiguousarray(a))
        return t.to(self.device, dtype) if dtype is not None else t.to(self.device)

    def _labels(self, values):
        return self._torch.tensor(values, dtype=self._torch.long, device=self.device)

    def _rows(self, rows, dtype):
        return self._torch.tensor(rows, device=self.device, dtype=dtype)

    def _full(self, n, value, dtype):
        return self._torch.full((n,), value, device=self.device, dtype=dtype)

    def _zeros(self, shape, dtype):
        return self._torch.zeros(shape, device=self.device, dtype=dtype)

    def _cast(self, x, dtype):
        return x.to(dtype)

    def _permute(self, x, axes):
        return x.permute(*axes)

    def _repeat_rows(self, t, k):
        return t.repeat_interleave(k, dim=0)

    def _pad_seq(self, t, n):
        return self._torch.nn.functional.pad(t, ((0, 0) if t.ndim == 3 else ()) + (0, n - t.shape[1]))

    def _cat_rows(self, first, second):
        return self._torch.cat([first, second], dim=0)


def make_denoiser(engine, handle, cond, uncond=None, *, cfg: float = 1.0, **opts):
    return TorchDenoiser(engine, handle, cond, uncond, cfg=cfg, **opts)


# --------------------------------------------------------------------------- VAE
@contextlib.contextmanager
def circular(module, on: bool):
    """Temporarily make every padded Conv2d (and Conv3d: the Qwen-Image VAE's) of ``module`` pad circularly (seamless tiling)."""
    torch = _torch()
    changed = []
    if on and module is not None:
        for m in module.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)) and m.padding_mode != "circular" and any(p > 0 for p in _pads(m)):
                changed.append((m, m.padding_mode))
                m.padding_mode = "circular"
    try:
        yield
    finally:
        for m, mode in changed:
            m.padding_mode = mode


def _pads(conv):
    p = conv.padding
    if isinstance(p, str):
        return (1,) if p == "same" else (0,)
    return tuple(p)


@contextlib.contextmanager
def _vae_dtype(vae, dtype):
    """Temporarily cast the VAE (the fp32 retry); restores the original dtype even on errors."""
    _, orig = _module_device_dtype(vae)
    if dtype is None or orig == dtype:
        yield orig
        return
    vae.to(dtype)
    try:
        yield dtype
    finally:
        vae.to(orig)


def _need_vae(handle):
    if handle.vae is None:
        raise SpriteForgeError(MODEL_NOT_FOUND, f"the {handle.family} model has no VAE. Choose one in the loader's vae input (or --vae).")
    return handle.vae


def vae_encode(engine, handle, images):
    """VAE-scaled latents (torch float32 on the VAE's device) for numpy images [B,H,W,3] in 0..1."""
    torch = _torch()
    vae = _need_vae(handle)
    img = vae_images(handle, images)
    comfy_load([vae])
    force32 = bool((handle.extras or {}).get("vae_force_fp32"))
    with torch.no_grad(), _vae_dtype(vae, torch.float32 if force32 else None) as dt:
        dev, _ = _module_device_dtype(vae)
        x = torch.from_numpy(np.ascontiguousarray(img.transpose(0, 3, 1, 2))).to(dev, dt) * 2.0 - 1.0
        policy = getattr(engine, "policy", None)
        slicing = bool(policy and policy.vae_slicing) and x.shape[0] > 1
        chunks = x.split(1) if slicing else [x]
        outs = []
        # Progress (and the interrupt point) before every conv of the encoder: Cancel stops within one layer.
        enc_mod = getattr(vae, "encoder", vae)
        with Progress(len(chunks) * conv_count(enc_mod), "VAE encode") as bar, conv_steps(enc_mod, bar.update):
            def _encode(a, b):  # out of memory: the chunk is halved and retried (spriteforge.oom)
                enc = vae.encode(x[a:b])
                if hasattr(enc, "latent_dist"):
                    z = enc.latent_dist.mode()
                elif hasattr(enc, "latent"):
                    z = enc.latent
                else:
                    z = enc[0]
                    z = z.mode() if hasattr(z, "mode") else z
                return z.float()

            outs = run_in_chunks(_encode, x.shape[0], 1 if slicing else x.shape[0], what="VAE encode",
                                 on_oom=empty_device_cache)
        z = torch.cat(outs, 0)
    return (z - float(handle.shift_factor or 0.0)) * float(handle.scaling_factor or 1.0)


def vae_decode(engine, handle, latents):
    """Numpy float32 images [B,H,W,3] in 0..1 for VAE-scaled latents (torch or numpy)."""
    torch = _torch()
    vae = _need_vae(handle)
    z = latents
    if isinstance(z, np.ndarray):
        z = torch.from_numpy(np.ascontiguousarray(z))
    check_latents(handle, z)
    comfy_load([vae])
    extras = handle.extras or {}
    force32 = bool(extras.get("vae_force_fp32"))
    seamless = bool(extras.get("vae_seamless"))
    policy = getattr(engine, "policy", None)
    with torch.no_grad(), _vae_dtype(vae, torch.float32 if force32 else None) as dt, circular(getattr(vae, "decoder", vae), seamless):
        dev, _ = _module_device_dtype(vae)
        z = z.to(dev, torch.float32) / float(handle.scaling_factor or 1.0) + float(handle.shift_factor or 0.0)
        z = z.to(dt)
        f = int(handle.vae_scale_factor or 8)
        big = z.shape[-1] * z.shape[-2] * f * f > 1024 * 1024
        tiling = bool(policy and policy.vae_tiling) and big and not seamless and hasattr(vae, "tiled_decode")
        slicing = bool(policy and policy.vae_slicing) and z.shape[0] > 1
        outs = []
        chunks = z.split(1) if slicing else [z]
        # Progress (and the interrupt point) before every conv of the decoder (per tile when tiled).
        dec_mod = getattr(vae, "decoder", vae)
        steps = conv_count(dec_mod) * (kl_tiles(vae, z.shape[-2:]) if tiling else 1)
        with Progress(len(chunks) * steps, "VAE decode") as bar, conv_steps(dec_mod, bar.update):
            def _decode(a, b):  # out of memory: the chunk is halved and retried (spriteforge.oom)
                ch = z[a:b]
                dec = vae.tiled_decode(ch, return_dict=False)[0] if tiling else vae.decode(ch, return_dict=False)[0]
                return dec.float()

            outs = run_in_chunks(_decode, z.shape[0], 1 if slicing else z.shape[0], what="VAE decode",
                                 on_oom=empty_device_cache)
        x = torch.cat(outs, 0)
    x = (x / 2.0 + 0.5).clamp(0.0, 1.0)
    return x.permute(0, 2, 3, 1).cpu().numpy().astype(np.float32)


__all__ = ["encode_text", "make_denoiser", "vae_encode", "vae_decode", "TorchDenoiser", "comfy_load", "is_fill_model", "SANA_CHI"]
