"""LoRA nodes: apply one LoRA (chain them to stack), apply up to four at once, describe a LoRA file.

The model handle that comes in is never changed: each node returns a new handle that
shares the loaded weights and patches the LoRA's layers on the fly, so two branches of one
graph can use different LoRAs, and bypassing the node gives the exact base model back.
"""

from __future__ import annotations

import json

from ..errors import BAD_INPUT, SpriteForgeError
from ..resolve import NONE, lora_choices, resolve_lora
from ._compat import io
from .validation import ValidatedNode

CATEGORY = "SpriteForge/lora"
ModelType = io.Custom("SF_MODEL")
STACK_SLOTS = 4

TIP_MODEL = "The SpriteForge model (from SpriteForge Load Model or another LoRA node). It is not changed; a new one comes out."
TIP_NAME = ("A LoRA file from models/loras (kohya, OneTrainer, ComfyUI, diffusers/peft or LyCORIS LoHa/LoKr; DoRA too), "
            "or a built-in one for the demo model.")
TIP_SM = "How strongly the LoRA changes the diffusion transformer: 1 = as trained, 0 = off, negative inverts it."
TIP_ST = "How strongly the LoRA changes the text encoders (when the file has text-encoder layers)."
TIP_MERGE = ("Compute the patched weights once (faster sampling, extra memory for every patched layer) "
             "instead of patching each layer on the fly (no extra copy).")


def _apply(model, items, merge=False):
    from ..lora import LoRASpec, apply_loras

    if model is None:
        raise SpriteForgeError(BAD_INPUT, "no model is connected. Connect SpriteForge Load Model to the model input.")
    specs = [LoRASpec(resolve_lora(name), float(sm), float(st), name=name) for name, sm, st in items]
    new = apply_loras(model, specs, merge=bool(merge)) if specs else model
    info = "\n".join(r.summary() for r in new.loras[len(model.loras):]) or "no LoRA applied"
    return new, info


class ApplyLoRA(ValidatedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SpriteForgeApplyLoRA",
            display_name="SpriteForge Apply LoRA",
            category=CATEGORY,
            description="Applies a LoRA to a SpriteForge model with separate strengths for the transformer and the text "
            "encoders, and returns a new model; the input model is left as it was. Chain several to stack LoRAs. "
            "The LoRA's model family is detected from its layer names: a LoRA for another family is refused, and "
            "layers the model does not have are listed in the info output.",
            inputs=[
                ModelType.Input("model", tooltip=TIP_MODEL),
                io.Combo.Input("lora_name", options=lora_choices(), tooltip=TIP_NAME),
                io.Float.Input("strength_model", default=1.0, min=-10.0, max=10.0, step=0.01, tooltip=TIP_SM),
                io.Float.Input("strength_text", default=1.0, min=-10.0, max=10.0, step=0.01, tooltip=TIP_ST),
                io.Boolean.Input("merge", default=False, optional=True, tooltip=TIP_MERGE),
            ],
            outputs=[ModelType.Output(display_name="model", tooltip="The model with the LoRA(s) applied (the input model is unchanged)."),
                     io.String.Output(display_name="info", tooltip="What was applied: layers per LoRA, skipped keys.")],
        )

    @classmethod
    def execute(cls, model, lora_name, strength_model=1.0, strength_text=1.0, merge=False):
        new, info = _apply(model, [(lora_name, strength_model, strength_text)], merge)
        return io.NodeOutput(new, info)


class LoRAStack(ValidatedNode):
    @classmethod
    def define_schema(cls):
        inputs = [ModelType.Input("model", tooltip=TIP_MODEL)]
        for i in range(1, STACK_SLOTS + 1):
            inputs += [
                io.Combo.Input(f"lora_{i}", options=lora_choices(NONE), default=NONE, tooltip=f"LoRA {i} ((none) = empty slot). " + TIP_NAME),
                io.Float.Input(f"strength_model_{i}", default=1.0, min=-10.0, max=10.0, step=0.01, tooltip=f"LoRA {i}: " + TIP_SM),
                io.Float.Input(f"strength_text_{i}", default=1.0, min=-10.0, max=10.0, step=0.01, tooltip=f"LoRA {i}: " + TIP_ST),
            ]
        inputs.append(io.Boolean.Input("merge", default=False, optional=True, tooltip=TIP_MERGE))
        return io.Schema(
            node_id="SpriteForgeLoRAStack",
            display_name="SpriteForge LoRA Stack",
            category=CATEGORY,
            description=f"Applies up to {STACK_SLOTS} LoRAs at once, each with its own transformer and text-encoder "
            "strength, and returns a new model; the input model is left as it was. Empty slots are skipped.",
            inputs=inputs,
            outputs=[ModelType.Output(display_name="model", tooltip="The model with the LoRA(s) applied (the input model is unchanged)."),
                     io.String.Output(display_name="info", tooltip="What was applied: layers per LoRA, skipped keys.")],
        )

    @classmethod
    def execute(cls, model, merge=False, **kw):
        items = []
        for i in range(1, STACK_SLOTS + 1):
            name = kw.get(f"lora_{i}", NONE)
            if name and name != NONE:
                items.append((name, kw.get(f"strength_model_{i}", 1.0), kw.get(f"strength_text_{i}", 1.0)))
        new, info = _apply(model, items, merge)
        return io.NodeOutput(new, info)


class LoRAInfo(ValidatedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SpriteForgeLoRAInfo",
            display_name="SpriteForge LoRA Info",
            category=CATEGORY,
            description="Describes a LoRA file without loading a model: the family it was made for, its format "
            "(kohya, OneTrainer, ComfyUI, diffusers/peft, LyCORIS), algorithm, rank, alpha and which blocks it changes.",
            inputs=[
                io.Combo.Input("lora_name", options=lora_choices(), tooltip=TIP_NAME),
                io.Boolean.Input("as_json", default=False, tooltip="Output the full description as JSON instead of a summary."),
            ],
            outputs=[io.String.Output(display_name="report", tooltip="The LoRA file's family, format, rank and layers.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, lora_name, as_json=False):
        from ..engines.ops import torch_ops
        from ..lora import inspect_lora
        from ..lora.files import summary

        info = inspect_lora(resolve_lora(lora_name), load_pickled=torch_ops().load_pickled)

        text = json.dumps(info, indent=2, default=str) if as_json else summary(info)
        return io.NodeOutput(text, ui={"text": [text]})


NODES = [ApplyLoRA, LoRAStack, LoRAInfo]
