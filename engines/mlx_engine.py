"""The Apple MLX engine (Metal on macOS, ``mlx[cpu]`` on Linux).

Declares what it can do today: arrays, the shared samplers and seeded noise run on
MLX; the DiT model ports are not written yet, so ``families`` is empty and model
loading answers MODEL_NOT_CONVERTED with what to do instead.
"""

from __future__ import annotations

import numpy as np

from ..errors import LORA_UNSUPPORTED_ENGINE, MODEL_NOT_CONVERTED, SpriteForgeError
from .base import Capabilities, Engine, ModelHandle

_NOT_YET = (
    "the MLX engine has no port of this model family yet. Choose engine 'torch' in the loader "
    "(on a Mac it runs on MPS)."
)


class MLXEngine(Engine):
    name = "mlx"

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            dtypes=("float32", "float16", "bfloat16") if self.device.metal else ("float32",),
            lora=False,
            attention=("mlx_fast",),
            max_resolution=2048,
            fp8_weights=False,
            families=(),
            vae_tiling=False,
            birefnet=False,
        )

    def _mx(self):
        import mlx.core as mx

        return mx

    def from_numpy(self, array, dtype: str | None = None):
        mx = self._mx()
        return mx.array(np.asarray(array)).astype(getattr(mx, dtype or self.policy.compute_dtype))

    def to_numpy(self, x) -> np.ndarray:
        mx = self._mx()
        return np.array(x.astype(mx.float32))

    def sync(self) -> None:
        self._mx().eval()

    def load_model(self, path, *, vae=None, text_encoders=(), dtype=None) -> ModelHandle:
        raise SpriteForgeError(MODEL_NOT_CONVERTED, f"{path}: {_NOT_YET}")

    def encode_text(self, handle, prompts, **options):
        raise SpriteForgeError(MODEL_NOT_CONVERTED, _NOT_YET)

    def denoiser(self, handle, cond, uncond=None, *, cfg=1.0, **options):
        raise SpriteForgeError(MODEL_NOT_CONVERTED, _NOT_YET)

    def vae_encode(self, handle, images):
        raise SpriteForgeError(MODEL_NOT_CONVERTED, _NOT_YET)

    def vae_decode(self, handle, latents):
        raise SpriteForgeError(MODEL_NOT_CONVERTED, _NOT_YET)

    def apply_lora(self, *args, **kwargs):
        raise SpriteForgeError(LORA_UNSUPPORTED_ENGINE, "the MLX engine does not apply LoRAs yet.")
