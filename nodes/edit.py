"""Editing node: one or more reference images and an instruction -> an image. A thin adapter over
:func:`spriteforge.pipeline.edit`, the code ``spriteforge edit`` runs.

The all-in-one node is what a ComfyUI user reaches for to "edit this picture" (as the Kontext and Qwen-Image-Edit
templates read: image in, instruction, image out). The same references can also ride in SpriteForge Encode Prompt's
``reference_1..3`` inputs, whose conditioning then edits through the pack's Sampler (ComfyUI's ReferenceLatent
pattern), for graphs that need the Sampler's img2img / inpainting / tile inputs.
"""

from __future__ import annotations

from ..errors import BAD_INPUT, SpriteForgeError
from ..log import get_logger
from ._compat import IN_COMFYUI, io
from .comfy_types import latent_out, to_tensor
from .generate import MAX_SEED, RESIZE_TOOLTIP, _check_model, _sampler_names, _schedule_names, reference_images, reference_inputs
from .loaders import CATEGORY, ModelType
from .validation import ValidatedNode

log = get_logger("nodes")

DEFAULT = "default"  # a combo's "the family's own" choice


class Edit(ValidatedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SpriteForgeEdit",
            display_name="SpriteForge Edit",
            category=CATEGORY,
            description="Edits one to three reference images by an instruction (\"make the knight's armour red\", "
            "\"the same character facing left\") with a model that takes reference images: FLUX.1 Kontext [dev] (or "
            "any Flux.1 [dev]-layout file), FLUX.2 [klein] / [dev]. The references are VAE-encoded once and seen by "
            "the model beside the picture it draws; the output is the first reference's size unless width/height are "
            "set. Other models are refused with what to load instead.",
            inputs=[
                ModelType.Input("model", tooltip="The model from SpriteForge Load Model (one that takes reference images)."),
                *reference_inputs(True)[:1],
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="The instruction: what to change (or what to make of the references)."),
                io.String.Input("negative", multiline=True, default="", optional=True,
                                tooltip="What to avoid (used with cfg above 1 only; Kontext and distilled [klein] run without CFG)."),
                io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=True,
                             tooltip="Noise seed; batch item i uses seed + i."),
                io.Int.Input("steps", default=0, min=0, max=1000,
                             tooltip="Sampling steps; 0 = the model's edit default (Kontext 28, FLUX.2 50, distilled [klein] 4)."),
                io.Float.Input("cfg", default=0.0, min=0.0, max=30.0, step=0.1,
                               tooltip="Classifier-free guidance; 0 = the model's default (Kontext and FLUX.2 [dev]: 1 = off; "
                               "FLUX.2 [klein] base 4)."),
                io.Float.Input("guidance", default=0.0, min=0.0, max=30.0, step=0.1,
                               tooltip="Distilled guidance for models with a guidance input; 0 = the default (Kontext 2.5, FLUX.2 [dev] 4)."),
                io.Combo.Input("sampler", options=[DEFAULT, *_sampler_names()], default=DEFAULT,
                               tooltip="The sampling method; default = the model's (euler)."),
                io.Combo.Input("schedule", options=[DEFAULT, *_schedule_names()], default=DEFAULT,
                               tooltip="How the noise levels are spaced; default = the model's (Flux normal, FLUX.2 simple)."),
                io.Int.Input("width", default=0, min=0, max=8192, step=16,
                             tooltip="Output width in pixels; 0 = the first reference's (as the model sizes references)."),
                io.Int.Input("height", default=0, min=0, max=8192, step=16,
                             tooltip="Output height in pixels; 0 = the first reference's (as the model sizes references)."),
                io.Int.Input("batch_size", default=1, min=1, max=64, tooltip="Images per run (each its own seed)."),
                io.Boolean.Input("reference_resize", default=True, tooltip=RESIZE_TOOLTIP),
                *reference_inputs(True)[1:],
                io.Int.Input("max_side", default=2048, min=64, max=8192, optional=True,
                             tooltip="The largest width/height allowed (a guard against out-of-memory)."),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="The edited images [B,H,W,3], 0..1."),
                     io.Latent.Output(display_name="latent", tooltip="Their latent, for SpriteForge VAE Decode or another Sampler pass.")],
        )

    @classmethod
    def execute(cls, model, reference_1, prompt="", negative="", seed=0, steps=0, cfg=0.0, guidance=0.0, sampler=DEFAULT,
                schedule=DEFAULT, width=0, height=0, batch_size=1, reference_resize=True, reference_2=None, reference_3=None,
                max_side=2048):
        from ..pipeline import GenerateParams, edit

        h = _check_model(model)
        refs = reference_images(reference_1, reference_2, reference_3)
        if not refs:
            raise SpriteForgeError(BAD_INPUT, "reference_1 is not connected. Connect the image to edit.")
        params = GenerateParams(
            prompt=str(prompt or ""), negative=str(negative or ""), seed=int(seed), steps=int(steps) or None,
            cfg=float(cfg) or None, guidance=float(guidance) or None, sampler=None if sampler == DEFAULT else sampler,
            schedule=None if schedule == DEFAULT else schedule, batch_size=int(batch_size), max_side=int(max_side),
            references=refs, reference_resize=bool(reference_resize), preview=IN_COMFYUI)
        res = edit(h.engine, h, params, width=int(width) or None, height=int(height) or None)
        for note in res.notes:
            log.info("%s", note)
        return io.NodeOutput(to_tensor(res.images), latent_out(res.latents, h.family))


NODES = [Edit]
