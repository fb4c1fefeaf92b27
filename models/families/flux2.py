"""FLUX.2 (Black Forest Labs): [klein] 4B and 9B, [dev] 32B; double- and single-stream MMDiT with global modulation,
a Qwen3 ([klein]) or Mistral-3 ([dev]) text encoder, the 32-channel FLUX.2 VAE.

Recognised only (``generation = False``). The variant comes from the shapes (width, block counts, guidance input),
never from the name: diffusers' own single-file path maps every FLUX.2 file to the [dev] config.
"""

from __future__ import annotations

from .. import configs
from ..detection import Detection, count
from .base import Family, TextEncoder

# (width, double blocks, single blocks, guidance input) -> variant, as released (BFL's Flux2Params, diffusers'
# convert_flux2_to_diffusers.py configs; checked against the reference manifests)
_RELEASES = {(3072, 5, 20, False): "klein-4B", (4096, 8, 24, False): "klein-9B", (6144, 8, 48, True): "dev"}
# each size's text encoder (its hidden states, three layers stacked, are the transformer's joint width)
_TEXT_ENCODER = {"4b": "qwen3_4b", "9b": "qwen3_8b", "dev": "mistral3"}
_NAMES = {
    True: {"embed": "img_in.weight", "context": "txt_in.weight", "double": r"double_blocks\.(\d+)\.", "single": r"single_blocks\.(\d+)\.",
           "guidance": "guidance_in.in_layer.weight", "time": "time_in.in_layer.weight",
           "q_norm": "double_blocks.0.img_attn.norm.query_norm.scale", "mlp_in": "double_blocks.0.img_mlp.0.weight"},
    False: {"embed": "x_embedder.weight", "context": "context_embedder.weight", "double": r"transformer_blocks\.(\d+)\.",
            "single": r"single_transformer_blocks\.(\d+)\.", "guidance": "time_guidance_embed.guidance_embedder.linear_1.weight",
            "time": "time_guidance_embed.timestep_embedder.linear_1.weight", "q_norm": "transformer_blocks.0.attn.norm_q.weight",
            "mlp_in": "transformer_blocks.0.ff.linear_in.weight"},
}


