"""Z-Image and Z-Image-Turbo (Tongyi-MAI): 6B single-stream DiT (S3-DiT), Qwen3-4B prompts, the 16-channel Flux VAE.

Recognised only (``generation = False``): detection and ``inspect`` name it, the engines do not run it yet.
"""

from __future__ import annotations

from ..detection import count
from .base import Family, TextEncoder

# the names that differ between ComfyUI's single file (original) and diffusers' ZImageTransformer2DModel
_NAMES = {
    True: {"embed": "x_embedder.weight", "q_norm": "layers.0.attention.q_norm.weight"},
    False: {"embed": "all_x_embedder.2-1.weight", "q_norm": "layers.0.attention.norm_q.weight"},
}


class ZImage(Family):
    name = "zimage"
    label = "Z-Image"
    # Turbo (distilled) and base have one layout: no shape tells them apart, so detection says so
    variant_titles = {"turbo-or-base": "(Turbo or base: same layout)"}
    generation = False
    original_markers = (("cap_pad_token", "layers.0.attention.qkv.weight"),)
    diffusers_markers = (("cap_pad_token", "layers.0.attention.to_q.weight"),)
    reference_manifests = {
        "z-image-turbo.transformer.original": "turbo-or-base", "z-image-turbo.transformer.diffusers": "turbo-or-base",
    }
    detect_order = 30
    transformer_class = "ZImageTransformer2DModel"
    transformer_module = "diffusers.models.transformers.transformer_z_image"
    text_encoders = (TextEncoder("qwen3_4b", "text_encoder"),)
    latent_channels = 16
    vae_by_latent = {16: "vae-kl16-flux"}  # the FLUX.1 VAE (ae.safetensors)
    prediction = "flow"
    resolution_shift = True  # ZImagePipeline: mu = calculate_shift(image_seq_len, ...) from the scheduler config
    # diffusers pipelines/z_image/pipeline_z_image.py: its example runs Z-Image-Turbo with num_inference_steps=8,
    # guidance_scale=0.0 (no CFG: cfg 1.0 here); __call__'s own defaults (50 steps, guidance 5.0) are the base model's
    defaults = {"cfg": 1.0, "steps": 8, "sampler": "euler", "schedule": "normal"}

    def detect(self, t, original):
        n = _NAMES[original]
        dim, patch_in = t[n["embed"]].shape
        head_dim = t[n["q_norm"]].shape[0]
        heads = dim // head_dim
        if original:
            kv = (t["layers.0.attention.qkv.weight"].shape[0] // head_dim - heads) // 2
        else:
            kv = t["layers.0.attention.to_k.weight"].shape[0] // head_dim
        cfg = {
            "_class_name": self.transformer_class,
            "all_patch_size": [2], "all_f_patch_size": [1],
            "in_channels": patch_in // 4,  # 2x2 patches, one frame
            "dim": dim,
            "n_layers": count(t.keys(), r"layers\.(\d+)\."),
            "n_refiner_layers": count(t.keys(), r"noise_refiner\.(\d+)\."),
            "n_heads": heads, "n_kv_heads": kv,
            "norm_eps": 1e-05, "qk_norm": True,
            "cap_feat_dim": t["cap_embedder.0.weight"].shape[0],
            # the released transformer/config.json (Tongyi-MAI/Z-Image-Turbo), as recorded with the manifest
            "rope_theta": 256.0, "t_scale": 1000.0, "axes_dims": [32, 48, 48], "axes_lens": [1536, 512, 512],
        }
        return self.detection("turbo-or-base", cfg, original)
