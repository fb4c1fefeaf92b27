"""What a model is fed, decided once for every engine: framework-free (plain Python and arithmetic).

The torch and MLX denoisers and text encoders share these rules so a handle means the same on both:
DiT class labels, Sana's complex human instruction, Flux Fill / control detection, the model timestep
for a sigma, the input scaling and the x0 a prediction gives. The arithmetic helpers take any array
type with ``+ - *`` (numpy, torch, MLX).
"""

from __future__ import annotations

import math

from ..errors import BAD_INPUT, SpriteForgeError
from ..models.families import registry

# Sana's default complex human instruction (as in diffusers' SanaPipeline).
SANA_CHI = [
    "Given a user prompt, generate an 'Enhanced prompt' that provides detailed visual descriptions suitable for image generation. Evaluate the level of detail in the user prompt:",
    "- If the prompt is simple, focus on adding specifics about colors, shapes, sizes, textures, and spatial relationships to create vivid and concrete scenes.",
    "- If the prompt is already detailed, refine and enhance the existing details slightly without overcomplicating.",
    "Here are examples of how to transform or refine prompts:",
    "- User Prompt: A cat sleeping -> Enhanced: A small, fluffy white cat curled up in a round shape, sleeping peacefully on a warm sunny windowsill, surrounded by pots of blooming red flowers.",
    "- User Prompt: A busy city street -> Enhanced: A bustling city street scene at dusk, featuring glowing street lamps, a diverse crowd of people in colorful clothing, and a double-decker bus passing by towering glass skyscrapers.",
    "Please generate only the enhanced description for the prompt below and avoid including any additional commentary or evaluations:",
    "User Prompt: ",
]


# --------------------------------------------------------------------------- DiT class labels
def num_classes(handle) -> int:
    """DiT's class count; the null (unconditional) class is this number."""
    cfg = handle.config or {}
    return int((handle.extras or {}).get("num_classes") or cfg.get("num_embeds_ada_norm") or 1000)


def class_labels(handle, prompts):
    """``(labels, n)``: each prompt's class (a number or a name from the model's id2label)."""
    cfg = handle.config or {}
    n = num_classes(handle)
    id2label = (handle.extras or {}).get("id2label") or cfg.get("id2label") or {}
    by_name = {}
    for k, v in dict(id2label).items():
        for name in str(v).split(","):
            by_name[name.strip().lower()] = int(k)
    labels = []
    for p in prompts:
        p = str(p).strip()
        if not p:
            raise SpriteForgeError(BAD_INPUT, "DiT needs a class label (an ImageNet class number 0-999 or its name) as the prompt.")
        first = p.split(",")[0].strip()
        try:
            lab = int(first)
        except ValueError:
            if first.lower() not in by_name:
                raise SpriteForgeError(BAD_INPUT, f"DiT class {first!r} is neither a class number nor a known class name. "
                                       f"Give a number from 0 to {n - 1}.") from None
            lab = by_name[first.lower()]
        if not 0 <= lab < n:
            raise SpriteForgeError(BAD_INPUT, f"DiT class {lab} is out of range. Give a number from 0 to {n - 1}.")
        labels.append(lab)
    return labels, n


def dit_labels(handle, prompts, *, negative: bool = False, given=None) -> list[int]:
    """The class labels a DiT conditioning carries: the null class for a negative, ``given`` if set, else parsed."""
    if negative:
        return [num_classes(handle)] * len(prompts)
    if given is not None:
        return [int(c) for c in given]
    return class_labels(handle, prompts)[0]


# --------------------------------------------------------------------------- text lengths and Sana's instruction
def pixart_max_length(handle, max_length: int | None = None) -> int:
    """PixArt's T5 length: the caller's, the file's, else 120 for α and 300 for Σ."""
    return int(max_length or (handle.extras or {}).get("max_sequence_length") or (
        120 if "alpha" in (handle.variant or "").lower() else 300))


def sana_texts(tok, prompts, max_length: int, instruction=False, negative: bool = False):
    """``(texts, total, keep)`` for Sana's Gemma: the texts to tokenize to ``total`` tokens and, when the
    complex human instruction is prepended, the token positions to keep (``None`` when all are kept)."""
    chi = SANA_CHI if instruction is True else instruction
    if not chi or negative:
        return list(prompts), max_length, None
    chi_text = "\n".join(chi)
    total = len(tok.encode(chi_text)) + max_length - 2
    keep = [0] + list(range(total - max_length + 1, total))
    return [chi_text + p for p in prompts], total, keep


# --------------------------------------------------------------------------- Flux variants
def is_fill_model(handle) -> bool:
    """A family's native inpaint model (Flux Fill: 384 input channels = latent + masked-image latent + packed mask)."""
    cfg = handle.config or {}
    inc = cfg.get("in_channels") or (handle.extras or {}).get("in_channels") or 64
    return registry.rules(handle.family).is_fill(handle.variant, int(inc))


def check_flux_channels(family: str, in_channels) -> None:
    """UNSUPPORTED_ARCHITECTURE for input widths the family does not generate with (Flux Depth/Canny control models)."""
    registry.rules(family).check_input_channels(int(in_channels or 0))


# --------------------------------------------------------------------------- VAE inputs
def vae_images(handle, images):
    """Numpy float32 ``[B,H,W,3]`` images for the VAE encoder; BAD_INPUT for other shapes or sizes off the latent grid."""
    import numpy as np

    img = np.asarray(images, dtype=np.float32)
    if img.ndim == 3:
        img = img[None]
    if img.ndim != 4 or img.shape[-1] not in (3, 4):
        raise SpriteForgeError(BAD_INPUT, f"an image must be [B,H,W,3], got shape {tuple(img.shape)}.")
    img = img[..., :3]
    f = int(handle.vae_scale_factor or 8)
    if img.shape[1] % f or img.shape[2] % f:
        raise SpriteForgeError(BAD_INPUT, f"image size {img.shape[2]}x{img.shape[1]} is not a multiple of {f}: resize or crop it first.")
    return img


def check_latents(handle, z) -> None:
    """BAD_INPUT unless ``z`` (any array type) is a ``[B,C,h,w]`` latent with the handle's channel count."""
    if z.ndim != 4:
        raise SpriteForgeError(BAD_INPUT, f"a latent must be [B,C,h,w], got shape {tuple(z.shape)}.")
    lc = int(handle.latent_channels or z.shape[1])
    if z.shape[1] != lc:
        raise SpriteForgeError(BAD_INPUT, f"the latent has {z.shape[1]} channels but the {handle.family} VAE takes {lc}: "
                               "decode it with the model it was made with.")


# --------------------------------------------------------------------------- sigma -> model input/output
def model_timestep(family: str, flow: bool, sigma: float, model_schedule=None) -> float:
    """The timestep the transformer gets at ``sigma``."""
    if model_schedule is not None:
        return float(model_schedule.timestep(sigma))
    return sigma * registry.rules(family).flow_multiplier if flow else sigma


def model_input(x, prediction: str, sigma: float):
    """What the model sees for ``x`` at ``sigma``: ``x/sqrt(sigma²+1)`` for eps/v (VE -> VP), ``x`` for flow."""
    return x / math.sqrt(sigma * sigma + 1.0) if prediction in ("eps", "v") else x


def to_x0(x, pred, sigma: float, prediction: str):
    """The denoised sample for a model prediction (``flow`` velocity, ``v`` or ``eps``)."""
    if prediction == "v":
        a = 1.0 / math.sqrt(sigma * sigma + 1.0)
        return x * (a * a) - pred * (a * sigma)
    return x - pred * sigma  # eps and flow alike