class Flux2(Family):
    name = "flux2"
    label = "FLUX.2"
    # [klein] distilled and [klein] base of one size share a layout: detection says so rather than guess
    variant_titles = {"klein-4B": "[klein] 4B (distilled or base: same layout)",
                      "klein-9B": "[klein] 9B (distilled or base: same layout)", "dev": "[dev]",
                      "klein-4B-distilled": "[klein] 4B (distilled)", "klein-base-4B": "[klein] base 4B",
                      "klein-9B-distilled": "[klein] 9B (distilled)", "klein-base-9B": "[klein] base 9B"}
    distilled_variants = {"klein-4B": ("klein-4B-distilled", "klein-base-4B"), "klein-9B": ("klein-9B-distilled", "klein-base-9B")}
    generation = False
    original_markers = (("double_stream_modulation_img.lin.weight", "img_in.weight"),)
    diffusers_markers = (("double_stream_modulation_img.linear.weight", "x_embedder.weight"),)
    reference_manifests = {
        "flux2-klein-4b.transformer.original": "klein-4B", "flux2-klein-4b.transformer.diffusers": "klein-4B",
        "flux2-klein-9b.transformer.original": "klein-9B", "flux2-klein-9b.transformer.diffusers": "klein-9B",
        "flux2-dev.transformer.original": "dev", "flux2-dev.transformer.diffusers": "dev",
    }
    detect_order = 5  # before Flux.1: its original markers (double_blocks.0.img_attn.qkv) match FLUX.2 files too
    # names only FLUX.2 has: the shared modulation, the single blocks' fused projection (and their to_out: Flux.1's
    # single blocks have none), the SwiGLU feed-forward. Its original-layout block names (double_blocks_N_img_attn_qkv,
    # single_blocks_N_linear1) are Flux.1's too: a LoRA on those alone is read as Flux.1 (see loras.py).
    lora_names = (r"(^|_)(double_stream_modulation_(img|txt)|single_stream_modulation)(_|$)"
                  r"|(^|_)single_transformer_blocks_\d+_attn_(to_qkv_mlp_proj|to_out)(_|$)|(^|_)(ff|ff_context)_linear_(in|out)(_|$)",
                  "names (shared modulation, single_transformer_blocks.N.attn.to_qkv_mlp_proj, ff.linear_in)")
    transformer_class = "Flux2Transformer2DModel"
    transformer_module = "diffusers.models.transformers.transformer_flux2"
    text_encoders = (TextEncoder("qwen3_4b", "text_encoder"), TextEncoder("qwen3_8b", "text_encoder"),
                     TextEncoder("mistral3", "text_encoder"))
    latent_channels = 32
    latent_patch = 2  # the pipelines patchify the VAE's 32-channel latent 2x2 (128 channels, 16 px a token)
    vae_class = "AutoencoderKLFlux2"
    prediction = "flow"
    # the shift follows pipeline_flux2(_klein).compute_empirical_mu(image_seq_len, num_steps): its own rule, to be
    # declared with generation
    distilled_guidance = True  # [dev] takes guidance as a model input (guidance_in)
    # diffusers pipelines/flux2/pipeline_flux2_klein.py: example (klein-base-9B) 50 steps, guidance_scale=4.0 as CFG;
    # a distilled [klein] ignores CFG (config.is_distilled). pipeline_flux2.py ([dev]): 50 steps, guidance 2.5.
    defaults = {"cfg": 4.0, "steps": 50, "sampler": "euler", "schedule": "normal"}
    variant_defaults = {"dev": {"cfg": 1.0, "guidance": 2.5}}

    def detect(self, t, original):
        n = _NAMES[original]
        width, in_ch = t[n["embed"]].shape
        head_dim = t[n["q_norm"]].shape[0]
        double, single = count(t.keys(), n["double"]), count(t.keys(), n["single"])
        guidance = n["guidance"] in t
        variant = _RELEASES.get((width, double, single, guidance), "custom")
        cfg = {
            "_class_name": self.transformer_class,
            "patch_size": 1, "in_channels": in_ch, "out_channels": None,
            "num_layers": double, "num_single_layers": single,
            "attention_head_dim": head_dim, "num_attention_heads": width // head_dim,
            "joint_attention_dim": t[n["context"]].shape[1],
            "timestep_guidance_channels": t[n["time"]].shape[1],
            "mlp_ratio": t[n["mlp_in"]].shape[0] / (2 * width),  # SwiGLU: gate and value in one matrix
            "axes_dims_rope": [32, 32, 32, 32], "rope_theta": 2000, "eps": 1e-06,
            "guidance_embeds": guidance,
        }
        det = self.detection(variant, cfg, original)
        det.extras["guidance_embeds"] = guidance
        return det

    def vae_config_name(self, variant, latent):
        return VAE_CONFIG

    def text_encoders_of(self, variant):
        low = (variant or "").lower()
        keys = {key for word, key in _TEXT_ENCODER.items() if word in low}
        return tuple(te for te in self.text_encoders if te.key in keys) or self.text_encoders


VAE_CONFIG = "flux2-vae"


def detect_vae(t) -> Detection:
    """The FLUX.2 VAE (prefix-less tensors holding ``bn.running_mean``): a KL VAE whose 32-channel latents the
    pipelines patchify 2x2 and normalise by its batch-norm statistics. Two layouts are published under one name
    (``flux2-vae.safetensors``): BFL's original (``encoder.down.N.block``, quant convs inside ``encoder.`` /
    ``decoder.``) and diffusers' ``AutoencoderKLFlux2``; the names tell which."""
    original = "encoder.down.0.block.0.conv1.weight" in t
    block = "encoder.down.{}.block.0.conv1.weight" if original else "encoder.down_blocks.{}.resnets.0.conv1.weight"
    levels = count(t.keys(), r"encoder\.down\.(\d+)\." if original else r"encoder\.down_blocks\.(\d+)\.")
    per_level = count(t.keys(), r"encoder\.down\.0\.block\.(\d+)\." if original else r"encoder\.down_blocks\.0\.resnets\.(\d+)\.")
    cfg = configs.load(VAE_CONFIG)["config"]
    norm_out = t["encoder.norm_out.weight" if original else "encoder.conv_norm_out.weight"].shape[0]
    cfg.update(latent_channels=t["decoder.conv_in.weight"].shape[1], block_out_channels=[t[block.format(i)].shape[0] for i in range(levels)],
               down_block_types=["DownEncoderBlock2D"] * levels, up_block_types=["UpDecoderBlock2D"] * levels,
               layers_per_block=per_level, norm_num_groups=min(32, norm_out))
    det = Detection(None, "flux2", "vae", cfg, layout="original" if original else "diffusers")
    det.extras["config_name"] = VAE_CONFIG
    tracked = t.get("bn.num_batches_tracked")
    det.extras["batch_norm"] = (f"bn.running_mean/var {list(t['bn.running_mean'].shape)}"
                                + (f", num_batches_tracked {tracked.dtype}" if tracked is not None else ""))
    return det
