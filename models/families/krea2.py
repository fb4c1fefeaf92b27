"""Krea 2 (Krea): 12.8B single-stream DiT with a text-fusion stack over Qwen3-VL-4B hidden states, the Qwen-Image VAE.

The released files (Comfy-Org ``krea2_{raw,turbo}_bf16``) are krea's original names in mixed precision (bf16
matrices, f32 norms and modulation): detection reports every dtype a file holds (``extras["dtypes"]``), never one per
file, and diffusers' own ``convert_krea2_transformer_checkpoint_to_diffusers`` maps them. Prompts are
``Krea2Pipeline``'s: the prompt after Qwen-Image's system template, the template's suffix after the (cut) prompt,
hidden states 2, 5, ..., 35 of the language model stacked per token, the template's first 34 tokens dropped. The model
call packs the latent 2x2 and gives (0, row, col) rotary positions (text at the origin); the timestep is sigma.
"""

from __future__ import annotations

import math

from ..detection import count
from ..keymaps import rule
from .base import Family, TextEncoder
from .qwenimage import _mu_args
from .qwenimage import TEMPLATE as _QWEN_TEMPLATE

# diffusers pipelines/krea2/pipeline_krea2.py: prompt_template_encode_prefix / _suffix / _start_idx / _num_suffix_tokens
PREFIX, SUFFIX = _QWEN_TEMPLATE.split("{}")
TEMPLATE_DROP, SUFFIX_TOKENS = 34, 5
MAX_TOKENS = 512  # max_sequence_length
DISTILLED_MU = 1.15  # Krea2Pipeline: is_distilled -> mu = 1.15 at any size

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


# krea's module names -> diffusers' (the converter's renames): what LoRAs in krea's / ComfyUI's names are read through
_ATTN = {"attn.wq": "attn.to_q", "attn.wk": "attn.to_k", "attn.wv": "attn.to_v", "attn.wo": "attn.to_out.0",
         "attn.gate": "attn.to_gate", "mlp.gate": "ff.gate", "mlp.up": "ff.up", "mlp.down": "ff.down"}
_KEYMAP = (
    *(rule(a, b) for a, b in (("first", "img_in"), ("tmlp.0", "time_embed.linear_1"), ("tmlp.2", "time_embed.linear_2"),
                              ("tproj.1", "time_mod_proj"), ("txtmlp.1", "txt_in.linear_1"), ("txtmlp.3", "txt_in.linear_2"),
                              ("last.linear", "final_layer.linear"))),
    *(rule(f"{orig}.{{i}}.{a}", f"{ours}.{{i}}.{b}") for orig, ours in (
        ("blocks", "transformer_blocks"), ("txtfusion.layerwise_blocks", "text_fusion.layerwise_blocks"),
        ("txtfusion.refiner_blocks", "text_fusion.refiner_blocks")) for a, b in _ATTN.items()),
)


def text_layers(n: int) -> tuple[int, ...]:
    """The language model's hidden states (``output_hidden_states`` numbering) the transformer mixes: Krea2Pipeline's
    ``text_encoder_select_layers`` (2, 5, ..., 35 for the release's 12), every third from the second."""
    return tuple(range(2, 3 * n, 3))


