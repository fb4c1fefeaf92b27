"""Krea 2 (Krea): 12.8B single-stream DiT with a text-fusion stack over Qwen3-VL-4B hidden states, the Qwen-Image VAE.

Recognised only (``generation = False``). The released files are mixed precision (bf16 matrices, f32 norms and
modulation): detection reports every dtype a file holds (``extras["dtypes"]``), never one per file.
"""

from __future__ import annotations

from ..detection import count
from .base import Family, TextEncoder

# krea's original names (Comfy-Org krea2_{raw,turbo}_bf16) and diffusers' Krea2Transformer2DModel names
_NAMES = {
    True: {"embed": "first.weight", "blocks": r"blocks\.(\d+)\.", "q_norm": "blocks.0.attn.qknorm.qnorm.scale",
           "k": "blocks.0.attn.wk.weight", "mlp": "blocks.0.mlp.gate.weight", "time": "tmlp.0.weight",
           "text_norm": "txtmlp.0.scale", "projector": "txtfusion.projector.weight", "fusion": "txtfusion.",
           "fusion_k": "attn.wk.weight", "fusion_mlp": "mlp.gate.weight", "fusion_q_norm": "attn.qknorm.qnorm.scale"},
    False: {"embed": "img_in.weight", "blocks": r"transformer_blocks\.(\d+)\.", "q_norm": "transformer_blocks.0.attn.norm_q.weight",
            "k": "transformer_blocks.0.attn.to_k.weight", "mlp": "transformer_blocks.0.ff.gate.weight",
            "time": "time_embed.linear_1.weight", "text_norm": "txt_in.norm.weight", "projector": "text_fusion.projector.weight",
            "fusion": "text_fusion.", "fusion_k": "attn.to_k.weight", "fusion_mlp": "ff.gate.weight",
            "fusion_q_norm": "attn.norm_q.weight"},
}


class Krea2(Family):
    name = "krea2"
    label = "Krea 2"
    # krea2_raw_bf16 and krea2_turbo_bf16 hold the same tensors (byte-identical sizes): no shape tells them apart
    variant_titles = {"raw-or-turbo": "(raw or turbo: same layout)"}
    distilled_variants = {"raw-or-turbo": ("turbo", "raw")}  # Krea2Pipeline's is_distilled
    generation = False
    original_markers = (("txtfusion.projector.weight", "blocks.0.mod.lin"),)
    diffusers_markers = (("text_fusion.projector.weight", "transformer_blocks.0.scale_shift_table"),)
    reference_manifests = {"krea2.transformer.original": "raw-or-turbo", "krea2.transformer.diffusers": "raw-or-turbo"}
    detect_order = 30
    transformer_class = "Krea2Transformer2DModel"
    transformer_module = "diffusers.models.transformers.transformer_krea2"
    text_encoders = (TextEncoder("qwen3_vl_4b", "text_encoder"),)
    latent_channels = 16
    vae_class = "AutoencoderKLQwenImage"  # Comfy-Org/Krea-2 ships qwen_image_vae.safetensors
    prediction = "flow"
    resolution_shift = True  # Krea2Pipeline: calculate_shift(image_seq_len, ...); a distilled model: mu = 1.15
    # diffusers pipelines/krea2/pipeline_krea2.py: __call__ and its example, base checkpoint: 28 steps, guidance 4.5;
    # "for the few-step distilled (TDM) checkpoint use num_inference_steps=8, guidance_scale=0.0"
    defaults = {"cfg": 4.5, "steps": 28, "sampler": "euler", "schedule": "normal"}

    def detect(self, t, original):
        n = _NAMES[original]
        width, in_ch = t[n["embed"]].shape
        head_dim = t[n["q_norm"]].shape[0]
        fusion = n["fusion"]
        text_dim = t[n["text_norm"]].shape[0]
        text_head = t[f"{fusion}layerwise_blocks.0.{n['fusion_q_norm']}"].shape[0]
        cfg = {
            "_class_name": self.transformer_class,
            "in_channels": in_ch,
            "num_layers": count(t.keys(), n["blocks"]),
            "attention_head_dim": head_dim, "num_attention_heads": width // head_dim,
            "num_key_value_heads": t[n["k"]].shape[0] // head_dim,
            "intermediate_size": t[n["mlp"]].shape[0],
            "timestep_embed_dim": t[n["time"]].shape[1],
            "text_hidden_dim": text_dim,
            "num_text_layers": t[n["projector"]].shape[1],  # the projector mixes this many Qwen3-VL hidden states
            "text_num_attention_heads": text_dim // text_head,
            "text_num_key_value_heads": t[f"{fusion}layerwise_blocks.0.{n['fusion_k']}"].shape[0] // text_head,
            "text_intermediate_size": t[f"{fusion}layerwise_blocks.0.{n['fusion_mlp']}"].shape[0],
            "num_layerwise_text_blocks": count(t.keys(), rf"{fusion}layerwise_blocks\.(\d+)\."),
            "num_refiner_text_blocks": count(t.keys(), rf"{fusion}refiner_blocks\.(\d+)\."),
            "axes_dims_rope": [32, 48, 48], "rope_theta": 1000.0, "norm_eps": 1e-05,
        }
        return self.detection("raw-or-turbo", cfg, original)
