"""Background removal nodes: load a BiRefNet model, remove the background of a batch of images.

The model handle travels as ``SF_BIREFNET``. Outputs follow ComfyUI's conventions:
IMAGE float32 [B,H,W,3] in 0..1; MASK float32 [B,H,W] with 1 = foreground (kept), the same
as the alpha ComfyUI's own background-removal nodes produce (note: LoadImage's MASK is the
inverse, 1 = transparent).
"""

from __future__ import annotations

from ..errors import BAD_INPUT, SpriteForgeError
from ._compat import io
from .validation import ValidatedNode
from .comfy_types import image_array, to_tensor

BIREFNET = io.Custom("SF_BIREFNET")
NO_MODEL = "(no model in models/birefnet)"


def _model_names() -> list[str]:
    try:
        from .. import paths

        names = paths.list_models("birefnet")
    except Exception:
        names = []
    return names or [NO_MODEL]


def _variants() -> list[str]:
    from ..models.birefnet import VARIANTS  # framework-free: no torch at schema time

    return ["auto", *VARIANTS]


class LoadBiRefNet(ValidatedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SpriteForgeLoadBiRefNet",
            display_name="SpriteForge Load BiRefNet",
            category="SpriteForge/background",
            description="Loads a BiRefNet background-removal model (model.safetensors of ZhengPeng7/BiRefNet, "
            "BiRefNet_lite, _HR, -matting, -portrait, _dynamic, ...) from the models/birefnet folder (extra_model_paths.yaml "
            "folders included). Backbone (Swin-L or Swin-T) is read from the weights; the variant, which sets the working "
            "resolution, from the file name unless chosen here. Runs in plain torch under ComfyUI's memory management.",
            inputs=[
                io.Combo.Input("model_name", options=_model_names(), tooltip="The weights file in models/birefnet "
                               "(rename model.safetensors e.g. to BiRefNet_HR.safetensors so the variant is recognised)."),
                io.Combo.Input("variant", options=_variants(), default="auto", tooltip="Which released model this is; "
                               "'auto' guesses from the file name. It sets the default working resolution "
                               "(1024, HR: 2048, lite-2K: 2560x1440)."),
                io.Combo.Input("precision", options=["auto", "fp32", "fp16", "bf16"], default="auto",
                               tooltip="Compute precision; 'auto' is fp16 on GPUs and fp32 on the CPU."),
                io.Combo.Input("device", options=["auto", "cpu"], default="auto",
                               tooltip="'auto' uses ComfyUI's device (the GPU when there is one); 'cpu' forces the CPU."),
            ],
            outputs=[BIREFNET.Output(display_name="birefnet", tooltip="The loaded BiRefNet model for Remove Background.")],
        )

    @classmethod
    def execute(cls, model_name, variant="auto", precision="auto", device="auto"):
        from .. import paths
        from ..engines import engine_for
        from ..models.birefnet import EXPECTED_FILES

        if model_name == NO_MODEL:
            model_name = "model.safetensors"
        path = paths.resolve("birefnet", model_name, expected=EXPECTED_FILES)
        handle = engine_for("birefnet", device).load_birefnet(path, variant=variant, precision=precision,
                                                              use_comfy=(device == "auto"))
        return io.NodeOutput(handle)


