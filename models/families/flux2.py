"""FLUX.2 (Black Forest Labs): [klein] 4B and 9B, [dev] 32B; double- and single-stream MMDiT with global modulation,
a Qwen3 ([klein]) or Mistral-3 ([dev]) text encoder, the 32-channel FLUX.2 VAE.

The variant comes from the shapes (width, block counts, guidance input), never from the name: diffusers' own
single-file path maps every FLUX.2 file to the [dev] config.
"""

from __future__ import annotations

import re

from ...errors import BAD_INPUT, SpriteForgeError
from .. import configs
from ..detection import Detection, count
from ..keymaps import Q3, rule as _r, tensor_rule as _t
from .base import Family, TextEncoder

_TB = "transformer_blocks.{i}"
_ST = "single_transformer_blocks.{i}"

# (width, double blocks, single blocks, guidance input) -> variant, as released (BFL's Flux2Params, diffusers'
# convert_flux2_to_diffusers.py configs; checked against the reference manifests)
_RELEASES = {(3072, 5, 20, False): "klein-4B", (4096, 8, 24, False): "klein-9B", (6144, 8, 48, True): "dev"}
# LoRA module names (flat) in BFL's layout: a block's, Flux.1's alone, the layers whose in-width is the model width,
# the feed-forward's output layer, the single block's output layer
_ORIGINAL_BLOCK = re.compile(r"(^|_)(double_blocks|single_blocks)_\d+_")
_FLUX1_ONLY = re.compile(r"(^|_)(img_mod|txt_mod|vector_in)_|single_blocks_\d+_modulation_")
_ATTN_IN = re.compile(r"_(img|txt)_attn_(qkv|proj)$|_(img|txt)_mlp_0$|single_blocks_\d+_linear1$")
_MLP_OUT = re.compile(r"_(img|txt)_mlp_2$")
_LINEAR2 = re.compile(r"single_blocks_\d+_linear2$")
# each variant's shipped release config (models/configs): transformer config, scheduler, text encoder, VAE
_RELEASE_FILES = {"klein-4B": "flux2-klein-4b", "klein-9B": "flux2-klein-9b", "dev": "flux2-dev"}
# each text encoder's prompt template and the hidden-state layers the pipelines stack (transformers' numbering:
# 0 = the embeddings): Qwen3's chat template with one user turn, add_generation_prompt and enable_thinking=False
# (Flux2KleinPipeline). [dev]'s Mistral-3: a chat of BFL's system message and the prompt (Flux2Pipeline), layers 10/20/30
_PROMPTS = {
    "qwen3_4b": ("<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n", (9, 18, 27)),
    "qwen3_8b": ("<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n", (9, 18, 27)),
    "mistral3": (None, (10, 20, 30)),
}
# BFL's system message for [dev]'s prompts (flux2's system_messages.py SYSTEM_MESSAGE, as Flux2Pipeline and ComfyUI send it)
SYSTEM_MESSAGE = ("You are an AI that reasons about image descriptions. You give structured responses focusing on object "
                  "relationships, object\nattribution and actions without speculation.")


def mistral_chat(tok, conversation) -> str:
    """The Mistral-Small-3 chat template for a system and a user turn, for a tokenizer that carries none (a bare
    ``tokenizer.json``): ``<s>[SYSTEM_PROMPT]...[/SYSTEM_PROMPT][INST]...[/INST]``, no generation prompt."""
    out = getattr(tok, "bos_token", None) or "<s>"
    for m in conversation:
        text = "".join(c["text"] for c in m["content"] if c.get("type") == "text") if isinstance(m["content"], list) else m["content"]
        out += f"[SYSTEM_PROMPT]{text}[/SYSTEM_PROMPT]" if m["role"] == "system" else f"[INST]{text}[/INST]"
    return out


