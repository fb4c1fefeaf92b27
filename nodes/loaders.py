"""Model loading node: a DiT model file or diffusers folder (with optional VAE / text-encoder overrides)
on an engine, device and dtype, giving a model handle (``SF_MODEL``).

The node only reads its inputs: names are resolved and the model loaded by :func:`spriteforge.resolve.load_handle`,
which ``spriteforge generate`` uses too.
"""

from __future__ import annotations

from ..resolve import FROM_MODEL, QUANTIZED, load_handle, model_choices, part_choices
from ._compat import io
from .validation import ValidatedNode, problems

CATEGORY = "SpriteForge/generate"
ModelType = io.Custom("SF_MODEL")
ENGINES = ["auto", "torch", "mlx"]
DEVICES = ["auto", "gpu", "cpu", "cuda", "mps"]
DTYPES = ["auto", "float32", "float16", "bfloat16", *QUANTIZED]  # q8, q4: MLX-quantized weights (see the tooltip)


def engine_takes(dtype, engine) -> str | None:
    """Why ``engine`` cannot load with dtype choice ``dtype`` (None when it can): q8/q4 are MLX's quantized weights."""
    if dtype in QUANTIZED and engine == "torch":
        return (f"dtype {dtype} is MLX-quantized weights, which the torch engine does not make (it computes quantized "
                "files as they are stored). Choose engine mlx or auto, or on torch load a quantized file of the model "
                "(a GGUF such as Q8_0/Q4_K, or an fp8/int8/NVFP4 file) with dtype auto.")
    return None


class LoadModel(ValidatedNode):
    @classmethod
    def define_schema(cls):
        tes = part_choices("text_encoders")
        return io.Schema(
            node_id="SpriteForgeLoadModel",
            display_name="SpriteForge Load Model",
            category=CATEGORY,
            description="Loads a DiT image model (PixArt-α/Σ, SD3/3.5, Flux.1, Sana, DiT, Z-Image, FLUX.2, Qwen-Image) from a single file or a diffusers "
            "folder, with its VAE and text encoders (taken from the file/folder unless overridden), on the chosen "
            "engine, device and dtype. The family is detected from the weights.",
            inputs=[
                io.Combo.Input("model", options=model_choices(), tooltip="The DiT model: a file in models/diffusion_models or "
                               "models/checkpoints, or a diffusers folder in models/diffusers."),
                io.Combo.Input("vae", options=part_choices("vae"), default=FROM_MODEL, optional=True,
                               tooltip="A VAE file to use instead of the one in the model (needed when the model file has none)."),
                io.Combo.Input("text_encoder_1", options=tes, default=FROM_MODEL, optional=True,
                               tooltip="A text encoder file (T5 for PixArt, CLIP-L for SD3/Flux, Gemma-2 for Sana, Qwen3-4B qwen_3_4b for Z-Image and FLUX.2 [klein] 4B, "
                               "Qwen2.5-VL-7B qwen_2.5_vl_7b for Qwen-Image) when the model has none."),
                io.Combo.Input("text_encoder_2", options=tes, default=FROM_MODEL, optional=True,
                               tooltip="A second text encoder file (CLIP-G for SD3, T5 for Flux)."),
                io.Combo.Input("text_encoder_3", options=tes, default=FROM_MODEL, optional=True,
                               tooltip="A third text encoder file (T5 for SD3/3.5)."),
                io.Combo.Input("engine", options=ENGINES, default="auto", optional=True,
                               tooltip="The engine: auto (torch where available), torch, or mlx (Apple silicon)."),
                io.Combo.Input("device", options=DEVICES, default="auto", optional=True,
                               tooltip="The device: auto (the first GPU, else the CPU), gpu, cpu, cuda or mps."),
                io.Combo.Input("dtype", options=DTYPES, default="auto", optional=True,
                               tooltip="Weight/compute precision: auto follows the device policy (bf16 on modern GPUs, fp32 on CPU). "
                               "q8 / q4: the transformer's and text encoders' linear layers as MLX 8- or 4-bit quantized weights "
                               "(group size 64; about 1/2 or 1/4 of the bf16 memory), MLX engine only (auto picks it): the first "
                               "load writes the model's quantized cache to models/mlx_cache (as `spriteforge convert --engine mlx "
                               "--quantize 8|4`), later loads read it. The torch engine refuses q8/q4; it loads quantized files "
                               "(GGUF, fp8, int8, NVFP4) as stored with dtype auto."),
            ],
            outputs=[ModelType.Output(display_name="model", tooltip="The loaded model, for SpriteForge Encode Prompt / Sampler / VAE nodes.")],
        )

    @classmethod
    def validate_inputs(cls, **values) -> bool | str:
        found = problems(cls, values)
        why = engine_takes(values.get("dtype"), values.get("engine"))
        if why and not any(f.startswith(("dtype:", "engine:")) for f in found):
            found.append(f"dtype: {why}")
        return True if not found else " ".join(found)

    @classmethod
    def execute(cls, model, vae=FROM_MODEL, text_encoder_1=FROM_MODEL, text_encoder_2=FROM_MODEL,
                text_encoder_3=FROM_MODEL, engine="auto", device="auto", dtype="auto"):
        handle = load_handle(model, vae=vae, text_encoders=(text_encoder_1, text_encoder_2, text_encoder_3),
                             engine=engine, device=device, dtype=dtype)
        return io.NodeOutput(handle)


NODES = [LoadModel]
