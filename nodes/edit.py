"""Editing node: one or more reference images and an instruction -> an image. A thin adapter over
:func:`spriteforge.pipeline.edit`, the code ``spriteforge edit`` runs.

The all-in-one Edit node is what a ComfyUI user reaches for to "edit this picture" (as the Kontext and FLUX.2
templates read: image in, instruction, image out). SpriteForge Reference Images adds the same references to an
Encode Prompt conditioning for the pack's Sampler, as ComfyUI's ReferenceLatent node does, for graphs that need the
Sampler's img2img / inpainting / tile inputs (a separate node rather than inputs on Encode Prompt: the saved
workflows that use Encode Prompt stay as they are).
"""

from __future__ import annotations

from ..errors import BAD_INPUT, SpriteForgeError
from ..log import get_logger
from ._compat import IN_COMFYUI, io
from .comfy_types import image_in, latent_out, to_tensor
from .generate import MAX_SEED, ConditioningType, _check_model, _sampler_names, _schedule_names
from .loaders import CATEGORY, ModelType
from .validation import ValidatedNode

log = get_logger("nodes")

DEFAULT = "default"  # a combo's "the family's own" choice


def reference_images(*images) -> list:
    """The connected IMAGE inputs as references (numpy ``[H,W,3]``): each input is one image; unconnected ones skipped."""
    out = []
    for i, img in enumerate(images, 1):
        if img is None:
            continue
        a = image_in(img)
        if a.shape[0] != 1:
            raise SpriteForgeError(BAD_INPUT, f"reference_{i} holds {a.shape[0]} images; a reference is one image. "
                                   "Pick one (ImageFromBatch) or connect them to reference_1..3 one by one.")
        out.append(a[0])
    return out


def reference_inputs(required_first: bool) -> list:
    """The ``reference_1..3`` IMAGE inputs (the first required by the Edit node, optional elsewhere)."""
    first = "The image to edit (IMAGE). The model sees it beside the picture it draws."
    more = "Another reference image (FLUX.2 [klein] takes up to 4, [dev] 6; Flux.1 Kontext takes one)."
    return [io.Image.Input("reference_1", optional=not required_first, tooltip=first),
            io.Image.Input("reference_2", optional=True, tooltip=more),
            io.Image.Input("reference_3", optional=True, tooltip=more)]


RESIZE_TOOLTIP = ("On: each reference is scaled to the sizes the model was trained on (Kontext: its ~1 megapixel "
                  "sizes, nearest aspect; FLUX.2: down to 1 megapixel). Off: kept at its size, rounded down to the "
                  "model's 16-pixel grid (small sprites stay small).")


def output_side(v) -> int | None:
    """An Edit node width/height: 0 = the first reference's (None), else at least 16 pixels."""
    v = int(v)
    if 0 < v < 16:
        raise SpriteForgeError(BAD_INPUT, f"{v} pixels is smaller than any model's grid: give 0 (the first reference's "
                               "size) or 16 or more.")
    return v or None


class Edit(ValidatedNode):
    CHECKS = {"width": output_side, "height": output_side}

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
                               tooltip="How the noise levels are spaced; default = the model's edit default (simple, as the Kontext and FLUX.2 pipelines)."),
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
        res = edit(h.engine, h, params, width=output_side(width), height=output_side(height))
        for note in res.notes:
            log.info("%s", note)
        return io.NodeOutput(to_tensor(res.images), latent_out(res.latents, h.family))


class ReferenceImages(ValidatedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SpriteForgeReferenceImages",
            display_name="SpriteForge Reference Images",
            category=CATEGORY,
            description="Adds one to three reference images to a conditioning from SpriteForge Encode Prompt, for SpriteForge "
            "Sampler to edit with (as ComfyUI's ReferenceLatent): each image is VAE-encoded once, at the model's reference "
            "size. Set the Sampler's width/height to the output you want (SpriteForge Edit does all of it in one node). "
            "A model that cannot take reference images is refused, naming the ones that can.",
            inputs=[
                ModelType.Input("model", tooltip="The model the conditioning was encoded with (SpriteForge Load Model)."),
                ConditioningType.Input("conditioning", tooltip="The prompts from SpriteForge Encode Prompt."),
                *reference_inputs(True),
                io.Boolean.Input("reference_resize", default=True, tooltip=RESIZE_TOOLTIP),
            ],
            outputs=[ConditioningType.Output(display_name="conditioning",
                                             tooltip="The conditioning with the references, for SpriteForge Sampler.")],
        )

    @classmethod
    def execute(cls, model, conditioning, reference_1, reference_2=None, reference_3=None, reference_resize=True):
        from ..pipeline import with_references

        h = _check_model(model)
        refs = reference_images(reference_1, reference_2, reference_3)
        if not refs:
            raise SpriteForgeError(BAD_INPUT, "reference_1 is not connected. Connect a reference image.")
        return io.NodeOutput(with_references(h.engine, h, conditioning, refs, resize=bool(reference_resize)))


NODES = [Edit, ReferenceImages]
