"""PixArt-α and PixArt-Σ (256 to 2K): cross-attention DiT with adaLN-single, T5 prompts."""

from __future__ import annotations

import math

from .. import configs
from ..detection import heads, res_name
from ..keymaps import Q3, rule as _r, tensor_rule as _t
from .base import Family, TextEncoder, learned_sigma

_TB = "transformer_blocks.{i}"


class PixArt(Family):
    name = "pixart"
    label = "PixArt"
    original_markers = (("x_embedder.proj.weight", "y_embedder.y_proj.fc1.weight"),)
    diffusers_markers = (("pos_embed.proj.weight", "adaln_single.linear.weight", "caption_projection.linear_1.weight"),)
    reference_manifests = {"pixart-sigma-xl-2-1024-ms.original": "sigma-1024", "pixart-sigma-xl-2-1024-ms.diffusers": "sigma-1024"}
    detect_order = 40
    transformer_class = "PixArtTransformer2DModel"
    transformer_module = "diffusers.models.transformers.pixart_transformer_2d"
    keymap = (
        _r("x_embedder.proj", "pos_embed.proj"),
        _r("t_embedder.mlp.0", "adaln_single.emb.timestep_embedder.linear_1"),
        _r("t_embedder.mlp.2", "adaln_single.emb.timestep_embedder.linear_2"),
        _r("t_block.1", "adaln_single.linear"),
        # PixArt-α 1024's micro-conditions
        _r("csize_embedder.mlp.0", "adaln_single.emb.resolution_embedder.linear_1", optional=True),
        _r("csize_embedder.mlp.2", "adaln_single.emb.resolution_embedder.linear_2", optional=True),
        _r("ar_embedder.mlp.0", "adaln_single.emb.aspect_ratio_embedder.linear_1", optional=True),
        _r("ar_embedder.mlp.2", "adaln_single.emb.aspect_ratio_embedder.linear_2", optional=True),
        _r("y_embedder.y_proj.fc1", "caption_projection.linear_1"),
        _r("y_embedder.y_proj.fc2", "caption_projection.linear_2"),
        _t("blocks.{i}.scale_shift_table", f"{_TB}.scale_shift_table"),
        _r("blocks.{i}.attn.qkv", [f"{_TB}.attn1.{q}" for q in Q3]),
        _r("blocks.{i}.cross_attn.kv_linear", [f"{_TB}.attn2.to_k", f"{_TB}.attn2.to_v"]),
        _r("blocks.{i}.attn.proj", f"{_TB}.attn1.to_out.0"),
        _r("blocks.{i}.cross_attn.q_linear", f"{_TB}.attn2.to_q"),
        _r("blocks.{i}.cross_attn.proj", f"{_TB}.attn2.to_out.0"),
        _r("blocks.{i}.mlp.fc1", f"{_TB}.ff.net.0.proj"),
        _r("blocks.{i}.mlp.fc2", f"{_TB}.ff.net.2"),
        _t("final_layer.scale_shift_table", "scale_shift_table"),
        _r("final_layer.linear", "proj_out"),
    )
    # fixed sin-cos position table diffusers recomputes; the learned null caption (diffusers encodes "" instead)
    dropped = ("pos_embed", "y_embedder.y_embedding")
    text_encoders = (TextEncoder("t5", "text_encoder", ("t5xxl",)),)
    text_mask = True
    defaults = {"cfg": 4.5, "steps": 20, "sampler": "dpmpp_2m", "schedule": "normal"}
    mlx_port = "pixart"
    lora_names = (r"(^|_)(adaln_single|t_block)(_|$)", "names (adaln_single/t_block)")
    lora_shared = ("cross", "self")
    lora_rank = 30
    lora_metadata = ("pixart",)

    def detect(self, t, original):
        n, blocks = self.names(t, original)
        pe = t[n("pos_embed.proj.weight")].shape
        caption = t[n("caption_projection.linear_1.weight")].shape[1]
        layers = blocks("transformer_blocks.")
        out = t[n("proj_out.weight")].shape[0]
        extra_cond = n("adaln_single.emb.resolution_embedder.linear_1.weight") in t
        tokens = sample = None  # only the original layout keeps the null caption and the position table
        if original:
            tokens = t["y_embedder.y_embedding"].shape[0] if "y_embedder.y_embedding" in t else None
            sample = int(round(math.sqrt(t["pos_embed"].shape[1]))) * pe[2] if "pos_embed" in t else None
        hidden, in_ch, patch = pe[0], pe[1], pe[2]
        alpha = extra_cond or tokens == 120
        if sample is None:
            sample = 128
        gen = "alpha" if alpha else "sigma"
        res = res_name(sample)
        interp = (sample / 64 if sample != 64 else 1) if gen == "sigma" else None
        name = f"pixart-{gen}-{res}"
        if name not in configs.names():
            name = f"pixart-{gen}-1024"
        rel = self.release(name)
        nh, hd = heads(hidden, (72, 64))
        cfg = rel["transformer"]
        self.patch_config(cfg, nh, hd, in_ch, out, patch, layers, cross_attention_dim=hidden, sample_size=sample, caption_channels=caption,
                          use_additional_conditions=bool(extra_cond), interpolation_scale=interp)
        det = self.detection(f"{gen}-{res}", cfg, original)
        if tokens:
            det.extras["max_sequence_length"] = 300 if tokens >= 300 else tokens
        if not original:
            det.extras["ambiguous"] = "a diffusers-layout PixArt file does not record its resolution; assumed 1024"
        det.extras["sigma_learned"] = cfg["out_channels"] == 2 * in_ch
        return self.finish(det, rel)

    def variant_from_folder(self, cfg, pipeline_class, detected, vae_factor=8):
        gen = "alpha" if "Alpha" in pipeline_class else "sigma"
        return f"{gen}-{res_name(cfg.get('sample_size', 128), vae_factor)}"

    def variant_from_config(self, det, cfg, vae_factor=8):
        # the weights do not record the sample size: the config's, in pixels of the VAE it sits with
        if isinstance(cfg.get("sample_size"), int):
            gen = (det.variant or "sigma").split("-")[0]
            det.variant = f"{gen}-{res_name(cfg['sample_size'], vae_factor)}"
            det.extras.pop("ambiguous", None)

    def vae_config_name(self, variant, latent):
        if latent != 16 and variant and variant.startswith("alpha"):
            return "vae-kl4-sd"  # PixArt-α shipped with the SD 1.x VAE, Σ with SDXL's
        return super().vae_config_name(variant, latent)

    def handle_extras(self, det, cfg):
        return {"sigma_learned": learned_sigma(cfg)}

    # ------------------------------------------------------------------ prompts and the model call
    def encode(self, te, prompts, cond, *, max_length=None, **_):
        cond.embeds, cond.mask = te.t5(prompts, self.max_length(te.handle, max_length))

    @staticmethod
    def max_length(handle, given: int | None = None) -> int:
        """The T5 length: the caller's, the file's, else 120 for α and 300 for Σ."""
        return int(given or (handle.extras or {}).get("max_sequence_length") or (
            120 if "alpha" in (handle.variant or "").lower() else 300))

    def forward(self, den, x, t, cond):
        b, _, h, w = x.shape
        add = {"resolution": None, "aspect_ratio": None}
        if getattr(den.module, "use_additional_conditions", False):  # PixArt-α 1024's micro-conditions
            f = den.handle.vae_scale_factor or 8
            add = den.cached(("micro", b, h, w, x.dtype), lambda: {"resolution": den.rows([[h * f, w * f]] * b, x.dtype),
                                                                  "aspect_ratio": den.rows([[h / w]] * b, x.dtype)})
        return den.run(hidden_states=x, encoder_hidden_states=cond["embeds"], encoder_attention_mask=cond.get("mask"),
                       timestep=t, added_cond_kwargs=add)
