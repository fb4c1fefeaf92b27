"""Generation nodes: encode prompts, sample, VAE encode/decode. Thin adapters over :mod:`spriteforge.pipeline`.

Types: ``SF_MODEL`` (a model handle from SpriteForge Load Model), ``SF_CONDITIONING`` (a
:class:`spriteforge.engines.base.Conditioning` with its negative), ComfyUI's IMAGE
(float32 ``[B,H,W,3]`` 0..1), MASK (``[B,H,W]``, 1 = repaint, as LoadImage gives for
transparent pixels) and LATENT (``{"samples": [B,C,h,w]}``: the VAE-scaled latent, as ComfyUI
stores it, plus ``sf_family`` so decoding checks the model, and the source image/mask of an
inpaint run so decoding can composite it).
"""

from __future__ import annotations

import numpy as np

from ..errors import BAD_INPUT, SpriteForgeError
from ..log import get_logger
from ..models.families import registry
from ._compat import IN_COMFYUI, io
from .validation import ValidatedNode
from .comfy_types import image_in, latent_out, latent_samples, mask_in, to_numpy, to_tensor
from .loaders import CATEGORY, ModelType

log = get_logger("nodes")

ConditioningType = io.Custom("SF_CONDITIONING")
MAX_SEED = 0xFFFFFFFFFFFFFFFF


def _sampler_names() -> list[str]:
    try:
        from ..samplers import SAMPLERS

        return list(SAMPLERS)
    except Exception:  # pragma: no cover - samplers missing
        return ["euler"]


def _schedule_names() -> list[str]:
    try:
        from ..samplers import SCHEDULES

        return list(SCHEDULES)
    except Exception:  # pragma: no cover
        return ["normal"]


def _check_model(model):
    if model is None or not hasattr(model, "family") or not hasattr(model, "engine"):
        raise SpriteForgeError(BAD_INPUT, "the model input is not a SpriteForge model: connect SpriteForge Load Model.")
    return model


def latent_in(latent, handle) -> np.ndarray:
    lat = latent_samples(latent)
    fam = latent.get("sf_family")
    if lat.ndim != 4:
        raise SpriteForgeError(BAD_INPUT, f"the latent has shape {tuple(lat.shape)}; expected [B,C,h,w].")
    if fam is not None and fam != handle.family:
        raise SpriteForgeError(BAD_INPUT, f"this latent was made by a {fam} model but the model is {handle.family}: "
                               "decode it with the model that made it.")
    return lat


# --------------------------------------------------------------------------- nodes
class EncodePrompt(ValidatedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SpriteForgeEncodePrompt",
            display_name="SpriteForge Encode Prompt",
            category=CATEGORY,
            description="Encodes the positive and negative prompts with the model's own text encoders (T5 for PixArt; "
            "CLIP-L + CLIP-G + T5 for SD3; CLIP-L + T5 for Flux; Gemma-2 for Sana; Qwen2.5-VL for Qwen-Image). DiT takes an ImageNet class "
            "number (or name) as the prompt. Flux's distilled guidance is set here.",
            inputs=[
                ModelType.Input("model", tooltip="The model from SpriteForge Load Model."),
                io.String.Input("positive", multiline=True, default="",
                                tooltip="What to draw. For DiT: a class number 0-999 (or its ImageNet name)."),
                io.String.Input("negative", multiline=True, default="", optional=True,
                                tooltip="What to avoid (used with cfg > 1; DiT uses its null class instead)."),
                io.Float.Input("guidance", default=3.5, min=0.0, max=30.0, step=0.1, optional=True,
                               tooltip="Flux dev's distilled guidance (ignored by other families and by Flux schnell)."),
                io.Boolean.Input("sana_instruction", default=False, optional=True,
                                 tooltip="Sana only: prepend Sana's complex human instruction to the prompt."),
            ],
            outputs=[ConditioningType.Output(display_name="conditioning",
                                             tooltip="Positive and negative conditioning for SpriteForge Sampler.")],
        )

    @classmethod
    def execute(cls, model, positive, negative="", guidance=3.5, sana_instruction=False):
        from ..pipeline import encode

        h = _check_model(model)
        uses = sana_instruction and "sana_instruction" in registry.rules(h.family).widgets_only  # the family declares it
        opts = {"complex_human_instruction": True} if uses else {}
        cond = encode(h.engine, h, str(positive or ""), str(negative or ""), guidance=float(guidance), **opts)
        return io.NodeOutput(cond)


