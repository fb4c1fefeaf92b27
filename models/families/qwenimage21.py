"""Qwen-Image 2.1 (Alibaba Qwen): its own family, not a Qwen-Image variant.

diffusers gives it its own classes (``QwenImage21Transformer2DModel``, ``QwenImage21Pipeline``,
``AutoencoderKLQwenImage21``) and they share no layout with Qwen-Image / 2512 (``QwenImageTransformer2DModel``): one
single stream (no ``img_mod`` / ``txt_mod`` / ``txt_mlp``), one shared ``modulation`` for every block, bias-free SwiGLU
blocks, a zero-centred RMS text norm (``txt_in.text_norm``), block-causal attention over the joint text/image
sequence with the image tokens placed in the vision-language encoder's image slots, 64-channel unpatched latents
(patch 1) from a 16x RGBA VAE, and Qwen3-VL (4096 wide: 8B) prompts read before the final norm. The Turbo checkpoint
(``QwenImage21TurboModularPipeline``: few steps, no guidance) builds the same class: no shape tells them apart.

Layouts: diffusers' names, and ComfyUI's single file (diffusers' ``convert_qwen_image21_transformer_checkpoint_to_diffusers``
is its inverse): the same names under ``model.diffusion_model.`` with each block's SwiGLU gate and up projections fused
into ``img_mlp.gate_up.weight`` (gate rows first).

Recognised only (``generation = False``): detection and ``inspect`` name it, Load Model refuses it naming it.
"""

from __future__ import annotations

from ..detection import count
from .base import Family, TextEncoder

_BLOCKS = r"transformer_blocks\.(\d+)\."


class QwenImage21(Family):
    name = "qwenimage21"
    label = "Qwen-Image 2.1"
    variant_titles = {"base-or-turbo": "(base or Turbo: same layout)", "base": "", "turbo": "Turbo"}
    generation = False
    # the tensors only 2.1 has: the zero-centred text norm, and each block's SwiGLU (fused by ComfyUI, split by diffusers)
    original_markers = (("txt_in.text_norm.weight", "modulation.1.weight", "transformer_blocks.0.img_mlp.gate_up.weight"),)
    diffusers_markers = (("txt_in.text_norm.weight", "modulation.1.weight", "transformer_blocks.0.img_mlp.gate_layer.weight"),)
    detect_order = 5  # before Qwen-Image (6) and Flux.1, whose markers name img_in / txt_in too
    transformer_class = "QwenImage21Transformer2DModel"
    transformer_module = "diffusers.models.transformers.transformer_qwenimage21"
    original_converter = "convert_qwen_image21_transformer_checkpoint_to_diffusers"
    text_encoders = (TextEncoder("qwen3_vl_8b", "text_encoder"),)
    latent_channels = 64
    vae_scale_factor = 16
    vae_class = "AutoencoderKLQwenImage21"
    vae_by_latent = {64: "vae-qwen-image-2.1"}
    prediction = "flow"
    flow_multiplier = 1.0  # the pipeline passes timestep / 1000 = sigma; the model multiplies by 1000 inside
    resolution_shift = True  # QwenImage21Pipeline: calculate_shift(image_seq_len, 256, 4096, 0.5, 1.15) unless configured
    patch_size = 1
    # QwenImage21Pipeline.__call__: 40 steps, true_cfg_scale 1.0 ("meant to be sampled without guidance")
    defaults = {"cfg": 1.0, "steps": 40, "sampler": "euler", "schedule": "simple"}

    def detect(self, t, original):
        width, in_ch = t["img_in.weight"].shape
        head_dim = t["transformer_blocks.0.attn.norm_q.weight"].shape[0]
        mlp = (t["transformer_blocks.0.img_mlp.gate_up.weight"].shape[0] // 2 if original
               else t["transformer_blocks.0.img_mlp.gate_layer.weight"].shape[0])
        rel = self.release("qwen-image-2.1")
        cfg = rel["transformer"]
        patch = int(cfg["patch_size"])  # 1: the release samples the VAE's latents unpatched (no shape tells the patch)
        cfg.update({
            "in_channels": in_ch // (patch * patch), "out_channels": t["proj_out.weight"].shape[0] // (patch * patch),
            "num_layers": count(t.keys(), _BLOCKS), "attention_head_dim": head_dim, "num_attention_heads": width // head_dim,
            "context_in_dim": t["txt_in.in_layer.weight"].shape[1], "mlp_ratio": mlp // width,
        })
        if head_dim != 128:  # a smaller model (the tests'): the rope axes in the release's proportions (16/56/56)
            a = 2 * max(1, head_dim // 16)
            b = (head_dim - a) // 2
            cfg["axes_dims_rope"] = [head_dim - 2 * b, b, b]
        det = self.detection("base-or-turbo", cfg, original)
        det.extras["ambiguous"] = ("base or Turbo: same layout (the base pipeline draws 40 steps without guidance; Turbo "
                                   "samples in a few steps)")
        return self.finish(det, rel)
