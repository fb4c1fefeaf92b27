"""The engine interface every backend implements, its capability flags, and the model handle.

An engine owns one device and its policy. Everything outside ``engines/`` talks to
models through an :class:`Engine`; arrays cross the boundary as numpy
(:meth:`Engine.from_numpy` / :meth:`Engine.to_numpy`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from .devices import DeviceInfo
from .policy import Policy

FAMILIES = ("pixart", "sd3", "flux", "sana", "dit")


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
        """Pixel sizes must be multiples of this (VAE factor times patch size)."""
        return self.vae_scale_factor * self.patch_size

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

    # models -------------------------------------------------------------
    @abstractmethod
    def load_model(self, path, *, vae=None, text_encoders=(), dtype: str | None = None) -> ModelHandle:
        """Load a DiT (file or diffusers folder) with its VAE and text encoders."""

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

    def describe(self) -> dict:
        return {
            "engine": self.name,
            "device": self.device.to_dict(),
            "policy": self.policy.to_dict(),
            "capabilities": self.capabilities.to_dict(),
        }