class Sampler(ValidatedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SpriteForgeSampler",
            display_name="SpriteForge Sampler",
            category=CATEGORY,
            description="Samples a latent with SpriteForge's samplers: txt2img at width x height (or an input latent's size), "
            "img2img from a VAE-encoded image with denoise < 1, inpainting with a mask (1 = repaint; Flux Fill models "
            "inpaint natively), and seamless tiles. The same seed gives the same image at any batch size.",
            inputs=[
                ModelType.Input("model", tooltip="The model from SpriteForge Load Model."),
                ConditioningType.Input("conditioning", tooltip="The prompts from SpriteForge Encode Prompt."),
                io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=True,
                             tooltip="Noise seed; batch item i uses seed + i."),
                io.Int.Input("steps", default=20, min=1, max=1000, tooltip="Sampling steps (Flux schnell: 4)."),
                io.Combo.Input("sampler", options=_sampler_names(), default="euler", tooltip="The sampling method."),
                io.Combo.Input("schedule", options=_schedule_names(), default="normal", tooltip="How the noise levels are spaced."),
                io.Float.Input("cfg", default=0.0, min=0.0, max=30.0, step=0.1,
                               tooltip="Classifier-free guidance scale; 0 = the family's default (PixArt 4.5, SD3 5, Flux 1 = "
                               "no CFG (use guidance in Encode Prompt), Sana 4.5, DiT 4, Z-Image-Turbo 1 = no CFG, Qwen-Image 4)."),
                io.Float.Input("shift", default=0.0, min=0.0, max=20.0, step=0.05,
                               tooltip="Flow shift for SD3/Sana/Flux/Z-Image/FLUX.2/Qwen-Image; 0 = the family's default (SD3/Sana/Z-Image 3.0, Flux, FLUX.2 and Qwen-Image by resolution). "
                               "Ignored by PixArt and DiT."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="1 = a new image; below 1 keeps that much of the input latent (img2img)."),
                io.Int.Input("batch_size", default=1, min=1, max=64, tooltip="Images per run (ignored when a latent gives the batch)."),
                io.Int.Input("width", default=512, min=16, max=8192, step=16, tooltip="Image width in pixels when no latent is connected."),
                io.Int.Input("height", default=512, min=16, max=8192, step=16, tooltip="Image height in pixels when no latent is connected."),
                io.Latent.Input("latent", optional=True,
                                tooltip="Optional start latent: from SpriteForge VAE Encode for img2img/inpainting, or any "
                                "latent for its size."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional inpainting mask, 1 = repaint (LoadImage's mask of transparent pixels works)."),
                io.Int.Input("mask_feather", default=8, min=0, max=256, optional=True,
                             tooltip="Soft edge of the mask in pixels."),
                io.Boolean.Input("tile", default=False, optional=True,
                                 tooltip="Seamless tile: the image wraps around on both axes (for tilesets)."),
                io.Int.Input("max_side", default=2048, min=64, max=8192, optional=True,
                             tooltip="The largest width/height allowed (a guard against out-of-memory)."),
                io.Float.Input("cfg_rescale", default=0.0, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="CFG-rescale phi (Lin et al. 2023) against over-saturation at high cfg; 0 = off."),
                io.Float.Input("dynamic_threshold", default=0.0, min=0.0, max=1.0, step=0.001, optional=True,
                               tooltip="Imagen's dynamic thresholding of the denoised latent: the percentile of |x0| "
                               "(e.g. 0.995) to clamp and rescale by; 0 = off."),
            ],
            outputs=[io.Latent.Output(display_name="latent", tooltip="The sampled latent, for SpriteForge VAE Decode.")],
        )

    @classmethod
    def execute(cls, model, conditioning, seed=0, steps=20, sampler="euler", schedule="normal", cfg=0.0, shift=0.0,
                denoise=1.0, batch_size=1, width=512, height=512, latent=None, mask=None, mask_feather=8, tile=False,
                max_side=2048, cfg_rescale=0.0, dynamic_threshold=0.0):
        from ..pipeline import GenerateParams, sample

        h = _check_model(model)
        init_lat = init_img = None
        noise_mask = None
        if latent is not None:
            init_lat = latent_samples(latent)
            fam = latent.get("sf_family")
            if fam is not None and fam != h.family and (denoise < 1.0 or mask is not None):
                raise SpriteForgeError(BAD_INPUT, f"this latent was made by a {fam} model but the model is {h.family}.")
            init_img = latent.get("sf_image")
            noise_mask = latent.get("noise_mask")
        m = mask_in(mask if mask is not None else noise_mask)
        if m is not None and init_lat is None:
            raise SpriteForgeError(BAD_INPUT, "a mask needs the image to inpaint: connect SpriteForge VAE Encode's latent.")
        params = GenerateParams(
            seed=int(seed), steps=int(steps), sampler=sampler, schedule=schedule, cfg=float(cfg) or None,
            shift=float(shift) or None, denoise=float(denoise), batch_size=int(batch_size), width=int(width),
            height=int(height), init_latent=init_lat, init_image=init_img, mask=m, mask_feather=int(mask_feather),
            tile=bool(tile), max_side=int(max_side), cond=conditioning, preview=IN_COMFYUI,
            cfg_rescale=float(cfg_rescale or 0.0), dynamic_threshold=float(dynamic_threshold or 0.0),
        )
        res = sample(h.engine, h, params)
        for note in res.notes:
            log.info("%s", note)
        extra = {"sf_tile": bool(tile)}
        if m is not None and init_img is not None:
            extra["sf_inpaint"] = {"image": to_numpy(init_img), "mask": m, "feather": int(mask_feather)}
        return io.NodeOutput(latent_out(res.latents, h.family, **extra))


class VAEEncode(ValidatedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SpriteForgeVAEEncode",
            display_name="SpriteForge VAE Encode",
            category=CATEGORY,
            description="Encodes an IMAGE (e.g. from LoadImage) with the model's VAE into a LATENT for img2img or inpainting. "
            "Sizes are rounded to the model's latent grid.",
            inputs=[
                ModelType.Input("model", tooltip="The model whose VAE encodes the image."),
                io.Image.Input("image", tooltip="The source image [B,H,W,3], 0..1."),
                io.Int.Input("max_side", default=2048, min=64, max=8192, optional=True,
                             tooltip="The largest width/height allowed."),
            ],
            outputs=[io.Latent.Output(display_name="latent", tooltip="The VAE-scaled latent (with the source image kept for inpainting).")],
        )

    @classmethod
    def execute(cls, model, image, max_side=2048):
        from ..generation.masks import resize as _resize
        from ..pipeline import prepare_size

        h = _check_model(model)
        img = image_in(image)
        notes: list = []
        w, hh = prepare_size(h, img.shape[2], img.shape[1], max_side=int(max_side), engine=h.engine, notes=notes)
        img = _resize(img, w, hh)
        for n in notes:
            log.info("%s", n)
        lat = h.engine.to_numpy(h.engine.vae_encode(h, img))
        return io.NodeOutput(latent_out(np.asarray(lat, np.float32), h.family, sf_image=img))


class VAEDecode(ValidatedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SpriteForgeVAEDecode",
            display_name="SpriteForge VAE Decode",
            category=CATEGORY,
            description="Decodes a SpriteForge LATENT with the model's VAE into an IMAGE. NaN or black results are retried "
            "with the VAE in float32; tiled latents decode seamlessly; inpainting results keep the source outside the mask.",
            inputs=[
                ModelType.Input("model", tooltip="The model whose VAE decodes (the one that made the latent)."),
                io.Latent.Input("latent", tooltip="The latent from SpriteForge Sampler or VAE Encode."),
                io.Boolean.Input("tile", default=False, optional=True,
                                 tooltip="Decode with circular padding (seamless); on automatically for tiled sampler runs."),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="The decoded images [B,H,W,3], 0..1.")],
        )

    @classmethod
    def execute(cls, model, latent, tile=False):
        from ..generation.masks import composite_inpaint
        from ..pipeline import decode

        h = _check_model(model)
        lat = latent_in(latent, h)
        if lat.shape[1] != int(h.latent_channels):
            raise SpriteForgeError(BAD_INPUT, f"the latent has {lat.shape[1]} channels but the {h.family} VAE takes "
                                   f"{h.latent_channels}: decode it with the model that made it.")
        images = decode(h.engine, h, lat, tile=bool(tile) or bool(latent.get("sf_tile")))
        inp = latent.get("sf_inpaint")
        if inp:
            images = composite_inpaint(images, inp["image"], inp["mask"], int(inp.get("feather", 8)))
        return io.NodeOutput(to_tensor(images))


NODES = [EncodePrompt, Sampler, VAEEncode, VAEDecode]
