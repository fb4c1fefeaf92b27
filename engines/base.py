"""The engine interface every backend implements, its capability flags, and the model handle.

An engine owns one device and its policy. Everything outside ``engines/`` talks to
models through an :class:`Engine`; arrays cross the boundary as numpy
(:meth:`Engine.from_numpy` / :meth:`Engine.to_numpy`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from ..models.families import FAMILIES, registry
from .devices import DeviceInfo
from .policy import Policy

__all__ = ["FAMILIES", "Capabilities", "Conditioning", "Engine", "ModelHandle", "family_vae_name", "handle_fields"]


@dataclass(frozen=True)
class Capabilities:
    """What an engine can do, declared by the engine (never guessed at run time)."""

    dtypes: tuple[str, ...]
    lora: bool
    attention: tuple[str, ...]
    max_resolution: int
    fp8_weights: bool
    families: tuple[str, ...]
    vae_tiling: bool
    birefnet: bool
    # bits of the weights the engine quantizes itself when a model is loaded with ``quantize=`` (MLX: 4 and 8, as
    # ``mlx.nn.quantize``); empty: the engine computes quantized files as they are stored, and makes none
    quantize_bits: tuple[int, ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ModelHandle:
    """A loaded model, as the nodes pass it around (ComfyUI type ``SF_MODEL``).

    ``transformer`` / ``vae`` / ``text_encoders`` are engine objects (torch modules on the
    torch engine). ``prediction`` is ``eps``, ``v`` or ``flow``. Handles are never
    mutated after loading: LoRA application returns a new handle.
    """

    family: str
    variant: str
    engine: Any
    transformer: Any
    config: dict = field(default_factory=dict)
    vae: Any = None
    vae_config: dict = field(default_factory=dict)
    text_encoders: dict = field(default_factory=dict)
    tokenizers: dict = field(default_factory=dict)
    prediction: str = "eps"
    latent_channels: int = 4
    vae_scale_factor: int = 8
    patch_size: int = 2
    scaling_factor: float = 1.0
    shift_factor: float = 0.0
    flow_shift: float | None = None
    dtype: str = "float32"
    source: str = ""
    loras: tuple = ()
    extras: dict = field(default_factory=dict)

    @property
    def latent_multiple(self) -> int:
        """Pixel sizes must be multiples of this (VAE factor times patch size, or the family's coarser ``size_multiple``)."""
        return max(self.vae_scale_factor * self.patch_size, registry.rules(self.family).size_multiple)

    def describe(self) -> dict:
        return {
            "family": self.family,
            "variant": self.variant,
            "engine": getattr(self.engine, "name", str(self.engine)),
            "prediction": self.prediction,
            "dtype": self.dtype,
            "source": self.source,
            "loras": [getattr(lo, "name", str(lo)) for lo in self.loras],
        }


@dataclass
class Conditioning:
    """Encoded prompts (ComfyUI type ``SF_CONDITIONING``): engine arrays plus the text.

    ``embeds``/``mask``: the text encoder sequence and its attention mask; ``pooled``: pooled
    CLIP projections (SD3, Flux); ``guidance``: Flux's distilled guidance; ``class_labels``:
    DiT's classes; ``negative``: the negative prompt's conditioning (or None); ``references``: the reference
    images' VAE-scaled latents (engine arrays ``[1,C,h,w]``, one per reference, as ``Engine.vae_encode`` gives
    them) for a family that edits (``Family.max_references``), None otherwise; a negative without its own uses these.
    """

    family: str
    prompts: list = field(default_factory=list)
    embeds: Any = None
    mask: Any = None
    pooled: Any = None
    guidance: float | None = None
    class_labels: list | None = None
    negative: "Conditioning | None" = None
    references: list | None = None
    extras: dict = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        return self.prompts[0] if self.prompts else ""


class Engine(ABC):
    """One backend on one device."""

    name: str = "base"

    def __init__(self, device: DeviceInfo, policy: Policy):
        self.device = device
        self.policy = policy

    @property
    @abstractmethod
    def capabilities(self) -> Capabilities: ...

    # arrays -------------------------------------------------------------
    @abstractmethod
    def from_numpy(self, array, dtype: str | None = None): ...

    @abstractmethod
    def to_numpy(self, x): ...

    @abstractmethod
    def sync(self) -> None: ...

    def check_quantize(self, quantize: int | None) -> None:
        """BAD_INPUT unless ``quantize`` (bits) is None or one this engine makes (``capabilities.quantize_bits``)."""
        if quantize is None:
            return
        from ..errors import BAD_INPUT, SpriteForgeError

        bits = self.capabilities.quantize_bits
        if quantize not in bits:
            what = (f"it quantizes to {' or '.join(map(str, bits))} bits" if bits else
                    "it computes quantized files (GGUF, fp8, int8, NVFP4...) as they are stored and quantizes none itself")
            raise SpriteForgeError(BAD_INPUT, f"the {self.name} engine cannot load a model quantized to {quantize} bits: "
                                   f"{what}. Choose engine mlx for q8/q4, or load a quantized file of the model (a GGUF).",
                                   details={"engine": self.name, "quantize": quantize})

    @property
    def ops(self):
        """The engine's array operations (protocol in :mod:`spriteforge.samplers.ops`), handed to the
        framework-free samplers and LoRA core; numpy's unless the engine overrides it."""
        from ..samplers.ops import NUMPY_OPS

        return NUMPY_OPS

    # memory (benchmarks) ------------------------------------------------
    def reset_peak_memory(self) -> None:
        """Start a new peak-memory measurement (no-op where the engine keeps none)."""

    def peak_memory(self) -> int | None:
        """Bytes the engine's allocator held at most since :meth:`reset_peak_memory`; None where unknown."""
        return None

    def parameter_bytes(self, handle: "ModelHandle") -> int | None:
        """Bytes of the handle's weights (transformer, VAE, text encoders); None where unknown."""
        return None

    # models -------------------------------------------------------------
    @abstractmethod
    def load_model(self, path, *, vae=None, text_encoders=(), dtype: str | None = None,
                   quantize: int | None = None) -> ModelHandle:
        """Load a DiT (file or diffusers folder) with its VAE and text encoders. ``quantize``: the bits of weights the
        engine quantizes itself (one of ``capabilities.quantize_bits``; BAD_INPUT on an engine that has none)."""

    @abstractmethod
    def encode_text(self, handle: ModelHandle, prompts: list[str], **options) -> Any:
        """Text conditioning for ``prompts`` with the family's text encoders."""

    @abstractmethod
    def denoiser(self, handle: ModelHandle, cond, uncond=None, *, cfg: float = 1.0, **options) -> Callable:
        """``model(x, sigma) -> denoised`` for the samplers in ``spriteforge.samplers``."""

    @abstractmethod
    def vae_encode(self, handle: ModelHandle, images):
        """Latents for images (numpy float ``[B,H,W,3]`` in 0..1)."""

    @abstractmethod
    def vae_decode(self, handle: ModelHandle, latents):
        """Images (numpy float ``[B,H,W,3]`` in 0..1) for latents."""

    def apply_loras(self, handle: ModelHandle, specs, *, merge: bool = False) -> ModelHandle:
        """A new handle with the LoRAs ``specs`` (normalised :class:`~spriteforge.lora.apply.LoRASpec` list) applied.

        Called by :func:`spriteforge.lora.apply_loras` once the engine's ``capabilities.lora`` is
        checked; ``handle`` must stay unchanged. Engines that apply LoRAs override this.
        """
        from ..errors import LORA_UNSUPPORTED_ENGINE, SpriteForgeError

        raise SpriteForgeError(LORA_UNSUPPORTED_ENGINE, f"the {self.name} engine cannot apply LoRAs. "
                               "Load the model with engine 'torch' to use LoRAs.", details={"engine": self.name})

    # background removal (capability ``birefnet``) ----------------------------
    def load_birefnet(self, path, *, variant: str | None = None, precision: str = "auto", use_comfy: bool = False):
        """A loaded BiRefNet (``.predict(images, size_hw)``, ``.stages``, ``.resolution``, ``.empty_cache()``) from a
        weights file; ``variant`` ("auto" or one of :data:`spriteforge.models.birefnet.VARIANTS`) sets the working
        resolution, ``precision`` is auto/fp32/fp16/bf16, ``use_comfy`` hands memory management to ComfyUI.
        Engines whose ``capabilities.birefnet`` is true override this."""
        from ..errors import ENGINE_UNAVAILABLE, SpriteForgeError

        raise SpriteForgeError(ENGINE_UNAVAILABLE, f"the {self.name} engine cannot run BiRefNet background removal. "
                               "Use engine 'torch' (install PyTorch) for Remove Background.", details={"engine": self.name})

    def describe(self) -> dict:
        return {
            "engine": self.name,
            "device": self.device.to_dict(),
            "policy": self.policy.to_dict(),
            "capabilities": self.capabilities.to_dict(),
        }


def family_vae_name(family, variant, latent) -> str:
    """The shipped VAE config a family's release uses (``models/configs``), by latent channels (the family's
    :meth:`~spriteforge.models.families.Family.vae_config_name`)."""
    return registry.vae_config_name(family, variant, latent)


def handle_fields(det, cfg: dict, vae_cfg: dict, *, has_vae: bool, text_encoders, extras: dict) -> dict:
    """The framework-free :class:`ModelHandle` fields of a loaded model, the same on every engine.

    ``det``: the :class:`~spriteforge.models.detect.Detection`; ``cfg``: the transformer's full
    diffusers config; ``vae_cfg``: the loaded VAE's config (empty when none); ``text_encoders``:
    the keys of the loaded text encoders. Returns prediction, latent channels, VAE scale factor,
    patch size, scaling/shift factors, flow shift and extras (needs, layout, sigma_learned, ...),
    by the rules the family declares (:mod:`spriteforge.models.families`).
    """
    fam = registry.rules(det.family)
    sched = det.extras.get("scheduler") or {}
    latent, vsf, scaling, shift = _vae_numbers(fam, det, vae_cfg)
    return dict(prediction=fam.prediction_of(sched), latent_channels=latent, vae_scale_factor=vsf,
                patch_size=fam.patch_size or int(cfg.get("patch_size") or 1),
                scaling_factor=scaling, shift_factor=shift, flow_shift=fam.flow_shift(sched),
                extras=_handle_extras(fam, det, cfg, sched, has_vae=has_vae, text_encoders=text_encoders, extras=extras))


def _vae_numbers(fam, det, vae_cfg: dict) -> tuple:
    """``(latent channels, VAE scale factor, scaling factor, shift factor)`` of the loaded VAE, or of the
    family's shipped VAE config when none is loaded yet."""
    from ..models import configs

    p = int(fam.latent_patch)  # latents patched p x p into channels (FLUX.2)
    if vae_cfg:
        dc = vae_cfg.get("_class_name") == "AutoencoderDC" or "encoder_block_types" in vae_cfg
        blocks = vae_cfg.get("encoder_block_out_channels") if dc else vae_cfg.get("block_out_channels")
        latent = vae_cfg.get("latent_channels", vae_cfg.get("z_dim", 4))  # z_dim: the Wan-style (Qwen-Image) VAE
        factor = vae_cfg.get("scale_factor_spatial") or 2 ** (len(blocks or [0] * (6 if dc else 4)) - 1)  # (Qwen-Image 2.1's says it)
        return (int(latent) * p * p, int(factor) * p,
                float(vae_cfg.get("scaling_factor") or 1.0), float(vae_cfg.get("shift_factor") or 0.0))
    ref = configs.load(fam.release_vae(det.variant))["config"]
    return (int(ref.get("latent_channels") or ref["z_dim"]) * p * p, fam.vae_scale_factor * p, float(ref.get("scaling_factor") or 1.0),
            float(ref.get("shift_factor") or 0.0))


def _handle_extras(fam, det, cfg: dict, sched: dict, *, has_vae: bool, text_encoders, extras: dict) -> dict:
    """The handle's extras: the loader's, plus the family's (Flux guidance/in-channels, DiT classes, learned sigma),
    the scheduler, max sequence length / fp8 storage, the layout and what the model still ``needs``."""
    ex = dict(extras)
    ex.update(fam.handle_extras(det, cfg))
    if sched:
        ex["scheduler"] = sched
    for k in ("max_sequence_length", "fp8_storage"):
        if k in det.extras:
            ex[k] = det.extras[k]
    ex["layout"] = det.layout
    tes = set(text_encoders or ())
    ex["needs"] = [n for n in det.needs if not ((n == "vae" and has_vae) or n in tes)]
    return ex