def _chat(prompt: str) -> list:
    """Flux2Pipeline's ``format_input`` for one text prompt (``[IMG]`` markers removed, as it does)."""
    return [{"role": "system", "content": [{"type": "text", "text": SYSTEM_MESSAGE}]},
            {"role": "user", "content": [{"type": "text", "text": prompt.replace("[IMG]", "")}]}]
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
    original_markers = (("double_stream_modulation_img.lin.weight", "img_in.weight"),)
    diffusers_markers = (("double_stream_modulation_img.linear.weight", "x_embedder.weight"),)
    reference_manifests = {
        "flux2-klein-4b.transformer.original": "klein-4B", "flux2-klein-4b.transformer.diffusers": "klein-4B",
        "flux2-klein-9b.transformer.original": "klein-9B", "flux2-klein-9b.transformer.diffusers": "klein-9B",
        "flux2-dev.transformer.original": "dev", "flux2-dev.transformer.diffusers": "dev",
    }
    detect_order = 5  # before Flux.1: its original markers (double_blocks.0.img_attn.qkv) match FLUX.2 files too
    transformer_class = "Flux2Transformer2DModel"
    transformer_module = "diffusers.models.transformers.transformer_flux2"
    # BFL's names (flux2/model.py, as ComfyUI and the released single files spell them) -> diffusers', as
    # diffusers' convert_flux2_transformer_checkpoint_to_diffusers maps them (it hard-codes no size, but maps every
    # file to the [dev] config and cannot read ComfyUI's prefix: detection reads the config from the shapes)
    keymap = (
        _r("img_in", "x_embedder"),
        _r("txt_in", "context_embedder"),
        _r("time_in.in_layer", "time_guidance_embed.timestep_embedder.linear_1"),
        _r("time_in.out_layer", "time_guidance_embed.timestep_embedder.linear_2"),
        _r("guidance_in.in_layer", "time_guidance_embed.guidance_embedder.linear_1", optional=True),
        _r("guidance_in.out_layer", "time_guidance_embed.guidance_embedder.linear_2", optional=True),
        _r("double_stream_modulation_img.lin", "double_stream_modulation_img.linear"),
        _r("double_stream_modulation_txt.lin", "double_stream_modulation_txt.linear"),
        _r("single_stream_modulation.lin", "single_stream_modulation.linear"),
        _r("double_blocks.{i}.img_attn.qkv", [f"{_TB}.attn.{q}" for q in Q3]),
        _r("double_blocks.{i}.txt_attn.qkv", [f"{_TB}.attn.add_{c}_proj" for c in "qkv"]),
        _t("double_blocks.{i}.img_attn.norm.query_norm.scale", f"{_TB}.attn.norm_q.weight"),
        _t("double_blocks.{i}.img_attn.norm.key_norm.scale", f"{_TB}.attn.norm_k.weight"),
        _t("double_blocks.{i}.txt_attn.norm.query_norm.scale", f"{_TB}.attn.norm_added_q.weight"),
        _t("double_blocks.{i}.txt_attn.norm.key_norm.scale", f"{_TB}.attn.norm_added_k.weight"),
        _r("double_blocks.{i}.img_attn.proj", f"{_TB}.attn.to_out.0"),
        _r("double_blocks.{i}.txt_attn.proj", f"{_TB}.attn.to_add_out"),
        _r("double_blocks.{i}.img_mlp.0", f"{_TB}.ff.linear_in"),
        _r("double_blocks.{i}.img_mlp.2", f"{_TB}.ff.linear_out"),
        _r("double_blocks.{i}.txt_mlp.0", f"{_TB}.ff_context.linear_in"),
        _r("double_blocks.{i}.txt_mlp.2", f"{_TB}.ff_context.linear_out"),
        _r("single_blocks.{i}.linear1", f"{_ST}.attn.to_qkv_mlp_proj"),  # q, k, v and the SwiGLU input, kept fused
        _r("single_blocks.{i}.linear2", f"{_ST}.attn.to_out"),
        _t("single_blocks.{i}.norm.query_norm.scale", f"{_ST}.attn.norm_q.weight"),
        _t("single_blocks.{i}.norm.key_norm.scale", f"{_ST}.attn.norm_k.weight"),
        _r("final_layer.linear", "proj_out"),
        _r("final_layer.adaLN_modulation.1", "norm_out.linear", "always"),
    )
    text_encoders = (TextEncoder("qwen3_4b", "text_encoder"), TextEncoder("qwen3_8b", "text_encoder"),
                     TextEncoder("mistral3", "text_encoder"))
    latent_channels = 32
    latent_patch = 2  # the pipelines patchify the VAE's 32-channel latent 2x2 (128 channels, 16 px a token)
    vae_class = "AutoencoderKLFlux2"
    prediction = "flow"
    flow_multiplier = 1.0  # the pipelines pass timestep / 1000 = sigma; the model multiplies by 1000 itself
    resolution_shift = True  # mu = compute_empirical_mu(image_seq_len, num_steps): resolution_mu below
    distilled_guidance = True  # [dev] takes guidance as a model input (guidance_in); [klein] has none
    # diffusers pipelines/flux2: Flux2KleinPipeline.__call__ (50 steps, guidance_scale 4.0 as CFG; a distilled
    # [klein] (config is_distilled) ignores CFG, its model card samples 4 steps); Flux2Pipeline ([dev]): 50 steps,
    # guidance_scale 4.0 as the embedded guidance, no CFG. Their sigmas, linspace(1, 1/steps) shifted by mu, are the
    # "simple" schedule of the shifted table
    defaults = {"cfg": 4.0, "steps": 50, "sampler": "euler", "schedule": "simple"}
    variant_defaults = {"distilled": {"cfg": 1.0, "steps": 4}, "dev": {"cfg": 1.0, "guidance": 4.0}}
    mlx_port = "flux2"
    # names only FLUX.2 has: the shared modulation, the single blocks' fused projection (and their to_out: Flux.1's
    # single blocks have none), the SwiGLU feed-forward. Its original-layout block names (double_blocks_N_img_attn_qkv,
    # single_blocks_N_linear1) are Flux.1's too: the widths tell them apart (lora_claim).
    lora_names = (r"(^|_)(double_stream_modulation_(img|txt)|single_stream_modulation)(_|$)"
                  r"|(^|_)single_transformer_blocks_\d+_attn_(to_qkv_mlp_proj|to_out)(_|$)|(^|_)(ff|ff_context)_linear_(in|out)(_|$)",
                  "names (shared modulation, single_transformer_blocks.N.attn.to_qkv_mlp_proj, ff.linear_in)")
    lora_shared = ("joint",)  # diffusers' double blocks: to_q / add_q_proj / to_add_out, as Flux.1 and SD3
    lora_rank = 30
    lora_max_blocks = 8
    lora_widths = (3072, 4096, 6144)
    lora_metadata = ("flux2", "flux.2", "klein")
    widgets_only = ("guidance",)
    # multi-reference editing (Flux2Pipeline / Flux2KleinPipeline): each reference's latents follow the image's
    # tokens with their own time coordinate (10, 20, ...); BFL documents up to 4 references for [klein], 6 for [dev].
    # A reference above 1024x1024 is scaled down to that area, then cut about its centre to sides rounded down to 16
    # (Flux2ImageProcessor's resize_mode "crop"); under 64 pixels a side or beyond 8:1 the pipelines refuse it
    max_references = 4
    edit_title = "FLUX.2 [klein] or [dev]"
    reference_max_area = 1024 * 1024
    reference_min_side = 64
    reference_max_aspect = 8.0
    reference_fit = "crop"
    widget_labels = {"text_encoder_1": "Qwen3 text encoder (qwen_3_4b for [klein] 4B, qwen_3_8b for 9B)",
                     "guidance": "guidance ([dev] only: [klein] has no guidance input)",
                     "negative": "what to avoid (only with cfg above 1: a distilled [klein] samples without CFG)"}

    def detect(self, t, original):
        n = _NAMES[original]
        width, in_ch = t[n["embed"]].shape
        head_dim = t[n["q_norm"]].shape[0]
        double, single = count(t.keys(), n["double"]), count(t.keys(), n["single"])
        guidance = n["guidance"] in t
        variant = _RELEASES.get((width, double, single, guidance), "custom")
        rel = self.release(_RELEASE_FILES.get(variant, "flux2-klein-4b"))
        cfg = rel["transformer"]
        cfg.update({
            "in_channels": in_ch, "num_layers": double, "num_single_layers": single,
            "attention_head_dim": head_dim, "num_attention_heads": width // head_dim,
            "joint_attention_dim": t[n["context"]].shape[1],
            "timestep_guidance_channels": t[n["time"]].shape[1],
            "mlp_ratio": t[n["mlp_in"]].shape[0] / (2 * width),  # SwiGLU: gate and value in one matrix
            "axes_dims_rope": [head_dim // 4] * 4,  # (time, row, column, sequence): 32 each at head_dim 128
            "guidance_embeds": guidance,
        })
        det = self.detection(variant, cfg, original)
        det.extras["guidance_embeds"] = guidance
        if variant in self.distilled_variants:  # said, not guessed (a diffusers folder's is_distilled tells)
            det.extras["ambiguous"] = f"distilled or base: same layout ({self.title(variant)})"
        if variant == "custom":
            rel = {k: v for k, v in rel.items() if k != "text_encoders"}
        return self.finish(det, rel)

    def lora_claim(self, names, widths):
        """ComfyUI/kohya LoRAs in BFL's layout (``double_blocks_N_img_attn_qkv``, ``single_blocks_N_linear1``) share
        Flux.1's block names. The widths tell: a FLUX.2 feed-forward is 3x the attention width and its single block's
        output reads 4x (Flux.1: 4x and 5x); 4096 / 6144 wide attention ([klein] 9B, [dev]) no Flux.1 has. Flux.1's
        per-block modulation (``img_mod``, ``modulation``) FLUX.2 has none of. [klein] 4B's attention alone, 3072 wide
        like Flux.1's: either (None)."""
        if not any(_ORIGINAL_BLOCK.search(n) for n in names) or any(_FLUX1_ONLY.search(n) for n in names):
            return False
        w = {n: int(v) for n, v in (widths or {}).items() if n in names}
        attn = {v for n, v in w.items() if _ATTN_IN.search(n)}
        if attn & {4096, 6144}:
            return True
        d = max(attn) if attn else None
        for n, v in w.items():
            if _MLP_OUT.search(n) and (v in (9216, 18432) or (d and v == 3 * d)):
                return True
            if _LINEAR2.search(n) and (v in (12288, 16384, 24576) or (d and v == 4 * d)):
                return True
            if (_MLP_OUT.search(n) and d and v == 4 * d) or (_LINEAR2.search(n) and (v == 15360 or (d and v == 5 * d))):
                return False
        return None

    def vae_config_name(self, variant, latent):
        return VAE_CONFIG

    def text_encoders_of(self, variant):
        low = (variant or "").lower()
        keys = {key for word, key in _TEXT_ENCODER.items() if word in low}
        return tuple(te for te in self.text_encoders if te.key in keys) or self.text_encoders

    def handle_extras(self, det, cfg):
        return {"guidance_embeds": bool(cfg.get("guidance_embeds"))}

    def references_of(self, variant, in_channels=0):
        return 6 if "dev" in (variant or "").lower() else self.max_references

    def resolution_mu(self, image_seq_len, steps):
        """``compute_empirical_mu`` of diffusers' pipeline_flux2(_klein).py (BFL's flux2 sampling): ``mu`` linear
        in the image token count, and, up to 4300 tokens, in the step count between its 10-step and 200-step lines."""
        a1, b1 = 8.73809524e-05, 1.89833333
        a2, b2 = 0.00016927, 0.45666666
        if image_seq_len > 4300:
            return float(a2 * image_seq_len + b2)
        m_200 = a2 * image_seq_len + b2
        m_10 = a1 * image_seq_len + b1
        a = (m_200 - m_10) / 190.0
        return float(a * steps + m_200 - 200.0 * a)

    # ------------------------------------------------------------------ prompts and the model call
    def encode(self, te, prompts, cond, *, max_length=None, **_):
        """As the pipelines' ``_get_qwen3_prompt_embeds`` / ``_get_mistral_3_small_prompt_embeds``: each prompt in the
        encoder's chat template (Mistral-3: BFL's system message and the prompt), padded on the right to
        ``max_length`` (512), the hidden states of three layers side by side
        ([B, L, 3 * width], the transformer's joint width); no mask (the transformer reads every position).
        [dev]: guidance 4.0 unless given."""
        role = self.text_encoders_of(te.handle.variant)[0].key
        for te_slot in self.text_encoders:  # the encoder the handle holds decides (a custom size names none)
            if te.encoder(te_slot.key, required=False)[0] is not None:
                role = te_slot.key
                break
        template, layers = _PROMPTS[role]
        if template is None:  # Mistral-3: a chat in its tokenizer's template (or the Mistral-Small-3 one)
            texts = te.chat(role, [_chat(p) for p in prompts], mistral_chat)
        else:
            texts = [template.format(p) for p in prompts]
        # padded on the right, as Flux2Pipeline's tokenizers pad (ComfyUI pads Mistral's on the left)
        hs, _ = te.decoder(role, texts, layers=layers, max_length=max_length or 512, pad_to_max=True)
        width, joint = len(layers) * int(hs[0].shape[-1]), int(te.handle.config.get("joint_attention_dim") or 0)
        if joint and width != joint:
            raise SpriteForgeError(BAD_INPUT, f"this FLUX.2 model reads {joint}-wide prompt features, and the {role} text encoder "
                                   f"given gives {width} ({len(layers)} layers of {width // len(layers)}). Give the model's own "
                                   "text encoder: qwen_3_4b for [klein] 4B, qwen_3_8b for [klein] 9B, the Mistral-3 one for [dev].",
                                   details={"joint_attention_dim": joint, "text_encoder": role, "width": width})
        cond.embeds = te.ops.concat(hs, 2)
        if cond.guidance is None and te.handle.extras.get("guidance_embeds"):
            cond.guidance = float(self.sampling_defaults(te.handle.variant).get("guidance", 4.0))

    def forward(self, den, x, t, cond):
        """One token a latent pixel (the VAE's latents come patchified), 4-axis positions: image (0, row, col, 0),
        text (0, 0, 0, index), reference i's tokens after the image's at (10 + 10 i, row, col, 0) (the pipelines'
        ``_prepare_image_ids``), whose output is dropped; [dev]'s guidance as a model input."""
        b, _, h, w = x.shape
        hs = den.pack(x, 1)
        n_img = hs.shape[1]
        refs = den.references(cond)
        shapes = tuple((r.shape[2], r.shape[3]) for r in refs)
        if refs:
            hs = den.ops.concat([hs, *(den.cast(den.pack(r, 1), hs.dtype) for r in refs)], 1)
        txt = cond["embeds"]
        g = None
        if den.config.get("guidance_embeds"):
            g = den.full(b, float(den.cond.guidance if den.cond.guidance is not None else 4.0), hs.dtype)
        img_ids = den.cached(("img_ids", h, w, shapes, x.dtype), lambda: den.rows(
            [[0.0, float(i), float(j), 0.0] for i in range(h) for j in range(w)]
            + [[10.0 + 10.0 * k, float(i), float(j), 0.0] for k, (rh, rw) in enumerate(shapes) for i in range(rh) for j in range(rw)],
            x.dtype))
        n = txt.shape[1]
        txt_ids = den.cached(("txt_ids", n, x.dtype), lambda: den.rows([[0.0, 0.0, 0.0, float(k)] for k in range(n)], x.dtype))
        out = den.run(hidden_states=hs, encoder_hidden_states=txt, timestep=t, guidance=g, img_ids=img_ids, txt_ids=txt_ids)
        return den.unpack(out[:, :n_img] if refs else out, h, w, 1)


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
