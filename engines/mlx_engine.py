"""The Apple MLX engine (Metal on macOS, ``mlx[cpu]`` on Linux).

Model loading lives in ``mlx_models/loading.py`` (the user's own files, renamed by the
same converters as the torch engine) and ``mlx_models/cache.py`` (converted caches), generation (text encoding, the denoiser wrapper,
VAE) in ``mlx_models/generation.py``; the model ports are ``mlx_models/<name>.py``.
``capabilities.families`` lists the families whose ports all import; any other family
answers UNSUPPORTED_ARCHITECTURE naming the missing port.
"""

from __future__ import annotations

import numpy as np

from ..errors import BAD_INPUT, SpriteForgeError
from .base import FAMILIES, Capabilities, Engine, ModelHandle


class MLXEngine(Engine):
    name = "mlx"

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            dtypes=("float32", "float16", "bfloat16") if self.device.metal else ("float32",),
            lora=True,  # mlx_models/lora.py: every format the torch engine takes (tests/test_lora_mlx.py)
            attention=("mlx_fast",),
            max_resolution=2048,
            fp8_weights=False,
            families=self._families(),
            vae_tiling=False,
            birefnet=False,
            quantize_bits=(4, 8),  # MLX-quantized caches (mlx_models/cache.py: convert --quantize, Load Model's q8/q4)
        )

    @staticmethod
    def _families() -> tuple:
        try:
            from .mlx_models.loading import available_families
        except ImportError:  # mlx itself missing: nothing runs
            return ()
        return available_families(FAMILIES)

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

    @property
    def ops(self):
        from .ops import mlx_ops

        return mlx_ops()

    def reset_peak_memory(self) -> None:
        mx = self._mx()
        if hasattr(mx, "reset_peak_memory"):
            mx.reset_peak_memory()

    def peak_memory(self) -> int | None:
        mx = self._mx()
        return int(mx.get_peak_memory()) if hasattr(mx, "get_peak_memory") else None

    def parameter_bytes(self, handle) -> int | None:
        from mlx.utils import tree_flatten

        parts = (handle.transformer, handle.vae, *(handle.text_encoders or {}).values())
        return sum(v.nbytes for m in parts if m is not None for _, v in tree_flatten(m.parameters()))

    def load_model(self, path, *, vae=None, text_encoders=(), dtype=None, quantize=None) -> ModelHandle:
        from .mlx_models.cache import load_model  # its converted cache when there is one, else its own files

        self.check_quantize(quantize)
        return load_model(self, path, vae=vae, text_encoders=text_encoders, dtype=dtype, quantize=quantize)

    def encode_text(self, handle, prompts, **options):
        from .mlx_models import generation

        return generation.encode_text(self, self._own(handle), prompts, **options)

    def denoiser(self, handle, cond, uncond=None, *, cfg=1.0, **options):
        from .mlx_models import generation

        return generation.make_denoiser(self, self._own(handle), cond, uncond, cfg=cfg, **options)

    def vae_encode(self, handle, images):
        from .mlx_models import generation

        return generation.vae_encode(self, self._own(handle), images)

    def vae_decode(self, handle, latents):
        from .mlx_models import generation

        return generation.vae_decode(self, self._own(handle), latents)

    def _own(self, handle):
        """``handle`` when it was loaded by an MLX engine; a coded error for a handle of another engine."""
        eng = getattr(handle, "engine", None)
        if eng is not None and getattr(eng, "name", "mlx") != "mlx":
            raise SpriteForgeError(BAD_INPUT, f"this model was loaded with engine {eng.name!r}, so the MLX engine cannot run it. "
                                   "Load it again with engine 'mlx' (or run everything on that engine).")
        return handle

    def apply_loras(self, handle, specs, *, merge=False):
        from .mlx_models.lora import apply_loras

        return apply_loras(handle, specs, merge=merge)
