"""Flux.1 (Black Forest Labs): dev, schnell, fill and depth; double- and single-stream MMDiT, CLIP-L pooled + T5."""

from __future__ import annotations

from ...errors import UNSUPPORTED_ARCHITECTURE, SpriteForgeError
from ..keymaps import Q3, rule as _r, tensor_rule as _t
from .base import Family, TextEncoder

_TB = "transformer_blocks.{i}"
# the sizes FLUX.1 Kontext was trained at (FluxKontextPipeline's PREFERRED_KONTEXT_RESOLUTIONS, (width, height)):
# a reference is scaled to the one nearest its aspect
KONTEXT_RESOLUTIONS = ((672, 1568), (688, 1504), (720, 1456), (752, 1392), (800, 1328), (832, 1248), (880, 1184),
                       (944, 1104), (1024, 1024), (1104, 944), (1184, 880), (1248, 832), (1328, 800), (1392, 752),
                       (1456, 720), (1504, 688), (1568, 672))
KONTEXT_NOTE = ("dev or Kontext [dev]: same layout (any Flux.1 [dev]-layout model takes a reference image; "
                "Kontext's defaults then: guidance 2.5, 28 steps, the simple schedule)")
_ST = "single_transformer_blocks.{i}"


class Flux(Family):
    name = "flux"
    label = "Flux"
    original_markers = (("double_blocks.0.img_attn.qkv.weight",), ("img_in.weight", "txt_in.weight"))
    diffusers_markers = (("x_embedder.weight", "context_embedder.weight", "single_transformer_blocks.*"),)
    reference_manifests = {
        "flux1-dev.transformer.original": "dev", "flux1-dev.transformer.diffusers": "dev",
        "flux1-schnell.transformer.original": "schnell", "flux1-schnell.transformer.diffusers": "schnell",
    }
    detect_order = 10
    transformer_class = "FluxTransformer2DModel"
    transformer_module = "diffusers.models.transformers.transformer_flux"
    keymap = (
        _r("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1"),
        _r("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2"),
        _r("vector_in.in_layer", "time_text_embed.text_embedder.linear_1"),
        _r("vector_in.out_layer", "time_text_embed.text_embedder.linear_2"),
        _r("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1", optional=True),
        _r("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2", optional=True),
        _r("txt_in", "context_embedder"),
        _r("img_in", "x_embedder"),
        _r("double_blocks.{i}.img_mod.lin", f"{_TB}.norm1.linear"),
        _r("double_blocks.{i}.txt_mod.lin", f"{_TB}.norm1_context.linear"),
        _r("double_blocks.{i}.img_attn.qkv", [f"{_TB}.attn.{q}" for q in Q3]),
        _r("double_blocks.{i}.txt_attn.qkv", [f"{_TB}.attn.add_{c}_proj" for c in "qkv"]),
        _t("double_blocks.{i}.img_attn.norm.query_norm.scale", f"{_TB}.attn.norm_q.weight"),
        _t("double_blocks.{i}.img_attn.norm.key_norm.scale", f"{_TB}.attn.norm_k.weight"),
        _t("double_blocks.{i}.txt_attn.norm.query_norm.scale", f"{_TB}.attn.norm_added_q.weight"),
        _t("double_blocks.{i}.txt_attn.norm.key_norm.scale", f"{_TB}.attn.norm_added_k.weight"),
        _r("double_blocks.{i}.img_mlp.0", f"{_TB}.ff.net.0.proj"),
        _r("double_blocks.{i}.img_mlp.2", f"{_TB}.ff.net.2"),
        _r("double_blocks.{i}.txt_mlp.0", f"{_TB}.ff_context.net.0.proj"),
        _r("double_blocks.{i}.txt_mlp.2", f"{_TB}.ff_context.net.2"),
        _r("double_blocks.{i}.img_attn.proj", f"{_TB}.attn.to_out.0"),
        _r("double_blocks.{i}.txt_attn.proj", f"{_TB}.attn.to_add_out"),
        _r("single_blocks.{i}.modulation.lin", f"{_ST}.norm.linear"),
        _r("single_blocks.{i}.linear1", [f"{_ST}.attn.{q}" for q in Q3] + [f"{_ST}.proj_mlp"], split="width"),
        _t("single_blocks.{i}.norm.query_norm.scale", f"{_ST}.attn.norm_q.weight"),
        _t("single_blocks.{i}.norm.key_norm.scale", f"{_ST}.attn.norm_k.weight"),
        _r("single_blocks.{i}.linear2", f"{_ST}.proj_out"),
        _r("final_layer.linear", "proj_out"),
        _r("final_layer.adaLN_modulation.1", "norm_out.linear", "always"),
    )
    text_encoders = (TextEncoder("clip_l", "text_encoder"), TextEncoder("t5", "text_encoder_2", ("t5xxl",)))
    latent_channels = 16
    vae_by_latent = {16: "vae-kl16-flux"}
    prediction = "flow"
    flow_multiplier = 1.0
    resolution_shift = True
    variant_shift = {"schnell": 1.0}
    distilled_guidance = True
    patch_size = 2  # latents are packed 2x2 into tokens
    defaults = {"cfg": 1.0, "steps": 20, "sampler": "euler", "schedule": "normal"}
    variant_defaults = {"schnell": {"steps": 4}}
    mlx_port = "flux"
    lora_names = (r"(^|_)(double_blocks|single_blocks|single_transformer_blocks)_\d|(^|_)(img_attn|txt_attn|txt_mlp|img_mlp|guidance_in|vector_in)(_|$)",
                  "block names (double_blocks/single_blocks…)")
    lora_shared = ("joint",)
    lora_rank = 10
    lora_max_blocks = 19
    lora_widths = (3072,)
    lora_metadata = ("flux",)
    widgets_only = ("guidance",)
    # FLUX.1 Kontext [dev] (flux1-kontext-dev.safetensors) has [dev]'s layout: no tensor tells them apart, so every
    # [dev]-layout model takes one reference image (FluxKontextPipeline takes one), scaled to Kontext's trained sizes;
    # Kontext's defaults for an edit: FluxKontextPipeline's 28 steps, its sigmas (linspace(1, 1/steps) shifted by the
    # output's mu: our "simple" schedule) and its documented guidance 2.5
    max_references = 1
    edit_title = "FLUX.1 Kontext [dev] (flux1-kontext-dev.safetensors)"
    reference_resolutions = KONTEXT_RESOLUTIONS
    edit_defaults = {"guidance": 2.5, "steps": 28, "schedule": "simple"}

    def detect(self, t, original):
        n, blocks = self.names(t, original)
        hidden, in_ch = t[n("x_embedder.weight")].shape
        joint = t[n("context_embedder.weight")].shape[1]
        pooled = t[n("time_text_embed.text_embedder.linear_1.weight")].shape[1]
        guidance = n("time_text_embed.guidance_embedder.linear_1.weight") in t
        layers = blocks("transformer_blocks.")
        single = blocks("single_transformer_blocks.")
        head_dim = t[n("transformer_blocks.0.attn.norm_q.weight")].shape[0] if layers else 128
        out = t[n("proj_out.weight")].shape[0]
        if in_ch == 384:
            variant = "fill"
        elif in_ch == 128:
            variant = "depth"
        else:
            variant = "dev" if guidance else "schnell"
        rel = self.release(f"flux-{variant}")
        cfg = rel["transformer"]
        axes = [16, 56, 56] if head_dim == 128 else [head_dim // 8, head_dim * 7 // 16, head_dim * 7 // 16]
        if sum(axes) != head_dim or any(a % 2 for a in axes):
            a = 2 * (head_dim // 8)
            b = 2 * ((head_dim - a) // 4)
            axes = [head_dim - 2 * b, b, b]
        cfg.update(
            in_channels=in_ch,
            out_channels=None if out == in_ch else out,
            num_layers=layers,
            num_single_layers=single,
            attention_head_dim=head_dim,
            num_attention_heads=hidden // head_dim,
            joint_attention_dim=joint,
            pooled_projection_dim=pooled,
            guidance_embeds=guidance,
            axes_dims_rope=axes,
        )
        det = self.detection(variant, cfg, original)
        det.extras["guidance_embeds"] = guidance
        det.extras["in_channels"] = in_ch
        if variant == "dev":
            det.extras["ambiguous"] = KONTEXT_NOTE
        return self.finish(det, rel)

    def variant_from_folder(self, cfg, pipeline_class, detected, vae_factor=8):
        return detected if detected is not None else ("dev" if cfg.get("guidance_embeds") else "schnell")

    def is_fill(self, variant, in_channels):
        # Flux Fill: 384 input channels = latent + masked-image latent + packed mask
        return in_channels == 384 or "fill" in (variant or "").lower()

    def references_of(self, variant, in_channels=0):
        """Kontext is a [dev]-layout model: schnell (no guidance input) and Fill (its input carries the masked
        image) take none."""
        if "schnell" in (variant or "").lower() or self.is_fill(variant, in_channels):
            return 0
        return self.max_references

    def check_input_channels(self, in_channels):
        if in_channels not in (0, 64, 384):
            raise SpriteForgeError(UNSUPPORTED_ARCHITECTURE, f"this Flux model takes {in_channels} input channels (a control model such as "
                                   "Flux Depth/Canny); SpriteForge generates with Flux dev/schnell and Flux Fill. Load one of those.")

    def handle_extras(self, det, cfg):
        return {"guidance_embeds": bool(cfg.get("guidance_embeds")), "in_channels": int(cfg.get("in_channels", 64))}

    # ------------------------------------------------------------------ prompts and the model call
    def encode(self, te, prompts, cond, *, max_length=None, **_):
        """T5's hidden states and CLIP-L's pooled output; guidance 3.5 unless given."""
        _, pooled = te.clip("clip_l", prompts)
        schnell = "schnell" in (te.handle.variant or "").lower()
        t5, _ = te.t5(prompts, max_length or (256 if schnell else 512))
        cond.embeds, cond.pooled = t5, te.like(pooled, t5)
        if cond.guidance is None:
            cond.guidance = 3.5

    def forward(self, den, x, t, cond):
        """On 2x2-packed latent tokens (Fill: with the masked image's tokens after them), positions as (0, row, col);
        a reference image's packed latents (Kontext) follow the image's tokens at positions (1, row, col), and only
        the image's tokens' output is kept (FluxKontextPipeline)."""
        b, _, h, w = x.shape
        hs = den.pack(x)
        n = hs.shape[1]
        fill = den.fill_tokens(h, w, b)
        if fill is not None:
            hs = den.ops.concat([hs, den.cast(fill, hs.dtype)], 2)
        refs = den.references(cond)
        g = None
        if den.config.get("guidance_embeds"):
            g = den.cached(("guidance", b, x.dtype), lambda: den.full(
                b, float(den.cond.guidance if den.cond.guidance is not None else 3.5), x.dtype))
        txt = cond["embeds"]
        shapes = tuple((r.shape[2], r.shape[3]) for r in refs)
        img_ids = den.cached(("img_ids", h, w, shapes, x.dtype), lambda: den.rows(
            [[0.0, float(i), float(j)] for i in range(h // 2) for j in range(w // 2)]
            + [[1.0, float(i), float(j)] for rh, rw in shapes for i in range(rh // 2) for j in range(rw // 2)], x.dtype))
        if refs:
            hs = den.ops.concat([hs, *(den.cast(den.pack(r), hs.dtype) for r in refs)], 1)
        txt_ids = den.cached(("txt_ids", txt.shape[1], x.dtype), lambda: den.zeros((txt.shape[1], 3), x.dtype))
        out = den.run(hidden_states=hs, encoder_hidden_states=txt, pooled_projections=cond["pooled"], timestep=t, guidance=g,
                      img_ids=img_ids, txt_ids=txt_ids)
        return den.unpack(out[:, :n] if refs else out, h, w)
