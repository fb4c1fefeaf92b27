"""The PyTorch engine: CUDA, ROCm (HIP), MPS and CPU.

Model loading lives in ``torch_models/loading.py``, generation (text encoding, the
denoiser wrapper, VAE) in ``torch_models/generation.py``; this class binds them to a
device and its policy.
"""

from __future__ import annotations

import numpy as np

from .base import FAMILIES, Capabilities, Engine, ModelHandle

class TorchEngine(Engine):
    name = "torch"

    @property
    def torch_device(self):
        import torch

        return torch.device(self.device.torch_device)

    @property
    def capabilities(self) -> Capabilities:
        kind = self.device.kind
        dtypes = ["float32"]
        if kind in ("cuda", "rocm", "mps"):
            dtypes.append("float16")
        if self.policy.bf16 or kind == "cpu":
            dtypes.append("bfloat16")
        attention = ("sdpa", "math", "sliced")
        return Capabilities(
            dtypes=tuple(dtypes),
            lora=True,
            attention=attention,
            max_resolution=4096 if kind in ("cuda", "rocm") else 2048,
            fp8_weights=True,  # stored fp8 is kept as fp8 and upcast per layer to compute (torch_models/fp8.py)
            families=FAMILIES,
            vae_tiling=True,
            birefnet=True,
        )

    # arrays -----------------------------------------------------------------
    def from_numpy(self, array, dtype: str | None = None):
        import torch

        from .torch_models.tensors import torch_dtype

        t = torch.from_numpy(np.ascontiguousarray(array))
        return t.to(self.torch_device, torch_dtype(dtype or self.policy.compute_dtype))

    def to_numpy(self, x) -> np.ndarray:
        return x.detach().float().cpu().numpy()

    @property
    def ops(self):
        from .ops import torch_ops

        return torch_ops()

    def sync(self) -> None:
        import torch

        if self.device.kind in ("cuda", "rocm"):
            torch.cuda.synchronize(self.device.index)
        elif self.device.kind == "mps":
            torch.mps.synchronize()

    # models -----------------------------------------------------------------
    def load_model(self, path, *, vae=None, text_encoders=(), dtype: str | None = None, quantize: int | None = None) -> ModelHandle:
        from .torch_models.loading import load_model

        self.check_quantize(quantize)  # torch quantizes nothing itself: quantized files load as stored
        return load_model(self, path, vae=vae, text_encoders=text_encoders, dtype=dtype)

    def encode_text(self, handle, prompts, **options):
        from .torch_models import generation

        return generation.encode_text(self, handle, prompts, **options)

    def denoiser(self, handle, cond, uncond=None, *, cfg: float = 1.0, **options):
        from .torch_models import generation

        return generation.make_denoiser(self, handle, cond, uncond, cfg=cfg, **options)

    def vae_encode(self, handle, images):
        from .torch_models import generation

        return generation.vae_encode(self, handle, images)

    def vae_decode(self, handle, latents):
        from .torch_models import generation

        return generation.vae_decode(self, handle, latents)

    def load_birefnet(self, path, *, variant=None, precision="auto", use_comfy=False):
        from .torch_models.birefnet import load_birefnet
        from .torch_models.tensors import torch_dtype

        dtype = None if precision in (None, "", "auto") else torch_dtype(precision)
        # ComfyUI's memory manager picks the device (and falls back to the best one) when asked to
        return load_birefnet(path, device=None if use_comfy else self.torch_device, dtype=dtype, variant=variant,
                             use_comfy=use_comfy)

    def apply_loras(self, handle, specs, *, merge: bool = False):
        from .torch_models.lora import apply_loras

        return apply_loras(handle, specs, merge=merge)
