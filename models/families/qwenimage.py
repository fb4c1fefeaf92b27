"""Qwen-Image (Alibaba Qwen): 20B MMDiT, Qwen2.5-VL-7B prompts, the Qwen-Image (Wan-2.1 layout) VAE.

Recognised only (``generation = False``). ComfyUI's ``qwen_image_bf16.safetensors`` uses the diffusers names.
"""

from __future__ import annotations

from ..detection import count
from .base import Family, TextEncoder


class QwenImage(Family):
    name = "qwenimage"
    label = "Qwen-Image"
    # Qwen-Image and Qwen-Image-2512 ship the same key set and shapes (the manifest matches both); the Edit
    # releases build the same class (2511 adds only a config flag, zero_cond_t): no shape tells them apart
    variant_titles = {"20B": "20B (Qwen-Image, 2512 or an Edit release: same layout)"}
    generation = False
    diffusers_markers = (("img_in.weight", "txt_norm.weight", "transformer_blocks.0.img_mod.1.weight"),)
    reference_manifests = {"qwen-image.transformer.diffusers": "20B"}
    detect_order = 6  # before Flux.1: its original markers (img_in, txt_in) match Qwen-Image files too
    transformer_class = "QwenImageTransformer2DModel"
    transformer_module = "diffusers.models.transformers.transformer_qwenimage"
    text_encoders = (TextEncoder("qwen25_7b", "text_encoder"),)
    latent_channels = 16
    vae_class = "AutoencoderKLQwenImage"
    prediction = "flow"
    resolution_shift = True  # QwenImagePipeline: mu = calculate_shift(image_seq_len, ...) from the scheduler config
    # diffusers pipelines/qwenimage/pipeline_qwenimage.py __call__: num_inference_steps=50, true_cfg_scale=4.0
    defaults = {"cfg": 4.0, "steps": 50, "sampler": "euler", "schedule": "normal"}

    def detect(self, t, original):
        width, in_ch = t["img_in.weight"].shape
        head_dim = t["transformer_blocks.0.attn.norm_q.weight"].shape[0]
        cfg = {
            "_class_name": self.transformer_class,
            "patch_size": 2, "in_channels": in_ch, "out_channels": t["proj_out.weight"].shape[0] // 4,
            "num_layers": count(t.keys(), r"transformer_blocks\.(\d+)\."),
            "attention_head_dim": head_dim, "num_attention_heads": width // head_dim,
            "joint_attention_dim": t["txt_in.weight"].shape[1],
            "guidance_embeds": False, "axes_dims_rope": [16, 56, 56],
            "use_additional_t_cond": "time_text_embed.addition_t_embedding.weight" in t,
        }
        return self.detection("20B", cfg, False)
