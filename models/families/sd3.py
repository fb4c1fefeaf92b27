"""Stable Diffusion 3 / 3.5 (Stability AI): joint-attention MMDiT, CLIP-L + CLIP-G + T5."""

from __future__ import annotations

import math

from ..detection import indices
from ..keymaps import Q3, rule as _r, tensor_rule as _t
from .base import Family, TextEncoder

_TB = "transformer_blocks.{i}"
# (layers, width) of each release; other shapes are named "<release>-like"
_RELEASES = {"sd3-medium": (24, 1536), "sd3.5-medium": (24, 1536), "sd3.5-large": (38, 2432)}


class SD3(Family):
    name = "sd3"
    label = "SD3"
    original_markers = (("x_embedder.proj.weight", "context_embedder.weight", "joint_blocks.*"),)
    diffusers_markers = (("pos_embed.proj.weight", "context_embedder.weight", "time_text_embed.text_embedder.linear_1.weight"),)
    reference_manifests = {
        "sd3-medium.mmdit.original": "sd3-medium", "sd3-medium.mmdit.diffusers": "sd3-medium",
        "sd3.5-medium.mmdit.original": "sd3.5-medium", "sd3.5-medium.mmdit.diffusers": "sd3.5-medium",
        "sd3.5-large.mmdit.original": "sd3.5-large", "sd3.5-large.mmdit.diffusers": "sd3.5-large",
    }
    detect_order = 20
    transformer_class = "SD3Transformer2DModel"
    transformer_module = "diffusers.models.transformers.transformer_sd3"
    original_converter = "convert_sd3_transformer_checkpoint_to_diffusers"  # the table below tells detection and LoRA where to look
    keymap = (
        _r("joint_blocks.{i}.x_block.attn.qkv", [f"{_TB}.attn.{q}" for q in Q3]),
        _r("joint_blocks.{i}.x_block.attn.proj", f"{_TB}.attn.to_out.0"),
        _r("joint_blocks.{i}.x_block.attn2.qkv", [f"{_TB}.attn2.{q}" for q in Q3]),
        _r("joint_blocks.{i}.x_block.attn2.proj", f"{_TB}.attn2.to_out.0"),
        _r("joint_blocks.{i}.context_block.attn.qkv", [f"{_TB}.attn.add_{c}_proj" for c in "qkv"]),
        _r("joint_blocks.{i}.context_block.attn.proj", f"{_TB}.attn.to_add_out"),
        _r("joint_blocks.{i}.x_block.mlp.fc1", f"{_TB}.ff.net.0.proj"),
        _r("joint_blocks.{i}.x_block.mlp.fc2", f"{_TB}.ff.net.2"),
        _r("joint_blocks.{i}.context_block.mlp.fc1", f"{_TB}.ff_context.net.0.proj"),
        _r("joint_blocks.{i}.context_block.mlp.fc2", f"{_TB}.ff_context.net.2"),
        _r("joint_blocks.{i}.x_block.adaLN_modulation.1", f"{_TB}.norm1.linear"),
        _r("joint_blocks.{i}.context_block.adaLN_modulation.1", f"{_TB}.norm1_context.linear", "if2"),
        _r("x_embedder.proj", "pos_embed.proj"),
        _r("t_embedder.mlp.0", "time_text_embed.timestep_embedder.linear_1"),
        _r("t_embedder.mlp.2", "time_text_embed.timestep_embedder.linear_2"),
        _r("y_embedder.mlp.0", "time_text_embed.text_embedder.linear_1"),
        _r("y_embedder.mlp.2", "time_text_embed.text_embedder.linear_2"),
        _r("final_layer.linear", "proj_out"),
        _r("final_layer.adaLN_modulation.1", "norm_out.linear", "always"),
        # (SD3 files are converted by diffusers' converter; these renames tell detection where to look)
        _t("joint_blocks.{i}.x_block.attn.ln_q.weight", f"{_TB}.attn.norm_q.weight"),
        _t("joint_blocks.{i}.x_block.attn.ln_k.weight", f"{_TB}.attn.norm_k.weight"),
        _t("pos_embed", "pos_embed.pos_embed"),
    )
    text_encoders = (TextEncoder("clip_l", "text_encoder"), TextEncoder("clip_g", "text_encoder_2"),
                     TextEncoder("t5", "text_encoder_3", ("t5xxl",)))
    latent_channels = 16
    projected_clip = True
    prediction = "flow"
    defaults = {"cfg": 5.0, "steps": 28, "sampler": "euler", "schedule": "normal"}
    mlx_port = "sd3"
    lora_names = (r"(^|_)joint_blocks_\d|(^|_)(x_block|context_block)_", "MMDiT block names (joint_blocks/x_block/context_block)")
    lora_shared = ("joint",)
    lora_rank = 20
    lora_tells = r"(^|_)attn2_|(^|_)pos_embed_"  # dual attention (3.5 medium), the position table
    lora_widths = (1536, 2432)
    lora_max_blocks = 38  # SD3.5 large (a LoRA on more joint blocks is Qwen-Image's)
    lora_metadata = ("sd3", "stable-diffusion-v3")

    def detect(self, t, original):
        n, blocks = self.names(t, original)
        pe = t[n("pos_embed.proj.weight")].shape
        ctx = t[n("context_embedder.weight")].shape
        pooled = t[n("time_text_embed.text_embedder.linear_1.weight")].shape[1]
        layers = blocks("transformer_blocks.")
        dual = indices(t.keys(), r"joint_blocks\.(\d+)\.x_block\.attn2\." if original else r"transformer_blocks\.(\d+)\.attn2\.")
        qk = n("transformer_blocks.0.attn.norm_q.weight") in t
        head_dim = t[n("transformer_blocks.0.attn.norm_q.weight")].shape[0] if qk else 64
        out = t[n("proj_out.weight")].shape[0]
        pos = t[n("pos_embed.pos_embed")].shape[1] if n("pos_embed.pos_embed") in t else 192 * 192
        hidden, in_ch, patch = pe[0], pe[1], pe[2]
        if layers == 38 or (qk and not dual):
            variant = "sd3.5-large"
        elif dual:
            variant = "sd3.5-medium"
        else:
            variant = "sd3-medium"
        rel = self.release(variant)
        cfg = rel["transformer"]
        cfg.update(
            patch_size=patch,
            in_channels=in_ch,
            num_layers=layers,
            attention_head_dim=head_dim,
            num_attention_heads=hidden // head_dim,
            joint_attention_dim=ctx[1],
            caption_projection_dim=ctx[0],
            pooled_projection_dim=pooled,
            out_channels=out // (patch * patch),
            pos_embed_max_size=int(round(math.sqrt(pos))),
            dual_attention_layers=dual,
            qk_norm="rms_norm" if qk else None,
        )
        if (layers, hidden) != _RELEASES[variant]:
            variant = f"{variant}-like"
        return self.finish(self.detection(variant, cfg, original), rel)

    def flow_shift(self, sched):
        return float(sched.get("shift", 3.0))

    # ------------------------------------------------------------------ prompts and the model call
    def encode(self, te, prompts, cond, *, max_length=None, **_):
        """CLIP-L and CLIP-G hidden states side by side, fitted to T5's width, then T5's (zeros without T5) along the
        sequence; the two pooled outputs side by side."""
        ops, n = te.ops, max_length or 256
        l_h, l_p = te.clip("clip_l", prompts)
        g_h, g_p = te.clip("clip_g", prompts)
        clip_h = ops.concat([l_h, g_h], -1)
        t5, _ = te.t5(prompts, n, required=False)
        if t5 is None:
            t5 = ops.zeros((len(prompts), n, self._joint_width(te.handle)), clip_h)
        clip_h = te.fit_width(clip_h, t5.shape[-1])
        cond.embeds = ops.concat([clip_h, te.like(t5, clip_h)], -2)
        cond.pooled = ops.concat([l_p, g_p], -1)

    @staticmethod
    def _joint_width(handle) -> int:
        return int((handle.config or {}).get("joint_attention_dim")
                   or getattr(getattr(handle.transformer, "config", None), "joint_attention_dim", 4096))

    def forward(self, den, x, t, cond):
        return den.run(hidden_states=x, encoder_hidden_states=cond["embeds"], pooled_projections=cond["pooled"], timestep=t)