class RemoveBackground(ValidatedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SpriteForgeRemoveBackground",
            display_name="SpriteForge Remove Background (BiRefNet)",
            category="SpriteForge/background",
            description="Removes the background of every image in the batch with BiRefNet. Each image is fitted into the "
            "working resolution keeping its aspect ratio (padded, never stretched, to multiples of 32), processed in chunks "
            "that fit memory, the mask optionally refined (threshold, fill holes, remove islands, grow/shrink, feather), and "
            "the foreground colours estimated so edges show no dark or light fringe on a new background.",
            inputs=[
                BIREFNET.Input("birefnet", tooltip="A model from Load BiRefNet."),
                io.Image.Input("image", tooltip="The images; gray (1 channel) and RGBA (4 channels; its alpha is kept) work too."),
                io.Int.Input("resolution", default=0, min=0, max=4096, step=32,
                             tooltip="Working resolution (long side, multiple of 32); 0 uses the variant's own "
                             "(1024; HR 2048; lite-2K 2560x1440). Higher finds finer detail but needs more memory."),
                io.Int.Input("batch_chunk", default=0, min=0, max=64,
                             tooltip="Images per model call; 0 (auto) picks it from free memory (on a CPU at most "
                             "~1 GB of working memory per call). Progress and Cancel work per network stage either way."),
                io.Float.Input("threshold", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Make the mask hard: 1 where the prediction is at least this, else 0. "
                               "0 keeps the soft mask (best for hair and glass); 0.5 suits pixel art."),
                io.Int.Input("fill_holes", default=0, min=-1, max=1 << 24,
                             tooltip="Fill enclosed transparent holes up to this many pixels (-1: any size, 0: off). "
                             "Gaps that touch the image border are never filled."),
                io.Int.Input("remove_islands", default=0, min=0, max=1 << 24,
                             tooltip="Remove foreground specks smaller than this many pixels (0: off)."),
                io.Int.Input("grow", default=0, min=-256, max=256,
                             tooltip="Grow (positive) or shrink (negative) the mask by this many pixels."),
                io.Float.Input("feather", default=0.0, min=0.0, max=128.0, step=0.5,
                               tooltip="Soften the mask edge: Gaussian blur sigma in pixels (0: off)."),
                io.Combo.Input("foreground", options=["ml", "blur_fusion", "none"], default="ml",
                               tooltip="Foreground colour estimation: 'ml' (multi-level, best), 'blur_fusion' (faster), "
                               "'none' (the original colours; edges keep the old background's tint)."),
                io.Combo.Input("composite", options=["alpha", "white", "black", "color"], default="alpha",
                               tooltip="The composite output: 'alpha' is an RGBA IMAGE (4 channels); otherwise the "
                               "foreground over a white, black or custom background."),
                io.String.Input("color", default="#00ff00", tooltip="Background colour for composite = color (hex, #RRGGBB)."),
            ],
            outputs=[
                io.Image.Output(display_name="foreground", tooltip="The estimated foreground colours [B,H,W,3] "
                                "(unpremultiplied; use with the mask)."),
                io.Mask.Output(display_name="mask", tooltip="Foreground alpha [B,H,W]: 1 = foreground (kept), "
                               "0 = background. Invert it for nodes that expect LoadImage's convention (1 = transparent)."),
                io.Image.Output(display_name="composite", tooltip="RGBA IMAGE [B,H,W,4] (composite = alpha) or the "
                                "foreground over the chosen background colour [B,H,W,3]."),
            ],
        )

    @classmethod
    def execute(cls, birefnet, image, resolution=0, batch_chunk=0, threshold=0.0, fill_holes=0, remove_islands=0,
                grow=0, feather=0.0, foreground="ml", composite="alpha", color="#00ff00"):
        from ..rmbg import RefineOptions, remove_background

        handle = birefnet
        if not hasattr(handle, "predict"):
            raise SpriteForgeError(BAD_INPUT, "the birefnet input is not a model from Load BiRefNet.")
        arr = image_array(image)
        res = int(resolution) if resolution else tuple(handle.resolution)
        if isinstance(res, int) and res % 32:
            raise SpriteForgeError(BAD_INPUT, f"resolution {res} must be a multiple of 32 (or 0 for the variant's own).")
        out = remove_background(
            arr,
            handle.predict,
            resolution=res,
            chunk_size=int(batch_chunk),  # 0: auto, from free memory (handle.auto_chunk)
            auto_chunk=handle.auto_chunk,
            stages=handle.stages,
            refine_opts=RefineOptions(threshold=threshold, fill_holes=int(fill_holes), remove_islands=int(remove_islands),
                                      grow=int(grow), feather=float(feather)),
            foreground=foreground,
            composite=composite,
            color=color,
            on_oom=handle.empty_cache,
        )
        return io.NodeOutput(to_tensor(out.foreground), to_tensor(out.alpha), to_tensor(out.composite))


NODES = [LoadBiRefNet, RemoveBackground]
