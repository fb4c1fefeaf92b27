"""Sana (NVIDIA): linear-attention DiT with GLUMBConv feed-forward, the 32x DC-AE, Gemma-2 prompts."""

from __future__ import annotations

from ..detection import heads
from ..keymaps import Q3, rule as _r
from .base import Family, TextEncoder

# the default complex human instruction (as in diffusers' SanaPipeline)
SANA_CHI = [
    "Given a user prompt, generate an 'Enhanced prompt' that provides detailed visual descriptions suitable for image generation. Evaluate the level of detail in the user prompt:",
    "- If the prompt is simple, focus on adding specifics about colors, shapes, sizes, textures, and spatial relationships to create vivid and concrete scenes.",
    "- If the prompt is already detailed, refine and enhance the existing details slightly without overcomplicating.",
    "Here are examples of how to transform or refine prompts:",
    "- User Prompt: A cat sleeping -> Enhanced: A small, fluffy white cat curled up in a round shape, sleeping peacefully on a warm sunny windowsill, surrounded by pots of blooming red flowers.",
    "- User Prompt: A busy city street -> Enhanced: A bustling city street scene at dusk, featuring glowing street lamps, a diverse crowd of people in colorful clothing, and a double-decker bus passing by towering glass skyscrapers.",
    "Please generate only the enhanced description for the prompt below and avoid including any additional commentary or evaluations:",
    "User Prompt: ",
]

_TB = "transformer_blocks.{i}"