class Krea2(Family):
    name = "krea2"
    label = "Krea 2"
    # krea2_raw_bf16 and krea2_turbo_bf16 hold the same tensors (byte-identical sizes): no shape tells them apart
    variant_titles = {"raw-or-turbo": "(raw or turbo: same layout)", "raw": "Raw", "turbo": "Turbo"}
    distilled_variants = {"raw-or-turbo": ("turbo", "raw")}  # Krea2Pipeline's is_distilled
    original_markers = (("txtfusion.projector.weight", "blocks.0.mod.lin"),)
    diffusers_markers = (("text_fusion.projector.weight", "transformer_blocks.0.scale_shift_table"),)
    reference_manifests = {"krea2.transformer.original": "raw-or-turbo", "krea2.transformer.diffusers": "raw-or-turbo"}
    detect_order = 30
    transformer_class = "Krea2Transformer2DModel"
    transformer_module = "diffusers.models.transformers.transformer_krea2"
    keymap = _KEYMAP  # (LoRA names; the file itself goes through diffusers' converter)
    original_converter = "convert_krea2_transformer_checkpoint_to_diffusers"
    text_encoders = (TextEncoder("qwen3_vl_4b", "text_encoder"),)
    latent_channels = 16
    vae_class = "AutoencoderKLQwenImage"  # Comfy-Org/Krea-2 ships qwen_image_vae.safetensors
    vae_by_latent = {16: "vae-qwen-image"}
    prediction = "flow"
    flow_multiplier = 1.0  # the pipeline passes timestep / 1000 = sigma; the model multiplies by 1000 inside
    resolution_shift = True  # Krea2Pipeline: calculate_shift(image_seq_len, 256, 6400, 0.5, 1.15) from the scheduler config
    text_mask = True  # every attention masks the padded text keys, and text tokens carry no position: padding adds nothing
    patch_size = 2
    # Krea2Pipeline.__call__: 28 steps, guidance_scale 4.5 in Krea's convention cond + g (cond - uncond), which is
    # plain CFG at 1 + g = 5.5; turbo (Krea2TurboModularPipeline, the TDM checkpoint): 8 steps, guidance 0 (no CFG)
    # schedule: the pipeline's sigmas are linspace(1, 1/n, n) shifted, i.e. "simple" on the 10000-entry table
    defaults = {"cfg": 5.5, "steps": 28, "sampler": "euler", "schedule": "simple"}
    turbo_defaults = {"cfg": 1.0, "steps": 8}
    mlx_port = "krea2"
    # LoRA: the module names only Krea 2 has (the gated attention, the SwiGLU's gate/up/down, the text fusion), in
    # diffusers' names and in krea's (``blocks.N.attn.wq``, ``blocks.N.mlp.up``, ``txtfusion.``)
    lora_names = (r"(^|_)(text_fusion|txtfusion)_(layerwise|refiner)_blocks_\d|(^|_)transformer_blocks_\d+_(attn_to_gate|ff_(gate|up|down))(_|$)"
                  r"|(^|_)blocks_\d+_(attn_(wq|wk|wv|wo|gate)|mlp_(gate|up|down))(_|$)", "gated attention / SwiGLU / text fusion names")
    # (no lora_shared: the "joint" group is named by add_q_proj / ff_context too, which Krea 2 lacks; a LoRA on its
    # plain to_q/to_k/to_v/to_out.0 alone is read as the joint-attention families')
    lora_rank = 60
    lora_max_blocks = 28
    lora_widths = (6144,)
    lora_metadata = ("krea2", "krea-2", "krea 2", "krea_2")

    def detect(self, t, original):
        n = _NAMES[original]
        width, in_ch = t[n["embed"]].shape
        head_dim = t[n["q_norm"]].shape[0]
        fusion = n["fusion"]
        text_dim = t[n["text_norm"]].shape[0]
        text_head = t[f"{fusion}layerwise_blocks.0.{n['fusion_q_norm']}"].shape[0]
        rel = self.release("krea2")
        cfg = rel["transformer"]
        cfg.update({
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
        })
        if head_dim != 128:  # a smaller model (the tests'): the rope axes in the release's proportions (32/48/48)
            b = 3 * (head_dim // 8)
            cfg["axes_dims_rope"] = [head_dim - 2 * b, b, b]
        det = self.detection("raw-or-turbo", cfg, original)
        det.extras["ambiguous"] = ("raw or turbo: same layout (drawn as raw: 28 steps, CFG 5.5, the size's shift; turbo "
                                   "wants 8 steps, CFG 1, shift 3.16)")
        return self.finish(det, rel)

    def mu_args(self, sched: dict) -> dict:
        return _mu_args(sched)

    # (not variant_shift / variant_defaults: those match a word of the name, and "raw-or-turbo" holds "turbo")
    def fixed_shift(self, variant):
        """Turbo (a folder whose pipeline says is_distilled): mu = 1.15 whatever the size, i.e. shift e^1.15."""
        return math.exp(DISTILLED_MU) if variant == "turbo" else None

    def sampling_defaults(self, variant):
        return {**self.defaults, **(self.turbo_defaults if variant == "turbo" else {})}

    # ------------------------------------------------------------------ prompts and the model call
    def encode(self, te, prompts, cond, *, max_length=None, **_):
        """Krea2Pipeline.get_text_hidden_states: the template's prefix and the prompt (cut to the pipeline's length),
        its suffix after them; the chosen hidden states side by side per token ([B, L, layers * width], split again
        in :meth:`forward`), the template's first tokens dropped, padding masked."""
        n = int(te.handle.config.get("num_text_layers", 12))
        hs, keep = te.decoder("qwen3_vl_4b", [PREFIX + p for p in prompts], layers=text_layers(n),
                              max_length=(max_length or MAX_TOKENS) + TEMPLATE_DROP - SUFFIX_TOKENS, suffix=SUFFIX)
        cond.embeds, cond.mask = te.ops.concat(hs, 2)[:, TEMPLATE_DROP:], keep[:, TEMPLATE_DROP:]

    def forward(self, den, x, t, cond):
        """On 2x2-packed latent tokens after the text tokens; the text's layer stack split out of its last axis."""
        b, _, h, w = x.shape
        emb = cond["embeds"]
        n = int(den.config["num_text_layers"])
        emb = emb.reshape(emb.shape[0], emb.shape[1], n, emb.shape[2] // n)
        ids = den.cached(("krea2_ids", emb.shape[1], h, w), lambda: den.rows(
            [[0.0, 0.0, 0.0]] * emb.shape[1] + [[0.0, float(i), float(j)] for i in range(h // 2) for j in range(w // 2)], den.F32))
        mask = cond.get("mask")
        out = den.run(hidden_states=den.pack(x), encoder_hidden_states=emb, timestep=t, position_ids=ids,
                      encoder_attention_mask=None if mask is None else mask > 0)
        return den.unpack(out, h, w)