class Sana(Family):
    name = "sana"
    label = "Sana"
    original_markers = (("x_embedder.proj.weight", "attention_y_norm.weight"),
                        ("x_embedder.proj.weight", "blocks.0.mlp.inverted_conv.conv.weight"))
    diffusers_markers = (("patch_embed.proj.weight", "caption_norm.weight"),
                         ("patch_embed.proj.weight", "transformer_blocks.0.ff.conv_inverted.weight"))
    detect_order = 30
    transformer_class = "SanaTransformer2DModel"
    transformer_module = "diffusers.models.transformers.sana_transformer"
    original_converter = "convert_sana_transformer_to_diffusers"
    converter_placeholders = ("pos_embed", "y_embedder.y_embedding")
    keymap = (
        _r("blocks.{i}.attn.qkv", [f"{_TB}.attn1.{q}" for q in Q3]),
        _r("blocks.{i}.attn.proj", f"{_TB}.attn1.to_out.0"),
        _r("blocks.{i}.cross_attn.q_linear", f"{_TB}.attn2.to_q"),
        _r("blocks.{i}.cross_attn.kv_linear", [f"{_TB}.attn2.to_k", f"{_TB}.attn2.to_v"]),
        _r("blocks.{i}.cross_attn.proj", f"{_TB}.attn2.to_out.0"),
        _r("blocks.{i}.mlp.inverted_conv.conv", f"{_TB}.ff.conv_inverted"),
        _r("blocks.{i}.mlp.depth_conv.conv", f"{_TB}.ff.conv_depth"),
        _r("blocks.{i}.mlp.point_conv.conv", f"{_TB}.ff.conv_point"),
        _r("x_embedder.proj", "patch_embed.proj"),
        _r("t_embedder.mlp.0", "time_embed.emb.timestep_embedder.linear_1"),
        _r("t_embedder.mlp.2", "time_embed.emb.timestep_embedder.linear_2"),
        _r("t_block.1", "time_embed.linear"),
        _r("y_embedder.y_proj.fc1", "caption_projection.linear_1"),
        _r("y_embedder.y_proj.fc2", "caption_projection.linear_2"),
        _r("final_layer.linear", "proj_out"),
    )
    text_encoders = (TextEncoder("gemma", "text_encoder", ("gemma2",)),)
    latent_channels = 32
    vae_scale_factor = 32
    vae_class = "AutoencoderDC"
    prediction = "flow"
    text_mask = True
    defaults = {"cfg": 4.5, "steps": 20, "sampler": "euler", "schedule": "normal"}
    mlx_port = "sana"
    lora_names = (r"(^|_)(conv_inverted|conv_depth|conv_point|inverted_conv|depth_conv|point_conv|time_embed)(_|$)",
                  "names (GLUMBConv ff / time_embed)")
    lora_shared = ("cross", "self")
    lora_rank = 40
    lora_widths = (2240,)
    lora_metadata = ("sana",)
    widgets_only = ("sana_instruction",)

    def detect(self, t, original):
        n, blocks = self.names(t, original)
        pe = t[n("patch_embed.proj.weight")].shape
        caption = t[n("caption_projection.linear_1.weight")].shape[1]
        layers = blocks("transformer_blocks.")
        inv = t[n("transformer_blocks.0.ff.conv_inverted.weight")].shape[0] if layers else 2 * 2.5 * pe[0]
        out = t[n("proj_out.weight")].shape[0]
        hidden, in_ch, patch = pe[0], pe[1], pe[2]
        variant = {1152: "600m", 2240: "1600m"}.get(hidden, "1600m")
        rel = self.release(f"sana-{variant}")
        cfg = rel["transformer"]
        nh, hd = heads(hidden, (32,))
        cross = {1152: (16, 72), 2240: (20, 112)}.get(hidden, (nh, hd))
        self.patch_config(cfg, nh, hd, in_ch, out, patch, layers, num_cross_attention_heads=cross[0], cross_attention_head_dim=cross[1],
                          cross_attention_dim=hidden, caption_channels=caption, mlp_ratio=inv / (2 * hidden))
        if hidden not in (1152, 2240):
            variant = f"{variant}-like"
        return self.finish(self.detection(variant, cfg, original), rel)

    def release_vae(self, variant):
        return "dc-ae-f32c32-sana"

    def flow_shift(self, sched):
        return float(sched.get("flow_shift", sched.get("shift", 3.0)) or 3.0)

    # ------------------------------------------------------------------ prompts and the model call
    def encode(self, te, prompts, cond, *, max_length=None, instruction=False, negative=False, **_):
        """Gemma's hidden states, the complex human instruction before the prompt (its tokens dropped after)."""
        enc, tok = te.encoder("gemma")
        texts, total, keep = self.texts(tok, prompts, max_length or 300, instruction, negative)
        if hasattr(tok, "padding_side"):
            tok.padding_side = "right"
        cond.embeds, cond.mask = te.gemma(enc, tok, texts, total, keep)

    @staticmethod
    def texts(tok, prompts, max_length: int, instruction=False, negative: bool = False):
        """``(texts, total, keep)``: the texts to tokenize to ``total`` tokens and, when the complex human instruction
        is prepended, the token positions to keep (``None`` when all are kept)."""
        chi = SANA_CHI if instruction is True else instruction
        if not chi or negative:
            return list(prompts), max_length, None
        chi_text = "\n".join(chi)
        total = len(tok.encode(chi_text)) + max_length - 2
        keep = [0] + list(range(total - max_length + 1, total))
        return [chi_text + p for p in prompts], total, keep

    def forward(self, den, x, t, cond):
        kw = {}
        if den.config.get("guidance_embeds"):  # Sana Sprint
            # as diffusers' SanaSprintPipeline: guidance (float32, in the embeds' dtype) times config.guidance_embeds_scale
            gs = den.config.get("guidance_embeds_scale", 0.1)
            gs = float(0.1 if gs is None else gs)  # SanaTransformer2DModel's default
            kw["guidance"] = den.cached(("guidance", x.shape[0], x.dtype), lambda: den.cast(
                den.full(x.shape[0], float(den.cond.guidance or 4.5), den.F32), x.dtype) * gs)
        scale = float(den.config.get("timestep_scale", 1.0) or 1.0)
        return den.run(hidden_states=x, encoder_hidden_states=cond["embeds"], encoder_attention_mask=cond.get("mask"),
                       timestep=t * scale, **kw)
